"""Mean squared error: :class:`MSELossFunction`, :func:`mse_loss` and :class:`MSELoss`.

Part of :mod:`layers.losses`, taught in the chapter "Losses" (``book/losses.ipynb``).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ..composable import compilable_apply
from .._validation import check_same_device, check_tensor
from ._common import _acc, _apply, _check_reduction, _promote, _reduce, _reduce_grad

__all__ = ["MSELossFunction", "mse_loss", "MSELoss"]


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


# The Function as torch.compile applies it (see _apply and layers.composable.compilable_apply).
_mse_loss_apply = compilable_apply(MSELossFunction)


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
