"""Loss functions with hand-written, numerically stable backward passes.

Taught in the chapter "Losses" (``book/losses.ipynb``).

- :func:`mse_loss` / :class:`MSELoss`: mean squared error, as :func:`torch.nn.functional.mse_loss`.
- :func:`cross_entropy` / :class:`CrossEntropyLoss`: softmax cross-entropy, as
  :func:`torch.nn.functional.cross_entropy`: class-index or probability targets, class
  ``weight``, ``ignore_index`` and label smoothing. Its backward is the fused
  "softmax minus (smoothed, weighted) target", computed from the log-softmax so that large
  logits give no NaN.
- :func:`focal_loss` / :class:`FocalLoss`: the binary, sigmoid focal loss of RetinaNet, as
  torchvision's ``sigmoid_focal_loss``; ``gamma=0, alpha=-1`` is
  :func:`torch.nn.functional.binary_cross_entropy_with_logits` (``weight`` and
  ``pos_weight`` included).
- :func:`softmax_focal_loss` / :class:`SoftmaxFocalLoss`: its multi-class softmax form,
  :math:`-\\alpha_y (1 - p_y)^\\gamma \\log p_y`.

Each Function writes its local derivatives once, in a ``derivatives`` staticmethod that
follows the docstring's formula; ``backward`` multiplies them by the upstream gradient and
``jvp`` (forward-mode AD) by the input tangents. They are written in differentiable torch
ops on the saved inputs, so the losses are twice differentiable (``gradgradcheck``) away
from the points where the math itself is not (``gamma < 1`` at :math:`p_t = 1`).

Composability: every Function sets ``generate_vmap_rule = True`` (``torch.func.vmap``,
``jacrev``, ``hessian``) and has a ``jvp``. Under ``torch.autocast`` the functional forms
compute in float32 and return float32, as torch does for its losses
(:func:`layers.composable.autocast_apply` with ``"float32"``); float16/bfloat16 inputs outside
autocast are computed in float32 and the result is cast back. Checks that read tensor
values (class indices in range) run only in eager mode, so ``torch.compile(fullgraph=True)``
and ``torch.export`` see no graph break and no host synchronisation.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .composable import autocast_apply, compilable_apply, values_checkable
from ._validation import check_same_device, check_tensor

__all__ = [
    "MSELossFunction", "CrossEntropyFunction", "FocalLossFunction", "SoftmaxFocalLossFunction",
    "mse_loss", "cross_entropy", "focal_loss", "softmax_focal_loss",
    "MSELoss", "CrossEntropyLoss", "FocalLoss", "SoftmaxFocalLoss",
]

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


# ------------------------------------------------------------------------------ MSE
class MSELossFunction(torch.autograd.Function):
    r"""Squared error :math:`\ell_i = (x_i - t_i)^2`, reduced; ``input`` and ``target`` broadcast.

    Local derivatives, with :math:`d = x - t`:

    .. math::

        \frac{\partial \ell_i}{\partial x_i} = 2 d_i, \qquad \frac{\partial \ell_i}{\partial t_i} = -2 d_i .

    Backward multiplies them by the upstream gradient of each element (divided by the
    element count for ``"mean"``) and sums over broadcast dimensions; ``jvp`` contracts them
    with the tangents. Saves the input and the target. float16/bfloat16 are computed in float32.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, target: Tensor, reduction: str) -> Tensor:
        d = _acc(input) - _acc(target)                               # (*) broadcast shape
        return _reduce(d * d, reduction).to(input.dtype)             # () or (*)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, reduction = inputs
        ctx.save_for_backward(input, target)
        ctx.save_for_forward(input, target)
        ctx.reduction = reduction

    @staticmethod
    def derivatives(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """``(dl/dx, dl/dt)`` per element of the broadcast shape, in the accumulation dtype."""
        d = _acc(input) - _acc(target)                               # (*)
        return 2 * d, -2 * d                                         # (*), (*)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        input, target = ctx.saved_tensors
        dinput = dtarget = None
        dl_dx, dl_dt = MSELossFunction.derivatives(input, target)    # (*), (*)
        g = _reduce_grad(_acc(grad_out), dl_dx.shape, ctx.reduction)  # (*) upstream per element
        if ctx.needs_input_grad[0]:
            dinput = (dl_dx * g).sum_to_size(input.shape).to(input.dtype)      # (*input)
        if ctx.needs_input_grad[1]:
            dtarget = (dl_dt * g).sum_to_size(target.shape).to(target.dtype)  # (*target)
        return dinput, dtarget, None

    @staticmethod
    def jvp(ctx, dinput, dtarget, _):
        input, target = ctx.saved_tensors
        dl_dx, dl_dt = MSELossFunction.derivatives(input, target)    # (*), (*)
        tangent = torch.zeros_like(dl_dx)                            # (*)
        if dinput is not None:
            tangent = tangent + dl_dx * _acc(dinput)
        if dtarget is not None:
            tangent = tangent + dl_dt * _acc(dtarget)
        return _reduce(tangent, ctx.reduction).to(input.dtype)


def _promote(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Both floating tensors in their promoted dtype, as torch's losses do (a no-op when equal)."""
    dtype = torch.promote_types(input.dtype, target.dtype)
    return input.to(dtype), target.to(dtype)


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    r"""Mean squared error :math:`\frac1n \sum_i (x_i - t_i)^2`, as :func:`torch.nn.functional.mse_loss`.

    Computed by :class:`MSELossFunction`. ``input`` and ``target`` broadcast against each
    other as in torch (which warns when their shapes differ; so does this function). Under
    ``torch.autocast`` it computes and returns float32, as torch's ``mse_loss``.

    Args:
        input: predictions, any shape.
        target: broadcastable with ``input`` (it receives a gradient too).
        reduction: ``"mean"`` (over the :math:`n` elements of the broadcast shape), ``"sum"``
            or ``"none"`` (per element).

    Returns:
        A scalar, or a tensor of the broadcast shape for ``"none"``.

    Shape:
        - input, target: :math:`(*)`, broadcastable; output: scalar, or :math:`(*)` for ``"none"``.

    Examples:
        >>> mse_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
        tensor(2.5000)
    """
    where = "mse_loss"
    check_tensor(input, where, "input")
    check_tensor(target, where, "target")
    check_same_device(where, target, input, "target")
    _check_reduction(where, reduction)
    try:
        torch.broadcast_shapes(input.shape, target.shape)
    except RuntimeError:
        raise ValueError(f"{where}: expected target broadcastable with input of shape {tuple(input.shape)}, "
                         f"got {tuple(target.shape)}") from None
    if target.shape != input.shape and not torch.compiler.is_compiling():
        warnings.warn(f"{where}: using a target size ({tuple(target.shape)}) that is different to the input "
                      f"size ({tuple(input.shape)}); they are broadcast, as in torch's mse_loss.", stacklevel=2)
    input, target = _promote(input, target)
    return _apply(_mse_loss_apply, input, target, reduction)


# ---------------------------------------------------------------------- cross-entropy
def _class_dim(input: Tensor) -> int:
    return 0 if input.dim() == 1 else 1


def _per_class(weight: Tensor, input: Tensor) -> Tensor:
    """``(C,)`` weights shaped to broadcast along the class dimension of ``input``: ``(C, 1, ..)``."""
    c = _class_dim(input)
    return weight.reshape(weight.shape[0], *[1] * (input.dim() - c - 1))


def _of_class(weight: Tensor, target: Tensor) -> Tensor:
    """``weight[target]``: the ``(C,)`` weights picked by class indices of any shape, ``()`` included.

    Indexing with a 0-dim integer tensor reads its value on the host (``.item()``), which
    torch.compile cannot trace; a 1-D index is an ordinary gather.
    """
    return weight[target.reshape(-1)].reshape(target.shape)     # (*target) -> (numel,) -> (*target)


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


# Each Function as torch.compile applies it (see _apply and layers.composable.compilable_apply).
_mse_loss_apply = compilable_apply(MSELossFunction)
_cross_entropy_apply = compilable_apply(CrossEntropyFunction)
_focal_loss_apply = compilable_apply(FocalLossFunction)
_softmax_focal_loss_apply = compilable_apply(SoftmaxFocalLossFunction)


# ------------------------------------------------------------------------- modules
class MSELoss(nn.Module):
    """Mean squared error, as :class:`torch.nn.MSELoss`; see :func:`mse_loss`.

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
        return mse_loss(input, target, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


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
