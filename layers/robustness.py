"""Adversarial examples: FGSM and PGD attacks through the custom layers, and accuracy under attack.

Taught in the chapter "Custom layers in practice" (``book/practice.ipynb``).

Both attacks need the gradient of the loss with respect to the *input*, which
flows through every layer's hand-written backward (the ``dx`` branch of each
``autograd.Function``), so they double as an end-to-end test of those
backwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ._validation import check_tensor

__all__ = ["input_gradient", "fgsm", "pgd", "accuracy_under_attack"]

Loss = Callable[[Tensor, Tensor], Tensor]


def _check_attack(where: str, x: Tensor, y: Tensor, eps: float) -> None:
    check_tensor(x, where, "x", min_ndim=1)
    check_tensor(y, where, "y", ndim=1, floating=False)
    if len(y) != len(x):
        raise ValueError(f"{where}: expected one label per row of x ({len(x)}), got {len(y)}")
    if not eps >= 0:
        raise ValueError(f"{where}: expected eps >= 0, got {eps}")


def input_gradient(model: nn.Module, x: Tensor, y: Tensor, loss_fn: Loss | None = None) -> Tensor:
    r"""The gradient :math:`\nabla_x L(f(x), y)` of the summed loss with respect to the input.

    The model's parameters get no gradient (they are not touched), and the
    model's mode (train/eval) is left as it is.

    Args:
        model: maps ``(N, *)`` to ``(N, C)`` logits.
        x: inputs ``(N, *)``.
        y: integer labels ``(N,)``.
        loss_fn: ``loss_fn(logits, y)`` returning a scalar; summed cross-entropy
            if ``None`` (summed, so each row's gradient does not depend on ``N``).

    Returns:
        Tensor with the shape of ``x``.
    """
    loss_fn = loss_fn or (lambda logits, t: nn.functional.cross_entropy(logits, t, reduction="sum"))
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(model(x), y)
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, loss_fn: Loss | None = None,
         clamp: tuple[float, float] | None = (0.0, 1.0)) -> Tensor:
    r"""Fast gradient sign method: :math:`x' = \operatorname{clip}(x + \epsilon\,\operatorname{sign}(\nabla_x L))`.

    One step of size :math:`\epsilon` in the :math:`\ell_\infty` ball that most
    increases the linearized loss (Goodfellow et al., 2015).

    Args:
        model: maps ``(N, *)`` to ``(N, C)`` logits.
        x: inputs ``(N, *)``.
        y: true labels ``(N,)``.
        eps: the :math:`\ell_\infty` budget, at least 0.
        loss_fn: as in :func:`input_gradient`.
        clamp: ``(low, high)`` range of valid inputs (pixels in [0, 1]), or ``None``.

    Returns:
        The adversarial inputs, detached, shape of ``x``.

    Examples:
        >>> model = torch.nn.Linear(4, 3)
        >>> x, y = torch.rand(2, 4), torch.tensor([0, 2])
        >>> bool((fgsm(model, x, y, 0.1) - x).abs().max() <= 0.1 + 1e-6)
        True
    """
    _check_attack("fgsm", x, y, eps)
    x_adv = x.detach() + eps * input_gradient(model, x, y, loss_fn).sign()
    return x_adv if clamp is None else x_adv.clamp(*clamp)


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int = 10, step_size: float | None = None,
        loss_fn: Loss | None = None, clamp: tuple[float, float] | None = (0.0, 1.0)) -> Tensor:
    r"""Projected gradient descent: repeated FGSM steps, each projected back into the :math:`\epsilon` ball.

    :math:`x_{t+1} = \Pi_{\|x' - x\|_\infty \le \epsilon}\big(x_t + \alpha\,\operatorname{sign}(\nabla_x L(x_t))\big)`,
    starting from :math:`x_0 = x` (no random start, so it is deterministic; Madry et al., 2018).

    Args:
        model: maps ``(N, *)`` to ``(N, C)`` logits.
        x: inputs ``(N, *)``.
        y: true labels ``(N,)``.
        eps: the :math:`\ell_\infty` budget.
        steps: number of steps, at least 1.
        step_size: :math:`\alpha`; ``2.5 * eps / steps`` if ``None``.
        loss_fn: as in :func:`input_gradient`.
        clamp: valid input range, or ``None``.

    Returns:
        The adversarial inputs, detached.
    """
    _check_attack("pgd", x, y, eps)
    if steps < 1:
        raise ValueError(f"pgd: expected steps >= 1, got {steps}")
    alpha = 2.5 * eps / steps if step_size is None else step_size
    x = x.detach()
    x_adv = x.clone()
    for _ in range(steps):
        x_adv = x_adv + alpha * input_gradient(model, x_adv, y, loss_fn).sign()
        x_adv = torch.max(torch.min(x_adv, x + eps), x - eps)          # project onto the eps ball
        if clamp is not None:
            x_adv = x_adv.clamp(*clamp)
    return x_adv


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return (model(x).argmax(dim=-1) == y).float().mean().item()


def accuracy_under_attack(model: nn.Module, x: Tensor, y: Tensor, epsilons: Sequence[float],
                          attack: str = "fgsm", **kwargs) -> list[float]:
    """Accuracy of ``model`` on ``attack(x)`` for each budget in ``epsilons`` (``eps = 0`` is clean accuracy).

    The model is put in eval mode for the whole measurement and restored after.

    Args:
        model: the classifier.
        x: inputs ``(N, *)``.
        y: labels ``(N,)``.
        epsilons: the budgets to try.
        attack: ``"fgsm"`` or ``"pgd"``.
        **kwargs: passed to :func:`fgsm` or :func:`pgd`.

    Returns:
        One accuracy in [0, 1] per epsilon.
    """
    attacks = {"fgsm": fgsm, "pgd": pgd}
    if attack not in attacks:
        raise ValueError(f"accuracy_under_attack: expected attack 'fgsm' or 'pgd', got {attack!r}")
    was_training = model.training
    model.eval()
    try:
        return [_accuracy(model, attacks[attack](model, x, y, eps, **kwargs) if eps > 0 else x, y)
                for eps in epsilons]
    finally:
        model.train(was_training)
