"""Softmax cross-entropy: :class:`CrossEntropyFunction`, :func:`cross_entropy`, :class:`CrossEntropyLoss`.

Part of :mod:`layers.losses`, taught in the chapter "Losses" (``book/losses.ipynb``).

As :func:`torch.nn.functional.cross_entropy`: class-index or probability targets, class
``weight``, ``ignore_index`` and label smoothing, with the fused "softmax minus (smoothed,
weighted) target" as backward.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..composable import compilable_apply
from .._validation import check_same_device, check_tensor
from ._common import (_acc, _apply, _check_class_targets, _check_constant, _check_reduction, _class_dim,
                      _of_class, _promote, _reduce, _reduce_grad)

__all__ = ["CrossEntropyFunction", "cross_entropy", "CrossEntropyLoss"]


def _per_class(weight: Tensor, input: Tensor) -> Tensor:
    """``(C,)`` weights shaped to broadcast along the class dimension of ``input``: ``(C, 1, ..)``."""
    c = _class_dim(input)
    return weight.reshape(weight.shape[0], *[1] * (input.dim() - c - 1))


class CrossEntropyFunction(torch.autograd.Function):
    r"""Softmax cross-entropy against a target distribution, with class weights.

    With :math:`\log p = \operatorname{log\_softmax}(z)` over the class dimension, smoothing
    :math:`\varepsilon`, :math:`C` classes and class weights :math:`w` (all ones if ``None``),
    the weighted, smoothed target of one position is

    .. math::

        \tilde q_c = w_c \big((1-\varepsilon)\, t_c + \varepsilon / C\big),

    where :math:`t` is the one-hot of the class index (zero at ``ignore_index``) or the given
    probabilities. The loss and its local derivatives are

    .. math::

        \ell = -\sum_c \tilde q_c \log p_c, \qquad
        \frac{\partial \ell}{\partial z_c} = p_c \sum_{c'} \tilde q_{c'} - \tilde q_c, \qquad
        \frac{\partial \ell}{\partial t_c} = -(1-\varepsilon)\, w_c \log p_c .

    Without weights :math:`\sum \tilde q = 1` and the input gradient is the fused
    "softmax minus (smoothed) one-hot" :math:`p - q`: it never divides by :math:`p` and
    never takes :math:`\log 0`, so it is finite for any finite logits. :math:`p` is
    :math:`\exp(\log p)`, computed from the log-softmax. For class indices the forward takes
    :math:`\log p` of the target class by ``gather`` instead of the dense sum (the same value,
    as torch). ``"mean"`` divides by :math:`\sum w_{y}` over the positions not ignored (class
    indices) or by the number of positions (probabilities), as torch does. Saves the logits,
    the target and the weights (not the probabilities: backward recomputes them, which keeps
    the backward differentiable). float16/bfloat16 are computed in float32.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                reduction: str, label_smoothing: float) -> Tensor:
        c, eps = _class_dim(input), label_smoothing
        logp = torch.log_softmax(_acc(input), dim=c)                 # (N, C, *), stable
        if target.is_floating_point():                               # probabilities
            q = CrossEntropyFunction.target_distribution(input, target, weight, ignore_index, eps)  # (N, C, *)
            loss = -(q * logp).sum(c)                                # (N, *)
            count = None
        else:                                                        # class indices
            keep = target != ignore_index                            # (N, *)
            y = torch.where(keep, target, 0)                         # (N, *), ignored -> class 0
            w_y = 1.0 if weight is None else _of_class(_acc(weight), y)   # (N, *)
            loss = -(1 - eps) * w_y * logp.gather(c, y.unsqueeze(c)).squeeze(c)   # (N, *)
            if eps > 0:                                              # (skipped when 0: 0 * -inf is NaN)
                w = 1.0 if weight is None else _per_class(_acc(weight), input)
                loss = loss - eps / input.shape[c] * (w * logp).sum(c)
            loss = torch.where(keep, loss, 0.0)                      # (N, *)
            count = CrossEntropyFunction.mean_count(input, target, weight, ignore_index)
        return _reduce(loss, reduction, count).to(input.dtype)       # () or (N, *)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, ignore_index, reduction, label_smoothing = inputs
        ctx.save_for_backward(input, target, weight)
        ctx.save_for_forward(input, target, weight)
        ctx.ignore_index, ctx.reduction, ctx.label_smoothing = ignore_index, reduction, label_smoothing

    @staticmethod
    def target_distribution(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                            eps: float) -> Tensor:
        r""":math:`\tilde q = w \big((1-\varepsilon) t + \varepsilon / C\big)`, shaped like ``input``."""
        c, dtype = _class_dim(input), _acc(input).dtype
        if target.is_floating_point():
            t = _acc(target)                                         # (N, C, *)
            spread = eps / input.shape[c]
        else:
            keep = (target != ignore_index).unsqueeze(c).to(dtype)   # (N, 1, *), 0 where ignored
            y = torch.where(keep > 0, target.unsqueeze(c), 0)        # (N, 1, *)
            t = torch.zeros_like(_acc(input)).scatter(c, y, keep)    # (N, C, *) one-hot
            spread = eps / input.shape[c] * keep                     # (N, 1, *)
        q = (1 - eps) * t                                            # (N, C, *)
        if eps > 0:
            q = q + spread
        return q if weight is None else q * _per_class(_acc(weight), input)

    @staticmethod
    def mean_count(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int) -> Tensor | float:
        r"""The divisor of ``"mean"``: :math:`\sum w_y` over the kept positions, or their number."""
        if target.is_floating_point():
            return input.numel() // input.shape[_class_dim(input)]
        keep = target != ignore_index                                # (N, *)
        if weight is None:
            return keep.sum()
        return torch.where(keep, _of_class(_acc(weight), torch.where(keep, target, 0)), 0.0).sum()

    @staticmethod
    def derivatives(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, eps: float,
                    need_target: bool) -> tuple[Tensor, Tensor | None]:
        """``(dl/dz, dl/dt)`` per position, shaped like ``input`` (``dl/dt`` for probabilities only)."""
        c = _class_dim(input)
        logp = torch.log_softmax(_acc(input), dim=c)                 # (N, C, *)
        p = logp.exp()                                               # (N, C, *), softmax from log-softmax
        q = CrossEntropyFunction.target_distribution(input, target, weight, ignore_index, eps)  # (N, C, *)
        dl_dz = p * q.sum(c, keepdim=True) - q                       # (N, C, *): fused softmax - target
        dl_dt = None
        if need_target:
            w = 1.0 if weight is None else _per_class(_acc(weight), input)
            dl_dt = -(1 - eps) * w * logp                            # (N, C, *)
        return dl_dz, dl_dt

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        input, target, weight = ctx.saved_tensors
        dinput = dtarget = None
        c, need_t = _class_dim(input), ctx.needs_input_grad[1]
        dl_dz, dl_dt = CrossEntropyFunction.derivatives(input, target, weight, ctx.ignore_index,
                                                        ctx.label_smoothing, need_t)   # (N, C, *)
        count = CrossEntropyFunction.mean_count(input, target, weight, ctx.ignore_index)
        loss_shape = dl_dz.sum(c).shape                              # (N, *)
        g = _reduce_grad(_acc(grad_out), loss_shape, ctx.reduction, count)   # (N, *)
        if not target.is_floating_point():                           # ignored positions pass nothing,
            g = torch.where(target != ctx.ignore_index, g, 0.0)      # even when all are (count 0)
        g = g.unsqueeze(c)                                           # (N, 1, *)
        if ctx.needs_input_grad[0]:
            dinput = (dl_dz * g).to(input.dtype)                     # (N, C, *)
        if need_t:
            dtarget = (dl_dt * g).to(target.dtype)                   # (N, C, *)
        return dinput, dtarget, None, None, None, None

    @staticmethod
    def jvp(ctx, dinput, dtarget, *_):
        input, target, weight = ctx.saved_tensors
        c = _class_dim(input)
        need_t = dtarget is not None and target.is_floating_point()
        dl_dz, dl_dt = CrossEntropyFunction.derivatives(input, target, weight, ctx.ignore_index,
                                                        ctx.label_smoothing, need_t)   # (N, C, *)
        tangent = torch.zeros_like(dl_dz)                            # (N, C, *)
        if dinput is not None:
            tangent = tangent + dl_dz * _acc(dinput)
        if need_t:
            tangent = tangent + dl_dt * _acc(dtarget)
        count = CrossEntropyFunction.mean_count(input, target, weight, ctx.ignore_index)
        return _reduce(tangent.sum(c), ctx.reduction, count).to(input.dtype)   # () or (N, *)


_INDEX_DTYPES = (torch.int64, torch.uint8)


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    r"""Softmax cross-entropy :math:`-\sum_c \tilde q_c \log \operatorname{softmax}(z)_c`, as :func:`torch.nn.functional.cross_entropy`.

    Computed by :class:`CrossEntropyFunction`, whose backward is the fused
    :math:`\operatorname{softmax}(z) \sum \tilde q - \tilde q` (``softmax - one-hot``
    without weights). Under ``torch.autocast`` it computes and returns float32, as torch.

    Args:
        input: unnormalized scores of shape ``(C,)``, ``(N, C)`` or ``(N, C, d1, ...)``.
        target: class indices (an integer tensor) of shape ``()``, ``(N,)`` or
            ``(N, d1, ...)`` with values in ``[0, C)`` or ``ignore_index``; or class
            probabilities (floating point) of ``input``'s shape, which get a gradient.
        weight: optional ``(C,)`` class weights :math:`w` (a constant: no gradient).
        ignore_index: class index whose positions contribute no loss and no gradient and are
            left out of the ``"mean"`` divisor (class-index targets only).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``. ``"mean"`` divides by the sum of
            the target classes' weights over the positions not ignored (their number without
            ``weight``) for class indices, and by the number of positions for probabilities.
        label_smoothing: :math:`\varepsilon \in [0, 1]`; the target becomes
            :math:`(1-\varepsilon)\, t + \varepsilon / C`.

    Returns:
        A scalar, or the per-position loss of shape ``()``, ``(N,)`` or ``(N, d1, ...)`` for ``"none"``.

    Shape:
        - input: :math:`(C)`, :math:`(N, C)` or :math:`(N, C, d_1, \dots)`.
        - target: :math:`()`, :math:`(N)` or :math:`(N, d_1, \dots)` (indices), or input's shape (probabilities).
        - output: scalar, or target's (index) shape for ``"none"``.

    Examples:
        >>> cross_entropy(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0])).item() < 0.25
        True
    """
    where = "cross_entropy"
    check_tensor(input, where, "input", min_ndim=1)
    check_tensor(target, where, "target", floating=False)
    check_same_device(where, target, input, "target")
    _check_reduction(where, reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{where}: expected label_smoothing in [0, 1], got {label_smoothing}")
    C = input.shape[_class_dim(input)]
    if weight is not None:
        check_tensor(weight, where, "weight", ndim=1, size={0: C})
        check_same_device(where, weight, input, "weight")
        _check_constant(where, "weight", weight)
        weight = weight.to(input.dtype)
    if target.is_floating_point():
        if target.shape != input.shape:
            raise ValueError(f"{where}: expected probability target of the input's shape {tuple(input.shape)}, "
                             f"got {tuple(target.shape)}")
        input, target = _promote(input, target)
    else:
        _check_class_targets(where, input, target, ignore_index)
        if target.dtype not in _INDEX_DTYPES:
            target = target.long()
    return _apply(_cross_entropy_apply, input, target, weight, int(ignore_index),
                          reduction, float(label_smoothing))


# The Function as torch.compile applies it (see _apply and layers.composable.compilable_apply).
_cross_entropy_apply = compilable_apply(CrossEntropyFunction)


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy, as :class:`torch.nn.CrossEntropyLoss`; see :func:`cross_entropy`.

    Args:
        weight: optional ``(C,)`` class weights, kept as a buffer (``None`` if not given), as torch.
        ignore_index: class index to skip.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        label_smoothing: :math:`\\varepsilon \\in [0, 1]`.

    Examples:
        >>> CrossEntropyLoss(label_smoothing=0.1)(torch.randn(4, 3), torch.tensor([0, 1, 2, 0])).shape
        torch.Size([])
    """

    def __init__(self, weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        _check_reduction("CrossEntropyLoss", reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: expected label_smoothing in [0, 1], got {label_smoothing}")
        self.register_buffer("weight", weight)
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}")
