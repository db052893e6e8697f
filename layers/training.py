"""A small, deterministic training loop shared by the chapters.

:func:`fit` trains a classifier with mini-batch SGD (or Adam), prints one
progress line per logged epoch (epoch, loss, accuracies; no timings, so the
output is reproducible) and returns the history for plotting with
:func:`layers.viz.plot_training_curves`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .data import Digits, batches

__all__ = ["accuracy", "fit", "History"]

History = dict[str, list[float]]


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of rows of ``x`` whose arg-max logit equals ``y``. ``x``: ``(N, ...)``, ``y``: ``(N,)``."""
    was_training = model.training
    model.eval()
    correct = (model(x).argmax(dim=-1) == y).float().mean().item()
    model.train(was_training)
    return correct


def fit(
    model: nn.Module,
    data: Digits,
    *,
    epochs: int = 10,
    lr: float = 0.1,
    batch_size: int = 64,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    lr_schedule: str = "constant",
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    seed: int = 0,
    log_every: int = 1,
    on_step: Callable[[nn.Module, int], None] | None = None,
    verbose: bool = True,
    eval_train: bool = True,
) -> History:
    """Train ``model`` on ``data`` and return its history.

    Args:
        model: maps ``(B, *)`` inputs to ``(B, num_classes)`` logits.
        data: the split to train and evaluate on.
        epochs: passes over the training set.
        lr: learning rate.
        batch_size: mini-batch size.
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"``.
        momentum: SGD momentum.
        weight_decay: L2 penalty passed to the optimizer.
        lr_schedule: ``"constant"``, or ``"cosine"``: the rate decays from ``lr`` to zero
            over all steps along half a cosine (``CosineAnnealingLR``, stepped every step).
        loss_fn: ``loss_fn(logits, targets)``; cross-entropy if ``None``.
        seed: seeds the batch order (the model's initialization is the caller's).
        log_every: print a progress line every this many epochs (and the last).
        on_step: called as ``on_step(model, step)`` after every optimizer step
            (to record a parameter, say).
        verbose: print progress lines.
        eval_train: after each epoch, also measure the accuracy on the whole
            training set (``"train_acc"``). It costs a forward pass over the
            training set per epoch; a sweep that reads only the held-out accuracy
            turns it off. Either way the training is the same, for a model whose
            eval-mode forward changes no state and draws no random numbers (every
            layer here): the pass runs in eval mode, without gradients.

    Returns:
        ``{"epoch", "loss", "train_acc", "test_acc"}``, one entry per epoch
        (no ``"train_acc"`` when ``eval_train`` is off); ``loss`` is the mean
        training loss of the epoch. When ``data`` has a validation split,
        ``"val_acc"`` replaces ``"test_acc"`` (and the progress lines show it):
        the test set is then left for one final evaluation by the caller, after
        every choice is made.
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"fit: expected optimizer 'sgd' or 'adam', got {optimizer!r}")
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"fit: expected lr_schedule 'constant' or 'cosine', got {lr_schedule!r}")
    loss_fn = loss_fn or nn.functional.cross_entropy
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-len(data.x_train) // batch_size)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
                 if lr_schedule == "cosine" else None)
    gen = torch.Generator().manual_seed(seed)
    has_val = data.x_val is not None
    held_out, held_name = ((data.x_val, data.y_val), "val") if has_val else ((data.x_test, data.y_test), "test")
    history: History = {"epoch": [], "loss": [], **({"train_acc": []} if eval_train else {}), f"{held_name}_acc": []}
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        total, count = 0.0, 0
        for xb, yb in batches(data.x_train, data.y_train, batch_size, gen):
            loss = loss_fn(model(xb), yb)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fit: loss became {loss.item()} at epoch {epoch}, step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            if on_step is not None:
                on_step(model, step)
            total += loss.item() * len(xb)
            count += len(xb)
        history["epoch"].append(epoch)
        history["loss"].append(total / count)
        if eval_train:
            history["train_acc"].append(accuracy(model, data.x_train, data.y_train))
        history[f"{held_name}_acc"].append(accuracy(model, *held_out))
        if verbose and (epoch % log_every == 0 or epoch == epochs):
            train_part = f"train acc {history['train_acc'][-1]:.3f}  " if eval_train else ""
            print(f"epoch {epoch:3d}/{epochs}  loss {history['loss'][-1]:.4f}  "
                  f"{train_part}{held_name} acc {history[f'{held_name}_acc'][-1]:.3f}")
    return history
