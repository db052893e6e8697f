"""Linear layer with a hand-written backward pass.

Taught in the chapter "Writing a backward pass" (``book/backward_pass.ipynb``);
:class:`Linear` is also the building block of the "Modules and parameters" chapter.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._validation import check_same_device, check_same_dtype, check_tensor

__all__ = ["LinearFunction", "Linear", "linear"]


class LinearFunction(torch.autograd.Function):
    r"""Affine map :math:`y = x W^\top + b` with a manual backward.

    Backward, for an upstream gradient :math:`g = \partial L / \partial y`:

    .. math::

        \frac{\partial L}{\partial x} = g W, \qquad
        \frac{\partial L}{\partial W} = g^\top x, \qquad
        \frac{\partial L}{\partial b} = \textstyle\sum_{\text{rows}} g .

    Shapes: ``x`` is ``(*, in)``, ``weight`` is ``(out, in)``, ``bias`` is ``(out,)``
    or ``None``; the output is ``(*, out)``.

    The backward is written with differentiable torch ops, so double backward
    (``gradgradcheck``, Hessian-vector products) works through it.
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        x2d = x.reshape(-1, x.shape[-1])                       # (N, in), N = prod(*)
        if bias is None:
            out = x2d @ weight.t()                             # (N, in) @ (in, out) -> (N, out)
        else:
            out = torch.addmm(bias, x2d, weight.t())           # b + x W^T in one kernel
        return out.reshape(*x.shape[:-1], weight.shape[0])     # (*, out)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)                       # only what backward reads
        ctx.has_bias = bias is not None                        # non-tensors go on ctx directly

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        g2d = grad_out.reshape(-1, grad_out.shape[-1])         # (N, out)
        dx = dw = db = None                                    # one gradient per forward input
        if ctx.needs_input_grad[0]:
            dx = (g2d @ weight).reshape(x.shape)               # (N, out) @ (out, in) -> (*, in)
        if ctx.needs_input_grad[1]:
            dw = g2d.t() @ x.reshape(-1, x.shape[-1])          # (out, N) @ (N, in) -> (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g2d.sum(0)                                    # (out,)
        return dx, dw, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Functional form of :class:`Linear`: ``x @ weight.T + bias`` via :class:`LinearFunction`.

    Args:
        x: input of shape ``(*, in_features)``.
        weight: ``(out_features, in_features)``.
        bias: ``(out_features,)`` or ``None``.

    Returns:
        Tensor of shape ``(*, out_features)``.
    """
    _check_input("linear", x, weight)
    return LinearFunction.apply(x, weight, bias)


def _check_input(where: str, x: Tensor, weight: Tensor) -> None:
    check_tensor(x, where, min_ndim=1)
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{where}: expected input with {weight.shape[1]} features in its last dimension, "
            f"got {x.shape[-1]} (shape {tuple(x.shape)})"
        )
    check_same_dtype(where, x, weight)
    check_same_device(where, x, weight)


class Linear(nn.Module):
    r"""Applies an affine map :math:`y = x W^\top + b`, with a hand-written backward.

    A drop-in replacement for :class:`torch.nn.Linear`: same parameter names,
    shapes and default initialization, so ``load_state_dict`` works in both
    directions. ``Linear(in_features, out_features, bias=False)`` is the
    "LinearNoBias" pattern.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: if ``False``, the layer learns no additive bias. Default: ``True``.

    Shape:
        - Input: :math:`(*, H_{in})` where :math:`*` is any number of leading
          dimensions (including none) and :math:`H_{in} = \text{in\_features}`.
        - Output: :math:`(*, H_{out})` with :math:`H_{out} = \text{out\_features}`.

    Attributes:
        weight: learnable ``(out_features, in_features)`` tensor, initialized from
            :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})` with :math:`k = 1/\text{in\_features}`
            (``kaiming_uniform_`` with ``a=sqrt(5)``, as PyTorch does).
        bias: learnable ``(out_features,)`` tensor, initialized from
            :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})`, or ``None``.

    Examples:
        >>> layer = Linear(20, 30)
        >>> layer(torch.randn(128, 20)).shape
        torch.Size([128, 30])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        if in_features < 0 or out_features < 0:
            raise ValueError(
                f"Linear: expected non-negative sizes, got in_features={in_features}, "
                f"out_features={out_features}"
            )
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialize ``weight`` and ``bias`` exactly as :class:`torch.nn.Linear` does."""
        # kaiming_uniform_ with a=sqrt(5) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_features
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        _check_input("Linear", x, self.weight)
        return LinearFunction.apply(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
