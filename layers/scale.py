"""Scale: the smallest learnable layer, one scalar times the input.

Taught in the chapter "Modules and parameters" (``book/modules_parameters.ipynb``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._validation import check_same_device, check_same_dtype, check_tensor

__all__ = ["ScaleFunction", "Scale"]


class ScaleFunction(torch.autograd.Function):
    r""":math:`y = s\,x` for a scalar ``s``. Backward: :math:`\partial x = s\,g`, :math:`\partial s = \sum g \odot x`.

    Shapes: ``x`` is any shape, ``s`` has one element (shape ``()`` or ``(1,)``);
    the output has the shape of ``x``.
    """

    @staticmethod
    def forward(x: Tensor, s: Tensor) -> Tensor:
        return x * s.reshape(())                               # keeps the shape of x, even 0-dim

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, s = inputs
        ctx.save_for_backward(x, s)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, s = ctx.saved_tensors
        dx = ds = None
        if ctx.needs_input_grad[0]:
            dx = grad_out * s                                  # same shape as x
        if ctx.needs_input_grad[1]:
            ds = (grad_out * x).sum().reshape(s.shape)         # a scalar, shaped like s
        return dx, ds


class Scale(nn.Module):
    r"""Multiplies the input by one learnable scalar: :math:`y = s\,x`.

    Args:
        init: initial value of the scalar. Default: ``1.0`` (the identity).

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

    def forward(self, x: Tensor) -> Tensor:
        check_tensor(x, "Scale")
        check_same_dtype("Scale", x, self.weight)
        check_same_device("Scale", x, self.weight)
        return ScaleFunction.apply(x, self.weight)

    def extra_repr(self) -> str:
        return f"init={self.init}"
