"""Activation functions, each an ``autograd.Function`` with a hand-written backward.

Taught in the chapter "Activations" (``book/activations.ipynb``); :class:`PReLU`
is also used in "Writing a backward pass".

Each Function has one backward, written as the derivative in its docstring
with differentiable torch ops on saved tensors, so it is twice differentiable
where the math is (``gradgradcheck`` passes): ReLU and PReLU have a zero second
derivative away from 0, Sigmoid, Tanh and GELU have smooth ones.

Each Function also composes with ``torch.func``: ``generate_vmap_rule = True``
(the forward is pure and the context is set in ``setup_context``) gives
``vmap``, and a ``jvp`` staticmethod gives forward-mode AD (``jvp``,
``jacfwd``, ``hessian``); the tangent is the same derivative times the input's
tangent.

Low precision: for float16 / bfloat16 inputs the multi-step formulas (GELU, and
every backward) are evaluated in float32 and rounded once, as torch's kernels
do, so the result is as accurate as torch's. Under ``torch.autocast`` these
ops follow torch's policy: ReLU, Sigmoid, Tanh and GELU run in the dtype they
are given, PReLU runs in the lower precision (CPU autocast lists ``prelu``).

Each activation has a plain function (``relu``, ``sigmoid``, ``tanh``, ``gelu``,
``prelu``) holding the logic, with :mod:`torch.nn.functional`'s argument names,
and an ``nn.Module`` with :mod:`torch.nn`'s constructor arguments that calls it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .composable import autocast_apply, autocast_dtype, compilable_apply
from ._validation import check_same_device, check_same_dtype, check_tensor

__all__ = [
    "ReLUFunction", "SigmoidFunction", "TanhFunction", "GELUFunction", "PReLUFunction",
    "relu", "sigmoid", "tanh", "gelu", "prelu",
    "ReLU", "Sigmoid", "Tanh", "GELU", "PReLU",
]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_TANH_C = 0.044715
_REDUCED = (torch.float16, torch.bfloat16)


def _wide(t: Tensor) -> Tensor:
    """``t`` in float32 if it is float16 / bfloat16 (compute there, round once), else ``t`` itself."""
    return t.float() if t.dtype in _REDUCED else t


def _refuse_inplace(where: str, inplace: bool) -> None:
    """These layers never write into their input (autograd and torch.func need the input kept)."""
    if inplace:
        raise ValueError(f"{where}: inplace=True is not supported (the layer never overwrites its "
                         "input); use inplace=False, the default")


# ----------------------------------------------------------------------------- ReLU
class ReLUFunction(torch.autograd.Function):
    r""":math:`y = \max(0, x)`. Backward: :math:`\partial x = g \cdot [y > 0]`.

    At exactly ``x = 0`` the gradient is 0, as in :func:`torch.relu`.
    Saves the output (not the input): ``y > 0`` exactly where ``x > 0``.
    Forward-mode: :math:`\dot y = \dot x \cdot [y > 0]`.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x.clamp_min(0)                                  # (*)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        dx = grad_out * (y > 0).to(grad_out.dtype)            # (*)
        return dx

    @staticmethod
    def jvp(ctx, x_t: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return x_t * (y > 0).to(x_t.dtype)                     # (*)


_relu_apply = compilable_apply(ReLUFunction)


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    """Rectified linear unit, ``max(0, input)`` elementwise, via :class:`ReLUFunction`.

    Args:
        input: any shape, floating point.
        inplace: accepted for :func:`torch.nn.functional.relu` compatibility; only
            ``False`` is supported (``True`` raises ``ValueError``).
    """
    _refuse_inplace("relu", inplace)
    check_tensor(input, "relu")
    return _relu_apply(input)


# -------------------------------------------------------------------------- Sigmoid
class SigmoidFunction(torch.autograd.Function):
    r""":math:`y = 1 / (1 + e^{-x})`. Backward: :math:`\partial x = g\, y (1 - y)`.

    Saves only the output: the derivative is a function of ``y`` alone.
    Forward-mode: :math:`\dot y = \dot x\, y (1 - y)`.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.sigmoid(x)                                # (*)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        y = _wide(y)                                           # (*), float32 if reduced
        dx = _wide(grad_out) * y * (1 - y)                     # (*)
        return dx.to(grad_out.dtype)

    @staticmethod
    def jvp(ctx, x_t: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        y = _wide(y)                                           # (*)
        return (_wide(x_t) * y * (1 - y)).to(x_t.dtype)        # (*)


_sigmoid_apply = compilable_apply(SigmoidFunction)


def sigmoid(input: Tensor) -> Tensor:
    """Logistic sigmoid elementwise, via :class:`SigmoidFunction`. Any shape."""
    check_tensor(input, "sigmoid")
    return _sigmoid_apply(input)


# ----------------------------------------------------------------------------- Tanh
class TanhFunction(torch.autograd.Function):
    r""":math:`y = \tanh x`. Backward: :math:`\partial x = g\,(1 - y^2)`. Saves only the output.

    Forward-mode: :math:`\dot y = \dot x\,(1 - y^2)`.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.tanh(x)                                   # (*)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        y = _wide(y)                                           # (*), float32 if reduced
        dx = _wide(grad_out) * (1 - y * y)                     # (*)
        return dx.to(grad_out.dtype)

    @staticmethod
    def jvp(ctx, x_t: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        y = _wide(y)                                           # (*)
        return (_wide(x_t) * (1 - y * y)).to(x_t.dtype)        # (*)


_tanh_apply = compilable_apply(TanhFunction)


def tanh(input: Tensor) -> Tensor:
    """Hyperbolic tangent elementwise, via :class:`TanhFunction`. Any shape."""
    check_tensor(input, "tanh")
    return _tanh_apply(input)


# ----------------------------------------------------------------------------- GELU
def _gelu_derivative(x: Tensor, approximate: str) -> Tensor:
    r""":math:`y'(x)` of GELU (see :class:`GELUFunction`), in differentiable ops. Shape of ``x``."""
    if approximate == "none":
        cdf = torch.special.ndtr(x)                                    # (*) Phi(x)
        pdf = _INV_SQRT_2PI * torch.exp(-0.5 * x * x)                  # (*) phi(x)
        return cdf + x * pdf                                           # (*) Phi(x) + x phi(x)
    x2 = x * x                                                         # (*)
    t = torch.tanh(_SQRT_2_OVER_PI * x * (1 + _GELU_TANH_C * x2))      # (*) tanh u
    du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_TANH_C * x2)                 # (*) du/dx
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du                  # (*)


class GELUFunction(torch.autograd.Function):
    r"""Gaussian error linear unit, exact or with the tanh approximation.

    Exact: :math:`y = x\,\Phi(x)`, so :math:`y' = \Phi(x) + x\,\varphi(x)`.

    Tanh approximation: :math:`y = \tfrac12 x\,(1 + \tanh u)` with
    :math:`u = \sqrt{2/\pi}\,(x + 0.044715\,x^3)`, so
    :math:`y' = \tfrac12 (1 + \tanh u) + \tfrac12 x\,(1 - \tanh^2 u)\,\sqrt{2/\pi}\,(1 + 3 \cdot 0.044715\,x^2)`.

    Backward: :math:`\partial x = g\, y'(x)`; forward-mode: :math:`\dot y = \dot x\, y'(x)`.
    Saves the input. float16 / bfloat16 inputs are computed in float32 and
    rounded once.

    At :math:`x = +\infty` the output is :math:`+\infty`, the limit (PyTorch's
    vectorized CPU kernel returns NaN there); at :math:`-\infty` both give NaN.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, approximate: str) -> Tensor:
        xw = _wide(x)                                                  # (*), float32 if reduced
        if approximate == "none":
            y = xw * torch.special.ndtr(xw)                            # (*) x Phi(x)
        else:
            u = _SQRT_2_OVER_PI * xw * (1 + _GELU_TANH_C * xw * xw)    # (*) sqrt(2/pi) (x + 0.044715 x^3)
            y = 0.5 * xw * (1 + torch.tanh(u))                         # (*)
        return y.to(x.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, approximate = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        ctx.approximate = approximate

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (x,) = ctx.saved_tensors
        dx = _wide(grad_out) * _gelu_derivative(_wide(x), ctx.approximate)   # (*)
        return dx.to(grad_out.dtype), None

    @staticmethod
    def jvp(ctx, x_t: Tensor, _approximate_t):
        (x,) = ctx.saved_tensors
        y_t = _wide(x_t) * _gelu_derivative(_wide(x), ctx.approximate)      # (*)
        return y_t.to(x_t.dtype)


_gelu_apply = compilable_apply(GELUFunction)


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """GELU elementwise via :class:`GELUFunction`. Any shape.

    Args:
        input: any shape, floating point.
        approximate: ``"none"`` (exact, with ``erf``) or ``"tanh"``, as
            :func:`torch.nn.functional.gelu`.
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: expected approximate to be 'none' or 'tanh', got {approximate!r}")
    check_tensor(input, "gelu")
    return _gelu_apply(input, approximate)


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

    Forward-mode: :math:`\dot y = \dot x` where :math:`x > 0`, else
    :math:`a \dot x + \dot a x`.

    Shapes: ``x`` is ``(N, C, *)`` (any shape when ``a`` has one element);
    ``weight`` is ``(C,)``, ``(1,)`` or ``()``; output as ``x``. The slope
    gradient is summed in float32 for float16 / bfloat16.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor) -> Tensor:
        a = _channel_view(weight, x)                            # (C, 1, ..., 1) or ()
        return torch.where(x > 0, x, a * x)                     # (N, C, *)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        dx = dw = None
        positive = x > 0                                        # (N, C, *)
        if ctx.needs_input_grad[0]:
            a = _channel_view(weight, x)                        # (C, 1, ..., 1) or ()
            dx = torch.where(positive, grad_out, a * grad_out)  # (N, C, *)
        if ctx.needs_input_grad[1]:
            contrib = torch.where(positive, 0, _wide(grad_out) * _wide(x))   # (N, C, *) g min(0, x)
            if weight.numel() == 1:
                dw = contrib.sum()                              # ()
            else:
                dw = contrib.sum(dim=[d for d in range(x.dim()) if d != 1])  # (C,)
            dw = dw.reshape(weight.shape).to(weight.dtype)      # shape of weight
        return dx, dw

    @staticmethod
    def jvp(ctx, x_t: Tensor | None, w_t: Tensor | None) -> Tensor:
        x, weight = ctx.saved_tensors
        a = _channel_view(weight, x)                            # (C, 1, ..., 1) or ()
        negative = torch.zeros_like(x)                          # (N, C, *) tangent where x <= 0
        if x_t is not None:
            negative = negative + a * x_t
        if w_t is not None:
            negative = negative + _channel_view(w_t, x) * x
        positive = x_t if x_t is not None else torch.zeros_like(x)
        return torch.where(x > 0, positive, negative)           # (N, C, *)


_prelu_apply = compilable_apply(PReLUFunction)


def prelu(input: Tensor, weight: Tensor) -> Tensor:
    """Functional PReLU via :class:`PReLUFunction`, as :func:`torch.nn.functional.prelu`.

    Under ``torch.autocast`` it runs in the lower precision, as torch's ``prelu``.

    Args:
        input: ``(N, C, *)``, or any shape when ``weight`` has one element.
        weight: the slopes, ``(C,)``, ``(1,)`` or 0-dim.
    """
    _check_prelu_input("prelu", input, weight)
    return autocast_apply(_prelu_apply, "lower", input, weight)


def _check_prelu_input(where: str, x: Tensor, weight: Tensor) -> None:
    check_tensor(x, where)
    check_tensor(weight, where, "weight")
    if weight.dim() > 1:
        raise ValueError(f"{where}: expected weight with at most 1 dimension, got shape {tuple(weight.shape)}")
    check_same_device(where, x, weight)
    if autocast_dtype(x.device.type, "lower") is None:          # under autocast both are cast
        check_same_dtype(where, x, weight)
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
    """See :func:`relu`. Shape: any; output as input.

    Args:
        inplace: as :class:`torch.nn.ReLU`'s, but only ``False`` (the default) is
            supported: ``True`` raises ``ValueError``, because the layer never
            overwrites its input (autograd saves the output instead).
    """

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        _refuse_inplace("ReLU", inplace)
        self.inplace = inplace

    def forward(self, input: Tensor) -> Tensor:
        check_tensor(input, "ReLU")
        return _relu_apply(input)


class Sigmoid(nn.Module):
    """See :func:`sigmoid`. Shape: any; output as input."""

    def forward(self, input: Tensor) -> Tensor:
        check_tensor(input, "Sigmoid")
        return _sigmoid_apply(input)


class Tanh(nn.Module):
    """See :func:`tanh`. Shape: any; output as input."""

    def forward(self, input: Tensor) -> Tensor:
        check_tensor(input, "Tanh")
        return _tanh_apply(input)


class GELU(nn.Module):
    """See :func:`gelu`. Matches :class:`torch.nn.GELU` for both values of ``approximate``.

    Args:
        approximate: ``"none"`` (exact, with ``erf``) or ``"tanh"``. Default: ``"none"``.

    Shape: any; output as input.
    """

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: expected approximate to be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, input: Tensor) -> Tensor:
        check_tensor(input, "GELU")
        return _gelu_apply(input, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class PReLU(nn.Module):
    r"""Parametric ReLU, :math:`y = \max(0,x) + a \min(0,x)`, matching :class:`torch.nn.PReLU`.

    Args:
        num_parameters: number of slopes: 1 (shared by every element) or the
            number of channels (dim 1 of the input). Default: 1.
        init: initial value of every slope. Default: 0.25.
        device, dtype: where and in which dtype to create the slopes.

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

    def forward(self, input: Tensor) -> Tensor:
        _check_prelu_input("PReLU", input, self.weight)
        return autocast_apply(_prelu_apply, "lower", input, self.weight)

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}, init={self.init}"
