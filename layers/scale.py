"""Scale: the smallest learnable layer, one scalar times the input.

Taught in the chapter "Modules and parameters" (``book/modules_parameters.ipynb``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .composable import autocast_apply, autocast_dtype, compilable_apply
from ._validation import check_same_device, check_same_dtype, check_tensor

__all__ = ["ScaleFunction", "Scale"]


class ScaleFunction(torch.autograd.Function):
    r""":math:`y = s\,x` for a scalar ``s``. Backward: :math:`\partial x = s\,g`, :math:`\partial s = \sum g \odot x`.

    Forward-mode (product rule): :math:`\dot y = s\,\dot x + \dot s\,x`.

    Shapes: ``x`` is any shape, ``s`` has one element (shape ``()`` or ``(1,)``);
    the output has the shape of ``x``. The forward is pure and the context is
    set in ``setup_context``, so ``vmap`` comes from ``generate_vmap_rule``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, s: Tensor) -> Tensor:
        return x * s.reshape(())                               # (*), keeps the shape of x, even 0-dim

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, s = inputs
        ctx.save_for_backward(x, s)
        ctx.save_for_forward(x, s)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, s = ctx.saved_tensors
        dx = ds = None
        if ctx.needs_input_grad[0]:
            dx = grad_out * s.reshape(())                      # (*), same shape as x
        if ctx.needs_input_grad[1]:
            ds = (grad_out * x).sum().reshape(s.shape)         # (), a scalar shaped like s
        return dx, ds

    @staticmethod
    def jvp(ctx, x_t: Tensor | None, s_t: Tensor | None) -> Tensor:
        x, s = ctx.saved_tensors
        y_t = torch.zeros_like(x)                              # (*)
        if x_t is not None:
            y_t = y_t + x_t * s.reshape(())                    # (*) s dx
        if s_t is not None:
            y_t = y_t + s_t.reshape(()) * x                    # (*) ds x
        return y_t


_scale_apply = compilable_apply(ScaleFunction)


class Scale(nn.Module):
    r"""Multiplies the input by one learnable scalar: :math:`y = s\,x`.

    Args:
        init: initial value of the scalar. Default: ``1.0`` (the identity).
        device, dtype: where and in which dtype to create the scalar.

    Under ``torch.autocast`` it computes in float32, as ``input * weight`` with
    a float32 weight does in torch (type promotion; ``mul`` is on no autocast list).

    Shape:
        - Input: :math:`(*)`, any shape.
        - Output: :math:`(*)`, same shape as the input.

    Attributes:
        weight: the learnable scalar, shape ``(1,)``, initialized to ``init``.

    Examples:
        >>> layer = Scale(2.0)
        >>> layer(torch.ones(3))
        tensor([2., 2., 2.], grad_fn=<ScaleFunctionBackward>)
    """

    def __init__(self, init: float = 1.0, device=None, dtype=None) -> None:
        super().__init__()
        self.init = float(init)
        self.weight = nn.Parameter(torch.empty(1, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set the scalar back to ``init``."""
        nn.init.constant_(self.weight, self.init)

    def forward(self, input: Tensor) -> Tensor:
        check_tensor(input, "Scale")
        check_same_device("Scale", input, self.weight)
        if autocast_dtype(input.device.type, "float32") is None:   # under autocast both are cast
            check_same_dtype("Scale", input, self.weight)
        return autocast_apply(_scale_apply, "float32", input, self.weight)

    def extra_repr(self) -> str:
        return f"init={self.init}"
