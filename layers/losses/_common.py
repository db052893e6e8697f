"""What the losses share: reductions and their gradients, the accumulation dtype, checks.

Part of :mod:`layers.losses`, taught in the chapter "Losses" (``book/losses.ipynb``).

Class-index targets (shape, dtype and, in eager mode, value range) are checked here for
:func:`~layers.losses.cross_entropy` and :func:`~layers.losses.softmax_focal_loss` alike.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..composable import autocast_apply, values_checkable


_REDUCTIONS = ("none", "mean", "sum")


# ------------------------------------------------------------------------- helpers
def _check_reduction(where: str, reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{where}: expected reduction 'none', 'mean' or 'sum', got {reduction!r}")


def _acc(x: Tensor) -> Tensor:
    """``x`` in the dtype losses accumulate in: float32 for float16/bfloat16, else its own."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _reduce(loss: Tensor, reduction: str, count: Tensor | float | None = None) -> Tensor:
    """Reduce a per-element loss; ``count`` is the divisor of ``"mean"`` (``loss.numel()`` if ``None``)."""
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    return total / (loss.numel() if count is None else count)


def _reduce_grad(grad_out: Tensor, shape: torch.Size, reduction: str,
                 count: Tensor | float | None = None) -> Tensor:
    """Gradient of :func:`_reduce` w.r.t. the per-element loss: ``grad_out`` spread over ``shape``."""
    if reduction == "none":
        return grad_out
    if reduction == "mean":
        grad_out = grad_out / (shape.numel() if count is None else count)
    return grad_out.expand(shape)


def _check_constant(where: str, name: str, t: Tensor | None) -> None:
    if t is not None and t.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{where}: {name} that requires grad is not supported (it is a constant here, "
                         f"as in torch's nll_loss and binary_cross_entropy_with_logits)")


def _apply(apply, *args) -> Tensor:
    """``apply(*args)`` (a Function's :func:`~layers.composable.compilable_apply`) under autocast's
    float32 policy for losses."""
    return autocast_apply(apply, "float32", *args)


def _promote(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Both floating tensors in their promoted dtype, as torch's losses do (a no-op when equal)."""
    dtype = torch.promote_types(input.dtype, target.dtype)
    return input.to(dtype), target.to(dtype)


# ------------------------------------------------------------ class-index targets
def _class_dim(input: Tensor) -> int:
    return 0 if input.dim() == 1 else 1


def _of_class(weight: Tensor, target: Tensor) -> Tensor:
    """``weight[target]``: the ``(C,)`` weights picked by class indices of any shape, ``()`` included.

    Indexing with a 0-dim integer tensor reads its value on the host (``.item()``), which
    torch.compile cannot trace; a 1-D index is an ordinary gather.
    """
    return weight[target.reshape(-1)].reshape(target.shape)     # (*target) -> (numel,) -> (*target)


def _check_class_targets(where: str, input: Tensor, target: Tensor, ignore_index: int | None) -> None:
    """Shape, dtype and (in eager mode) value range of class-index targets for ``(N, C, *)`` input."""
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{where}: expected target to hold class indices (an integer tensor) or "
                        f"probabilities (floating point), got {target.dtype}")
    expected = () if input.dim() == 1 else (input.shape[0], *input.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"{where}: expected target of shape {expected} for input of shape "
                         f"{tuple(input.shape)} (classes in dimension {_class_dim(input)}), got {tuple(target.shape)}")
    if values_checkable(target):
        C = input.shape[_class_dim(input)]
        valid = (target >= 0) & (target < C)
        if ignore_index is not None:
            valid |= target == ignore_index
        if not bool(valid.all()):
            bad = target[~valid][0].item()
            raise ValueError(f"{where}: expected target class indices in [0, {C - 1}]"
                             f"{'' if ignore_index is None else f' or ignore_index={ignore_index}'}, got {bad}")
