"""Focal losses: the binary sigmoid :func:`focal_loss` of RetinaNet and its softmax form.

Part of :mod:`layers.losses`, taught in the chapter "Losses" (``book/losses.ipynb``).

- :class:`FocalLossFunction`, :func:`focal_loss`, :class:`FocalLoss`: as torchvision's
  ``sigmoid_focal_loss`` (``gamma=0, alpha=-1`` is
  :func:`torch.nn.functional.binary_cross_entropy_with_logits`).
- :class:`SoftmaxFocalLossFunction`, :func:`softmax_focal_loss`, :class:`SoftmaxFocalLoss`:
  :math:`-\\alpha_y (1 - p_y)^\\gamma \\log p_y` over a softmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..composable import compilable_apply
from .._validation import check_same_device, check_tensor
from ._common import (_acc, _apply, _check_class_targets, _check_constant, _check_reduction, _of_class,
                      _promote, _reduce, _reduce_grad)

__all__ = ["FocalLossFunction", "focal_loss", "FocalLoss",
           "SoftmaxFocalLossFunction", "softmax_focal_loss", "SoftmaxFocalLoss"]


# ------------------------------------------------------------------- binary focal loss
def _softplus(x: Tensor) -> Tensor:
    r""":math:`\log(1 + e^x) = -\log(1 - \sigma(x))`, stable for any :math:`x` (also its derivative)."""
    return torch.logaddexp(x, torch.zeros_like(x))


def _times(a: Tensor | float, b: Tensor) -> Tensor:
    """``a * b`` with ``0 * inf = 0`` (a weight of zero on an infinite log-loss adds nothing)."""
    return torch.where(torch.as_tensor(a) == 0, 0.0, a * b)


class FocalLossFunction(torch.autograd.Function):
    r"""Binary focal loss :math:`\ell = w\, \alpha_t\, u^\gamma\, \mathrm{ce}` (RetinaNet), per element.

    With :math:`p = \sigma(x)`, targets :math:`t \in [0, 1]`, :math:`u = 1 - p_t = p(1-t) + (1-p)t`,
    :math:`\alpha_t = \alpha t + (1-\alpha)(1-t)` (1 when :math:`\alpha < 0`), the element
    weight :math:`w` and positive weight :math:`\beta` (``weight``, ``pos_weight``; 1 if ``None``):

    .. math::

        \mathrm{ce} = \beta\, t\, \operatorname{softplus}(-x) + (1-t) \operatorname{softplus}(x),

    the binary cross-entropy with logits (:math:`-\beta t \log p - (1-t)\log(1-p)`). Local derivatives:

    .. math::

        \frac{\partial \ell}{\partial x} &= w\, \alpha_t\, u^\gamma \Big[
            \big((1-t)\, p - \beta t (1-p)\big) + \gamma\, (1-2t)\, p (1-p)\, \tfrac{\mathrm{ce}}{u} \Big], \\
        \frac{\partial \ell}{\partial t} &= w\, u^\gamma \Big[ (2\alpha - 1)\, \mathrm{ce}
            + \alpha_t \Big( \big(\beta \operatorname{softplus}(-x) - \operatorname{softplus}(x)\big)
            + \gamma\, (1-2p)\, \tfrac{\mathrm{ce}}{u} \Big) \Big]

    (the :math:`2\alpha - 1` term only when :math:`\alpha \ge 0`). The :math:`u^{\gamma-1}` of the
    chain rule is written :math:`u^\gamma \cdot \mathrm{ce}/u`: for 0/1 targets
    :math:`\mathrm{ce}/u \to \beta t + (1-t)` as :math:`u \to 0`, so the gradient stays finite for
    ``gamma < 1``. :math:`1 - p` is :math:`\sigma(-x)` and no logarithm of a probability is
    taken, so large :math:`|x|` give no NaN. Saves the logits, targets and weights.
    float16/bfloat16 are computed in float32.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, target: Tensor, weight: Tensor | None, pos_weight: Tensor | None,
                alpha: float, gamma: float, reduction: str) -> Tensor:
        x, t = _acc(input), _acc(target)                             # (*), (*)
        beta = 1.0 if pos_weight is None else _acc(pos_weight)       # (*) broadcast, or 1
        u = torch.sigmoid(x) * (1 - t) + torch.sigmoid(-x) * t      # (*) 1 - p_t, no cancellation
        ce = _times(beta * t, _softplus(-x)) + _times(1 - t, _softplus(x))   # (*) BCE with logits
        alpha_t = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else 1.0  # (*)
        loss = alpha_t * u.pow(gamma) * ce                           # (*)
        if weight is not None:
            loss = loss * _acc(weight)
        return _reduce(loss, reduction).to(input.dtype)              # () or (*)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, pos_weight, alpha, gamma, reduction = inputs
        ctx.save_for_backward(input, target, weight, pos_weight)
        ctx.save_for_forward(input, target, weight, pos_weight)
        ctx.alpha, ctx.gamma, ctx.reduction = alpha, gamma, reduction

    @staticmethod
    def derivatives(input: Tensor, target: Tensor, weight: Tensor | None, pos_weight: Tensor | None,
                    alpha: float, gamma: float, need_input: bool, need_target: bool):
        """``(dl/dx, dl/dt)`` per element (``None`` where not needed), in the accumulation dtype."""
        x, t = _acc(input), _acc(target)                             # (*), (*)
        beta = 1.0 if pos_weight is None else _acc(pos_weight)       # (*) broadcast, or 1
        p, one_minus_p = torch.sigmoid(x), torch.sigmoid(-x)        # (*), (*): 1 - p exact for large x
        u = p * (1 - t) + one_minus_p * t                            # (*) 1 - p_t
        sp_neg, sp_pos = _softplus(-x), _softplus(x)                 # (*) -log p, -log(1 - p)
        ce = _times(beta * t, sp_neg) + _times(1 - t, sp_pos)        # (*)
        safe_u = torch.where(u > 0, u, 1.0)
        ce_over_u = torch.where(u > 0, ce / safe_u, beta * t + (1 - t))      # (*) ce / u, its limit at u = 0
        alpha_t = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else 1.0  # (*)
        w_u = u.pow(gamma) if weight is None else _acc(weight) * u.pow(gamma)   # (*) w u^gamma
        dl_dx = dl_dt = None
        if need_input:
            dce_dx = (1 - t) * p - beta * t * one_minus_p            # (*)
            dl_dx = w_u * alpha_t * (dce_dx + gamma * (1 - 2 * t) * p * one_minus_p * ce_over_u)   # (*)
        if need_target:
            dce_dt = _times(beta, sp_neg) - sp_pos                   # (*)
            dl_dt = w_u * alpha_t * (dce_dt + gamma * (1 - 2 * p) * ce_over_u)  # (*)
            if alpha >= 0:
                dl_dt = dl_dt + w_u * (2 * alpha - 1) * ce           # (*) d alpha_t / dt
        return dl_dx, dl_dt

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        input, target, weight, pos_weight = ctx.saved_tensors
        dinput = dtarget = None
        need_x, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dl_dx, dl_dt = FocalLossFunction.derivatives(input, target, weight, pos_weight, ctx.alpha, ctx.gamma,
                                                     need_x, need_t)   # (*), (*)
        g = _reduce_grad(_acc(grad_out), input.shape, ctx.reduction)  # (*) upstream per element
        if need_x:
            dinput = (dl_dx * g).to(input.dtype)                     # (*)
        if need_t:
            dtarget = (dl_dt * g).to(target.dtype)                   # (*)
        return dinput, dtarget, None, None, None, None, None

    @staticmethod
    def jvp(ctx, dinput, dtarget, *_):
        input, target, weight, pos_weight = ctx.saved_tensors
        dl_dx, dl_dt = FocalLossFunction.derivatives(input, target, weight, pos_weight, ctx.alpha, ctx.gamma,
                                                     dinput is not None, dtarget is not None)
        tangent = torch.zeros_like(_acc(input))                      # (*)
        if dinput is not None:
            tangent = tangent + dl_dx * _acc(dinput)
        if dtarget is not None:
            tangent = tangent + dl_dt * _acc(dtarget)
        return _reduce(tangent, ctx.reduction).to(input.dtype)


def _check_focal(where: str, input: Tensor, target: Tensor, gamma: float, reduction: str) -> None:
    check_tensor(input, where, "input")
    check_tensor(target, where, "target")
    if target.shape != input.shape:
        raise ValueError(f"{where}: expected target of shape {tuple(input.shape)} (the input's), "
                         f"got {tuple(target.shape)}")
    check_same_device(where, target, input, "target")
    if gamma < 0:
        raise ValueError(f"{where}: expected gamma >= 0, got {gamma}")
    _check_reduction(where, reduction)


def _check_elementwise_weight(where: str, name: str, w: Tensor | None, input: Tensor, shape: tuple) -> Tensor | None:
    if w is None:
        return None
    check_tensor(w, where, name)
    check_same_device(where, w, input, name)
    _check_constant(where, name, w)
    try:
        ok = torch.broadcast_shapes(w.shape, shape) == shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"{where}: expected {name} broadcastable to {shape}, got shape {tuple(w.shape)}")
    return w.to(input.dtype)


def focal_loss(input: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0,
               reduction: str = "none", *, weight: Tensor | None = None,
               pos_weight: Tensor | None = None) -> Tensor:
    r"""Binary focal loss :math:`-\alpha_t (1 - p_t)^\gamma \log p_t` on sigmoid logits (RetinaNet).

    The same values and defaults as ``torchvision.ops.sigmoid_focal_loss`` (which names
    its first two arguments ``inputs``, ``targets``): with :math:`p = \sigma(x)`,
    :math:`p_t = p t + (1-p)(1-t)` and :math:`\alpha_t = \alpha t + (1 - \alpha)(1 - t)`
    (or 1 when ``alpha < 0``). ``gamma = 0`` and ``alpha = -1`` give
    :func:`torch.nn.functional.binary_cross_entropy_with_logits`, whose ``weight`` and
    ``pos_weight`` are accepted too. Computed by :class:`FocalLossFunction`, stable for
    large :math:`|x|`. Under ``torch.autocast`` it computes and returns float32.

    Args:
        input: raw scores :math:`x`, any shape.
        target: same shape, 0/1 labels or soft labels in [0, 1]; it receives a gradient.
        alpha: weight of the positive class in [0, 1], or negative for no weighting.
        gamma: focusing exponent :math:`\gamma \ge 0`.
        reduction: ``"none"`` (torchvision's default), ``"mean"`` or ``"sum"``.
        weight: optional element weights broadcastable to ``input`` (a constant).
        pos_weight: optional weight :math:`\beta` of the positive term, broadcastable to
            ``input`` (one per class in the last dimension; a constant).

    Returns:
        The per-element loss for ``"none"``, else a scalar.

    Shape:
        - input, target: :math:`(*)`; output: :math:`(*)` for ``"none"``, else scalar.

    Examples:
        >>> focal_loss(torch.tensor([3.0, -3.0]), torch.tensor([1.0, 0.0])).shape
        torch.Size([2])
    """
    where = "focal_loss"
    _check_focal(where, input, target, gamma, reduction)
    shape = tuple(input.shape)
    weight = _check_elementwise_weight(where, "weight", weight, input, shape)
    pos_weight = _check_elementwise_weight(where, "pos_weight", pos_weight, input, shape)
    input, target = _promote(input, target)
    return _apply(_focal_loss_apply, input, target, weight, pos_weight,
                          float(alpha), float(gamma), reduction)


# The Function as torch.compile applies it (see _apply and layers.composable.compilable_apply).
_focal_loss_apply = compilable_apply(FocalLossFunction)


class FocalLoss(nn.Module):
    """Binary sigmoid focal loss; see :func:`focal_loss`.

    Args:
        alpha: weight of the positive class, or negative for none.
        gamma: focusing exponent.
        reduction: ``"none"`` (torchvision's default), ``"mean"`` or ``"sum"``.

    Examples:
        >>> FocalLoss(gamma=2.0, reduction="mean")(torch.randn(8), torch.ones(8)).shape
        torch.Size([])
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none") -> None:
        super().__init__()
        _check_reduction("FocalLoss", reduction)
        self.alpha, self.gamma, self.reduction = alpha, gamma, reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return focal_loss(input, target, self.alpha, self.gamma, self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"


# --------------------------------------------------------------- softmax focal loss
class SoftmaxFocalLossFunction(torch.autograd.Function):
    r"""Multi-class focal loss :math:`\ell = -\alpha_y (1 - p_y)^\gamma \log p_y`, :math:`p = \operatorname{softmax}(z)`.

    With :math:`u = 1 - p_y` and :math:`\log p_y` from the log-softmax, the local derivative is

    .. math::

        \frac{\partial \ell}{\partial z_c} = \alpha_y\, (p_c - [c = y])\,
            u^\gamma \Big(1 - \gamma\, p_y \frac{\log p_y}{u}\Big) .

    :math:`u` is computed as ``-expm1(log p_y)`` (accurate when :math:`p_y \to 1`)
    and :math:`\log p_y / u \to -1` there, so the gradient stays finite for
    ``gamma < 1``. ``gamma = 0`` with no ``alpha`` is :func:`cross_entropy`'s
    gradient :math:`p - \text{one-hot}`. Saves the logits, the targets and ``alpha``.
    float16/bfloat16 are computed in float32.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, target: Tensor, alpha: Tensor | None, gamma: float, reduction: str) -> Tensor:
        logp_y = torch.log_softmax(_acc(input), dim=-1).gather(1, target.unsqueeze(1)).squeeze(1)   # (N,)
        u = -torch.expm1(logp_y)                                     # (N,) 1 - p_y
        loss = -u.pow(gamma) * logp_y                                # (N,)
        if alpha is not None:
            loss = _of_class(_acc(alpha), target) * loss
        return _reduce(loss, reduction).to(input.dtype)              # () or (N,)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, alpha, gamma, reduction = inputs
        ctx.save_for_backward(input, target, alpha)
        ctx.save_for_forward(input, target, alpha)
        ctx.gamma, ctx.reduction = gamma, reduction

    @staticmethod
    def derivatives(input: Tensor, target: Tensor, alpha: Tensor | None, gamma: float) -> Tensor:
        """``dl/dz`` per row, ``(N, C)``, in the accumulation dtype."""
        logp = torch.log_softmax(_acc(input), dim=-1)                # (N, C)
        p = logp.exp()                                               # (N, C)
        logp_y = logp.gather(1, target.unsqueeze(1)).squeeze(1)      # (N,)
        u = -torch.expm1(logp_y)                                     # (N,) 1 - p_y, accurate near p_y = 1
        factor = u.pow(gamma)                                        # (N,)
        if gamma != 0:
            safe_u = torch.where(u > 0, u, 1.0)
            ratio = torch.where(u > 0, logp_y / safe_u, -1.0)        # (N,) log p_y / u -> -1
            factor = factor * (1 - gamma * logp_y.exp() * ratio)
        if alpha is not None:
            factor = factor * _of_class(_acc(alpha), target)
        one_hot = torch.zeros_like(p).scatter(1, target.unsqueeze(1), 1.0)     # (N, C)
        return (p - one_hot) * factor.unsqueeze(1)                   # (N, C)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        input, target, alpha = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        dl_dz = SoftmaxFocalLossFunction.derivatives(input, target, alpha, ctx.gamma)   # (N, C)
        g = _reduce_grad(_acc(grad_out), target.shape, ctx.reduction)  # (N,)
        dinput = (dl_dz * g.unsqueeze(1)).to(input.dtype)            # (N, C)
        return dinput, None, None, None, None

    @staticmethod
    def jvp(ctx, dinput, *_):
        input, target, alpha = ctx.saved_tensors
        dl_dz = SoftmaxFocalLossFunction.derivatives(input, target, alpha, ctx.gamma)   # (N, C)
        return _reduce((dl_dz * _acc(dinput)).sum(1), ctx.reduction).to(input.dtype)   # () or (N,)


def softmax_focal_loss(input: Tensor, target: Tensor, alpha: Tensor | Sequence[float] | None = None,
                       gamma: float = 2.0, reduction: str = "mean") -> Tensor:
    r"""Multi-class focal loss :math:`-\alpha_y (1 - p_y)^\gamma \log p_y` with :math:`p = \operatorname{softmax}(z)`.

    Computed by :class:`SoftmaxFocalLossFunction`. With ``gamma = 0`` and
    ``alpha = None`` it equals :func:`cross_entropy`. Under ``torch.autocast`` it computes
    and returns float32.

    Args:
        input: ``(N, C)`` unnormalized scores.
        target: ``(N,)`` class indices in ``[0, C)``.
        alpha: ``None`` or ``C`` per-class weights :math:`\alpha_c` (no gradient).
        gamma: focusing exponent :math:`\gamma \ge 0`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        A scalar, or the ``(N,)`` per-row loss for ``"none"``.

    Shape:
        - input: :math:`(N, C)`; target: :math:`(N)`; output: scalar or :math:`(N)`.

    Examples:
        >>> softmax_focal_loss(torch.randn(4, 3), torch.tensor([0, 2, 1, 0])).shape
        torch.Size([])
    """
    where = "softmax_focal_loss"
    check_tensor(input, where, "input", ndim=2)
    check_tensor(target, where, "target", floating=False)
    check_same_device(where, target, input, "target")
    _check_class_targets(where, input, target, None)
    _check_reduction(where, reduction)
    if gamma < 0:
        raise ValueError(f"{where}: expected gamma >= 0, got {gamma}")
    if alpha is not None:
        alpha = torch.as_tensor(alpha, dtype=input.dtype, device=input.device).detach()
        if alpha.shape != (input.shape[1],):
            raise ValueError(f"{where}: expected alpha with one weight per class ({input.shape[1]},), "
                             f"got shape {tuple(alpha.shape)}")
    return _apply(_softmax_focal_loss_apply, input, target.long(), alpha,
                          float(gamma), reduction)


# The Function as torch.compile applies it (see _apply and layers.composable.compilable_apply).
_softmax_focal_loss_apply = compilable_apply(SoftmaxFocalLossFunction)


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

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return softmax_focal_loss(input, target, self.alpha, self.gamma, self.reduction)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, reduction={self.reduction!r}"
