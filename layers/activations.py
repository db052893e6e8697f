"""Activation functions, each an ``autograd.Function`` with a hand-written backward.

Taught in the chapter "Activations" (``book/activations.ipynb``); :class:`PReLU`
is also used in "Writing a backward pass".

Every backward here is written with differentiable torch ops on saved tensors,
so each function is twice differentiable where the math is (``gradgradcheck``
passes): ReLU and PReLU have a zero second derivative away from 0, Sigmoid,
Tanh and GELU have smooth ones.

Each activation has a plain function (``relu``, ``sigmoid``, ``tanh``, ``gelu``,
``prelu``) holding the logic, and an ``nn.Module`` that calls it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._validation import check_same_device, check_same_dtype, check_tensor

__all__ = [
    "ReLUFunction", "SigmoidFunction", "TanhFunction", "GELUFunction", "PReLUFunction",
    "relu", "sigmoid", "tanh", "gelu", "prelu",
    "ReLU", "Sigmoid", "Tanh", "GELU", "PReLU",
]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_TANH_C = 0.044715


# ----------------------------------------------------------------------------- ReLU
class ReLUFunction(torch.autograd.Function):
    r""":math:`y = \max(0, x)`. Backward: :math:`\partial x = g \cdot [x > 0]`.

    At exactly ``x = 0`` the gradient is 0, as in :func:`torch.relu`.
    Saves the output (not the input): ``y > 0`` exactly where ``x > 0``.
    """

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x.clamp_min(0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return grad_out * (y > 0).to(grad_out.dtype)


def relu(x: Tensor) -> Tensor:
    """Rectified linear unit, ``max(0, x)`` elementwise, via :class:`ReLUFunction`. Any shape."""
    check_tensor(x, "relu")
    return ReLUFunction.apply(x)


# -------------------------------------------------------------------------- Sigmoid
class SigmoidFunction(torch.autograd.Function):
    r""":math:`y = 1 / (1 + e^{-x})`. Backward: :math:`\partial x = g\, y (1 - y)`.

    Saves only the output: the derivative is a function of ``y`` alone.
    """

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.sigmoid(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return grad_out * y * (1 - y)


def sigmoid(x: Tensor) -> Tensor:
    """Logistic sigmoid elementwise, via :class:`SigmoidFunction`. Any shape."""
    check_tensor(x, "sigmoid")
    return SigmoidFunction.apply(x)


# ----------------------------------------------------------------------------- Tanh
class TanhFunction(torch.autograd.Function):
    r""":math:`y = \tanh x`. Backward: :math:`\partial x = g\,(1 - y^2)`. Saves only the output."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return grad_out * (1 - y * y)


def tanh(x: Tensor) -> Tensor:
    """Hyperbolic tangent elementwise, via :class:`TanhFunction`. Any shape."""
    check_tensor(x, "tanh")
    return TanhFunction.apply(x)


# ----------------------------------------------------------------------------- GELU
def _gelu_forward(x: Tensor, approximate: str) -> Tensor:
    """GELU of ``x``. Runs inside ``GELUFunction.forward`` (autograd off), so it works in place
    on the one new tensor it creates: a fresh full-size tensor costs more than a pass over one."""
    if approximate == "tanh":
        t = torch.mul(x, x).mul_(_GELU_TANH_C).add_(1).mul_(x)          # x + 0.044715 x^3
        t.mul_(_SQRT_2_OVER_PI).tanh_()                                   # tanh u
    else:
        t = torch.mul(x, _INV_SQRT_2).erf_()                              # erf(x / sqrt 2)
    return torch.addcmul(x, x, t, out=t).mul_(0.5)                        # x (1 + t) / 2


def _gelu_derivative(x: Tensor, approximate: str) -> Tensor:
    """y'(x) with plain differentiable ops (used when autograd differentiates the backward)."""
    if approximate == "tanh":
        inner = _SQRT_2_OVER_PI * (x + _GELU_TANH_C * x * x * x)
        t = torch.tanh(inner)
        d_inner = _SQRT_2_OVER_PI * (1 + 3 * _GELU_TANH_C * x * x)
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * d_inner
    cdf = 0.5 * (1 + torch.erf(x * _INV_SQRT_2))              # Phi(x)
    pdf = _INV_SQRT_2PI * torch.exp(-0.5 * x * x)              # phi(x)
    return cdf + x * pdf


def _gelu_input_grad(grad_out: Tensor, x: Tensor, approximate: str) -> Tensor:
    """``grad_out * y'(x)``, the same formula as ``_gelu_derivative``, in place on new temporaries.

    Only for a backward that autograd does not differentiate (in-place ops
    overwrite values a graph of the backward would need).
    """
    if approximate == "tanh":
        t = torch.mul(x, x).mul_(_GELU_TANH_C).add_(1).mul_(x)          # x + 0.044715 x^3
        t.mul_(_SQRT_2_OVER_PI).tanh_()                                   # tanh u
        s = torch.mul(x, x).mul_(3 * _GELU_TANH_C).add_(1).mul_(x)      # x (1 + 3 * 0.044715 x^2)
        s.mul_(0.5 * _SQRT_2_OVER_PI)                                     # x du/dx / 2
        d = torch.mul(t, t).neg_().add_(1).mul_(s)                        # x (1 - t^2) du/dx / 2
        d.add_(t, alpha=0.5).add_(0.5)                                    # + (1 + t) / 2
    else:
        pdf = torch.mul(x, x).mul_(-0.5).exp_()                          # phi(x) * sqrt(2 pi)
        d = torch.mul(x, _INV_SQRT_2).erf_().add_(1).mul_(0.5)          # Phi(x)
        d.addcmul_(x, pdf, value=_INV_SQRT_2PI)                          # Phi(x) + x phi(x)
    return d.mul_(grad_out)


class GELUFunction(torch.autograd.Function):
    r"""Gaussian error linear unit, exact or with the tanh approximation.

    Exact: :math:`y = x\,\Phi(x)`, so :math:`y' = \Phi(x) + x\,\varphi(x)`.

    Tanh approximation: :math:`y = \tfrac12 x\,(1 + \tanh u)` with
    :math:`u = \sqrt{2/\pi}\,(x + 0.044715\,x^3)`, so
    :math:`y' = \tfrac12 (1 + \tanh u) + \tfrac12 x\,(1 - \tanh^2 u)\,\sqrt{2/\pi}\,(1 + 3 \cdot 0.044715\,x^2)`.

    Backward: :math:`\partial x = g\, y'(x)`. Saves the input. The usual
    backward computes it in place on new temporaries (``_gelu_input_grad``);
    when autograd differentiates the backward (``create_graph=True``) it uses
    plain ops (``_gelu_derivative``), so double backward works.

    At :math:`x = +\infty` the output is :math:`+\infty`, the limit (PyTorch's
    vectorized CPU kernel returns NaN there); at :math:`-\infty` both give NaN.
    """

    @staticmethod
    def forward(x: Tensor, approximate: str) -> Tensor:
        return _gelu_forward(x, approximate)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, approximate = inputs
        ctx.save_for_backward(x)
        ctx.approximate = approximate

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():                # double backward: differentiable ops
            return grad_out * _gelu_derivative(x, ctx.approximate), None
        return _gelu_input_grad(grad_out, x, ctx.approximate), None


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU elementwise via :class:`GELUFunction`; ``approximate`` is ``"none"`` or ``"tanh"``. Any shape."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: expected approximate to be 'none' or 'tanh', got {approximate!r}")
    check_tensor(x, "gelu")
    return GELUFunction.apply(x, approximate)


# ---------------------------------------------------------------------------- PReLU
def _channel_view(weight: Tensor, x: Tensor) -> Tensor:
    """Reshape a ``(C,)`` weight so it broadcasts over channel dim 1 of ``x``: ``(C, 1, ..., 1)``."""
    if weight.numel() == 1:
        return weight.reshape(())                               # one slope for every element
    return weight.reshape(-1, *([1] * (x.dim() - 2)))           # (C, 1, ..., 1) against (N, C, ...)


class PReLUFunction(torch.autograd.Function):
    r"""Parametric ReLU: :math:`y = \max(0, x) + a \min(0, x)` with a learnable slope ``a``.

    ``a`` has one element (shared) or one per channel, channels on dim 1 of ``x``.

    Backward:

    .. math::

        \partial x = g \cdot \begin{cases} 1 & x > 0 \\ a & x \le 0 \end{cases}, \qquad
        \partial a_c = \sum_{\text{all but channel } c} g \cdot \min(0, x).

    Shapes: ``x`` is ``(N, C, *)`` (any shape when ``a`` has one element);
    ``weight`` is ``(C,)`` or ``(1,)``; output as ``x``.
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor) -> Tensor:
        a = _channel_view(weight, x)
        return torch.where(x > 0, x, a * x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        dx = dw = None
        positive = x > 0
        if ctx.needs_input_grad[0]:
            a = _channel_view(weight, x)
            dx = torch.where(positive, grad_out, a * grad_out)
        if ctx.needs_input_grad[1]:
            contrib = torch.where(positive, torch.zeros_like(x), grad_out * x)   # g * min(0, x)
            if weight.numel() == 1:
                dw = contrib.sum().reshape(weight.shape)
            else:
                other = [d for d in range(x.dim()) if d != 1]                   # all but channels
                dw = contrib.sum(dim=other)                                     # (C,)
        return dx, dw


def prelu(x: Tensor, weight: Tensor) -> Tensor:
    """Functional PReLU via :class:`PReLUFunction`; see :class:`PReLU` for shapes."""
    _check_prelu_input("prelu", x, weight)
    return PReLUFunction.apply(x, weight)


def _check_prelu_input(where: str, x: Tensor, weight: Tensor) -> None:
    check_tensor(x, where)
    check_same_dtype(where, x, weight)
    check_same_device(where, x, weight)
    channels = weight.numel()
    if channels != 1:
        if x.dim() < 2:                                         # as torch: no channel dim below 2-D
            raise ValueError(
                f"{where}: expected input of shape (N, {channels}, ...) for {channels} slopes, "
                f"got shape {tuple(x.shape)}"
            )
        actual = x.shape[1]
        if actual != channels:
            raise ValueError(
                f"{where}: expected input with {channels} channels in dimension 1, "
                f"got {actual} (shape {tuple(x.shape)})"
            )


# -------------------------------------------------------------------------- Modules
class ReLU(nn.Module):
    """See :func:`relu`. Shape: any; output as input."""

    def forward(self, x: Tensor) -> Tensor:
        check_tensor(x, "ReLU")
        return ReLUFunction.apply(x)


class Sigmoid(nn.Module):
    """See :func:`sigmoid`. Shape: any; output as input."""

    def forward(self, x: Tensor) -> Tensor:
        check_tensor(x, "Sigmoid")
        return SigmoidFunction.apply(x)


class Tanh(nn.Module):
    """See :func:`tanh`. Shape: any; output as input."""

    def forward(self, x: Tensor) -> Tensor:
        check_tensor(x, "Tanh")
        return TanhFunction.apply(x)


class GELU(nn.Module):
    """See :func:`gelu`. Matches :class:`torch.nn.GELU` for both values of ``approximate``.

    Args:
        approximate: ``"none"`` (exact, with ``erf``) or ``"tanh"``.

    Shape: any; output as input.
    """

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: expected approximate to be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        check_tensor(x, "GELU")
        return GELUFunction.apply(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class PReLU(nn.Module):
    r"""Parametric ReLU, :math:`y = \max(0,x) + a \min(0,x)`, matching :class:`torch.nn.PReLU`.

    Args:
        num_parameters: number of slopes: 1 (shared by every element) or the
            number of channels (dim 1 of the input). Default: 1.
        init: initial value of every slope. Default: 0.25.

    Shape:
        - Input: :math:`(N, C, *)`, or any shape when ``num_parameters=1``.
        - Output: same shape as the input.

    Attributes:
        weight: learnable slopes, shape ``(num_parameters,)``, initialized to ``init``.

    Examples:
        >>> m = PReLU(3)
        >>> m(torch.randn(2, 3, 4)).shape
        torch.Size([2, 3, 4])
    """

    def __init__(self, num_parameters: int = 1, init: float = 0.25, device=None, dtype=None) -> None:
        super().__init__()
        if num_parameters < 1:
            raise ValueError(f"PReLU: expected num_parameters >= 1, got {num_parameters}")
        self.num_parameters = num_parameters
        self.init = float(init)
        self.weight = nn.Parameter(torch.empty(num_parameters, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set every slope back to ``init``."""
        nn.init.constant_(self.weight, self.init)

    def forward(self, x: Tensor) -> Tensor:
        _check_prelu_input("PReLU", x, self.weight)
        return PReLUFunction.apply(x, self.weight)

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}, init={self.init}"
