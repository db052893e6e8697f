"""Loss functions with hand-written, numerically stable backward passes.

Taught in the chapter "Losses" (``book/losses.ipynb``).

- :func:`mse_loss` / :class:`MSELoss`: mean squared error.
- :func:`cross_entropy` / :class:`CrossEntropyLoss`: softmax cross-entropy on
  class indices, with label smoothing and ``ignore_index``; its backward is the
  fused :math:`\\operatorname{softmax}(z) - \\text{one-hot}`, computed from the
  log-softmax so that large logits give no NaN.
- :func:`focal_loss` / :class:`FocalLoss`: the binary, sigmoid focal loss of
  RetinaNet (the same values as torchvision's ``sigmoid_focal_loss``).
- :func:`softmax_focal_loss` / :class:`SoftmaxFocalLoss`: its multi-class
  softmax form, :math:`-\\alpha_y (1 - p_y)^\\gamma \\log p_y`.

Every backward is written with differentiable torch ops on the saved inputs, so
the losses are twice differentiable (``gradgradcheck`` passes) away from the
points where the math itself is not (``gamma < 1`` at :math:`p_t = 1`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._validation import check_same_device, check_same_dtype, check_tensor

__all__ = [
    "MSELossFunction", "CrossEntropyFunction", "FocalLossFunction", "SoftmaxFocalLossFunction",
    "mse_loss", "cross_entropy", "focal_loss", "softmax_focal_loss",
    "MSELoss", "CrossEntropyLoss", "FocalLoss", "SoftmaxFocalLoss",
]

_REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(where: str, reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{where}: expected reduction 'none', 'mean' or 'sum', got {reduction!r}")


def _reduce(loss: Tensor, reduction: str, count: Tensor | float | None = None) -> Tensor:
    """Reduce a per-element loss; ``count`` is the divisor of ``"mean"`` (``loss.numel()`` if ``None``)."""
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    return total / (loss.numel() if count is None else count)


def _reduce_grad(grad_out: Tensor, shape: torch.Size, reduction: str, count=None) -> Tensor:
    """Gradient of :func:`_reduce` w.r.t. the per-element loss: ``grad_out`` broadcast to ``shape``."""
    if reduction == "none":
        return grad_out
    n = 1
    for s in shape:
        n *= s
    scale = 1 if reduction == "sum" else (n if count is None else count)
    return (grad_out / scale).expand(shape)


# ------------------------------------------------------------------------------ MSE
class MSELossFunction(torch.autograd.Function):
    r"""Squared error :math:`\ell_i = (x_i - t_i)^2`, reduced.

    Backward: :math:`\partial x = 2 (x - t)\, g_i`, :math:`\partial t = -\partial x`, where
    :math:`g_i` is the upstream gradient of element :math:`i` (divided by :math:`N` for ``"mean"``).
    Saves the input and the target.
    """

    @staticmethod
    def forward(x: Tensor, target: Tensor, reduction: str) -> Tensor:
        return _reduce((x - target) ** 2, reduction)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, target, reduction = inputs
        ctx.save_for_backward(x, target)
        ctx.reduction = reduction

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, target = ctx.saved_tensors
        g = _reduce_grad(grad_out, x.shape, ctx.reduction)          # (*) upstream per element
        dx = dt = None
        if ctx.needs_input_grad[0]:
            dx = 2 * (x - target) * g                               # (*)
            if ctx.needs_input_grad[1]:
                dt = -dx                                            # reuse: d/dt = -d/dx
        elif ctx.needs_input_grad[1]:
            dt = 2 * (target - x) * g                               # (*)
        return dx, dt, None


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    r"""Mean squared error :math:`\frac1N \sum_i (x_i - t_i)^2`, as :func:`torch.nn.functional.mse_loss`.

    Args:
        input: predictions, any shape.
        target: same shape as ``input`` (it receives a gradient too).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per element).

    Returns:
        A scalar, or a tensor of ``input``'s shape for ``"none"``.

    Shape:
        - input, target: :math:`(*)`; output: scalar, or :math:`(*)` for ``"none"``.

    Examples:
        >>> mse_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
        tensor(2.5000)
    """
    where = "mse_loss"
    check_tensor(input, where, "input")
    check_tensor(target, where, "target", ndim=input.dim())
    if target.shape != input.shape:
        raise ValueError(f"{where}: expected target of shape {tuple(input.shape)} (the input's), "
                         f"got {tuple(target.shape)}")
    check_same_dtype(where, target, input, "target")
    check_same_device(where, target, input, "target")
    _check_reduction(where, reduction)
    return MSELossFunction.apply(input, target, reduction)


# ---------------------------------------------------------------------- cross-entropy
def _class_last(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``(N, C, *d)`` logits and ``(N, *d)`` targets as ``(M, C)`` and ``(M,)``, M = N * prod(d)."""
    if logits.dim() == 1:
        return logits.unsqueeze(0), target.reshape(1)               # (C,) -> (1, C); () -> (1,)
    C = logits.shape[1]
    z = logits.movedim(1, -1).reshape(-1, C)                        # (N, *d, C) -> (M, C)
    return z, target.reshape(-1)                                    # (M,)


class CrossEntropyFunction(torch.autograd.Function):
    r"""Softmax cross-entropy on class indices, with label smoothing and ``ignore_index``.

    With :math:`\log p = \operatorname{log\_softmax}(z)`, smoothing :math:`\varepsilon` over
    :math:`C` classes and the smoothed target :math:`q = (1-\varepsilon)\,\text{one-hot}(y) + \varepsilon / C`:

    .. math::

        \ell = -\textstyle\sum_c q_c \log p_c, \qquad
        \frac{\partial \ell}{\partial z} = p - q .

    The gradient is the fused "softmax minus (smoothed) one-hot": it never
    divides by :math:`p` and never takes :math:`\log 0`, so it is finite for any
    finite logits. ``p`` is computed as ``exp(log_softmax(z))``. Saves the logits
    and the targets (not the ``(N, C)`` probabilities: backward recomputes them,
    which keeps the backward differentiable). Ignored rows get zero loss and
    zero gradient; ``"mean"`` divides by the number of rows not ignored, as PyTorch does.
    """

    @staticmethod
    def forward(logits: Tensor, target: Tensor, reduction: str, label_smoothing: float,
                ignore_index: int) -> Tensor:
        z, y = _class_last(logits, target)                          # (M, C), (M,)
        keep = y != ignore_index                                    # (M,)
        logp = torch.log_softmax(z, dim=-1)                         # (M, C), stable
        nll = -logp.gather(1, torch.where(keep, y, 0).unsqueeze(1)).squeeze(1)   # (M,)
        loss = (1 - label_smoothing) * nll                          # (M,)
        if label_smoothing > 0:                                     # (skipped when 0: 0 * -inf would be NaN)
            loss = loss - label_smoothing * logp.mean(dim=1)
        loss = torch.where(keep, loss, torch.zeros_like(loss))
        if reduction == "none":
            return loss.reshape(target.shape)                       # (N, *d)
        return _reduce(loss, reduction, keep.sum())

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target, reduction, label_smoothing, ignore_index = inputs
        ctx.save_for_backward(logits, target)
        ctx.reduction, ctx.label_smoothing, ctx.ignore_index = reduction, label_smoothing, ignore_index

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, target = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        z, y = _class_last(logits, target)                          # (M, C), (M,)
        M, C = z.shape
        keep = y != ctx.ignore_index                                # (M,)
        p = torch.log_softmax(z, dim=-1).exp()                      # (M, C), softmax from log-softmax
        eps = ctx.label_smoothing
        q = torch.zeros_like(p).scatter_(1, torch.where(keep, y, 0).unsqueeze(1), 1 - eps) + eps / C  # (M, C)
        count = keep.sum() if ctx.reduction == "mean" else None
        g = grad_out.reshape(-1) if ctx.reduction == "none" else _reduce_grad(grad_out, torch.Size([M]), ctx.reduction, count)
        g = torch.where(keep, g, torch.zeros_like(g))               # (M,), ignored rows pass nothing
        dz = (p - q) * g.unsqueeze(1)                               # (M, C): fused softmax - one-hot
        if logits.dim() == 1:
            return dz.reshape(logits.shape), None, None, None, None
        moved = logits.movedim(1, -1).shape                         # (N, *d, C)
        return dz.reshape(moved).movedim(-1, 1), None, None, None, None   # (N, C, *d)


def _check_class_targets(where: str, logits: Tensor, target: Tensor, ignore_index: int | None) -> None:
    check_tensor(logits, where, "logits", min_ndim=1)
    check_tensor(target, where, "target", floating=False)
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{where}: expected target to hold class indices (an integer tensor), got {target.dtype}")
    expected = () if logits.dim() == 1 else (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"{where}: expected target of shape {expected} for logits of shape "
                         f"{tuple(logits.shape)} (classes in dimension 1), got {tuple(target.shape)}")
    check_same_device(where, target, logits, "target")
    C = logits.shape[0] if logits.dim() == 1 else logits.shape[1]
    valid = (target >= 0) & (target < C)
    if ignore_index is not None:
        valid |= target == ignore_index
    if not bool(valid.all()):
        bad = target[~valid][0].item()
        raise ValueError(f"{where}: expected target class indices in [0, {C - 1}]"
                         f"{'' if ignore_index is None else f' or ignore_index={ignore_index}'}, got {bad}")


def cross_entropy(logits: Tensor, target: Tensor, reduction: str = "mean", label_smoothing: float = 0.0,
                  ignore_index: int = -100) -> Tensor:
    r"""Softmax cross-entropy :math:`-\log \operatorname{softmax}(z)_y`, as :func:`torch.nn.functional.cross_entropy`.

    Computed by :class:`CrossEntropyFunction`, whose backward is the fused
    :math:`\operatorname{softmax}(z) - \text{one-hot}(y)`. Class-index targets
    only (no probability targets, no class weights).

    Args:
        logits: ``(N, C)``, ``(C,)`` or ``(N, C, d1, ...)``: unnormalized scores.
        target: class indices in ``[0, C)``, shape ``(N,)``, ``()`` or ``(N, d1, ...)``;
            entries equal to ``ignore_index`` are skipped.
        reduction: ``"mean"`` (over the rows not ignored), ``"sum"`` or ``"none"``.
        label_smoothing: :math:`\varepsilon \in [0, 1]`; the target becomes
            :math:`(1-\varepsilon)\,\text{one-hot} + \varepsilon / C`.
        ignore_index: target value whose rows contribute no loss and no gradient.

    Returns:
        A scalar, or the per-row loss of ``target``'s shape for ``"none"``.

    Shape:
        - logits: :math:`(N, C)` or :math:`(N, C, d_1, \dots)`; target: :math:`(N)` or :math:`(N, d_1, \dots)`.

    Examples:
        >>> cross_entropy(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0])).item() < 0.25
        True
    """
    where = "cross_entropy"
    _check_class_targets(where, logits, target, ignore_index)
    _check_reduction(where, reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{where}: expected label_smoothing in [0, 1], got {label_smoothing}")
    return CrossEntropyFunction.apply(logits, target.long(), reduction, float(label_smoothing), ignore_index)


# ------------------------------------------------------------------- binary focal loss
def _sigmoid_parts(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(p, u, ce)``: :math:`p = \\sigma(x)`, :math:`u = 1 - p_t` and the BCE, all without cancellation."""
    p = torch.sigmoid(x)
    one_minus_p = torch.sigmoid(-x)                                 # 1 - p, exact for large x
    u = p * (1 - t) + one_minus_p * t                               # 1 - p_t
    xt = torch.where(t == 0, torch.zeros_like(x), x * t)            # x t, and 0 (not NaN) for x = inf, t = 0
    ce = x.clamp_min(0) - xt + torch.log1p(torch.exp(-x.abs()))     # BCE with logits, no log(0)
    return p, u, ce


def _alpha_t(alpha: float, t: Tensor) -> Tensor | float:
    return alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else 1.0


class FocalLossFunction(torch.autograd.Function):
    r"""Binary focal loss :math:`\ell = \alpha_t (1 - p_t)^\gamma \operatorname{BCE}(x, t)` (RetinaNet).

    With :math:`p = \sigma(x)`, :math:`u = 1 - p_t = p(1-t) + (1-p)t` and
    :math:`\operatorname{BCE} = \max(x, 0) - x t + \log(1 + e^{-|x|})`:

    .. math::

        \frac{\partial \ell}{\partial x} = \alpha_t \Big[ u^\gamma (p - t)
            + \gamma\, u^\gamma \tfrac{p(1-p)}{u} (1 - 2t) \operatorname{BCE} \Big] .

    The second term is written with :math:`u^\gamma \cdot p(1-p)/u` rather than
    :math:`u^{\gamma - 1}`, so it stays finite for ``gamma < 1`` when
    :math:`u \to 0` (for 0/1 targets :math:`p(1-p)/u` is :math:`p` or :math:`1-p`);
    :math:`1 - p` is computed as :math:`\sigma(-x)`, and no logarithm of a
    probability is taken, so large :math:`|x|` give no NaN. Saves the logits and
    the targets; the targets receive no gradient.
    """

    @staticmethod
    def forward(x: Tensor, t: Tensor, alpha: float, gamma: float, reduction: str) -> Tensor:
        _, u, ce = _sigmoid_parts(x, t)
        return _reduce(_alpha_t(alpha, t) * u.pow(gamma) * ce, reduction)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, t, alpha, gamma, reduction = inputs
        ctx.save_for_backward(x, t)
        ctx.alpha, ctx.gamma, ctx.reduction = alpha, gamma, reduction

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, t = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        gamma = ctx.gamma
        p, u, ce = _sigmoid_parts(x, t)                              # (*) each
        u_gamma = u.pow(gamma)                                       # (*)
        dx = u_gamma * (p - t)                                       # d/dx of BCE, focal-weighted
        if gamma != 0:
            safe_u = torch.where(u > 0, u, torch.ones_like(u))
            ratio = torch.where(u > 0, p * torch.sigmoid(-x) / safe_u, torch.zeros_like(u))   # p(1-p)/u
            dx = dx + gamma * u_gamma * ratio * (1 - 2 * t) * ce
        g = _reduce_grad(grad_out, x.shape, ctx.reduction)           # (*)
        return _alpha_t(ctx.alpha, t) * dx * g, None, None, None, None


def _check_focal(where: str, logits: Tensor, targets: Tensor, gamma: float, reduction: str) -> None:
    check_tensor(logits, where, "logits")
    check_tensor(targets, where, "targets")
    if targets.shape != logits.shape:
        raise ValueError(f"{where}: expected targets of shape {tuple(logits.shape)} (the logits'), "
                         f"got {tuple(targets.shape)}")
    check_same_dtype(where, targets, logits, "targets")
    check_same_device(where, targets, logits, "targets")
    if gamma < 0:
        raise ValueError(f"{where}: expected gamma >= 0, got {gamma}")
    _check_reduction(where, reduction)


def focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0,
               reduction: str = "mean") -> Tensor:
    r"""Binary focal loss :math:`-\alpha_t (1 - p_t)^\gamma \log p_t` on sigmoid logits (RetinaNet).

    The same values as torchvision's ``sigmoid_focal_loss``: with
    :math:`p = \sigma(x)`, :math:`p_t = p t + (1-p)(1-t)` and
    :math:`\alpha_t = \alpha t + (1 - \alpha)(1 - t)` (or 1 when ``alpha < 0``).
    ``gamma = 0`` and ``alpha = -1`` give binary cross-entropy with logits.
    Computed by :class:`FocalLossFunction`, stable for large :math:`|x|`.

    Args:
        logits: raw scores :math:`x`, any shape.
        targets: same shape, 0/1 labels (soft labels in [0, 1] also work); no gradient.
        alpha: weight of the positive class in [0, 1], or negative for no weighting.
        gamma: focusing exponent :math:`\gamma \ge 0`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        A scalar, or the per-element loss for ``"none"``.

    Shape:
        - logits, targets: :math:`(*)`; output: scalar, or :math:`(*)` for ``"none"``.

    Examples:
        >>> focal_loss(torch.tensor([3.0, -3.0]), torch.tensor([1.0, 0.0]), reduction="none").shape
        torch.Size([2])
    """
    _check_focal("focal_loss", logits, targets, gamma, reduction)
    return FocalLossFunction.apply(logits, targets, float(alpha), float(gamma), reduction)


# --------------------------------------------------------------- softmax focal loss
class SoftmaxFocalLossFunction(torch.autograd.Function):
    r"""Multi-class focal loss :math:`\ell = -\alpha_y (1 - p_y)^\gamma \log p_y`, :math:`p = \operatorname{softmax}(z)`.

    With :math:`u = 1 - p_y` and :math:`\log p_y` from the log-softmax:

    .. math::

        \frac{\partial \ell}{\partial z_c} = \alpha_y\, (p_c - [c = y])\,
            u^\gamma \Big(1 - \gamma\, p_y \frac{\log p_y}{u}\Big) .

    :math:`u` is computed as ``-expm1(log p_y)`` (accurate when :math:`p_y \to 1`)
    and :math:`\log p_y / u \to -1` there, so the gradient stays finite for
    ``gamma < 1``. ``gamma = 0`` with no ``alpha`` is :func:`cross_entropy`'s
    gradient :math:`p - \text{one-hot}`. Saves the logits and the targets.
    """

    @staticmethod
    def forward(logits: Tensor, target: Tensor, alpha: Tensor | None, gamma: float, reduction: str) -> Tensor:
        logp_y = torch.log_softmax(logits, dim=-1).gather(1, target.unsqueeze(1)).squeeze(1)   # (N,)
        u = -torch.expm1(logp_y)                                     # (N,) 1 - p_y
        loss = -u.pow(gamma) * logp_y
        if alpha is not None:
            loss = alpha[target] * loss
        return _reduce(loss, reduction)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target, alpha, gamma, reduction = inputs
        ctx.save_for_backward(logits, target, alpha)
        ctx.gamma, ctx.reduction = gamma, reduction

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, target, alpha = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        logp = torch.log_softmax(logits, dim=-1)                     # (N, C)
        p = logp.exp()                                               # (N, C)
        logp_y = logp.gather(1, target.unsqueeze(1)).squeeze(1)      # (N,)
        u = -torch.expm1(logp_y)                                     # (N,) 1 - p_y, accurate near p_y = 1
        factor = u.pow(ctx.gamma)                                    # (N,)
        if ctx.gamma != 0:
            safe_u = torch.where(u > 0, u, torch.ones_like(u))
            ratio = torch.where(u > 0, logp_y / safe_u, -torch.ones_like(u))   # log p_y / u -> -1
            factor = factor * (1 - ctx.gamma * logp_y.exp() * ratio)
        if alpha is not None:
            factor = factor * alpha[target]
        g = _reduce_grad(grad_out, target.shape, ctx.reduction)      # (N,)
        one_hot = torch.zeros_like(p).scatter_(1, target.unsqueeze(1), 1.0)     # (N, C)
        return (p - one_hot) * (factor * g).unsqueeze(1), None, None, None, None


def softmax_focal_loss(logits: Tensor, target: Tensor, alpha: Tensor | Sequence[float] | None = None,
                       gamma: float = 2.0, reduction: str = "mean") -> Tensor:
    r"""Multi-class focal loss :math:`-\alpha_y (1 - p_y)^\gamma \log p_y` with :math:`p = \operatorname{softmax}(z)`.

    Computed by :class:`SoftmaxFocalLossFunction`. With ``gamma = 0`` and
    ``alpha = None`` it equals :func:`cross_entropy`.

    Args:
        logits: ``(N, C)`` unnormalized scores.
        target: ``(N,)`` class indices in ``[0, C)``.
        alpha: ``None`` or ``C`` per-class weights :math:`\alpha_c` (no gradient).
        gamma: focusing exponent :math:`\gamma \ge 0`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        A scalar, or the ``(N,)`` per-row loss for ``"none"``.

    Shape:
        - logits: :math:`(N, C)`; target: :math:`(N)`; output: scalar or :math:`(N)`.

    Examples:
        >>> softmax_focal_loss(torch.randn(4, 3), torch.tensor([0, 2, 1, 0])).shape
        torch.Size([])
    """
    where = "softmax_focal_loss"
    check_tensor(logits, where, "logits", ndim=2)
    _check_class_targets(where, logits, target, None)
    _check_reduction(where, reduction)
    if gamma < 0:
        raise ValueError(f"{where}: expected gamma >= 0, got {gamma}")
    if alpha is not None:
        alpha = torch.as_tensor(alpha, dtype=logits.dtype, device=logits.device).detach()
        if alpha.shape != (logits.shape[1],):
            raise ValueError(f"{where}: expected alpha with one weight per class ({logits.shape[1]},), "
                             f"got shape {tuple(alpha.shape)}")
    return SoftmaxFocalLossFunction.apply(logits, target.long(), alpha, float(gamma), reduction)


# ------------------------------------------------------------------------- modules
class MSELoss(nn.Module):
    """Mean squared error; see :func:`mse_loss`.

    Args:
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Examples:
        >>> MSELoss()(torch.zeros(3), torch.ones(3))
        tensor(1.)
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        _check_reduction("MSELoss", reduction)
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return mse_loss(input, target, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy on class indices; see :func:`cross_entropy`.

    Args:
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        label_smoothing: :math:`\\varepsilon \\in [0, 1]`.
        ignore_index: target value to skip.

    Examples:
        >>> CrossEntropyLoss(label_smoothing=0.1)(torch.randn(4, 3), torch.tensor([0, 1, 2, 0])).shape
        torch.Size([])
    """

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0, ignore_index: int = -100) -> None:
        super().__init__()
        _check_reduction("CrossEntropyLoss", reduction)
        self.reduction, self.label_smoothing, self.ignore_index = reduction, label_smoothing, ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(logits, target, self.reduction, self.label_smoothing, self.ignore_index)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}, ignore_index={self.ignore_index}"


class FocalLoss(nn.Module):
    """Binary sigmoid focal loss; see :func:`focal_loss`.

    Args:
        alpha: weight of the positive class, or negative for none.
        gamma: focusing exponent.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Examples:
        >>> FocalLoss(gamma=2.0)(torch.randn(8), torch.ones(8)).shape
        torch.Size([])
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "mean") -> None:
        super().__init__()
        _check_reduction("FocalLoss", reduction)
        self.alpha, self.gamma, self.reduction = alpha, gamma, reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return focal_loss(logits, targets, self.alpha, self.gamma, self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"


class SoftmaxFocalLoss(nn.Module):
    """Multi-class softmax focal loss; see :func:`softmax_focal_loss`.

    Args:
        alpha: ``None`` or one weight per class (kept as a buffer).
        gamma: focusing exponent.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Examples:
        >>> SoftmaxFocalLoss(gamma=1.0)(torch.randn(4, 3), torch.tensor([0, 1, 2, 0])).shape
        torch.Size([])
    """

    def __init__(self, alpha: Tensor | Sequence[float] | None = None, gamma: float = 2.0,
                 reduction: str = "mean") -> None:
        super().__init__()
        _check_reduction("SoftmaxFocalLoss", reduction)
        self.register_buffer("alpha", None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32))
        self.gamma, self.reduction = gamma, reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return softmax_focal_loss(logits, target, self.alpha, self.gamma, self.reduction)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, reduction={self.reduction!r}"
