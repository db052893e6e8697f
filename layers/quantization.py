"""Quantization-aware training: fake quantization, the straight-through estimator, LSQ, PACT.

Taught in the chapter "Quantization-aware training" (``book/quantization.ipynb``).

What this module holds, from the bottom up:

* :func:`fake_quantize` (per tensor, or per channel with ``axis=``): quantize to integers and
  back in one step, with the straight-through estimator (STE) as its backward. The forward is
  bit-for-bit :func:`torch.fake_quantize_per_tensor_affine` /
  :func:`torch.fake_quantize_per_channel_affine` on CPU (same rounding, same order of
  floating-point operations), and the gradient mask is the one those ops use.
* :func:`lsq_quantize`: learned step size quantization (LSQ, Esser et al. 2020), whose output
  and gradients for ``x``, ``scale`` and ``zero_point`` match
  ``torch._fake_quantize_learnable_per_tensor_affine``.
* :func:`pact_quantize`: PACT (Choi et al. 2018), activations clipped to a learned
  :math:`[0, \\alpha]` and quantized, with the published gradient for :math:`\\alpha`.
* Observers that pick the quantization range: :class:`MinMaxObserver`,
  :class:`MovingAverageMinMaxObserver` and :class:`MSEObserver` (searches the clipping range
  that minimizes the quantization error, see :func:`mse_clip_search`).
* Modules: :class:`FakeQuantize` (observer + fake quantization, switchable), :class:`LSQQuantizer`,
  :class:`PACTQuantizer`, and the layers :class:`QuantLinear` and :class:`QuantConv2d`
  (weights per output channel, activations per tensor). :func:`convert_to_qat` swaps the
  :class:`~layers.linear.Linear` and :class:`~layers.conv.Conv2d` layers of a float model for
  these; :func:`calibrate` runs the observers for post-training quantization.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ._validation import check_tensor
from .conv import Conv2d, conv2d
from .linear import Linear, linear

__all__ = [
    "quant_range", "qparams_from_range", "sqnr", "mse_clip_search",
    "FakeQuantizeFunction", "FakeQuantizePerChannelFunction", "LSQFunction", "PACTFunction",
    "fake_quantize", "lsq_quantize", "pact_quantize",
    "Observer", "MinMaxObserver", "MovingAverageMinMaxObserver", "MSEObserver",
    "FakeQuantize", "LSQQuantizer", "PACTQuantizer",
    "QuantLinear", "QuantConv2d", "convert_to_qat", "calibrate", "quantizers",
]


# ----------------------------------------------------------------------------- checks
def _check_bits(where: str, bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"{where}: expected bits to be an integer in 2..16, got {bits!r}")
    return bits


def _check_qrange(where: str, quant_min: int, quant_max: int) -> None:
    for name, v in (("quant_min", quant_min), ("quant_max", quant_max)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{where}: expected {name} to be an int, got {type(v).__name__}")
    if quant_min >= quant_max:
        raise ValueError(f"{where}: expected quant_min < quant_max, got quant_min={quant_min}, quant_max={quant_max}")
    if quant_max - quant_min > 2**16 - 1:
        raise ValueError(f"{where}: expected at most 2**16 levels (16 bits), got quant_min={quant_min}, "
                         f"quant_max={quant_max}")


def _check_finite(where: str, x: Tensor, name: str = "input") -> None:
    if x.numel() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{where}: expected a finite {name}, got {bad} NaN/Inf value(s) of {x.numel()}")


def _scale_value(where: str, scale) -> float:
    """A positive, finite per-tensor scale as a Python float (it is used as a float32)."""
    if isinstance(scale, Tensor):
        if scale.numel() != 1:
            raise ValueError(f"{where}: expected a one-element scale for per-tensor quantization, "
                             f"got shape {tuple(scale.shape)} (use axis= for per-channel)")
        scale = scale.item()
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{where}: expected a positive finite scale, got {scale}")
    return scale


def _zero_point_value(where: str, zero_point, quant_min: int, quant_max: int) -> int:
    if isinstance(zero_point, Tensor):
        if zero_point.numel() != 1:
            raise ValueError(f"{where}: expected a one-element zero_point, got shape {tuple(zero_point.shape)}")
        zero_point = zero_point.item()
    if float(zero_point) != int(zero_point):
        raise ValueError(f"{where}: expected an integer zero_point, got {zero_point}")
    zero_point = int(zero_point)
    if not quant_min <= zero_point <= quant_max:
        raise ValueError(f"{where}: expected zero_point in [quant_min, quant_max] = [{quant_min}, {quant_max}], "
                         f"got {zero_point}")
    return zero_point


# ----------------------------------------------------------------------------- ranges
def quant_range(bits: int, symmetric: bool = False) -> tuple[int, int]:
    r"""Integer range of a ``bits``-bit quantizer.

    Asymmetric (unsigned): :math:`[0, 2^b - 1]`. Symmetric (signed, "narrow" range, so that
    zero sits in the middle and 2 bits give the three levels :math:`\{-1, 0, 1\}`):
    :math:`[-(2^{b-1} - 1), 2^{b-1} - 1]`.

    Args:
        bits: bit width, 2 to 16.
        symmetric: signed symmetric range if ``True``.

    Returns:
        ``(quant_min, quant_max)``.

    Examples:
        >>> quant_range(8), quant_range(8, symmetric=True), quant_range(2, symmetric=True)
        ((0, 255), (-127, 127), (-1, 1))
    """
    _check_bits("quant_range", bits)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def qparams_from_range(min_val: Tensor, max_val: Tensor, quant_min: int, quant_max: int,
                       symmetric: bool = False) -> tuple[Tensor, Tensor]:
    r"""Scale and zero point that map ``[min_val, max_val]`` onto ``[quant_min, quant_max]``.

    The range is first widened to contain 0 (so that 0 is exactly representable). Then, as in
    :class:`torch.ao.quantization.MinMaxObserver`:

    * asymmetric: :math:`s = (\max - \min) / (q_{\max} - q_{\min})`,
      :math:`z = \operatorname{clamp}(q_{\min} - \operatorname{round}(\min / s), q_{\min}, q_{\max})`;
    * symmetric: :math:`s = \max(|\min|, |\max|) / ((q_{\max} - q_{\min}) / 2)`, :math:`z = 0`.

    :math:`s` is at least the float32 machine epsilon, so a constant-zero tensor gives a valid scale.

    Args:
        min_val: smallest value to represent, scalar or ``(C,)``.
        max_val: largest value to represent, same shape.
        quant_min: smallest integer.
        quant_max: largest integer.
        symmetric: symmetric range around 0.

    Returns:
        ``(scale, zero_point)``: float32 and int32 tensors of the shape of ``min_val``.
    """
    _check_qrange("qparams_from_range", quant_min, quant_max)
    min_val = torch.as_tensor(min_val, dtype=torch.float32)
    max_val = torch.as_tensor(max_val, dtype=torch.float32)
    _check_finite("qparams_from_range", min_val, "min_val")
    _check_finite("qparams_from_range", max_val, "max_val")
    if bool((min_val > max_val).any()):
        raise ValueError("qparams_from_range: expected min_val <= max_val")
    min_neg = torch.clamp(min_val, max=0.0)
    max_pos = torch.clamp(max_val, min=0.0)
    eps = torch.finfo(torch.float32).eps
    if symmetric:
        amax = torch.maximum(-min_neg, max_pos)
        scale = (amax / ((quant_max - quant_min) / 2)).clamp_min(eps)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = ((max_pos - min_neg) / float(quant_max - quant_min)).clamp_min(eps)
        zero_point = (quant_min - torch.round(min_neg / scale)).clamp(quant_min, quant_max).to(torch.int32)
    return scale, zero_point


def sqnr(x: Tensor, x_quantized: Tensor) -> float:
    r"""Signal-to-quantization-noise ratio in decibels,
    :math:`10 \log_{10} \left(\sum x^2 / \sum (x - \hat x)^2\right)`.

    Returns ``inf`` when the two are equal.
    """
    signal = x.detach().double().pow(2).sum()
    noise = (x.detach().double() - x_quantized.detach().double()).pow(2).sum()
    if noise == 0:
        return math.inf
    return (10 * torch.log10(signal / noise)).item()


# ------------------------------------------------------------ fake quantize (STE), per tensor
class FakeQuantizeFunction(torch.autograd.Function):
    r"""Per-tensor fake quantization with the straight-through estimator.

    Forward, with :math:`s` rounded to float32 and :math:`1/s` computed in float32, exactly as
    the CPU kernel of :func:`torch.fake_quantize_per_tensor_affine` does:

    .. math::

        q = \operatorname{round}(x \cdot (1/s)) + z, \qquad
        y = (\operatorname{clamp}(q, q_{\min}, q_{\max}) - z)\, s .

    ``round`` is round-half-to-even (``std::nearbyint``), the product :math:`x \cdot (1/s)` is
    taken in float32 for float32/float16/bfloat16 inputs (float64 for float64), and the last
    product in float32. NaN in :math:`q` clamps to :math:`q_{\min}` (``std::fmax``).

    Backward (STE): the rounding is treated as the identity, so the gradient passes where
    :math:`q` fell inside the range and is zero where it was clamped:
    :math:`\partial x = g \cdot [q_{\min} \le q \le q_{\max}]`.

    Returns ``(y, mask)``; the boolean mask is what backward needs and is not differentiable.
    The backward is linear in ``g`` with a constant mask, so it is twice differentiable.
    """

    @staticmethod
    def forward(x: Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int):
        sc = torch.tensor(scale, dtype=torch.float32)                  # scale as the kernel's float
        inv_scale = 1.0 / sc                                           # float32, as `1.0f / sc`
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        # One new tensor q, then in-place steps on it (the same operations in the same order,
        # so the same rounding, with fewer allocations and passes over memory).
        q = x.to(work) * inv_scale.to(work)                            # x * inv_scale
        q.round_().add_(zero_point)                                    # z + nearbyint(x * inv_scale)
        mask = (q >= quant_min).logical_and_(q <= quant_max)           # NaN -> False
        torch.fmax(q, torch.tensor(float(quant_min), dtype=work), out=q)   # fmax: NaN -> quant_min
        torch.fmin(q, torch.tensor(float(quant_max), dtype=work), out=q)
        y = q.sub_(zero_point).to(torch.float32).mul_(sc)              # (qval - z) * sc in float
        return y.to(x.dtype), mask

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, mask = output
        ctx.mark_non_differentiable(mask)
        ctx.save_for_backward(mask)                                    # one bool per element

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_mask: Tensor | None):
        (mask,) = ctx.saved_tensors
        dx = grad_out * mask if ctx.needs_input_grad[0] else None
        return dx, None, None, None, None


# ---------------------------------------------------------- fake quantize (STE), per channel
class FakeQuantizePerChannelFunction(torch.autograd.Function):
    r"""Per-channel fake quantization with the STE, as :func:`torch.fake_quantize_per_channel_affine`.

    Each slice ``x.select(axis, c)`` uses its own ``scale[c]`` and ``zero_point[c]``. With an
    integer zero point the CPU kernel computes
    :math:`q = \operatorname{int64}(z + \operatorname{round}(x \cdot (1/s)))` (the float sum
    converted to int64: an out-of-range, infinite or NaN value becomes the most negative int64,
    which then clamps to :math:`q_{\min}`, even for :math:`+\infty`); with a floating zero point
    it rounds after adding, :math:`q = \operatorname{round}(z + x \cdot (1/s))`, the sum taken
    as a fused multiply-add (one rounding), as the compiled kernel does. Then
    :math:`y = (\operatorname{clamp}(q, q_{\min}, q_{\max}) - z)\, s`.
    Backward: :math:`\partial x = g \cdot [q_{\min} \le q \le q_{\max}]`.
    """

    @staticmethod
    def forward(x: Tensor, scale: Tensor, zero_point: Tensor, axis: int, quant_min: int, quant_max: int):
        shape = [1] * x.dim()
        shape[axis] = -1                                               # broadcast along axis: (1, .., C, .., 1)
        sc = scale.to(torch.float32).reshape(shape)
        inv_scale = 1.0 / sc                                           # float32 per channel
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        if zero_point.is_floating_point():
            zp = zero_point.to(work).reshape(shape)
            # lrintf(z + x * inv_scale): the kernel is compiled with fused multiply-add, so
            # x * inv_scale + z is rounded once, and lrintf takes a float (float64 inputs too)
            r = (x.double() * inv_scale.double() + zp.double()).to(torch.float32)
            q = _to_int64(torch.round(r))
            mask = (q >= quant_min) & (q <= quant_max)
            y = (q.clamp(quant_min, quant_max).double() - zp.double()) * sc.double()  # double, then stored
        else:
            zp = zero_point.to(torch.int64).reshape(shape)
            t = x.to(work) * inv_scale.to(work)
            q = _to_int64(torch.round(t) + zp.to(work))                # static_cast<int64_t>(z + nearbyint)
            mask = (q >= quant_min) & (q <= quant_max)
            y = (q.clamp(quant_min, quant_max) - zp).double() * sc.double()  # double product, then stored
        return y.to(x.dtype), mask

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, mask = output
        ctx.mark_non_differentiable(mask)
        ctx.save_for_backward(mask)

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_mask: Tensor | None):
        (mask,) = ctx.saved_tensors
        dx = grad_out * mask if ctx.needs_input_grad[0] else None
        return dx, None, None, None, None, None


def _to_int64(q: Tensor) -> Tensor:
    """Float to int64 as the x86 conversion does: NaN, inf and out-of-range values become the
    most negative int64 (``static_cast<int64_t>`` / ``lrintf`` in the CPU kernels)."""
    limit = 2.0**63
    valid = torch.isfinite(q) & (q >= -limit) & (q < limit)
    return torch.where(valid, q, torch.full_like(q, -limit)).to(torch.int64)


def fake_quantize(x: Tensor, scale: float | Tensor, zero_point: int | Tensor, quant_min: int, quant_max: int,
                  axis: int | None = None) -> Tensor:
    r"""Quantize to integers and back, :math:`y = (\operatorname{clamp}(\operatorname{round}(x/s) + z,
    q_{\min}, q_{\max}) - z)\, s`, with the straight-through estimator as gradient.

    Bit-for-bit equal to :func:`torch.fake_quantize_per_tensor_affine` (``axis=None``) or
    :func:`torch.fake_quantize_per_channel_affine` (``axis`` given) on CPU, gradient included.
    See :class:`FakeQuantizeFunction` and :class:`FakeQuantizePerChannelFunction`.

    Args:
        x: input, any shape, floating point.
        scale: step size :math:`s > 0`: a number (or one-element tensor) per tensor, or a
            ``(C,)`` tensor per channel.
        zero_point: integer :math:`z` in ``[quant_min, quant_max]`` mapped to 0.0; a number per
            tensor, or a ``(C,)`` int32 (or float) tensor per channel.
        quant_min: smallest integer level.
        quant_max: largest integer level (at most :math:`2^{16}` levels in all).
        axis: channel dimension for per-channel quantization, ``None`` for per tensor.

    Shape:
        - Input: :math:`(*)`; with ``axis``, ``x.shape[axis] == C``.
        - Output: same shape and dtype as the input.

    Examples:
        >>> fake_quantize(torch.tensor([0.26, -1.0, 9.0]), 0.5, 0, -4, 3)
        tensor([ 0.5000, -1.0000,  1.5000])
    """
    where = "fake_quantize"
    check_tensor(x, where)
    _check_qrange(where, quant_min, quant_max)
    if axis is None:
        scale = _scale_value(where, scale)
        zero_point = _zero_point_value(where, zero_point, quant_min, quant_max)
        return FakeQuantizeFunction.apply(x, scale, zero_point, quant_min, quant_max)[0]
    if not -x.dim() <= axis < max(x.dim(), 1):
        raise ValueError(f"{where}: expected axis in [{-x.dim()}, {x.dim() - 1}], got {axis}")
    axis = axis % x.dim()
    scale = torch.as_tensor(scale)
    zero_point = torch.as_tensor(zero_point)
    channels = x.shape[axis]
    for name, t in (("scale", scale), ("zero_point", zero_point)):
        if t.shape != (channels,):
            raise ValueError(f"{where}: expected {name} of shape ({channels},) for axis {axis}, "
                             f"got {tuple(t.shape)}")
    if not bool(((scale > 0) & torch.isfinite(scale)).all()):
        raise ValueError(f"{where}: expected positive finite scales, got min {scale.min().item()}")
    if not zero_point.is_floating_point() and bool(((zero_point < quant_min) | (zero_point > quant_max)).any()):
        raise ValueError(f"{where}: expected zero_point in [quant_min, quant_max] = [{quant_min}, {quant_max}], "
                         f"got values from {zero_point.min().item()} to {zero_point.max().item()}")
    return FakeQuantizePerChannelFunction.apply(x, scale, zero_point, axis, quant_min, quant_max)[0]


# ----------------------------------------------------------------------------------- LSQ
class LSQFunction(torch.autograd.Function):
    r"""Learned step size quantization (LSQ) with gradients for ``x``, ``scale`` and ``zero_point``.

    Forward: :func:`fake_quantize` with :math:`z = \operatorname{clamp}(\operatorname{round}(z_f),
    q_{\min}, q_{\max})` (the zero point is a float parameter).

    Backward, treating ``round`` as the identity (STE), with :math:`q = \operatorname{round}(z + x/s)`,
    :math:`\hat x = (\operatorname{clamp}(q) - z) s` and the gradient scale :math:`\gamma`
    (``grad_factor``):

    .. math::

        \frac{\partial y}{\partial x} = [q_{\min} \le q \le q_{\max}], \quad
        \frac{\partial y}{\partial s} = \gamma \begin{cases}
            q_{\min} - z & q < q_{\min} \\ q_{\max} - z & q > q_{\max} \\
            (\hat x - x)/s & \text{else} \end{cases}, \quad
        \frac{\partial y}{\partial z} = \gamma \begin{cases}
            -s & q \text{ clamped} \\ 0 & \text{else.} \end{cases}

    Inside the range :math:`(\hat x - x)/s = \operatorname{round}(x/s) - x/s`: the rounding
    error, which the true derivative of :math:`s \operatorname{round}(x/s)` (namely
    :math:`\operatorname{round}(x/s)`) lacks; it is what lets LSQ move :math:`s` toward the
    step that balances rounding and clipping error.
    As in ``torch._fake_quantize_learnable_per_tensor_affine``, backward rounds the zero point
    as :math:`z_f + 1/2` truncated toward zero (forward uses round-half-even: they differ at
    :math:`z_f = k + 1/2` with :math:`k` even, and for negative :math:`z_f`), :math:`\gamma` scales the ``scale`` and
    ``zero_point`` gradients but not the ``x`` gradient, and both are summed over every element
    (per channel: over every element of the channel). Not twice differentiable
    (``once_differentiable``): the mask and the rounding error are piecewise constant.
    """

    @staticmethod
    def forward(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                grad_factor: float, axis: int | None) -> Tensor:
        shape = _channel_shape(x, axis)
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        s = scale.detach().to(work).reshape(shape)
        inv_scale = 1.0 / s
        z = torch.round(zero_point.detach().to(torch.float32)).clamp(quant_min, quant_max).to(work).reshape(shape)
        q = torch.round(x.to(work) * inv_scale) + z                     # as fake_quantize
        q = torch.fmin(torch.fmax(q, torch.tensor(float(quant_min), dtype=work)),
                       torch.tensor(float(quant_max), dtype=work))
        return ((q - z) * s).to(x.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, scale, zero_point, quant_min, quant_max, grad_factor, axis = inputs
        ctx.save_for_backward(x, scale, zero_point)
        ctx.qrange, ctx.grad_factor, ctx.axis = (quant_min, quant_max), grad_factor, axis

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, scale, zero_point = ctx.saved_tensors
        quant_min, quant_max = ctx.qrange
        shape = _channel_shape(x, ctx.axis)
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        s = scale.to(work).reshape(shape)
        inv_scale = 1.0 / s
        z = torch.trunc((zero_point.to(work) + 0.5).clamp(quant_min, quant_max)).reshape(shape)  # int64(clamp(z + 0.5))
        if work == torch.float32:                                      # nearbyint(z + x * inv_scale), one fused
            q = torch.round((x.double() * inv_scale.double() + z.double()).float())  # multiply-add rounding
        else:
            q = torch.round(z + x * inv_scale)
        below, above = q < quant_min, q > quant_max
        inside = ~(below | above)
        g = grad_out.to(work)
        dx = ds = dz = None
        if ctx.needs_input_grad[0]:
            dx = (g * inside).to(x.dtype)
        reduce = [d for d in range(x.dim()) if ctx.axis is None or d != ctx.axis]   # all dims but the channel
        if ctx.needs_input_grad[1]:
            x_hat = (q.clamp(quant_min, quant_max) - z) * s            # dequantized value
            ds_inside = g * (x_hat - x.to(work)) * inv_scale
            ds_outside = g * torch.where(below, quant_min - z, quant_max - z)
            ds = (torch.where(inside, ds_inside, ds_outside) * ctx.grad_factor).sum(reduce)
            ds = ds.reshape(scale.shape).to(scale.dtype)                # (1,) or (C,)
        if ctx.needs_input_grad[2]:
            dz = torch.where(inside, torch.zeros_like(g), -g * s) * ctx.grad_factor
            dz = dz.sum(reduce).reshape(zero_point.shape).to(zero_point.dtype)
        return dx, ds, dz, None, None, None, None


def _channel_shape(x: Tensor, axis: int | None) -> list[int]:
    """``[1] * x.dim()`` with ``-1`` at ``axis`` (per-channel broadcasting), or ``[1]*dim`` per tensor."""
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    return shape


def lsq_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                 grad_factor: float = 1.0, axis: int | None = None) -> Tensor:
    r"""Learned step size quantization (LSQ): :func:`fake_quantize` whose ``scale`` and
    ``zero_point`` are learnable tensors.

    Output and gradients equal ``torch._fake_quantize_learnable_per_tensor_affine(x, scale,
    zero_point, quant_min, quant_max, grad_factor)``; see :class:`LSQFunction` for the gradients.
    Esser et al. recommend ``grad_factor`` :math:`= 1/\sqrt{N q_{\max}}` with :math:`N` the
    number of elements per sample (or weights per layer).

    Args:
        x: input, any shape, floating point.
        scale: positive step size, shape ``(1,)`` (or ``(C,)`` with ``axis``).
        zero_point: float zero point of the same shape (rounded in forward).
        quant_min: smallest integer level.
        quant_max: largest integer level.
        grad_factor: multiplies the ``scale`` and ``zero_point`` gradients.
        axis: channel dimension for per-channel scales, or ``None``.

    Shape:
        - Input: :math:`(*)`; output: same shape and dtype.

    Examples:
        >>> s = torch.tensor([0.5], requires_grad=True)
        >>> y = lsq_quantize(torch.tensor([0.3, 2.0]), s, torch.tensor([0.0]), -2, 1)
        >>> y.sum().backward(); s.grad
        tensor([1.4000])
    """
    where = "lsq_quantize"
    check_tensor(x, where)
    check_tensor(scale, where, "scale", ndim=1)
    check_tensor(zero_point, where, "zero_point", ndim=1)
    _check_qrange(where, quant_min, quant_max)
    channels = 1 if axis is None else x.shape[axis]
    if axis is not None:
        axis = axis % x.dim()
    for name, t in (("scale", scale), ("zero_point", zero_point)):
        if t.shape[0] != channels:
            raise ValueError(f"{where}: expected {name} of shape ({channels},), got {tuple(t.shape)}")
    if not bool(((scale > 0) & torch.isfinite(scale)).all()):
        raise ValueError(f"{where}: expected a positive finite scale, got {scale.detach().min().item()}")
    z = torch.round(zero_point.detach())
    if not bool(((z >= quant_min) & (z <= quant_max)).all()):
        raise ValueError(f"{where}: expected zero_point in [quant_min, quant_max] = [{quant_min}, {quant_max}], "
                         f"got {zero_point.detach().tolist()}")
    return LSQFunction.apply(x, scale, zero_point, quant_min, quant_max, float(grad_factor), axis)


# ---------------------------------------------------------------------------------- PACT
class PACTFunction(torch.autograd.Function):
    r"""PACT: clip to :math:`[0, \alpha]`, then quantize uniformly to :math:`2^b` levels.

    .. math::

        y = \operatorname{clamp}(x, 0, \alpha), \qquad
        y_q = \operatorname{round}\!\left(y \cdot \frac{2^b - 1}{\alpha}\right) \frac{\alpha}{2^b - 1}.

    Backward, as published (Choi et al. 2018, eq. 3), with the STE through the rounding:
    :math:`\partial y_q / \partial x = [0 \le x < \alpha]` and
    :math:`\partial y_q / \partial \alpha = [x \ge \alpha]`. Inputs above the clip push
    :math:`\alpha` up; weight decay on :math:`\alpha` pulls it down. Not twice differentiable
    (``once_differentiable``).
    """

    @staticmethod
    def forward(x: Tensor, alpha: Tensor, bits: int) -> Tensor:
        levels = 2**bits - 1
        a = alpha.reshape(())
        y = torch.minimum(x.clamp_min(0), a)                           # clip to [0, alpha]
        step = a / levels
        return torch.round(y / step) * step

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, alpha, _ = inputs
        ctx.save_for_backward(x, alpha)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, alpha = ctx.saved_tensors
        a = alpha.reshape(())
        dx = dalpha = None
        if ctx.needs_input_grad[0]:
            dx = grad_out * ((x >= 0) & (x < a))
        if ctx.needs_input_grad[1]:
            dalpha = (grad_out * (x >= a)).sum().reshape(alpha.shape)  # (1,)
        return dx, dalpha, None


def pact_quantize(x: Tensor, alpha: Tensor, bits: int) -> Tensor:
    r"""PACT activation quantization: clip to the learnable :math:`[0, \alpha]`, quantize to
    ``bits`` bits. See :class:`PACTFunction` for the gradient.

    Args:
        x: input activations, any shape.
        alpha: learnable clipping level, shape ``(1,)``, positive.
        bits: bit width, 2 to 16.

    Shape:
        - Input: :math:`(*)`; output: same shape, values in :math:`\{k\alpha/(2^b-1)\}`.

    Examples:
        >>> pact_quantize(torch.tensor([-1.0, 0.4, 3.0]), torch.tensor([1.0]), 2)
        tensor([0.0000, 0.3333, 1.0000])
    """
    where = "pact_quantize"
    check_tensor(x, where)
    check_tensor(alpha, where, "alpha", ndim=1, size={0: 1})
    _check_bits(where, bits)
    if not (math.isfinite(alpha.item()) and alpha.item() > 0):
        raise ValueError(f"{where}: expected a positive finite alpha, got {alpha.item()}")
    return PACTFunction.apply(x, alpha, bits)


# ---------------------------------------------------------------------------- observers
class Observer(nn.Module):
    """Base class of the observers: watches tensors in ``forward`` (returns them unchanged) and
    turns what it saw into ``(scale, zero_point)`` with :meth:`Observer.calculate_qparams`.

    Args:
        bits: bit width, 2 to 16.
        symmetric: symmetric signed range instead of asymmetric unsigned.
        ch_axis: channel dimension for per-channel ranges, or ``None``.
        channels: number of channels along ``ch_axis``.
    """

    def __init__(self, bits: int = 8, symmetric: bool = False, ch_axis: int | None = None,
                 channels: int = 1) -> None:
        super().__init__()
        self.bits = _check_bits(type(self).__name__, bits)
        self.symmetric = symmetric
        self.ch_axis = ch_axis
        self.quant_min, self.quant_max = quant_range(bits, symmetric)
        shape = () if ch_axis is None else (channels,)                 # sized up front: state_dict loads
        self.register_buffer("min_val", torch.full(shape, float("inf")))
        self.register_buffer("max_val", torch.full(shape, float("-inf")))

    def _batch_range(self, x: Tensor) -> tuple[Tensor, Tensor]:
        where = type(self).__name__
        check_tensor(x, where)
        if x.numel() == 0:
            raise ValueError(f"{where}: expected a non-empty tensor to observe, got shape {tuple(x.shape)}")
        _check_finite(where, x)
        x = x.detach().float()
        if self.ch_axis is None:
            return x.min(), x.max()
        flat = x.transpose(0, self.ch_axis).reshape(x.shape[self.ch_axis], -1)   # (C, rest)
        return flat.min(1).values, flat.max(1).values

    @property
    def observed(self) -> bool:
        """Whether any tensor has been observed yet."""
        return bool(torch.isfinite(self.min_val).all())

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        """``(scale, zero_point)`` for the range observed so far (see :func:`qparams_from_range`)."""
        if not self.observed:
            raise RuntimeError(f"{type(self).__name__}: no tensor observed yet; run data through it first")
        return qparams_from_range(self.min_val, self.max_val, self.quant_min, self.quant_max, self.symmetric)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, symmetric={self.symmetric}, ch_axis={self.ch_axis}"


class MinMaxObserver(Observer):
    r"""Records the smallest and largest value ever seen (per tensor, or per channel along
    ``ch_axis``); the range is :math:`[\min x, \max x]`.

    Args:
        bits: bit width, 2 to 16.
        symmetric: symmetric signed range (weights) instead of asymmetric unsigned (activations).
        ch_axis: channel dimension for per-channel ranges, or ``None``.
        channels: number of channels along ``ch_axis`` (sizes the buffers, so that a saved
            ``state_dict`` loads into a fresh observer).

    Attributes:
        min_val: smallest value seen (``inf`` before the first call).
        max_val: largest value seen.

    Examples:
        >>> obs = MinMaxObserver(bits=8)
        >>> _ = obs(torch.tensor([-1.0, 0.0, 3.0]))
        >>> [round(v.item(), 4) for v in obs.calculate_qparams()]
        [0.0157, 64]
    """

    def forward(self, x: Tensor) -> Tensor:
        lo, hi = self._batch_range(x)
        if self.min_val.shape != lo.shape:
            self.min_val, self.max_val = lo.clone(), hi.clone()
        else:
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)
        return x


class MovingAverageMinMaxObserver(Observer):
    r"""Exponential moving average of each batch's min and max:
    :math:`m \leftarrow m + c\,(\min x - m)` (and the same for the max), starting from the first batch.

    ``averaging_constant=1`` tracks only the latest tensor (right for weights, which change
    every step). Args as :class:`MinMaxObserver`, plus ``averaging_constant`` :math:`c \in (0, 1]`.
    """

    def __init__(self, bits: int = 8, symmetric: bool = False, ch_axis: int | None = None,
                 averaging_constant: float = 0.01, channels: int = 1) -> None:
        super().__init__(bits, symmetric, ch_axis, channels)
        if not 0 < averaging_constant <= 1:
            raise ValueError(f"{type(self).__name__}: expected averaging_constant in (0, 1], "
                             f"got {averaging_constant}")
        self.averaging_constant = averaging_constant

    def _new_range(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The range this call observes in ``x`` (before averaging)."""
        return self._batch_range(x)

    def forward(self, x: Tensor) -> Tensor:
        lo, hi = self._new_range(x)
        if not self.observed or self.min_val.shape != lo.shape:
            self.min_val, self.max_val = lo.clone(), hi.clone()
        else:
            c = self.averaging_constant
            self.min_val = self.min_val + c * (lo - self.min_val)
            self.max_val = self.max_val + c * (hi - self.max_val)
        return x


def mse_clip_search(x: Tensor, bits: int, symmetric: bool = False, ch_axis: int | None = None,
                    num_candidates: int = 100) -> tuple[Tensor, Tensor]:
    r"""The clipping range :math:`[c \min x, c \max x]`, :math:`c \in (0, 1]`, whose fake
    quantization has the least mean squared error :math:`\operatorname{mean}(x - \hat x)^2`.

    Tries ``num_candidates`` evenly spaced ratios :math:`c` (grid search; per channel, each
    channel picks its own). At low bit widths the min-max range (:math:`c = 1`) wastes levels on
    rare outliers, and a smaller :math:`c` trades a little clipping error for a smaller step.

    Args:
        x: values to quantize (finite, non-empty).
        bits: bit width, 2 to 16.
        symmetric: symmetric signed range.
        ch_axis: channel dimension for a per-channel search, or ``None``.
        num_candidates: number of ratios tried.

    Returns:
        ``(min_val, max_val)``: the best range, scalars or ``(C,)``.
    """
    where = "mse_clip_search"
    check_tensor(x, where)
    _check_bits(where, bits)
    if x.numel() == 0:
        raise ValueError(f"{where}: expected a non-empty tensor, got shape {tuple(x.shape)}")
    _check_finite(where, x)
    quant_min, quant_max = quant_range(bits, symmetric)
    x = x.detach().float()
    flat = x.reshape(1, -1) if ch_axis is None else x.transpose(0, ch_axis).reshape(x.shape[ch_axis], -1)  # (C, rest)
    lo, hi = flat.min(1).values.clamp(max=0), flat.max(1).values.clamp(min=0)                              # (C,)
    ratios = torch.arange(1, num_candidates + 1, dtype=torch.float32) / num_candidates        # (K,)
    errs = []
    for chunk in ratios.split(16):                                     # 16 candidates at a time
        k = chunk.numel()
        scale, zp = qparams_from_range(chunk[:, None] * lo, chunk[:, None] * hi, quant_min, quant_max, symmetric)
        many = flat.expand(k, *flat.shape).reshape(k * flat.shape[0], -1)                   # (k*C, rest)
        xq = fake_quantize(many, scale.reshape(-1), zp.reshape(-1), quant_min, quant_max, axis=0)
        errs.append((xq - many).pow(2).mean(1).reshape(k, -1))                              # (k, C)
    best = torch.cat(errs).argmin(0)                                   # (C,): first (smallest) best ratio
    best_lo, best_hi = ratios[best] * lo, ratios[best] * hi
    if ch_axis is None:
        return best_lo[0], best_hi[0]
    return best_lo, best_hi


class MSEObserver(MovingAverageMinMaxObserver):
    r"""Picks the range by :func:`mse_clip_search` on each observed tensor, averaged over calls
    like :class:`MovingAverageMinMaxObserver` (the first call sets it).

    Args:
        bits: bit width, 2 to 16.
        symmetric: symmetric signed range.
        ch_axis: channel dimension, or ``None``.
        averaging_constant: weight of the newest range, in (0, 1].
        num_candidates: ratios tried by the search.
    """

    def __init__(self, bits: int = 8, symmetric: bool = False, ch_axis: int | None = None,
                 averaging_constant: float = 1.0, num_candidates: int = 100, channels: int = 1) -> None:
        super().__init__(bits, symmetric, ch_axis, averaging_constant, channels)
        self.num_candidates = num_candidates

    def _new_range(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._batch_range(x)                                           # validation only
        return mse_clip_search(x, self.bits, self.symmetric, self.ch_axis, self.num_candidates)


_OBSERVERS = {"minmax": MinMaxObserver, "moving_average": MovingAverageMinMaxObserver, "mse": MSEObserver}


def _make_observer(kind: str, bits: int, symmetric: bool, ch_axis: int | None, averaging_constant: float,
                   channels: int):
    if kind not in _OBSERVERS:
        raise ValueError(f"FakeQuantize: expected observer in {sorted(_OBSERVERS)}, got {kind!r}")
    if kind == "minmax":
        return MinMaxObserver(bits, symmetric, ch_axis, channels=channels)
    return _OBSERVERS[kind](bits, symmetric, ch_axis, averaging_constant, channels=channels)


# ------------------------------------------------------------------------ quantizer modules
class FakeQuantize(nn.Module):
    r"""Observer + :func:`fake_quantize`: watches the tensors it is given, and quantizes them.

    In training mode with the observer enabled, each call updates the observer and copies its
    ``(scale, zero_point)`` into buffers; in eval mode the buffers are frozen (so evaluating
    on test data never moves the range). :meth:`FakeQuantize.enable_fake_quant` ``(False)`` passes tensors
    through unchanged; together with the observer this is calibration mode (see :func:`calibrate`).

    Args:
        bits: bit width, 2 to 16.
        symmetric: symmetric signed range (weights) or asymmetric unsigned (activations).
        ch_axis: channel dimension for per-channel quantization, or ``None`` (per tensor).
        observer: ``"minmax"``, ``"moving_average"`` or ``"mse"``.
        averaging_constant: for the moving-average observers.
        channels: number of channels along ``ch_axis``.

    Attributes:
        scale: current step size(s), float32 buffer, shape ``(1,)`` or ``(C,)``.
        zero_point: current zero point(s), int32 buffer.
        observer_enabled: whether training-mode calls update the range.
        fake_quant_enabled: whether the output is quantized.

    Examples:
        >>> fq = FakeQuantize(bits=4)
        >>> y = fq(torch.linspace(0, 1, 5))
        >>> fq.scale, fq.zero_point
        (tensor([0.0667]), tensor([0], dtype=torch.int32))
    """

    def __init__(self, bits: int = 8, symmetric: bool = False, ch_axis: int | None = None,
                 observer: str = "moving_average", averaging_constant: float = 0.01, channels: int = 1) -> None:
        super().__init__()
        self.bits, self.symmetric, self.ch_axis = _check_bits("FakeQuantize", bits), symmetric, ch_axis
        self.quant_min, self.quant_max = quant_range(bits, symmetric)
        n = 1 if ch_axis is None else channels
        self.observer = _make_observer(observer, bits, symmetric, ch_axis, averaging_constant, n)
        self.register_buffer("scale", torch.ones(n))
        self.register_buffer("zero_point", torch.zeros(n, dtype=torch.int32))
        self.observer_enabled = True
        self.fake_quant_enabled = True

    def enable_observer(self, enabled: bool = True) -> FakeQuantize:
        """Let training-mode calls update the range (``False`` freezes it). Returns ``self``."""
        self.observer_enabled = enabled
        return self

    def enable_fake_quant(self, enabled: bool = True) -> FakeQuantize:
        """Quantize the output (``False`` passes tensors through unchanged). Returns ``self``."""
        self.fake_quant_enabled = enabled
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() == 0:                                             # nothing to observe or round
            return x.clone()
        if self.observer_enabled and self.training:
            self.observer(x.detach())
            scale, zero_point = self.observer.calculate_qparams()
            self.scale = scale.reshape(-1).to(self.scale.device)
            self.zero_point = zero_point.reshape(-1).to(self.zero_point.device)
        if not self.fake_quant_enabled:
            return x
        if not self.observer.observed:
            raise RuntimeError("FakeQuantize: no range yet; call it in training mode (or calibrate) first")
        if self.ch_axis is None:
            return fake_quantize(x, self.scale, self.zero_point, self.quant_min, self.quant_max)
        return fake_quantize(x, self.scale, self.zero_point, self.quant_min, self.quant_max, axis=self.ch_axis)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, symmetric={self.symmetric}, ch_axis={self.ch_axis}, "
                f"observer_enabled={self.observer_enabled}, fake_quant_enabled={self.fake_quant_enabled}")


def _initialize_once(quantizer: nn.Module, x: Tensor) -> None:
    """Initialize a learnable quantizer from its first input, which must come in training mode."""
    if not bool(quantizer.initialized):
        if not quantizer.training:
            raise RuntimeError(f"{type(quantizer).__name__}: not initialized; "
                               "call it in training mode (or calibrate) first")
        quantizer.initialize(x)


class LSQQuantizer(nn.Module):
    r"""Learnable step size quantizer: :func:`lsq_quantize` with ``scale`` (and, asymmetric,
    ``zero_point``) as parameters.

    The first call in training mode (or under :func:`calibrate`) initializes the scale as in
    Esser et al., :math:`s = 2\,\operatorname{mean}|x| / \sqrt{q_{\max}}` (per channel with
    ``ch_axis``), and the zero point to :math:`q_{\min}` for asymmetric (non-negative) data. The
    gradient scale is :math:`1/\sqrt{N q_{\max}}` with :math:`N` the elements per channel or per sample.

    Args:
        bits: bit width, 2 to 16.
        symmetric: symmetric signed range (zero point fixed at 0, not learned).
        ch_axis: channel dimension for per-channel scales, or ``None``.
        channels: number of channels (with ``ch_axis``).

    Attributes:
        scale: learnable step size, ``(1,)`` or ``(C,)``.
        zero_point: learnable float zero point (asymmetric) or a zero buffer (symmetric).
    """

    def __init__(self, bits: int = 8, symmetric: bool = False, ch_axis: int | None = None, channels: int = 1) -> None:
        super().__init__()
        self.bits, self.symmetric, self.ch_axis = _check_bits("LSQQuantizer", bits), symmetric, ch_axis
        self.quant_min, self.quant_max = quant_range(bits, symmetric)
        n = channels if ch_axis is not None else 1
        self.scale = nn.Parameter(torch.ones(n))
        if symmetric:
            self.register_buffer("zero_point", torch.zeros(n))
        else:
            self.zero_point = nn.Parameter(torch.full((n,), float(self.quant_min)))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the scale from ``x`` (LSQ's :math:`2\\,\\mathrm{mean}|x|/\\sqrt{q_{\\max}}`)."""
        _check_finite("LSQQuantizer", x)
        ax = x.detach().abs().float()
        if self.ch_axis is None:
            mean_abs = ax.mean().reshape(1)
        else:
            mean_abs = ax.transpose(0, self.ch_axis).reshape(x.shape[self.ch_axis], -1).mean(1)  # (C,)
        self.scale.copy_((2 * mean_abs / math.sqrt(self.quant_max)).clamp_min(1e-8))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        _initialize_once(self, x)
        if self.ch_axis is not None:
            per = x.numel() // max(x.shape[self.ch_axis], 1)           # elements per channel
        else:
            per = math.prod(x.shape[1:]) if x.dim() > 1 else x.numel()  # elements per sample
        grad_factor = 1.0 / math.sqrt(max(per, 1) * self.quant_max)
        # An optimizer step can push the learned scale to zero or below; use at least
        # float32's eps, as torch's _LearnableFakeQuantize does, but in the graph (a
        # differentiable clamp) instead of by writing to the parameter's .data.
        scale = self.scale.clamp_min(torch.finfo(torch.float32).eps)
        return lsq_quantize(x, scale, self.zero_point, self.quant_min, self.quant_max,
                            grad_factor, self.ch_axis)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, symmetric={self.symmetric}, ch_axis={self.ch_axis}"


class PACTQuantizer(nn.Module):
    r"""PACT activation quantizer: :func:`pact_quantize` with a learnable clip ``alpha``.

    Args:
        bits: bit width, 2 to 16.
        alpha: initial clipping level. ``None`` (default) sets it on the first call in training
            mode (or under :func:`calibrate`) to the 99th percentile of that input, so that the
            largest 1% start clipped and the loss can move :math:`\alpha` both ways (with no
            input above the clip its gradient is zero); the PACT paper starts at 10.

    Attributes:
        alpha: learnable ``(1,)`` clipping level.
    """

    def __init__(self, bits: int = 8, alpha: float | None = None) -> None:
        super().__init__()
        self.bits = _check_bits("PACTQuantizer", bits)
        self.alpha = nn.Parameter(torch.tensor([1.0 if alpha is None else float(alpha)]))
        self.register_buffer("initialized", torch.tensor(alpha is not None))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``alpha`` to the 99th percentile of ``x`` (at least a small positive number)."""
        _check_finite("PACTQuantizer", x)
        flat = x.detach().float().flatten()
        if flat.numel() > 100_000:                                     # torch.quantile has a size limit
            flat = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:100_000]]
        self.alpha.fill_(max(torch.quantile(flat, 0.99).item(), 1e-3))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        _initialize_once(self, x)
        return pact_quantize(x, self.alpha, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def _act_quantizer(method: str, bits: int, observer: str):
    if method == "ste":
        return FakeQuantize(bits, symmetric=False, observer=observer,
                            averaging_constant=1.0 if observer == "mse" else 0.01)
    if method == "lsq":
        return LSQQuantizer(bits, symmetric=False)
    if method == "pact":
        return PACTQuantizer(bits)
    raise ValueError(f"expected method 'ste', 'lsq' or 'pact', got {method!r}")


def _weight_quantizer(method: str, bits: int, observer: str, channels: int):
    if method == "lsq":
        return LSQQuantizer(bits, symmetric=True, ch_axis=0, channels=channels)
    # weights change every step: track the current range (averaging constant 1)
    return FakeQuantize(bits, symmetric=True, ch_axis=0, observer="mse" if observer == "mse" else "moving_average",
                        averaging_constant=1.0, channels=channels)


# ------------------------------------------------------------------------------- layers
class QuantLinear(Linear):
    r"""A :class:`~layers.linear.Linear` that fake-quantizes its input (per tensor) and its
    weight (per output channel, symmetric) before the affine map:
    :math:`y = Q_a(x)\, Q_w(W)^\top + b`. The bias stays in float.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: learn an additive bias.
        weight_bits: bit width of the weights, 2 to 16.
        act_bits: bit width of the input activations, 2 to 16.
        method: how the quantizers learn: ``"ste"`` (observed ranges, straight-through
            estimator), ``"lsq"`` (learned step sizes) or ``"pact"`` (learned activation clip;
            weights as ``"ste"``).
        observer: for ``"ste"``: ``"moving_average"`` / ``"minmax"`` (activations) or
            ``"mse"`` (both weights and activations, clip by :func:`mse_clip_search`).

    Attributes:
        weight, bias: as :class:`~layers.linear.Linear` (same names, so ``load_state_dict`` of
            a float model's weights works with ``strict=False``).
        act_quant: quantizer of the input.
        weight_quant: quantizer of the weight.

    Examples:
        >>> layer = QuantLinear(4, 3, weight_bits=4, act_bits=4)
        >>> layer(torch.rand(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, weight_bits: int = 8,
                 act_bits: int = 8, method: str = "ste", observer: str = "moving_average",
                 device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.weight_bits, self.act_bits, self.method = weight_bits, act_bits, method
        self.act_quant = _act_quantizer(method, act_bits, observer)
        self.weight_quant = _weight_quantizer(method, weight_bits, observer, out_features)

    @classmethod
    def from_float(cls, module: Linear, **kwargs) -> QuantLinear:
        """A :class:`QuantLinear` with ``module``'s shape and a copy of its parameters."""
        new = cls(module.in_features, module.out_features, module.bias is not None,
                  device=module.weight.device, dtype=module.weight.dtype, **kwargs)
        new.load_state_dict(module.state_dict(), strict=False)
        new.train(module.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return linear(self.act_quant(x), self.weight_quant(self.weight), self.bias)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", weight_bits={self.weight_bits}, act_bits={self.act_bits}, "
                f"method={self.method!r}")


class QuantConv2d(Conv2d):
    r"""A :class:`~layers.conv.Conv2d` that fake-quantizes its input (per tensor) and its
    weight (per output channel, symmetric) before the convolution: :math:`y = Q_a(x) \star Q_w(W) + b`.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as
            :class:`~layers.conv.Conv2d`.
        weight_bits: bit width of the weights, 2 to 16.
        act_bits: bit width of the input activations, 2 to 16.
        method: ``"ste"``, ``"lsq"`` or ``"pact"``, as :class:`QuantLinear`.
        observer: ``"moving_average"``, ``"minmax"`` or ``"mse"``, as :class:`QuantLinear`.

    Attributes:
        weight, bias: as :class:`~layers.conv.Conv2d`.
        act_quant: quantizer of the input.
        weight_quant: quantizer of the weight.

    Examples:
        >>> conv = QuantConv2d(1, 4, 3, padding=1, weight_bits=4, act_bits=4)
        >>> conv(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 4, 8, 8])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, *, weight_bits: int = 8,
                 act_bits: int = 8, method: str = "ste", observer: str = "moving_average",
                 device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, device=device, dtype=dtype)
        self.weight_bits, self.act_bits, self.method = weight_bits, act_bits, method
        self.act_quant = _act_quantizer(method, act_bits, observer)
        self.weight_quant = _weight_quantizer(method, weight_bits, observer, out_channels)

    @classmethod
    def from_float(cls, module: Conv2d, **kwargs) -> QuantConv2d:
        """A :class:`QuantConv2d` with ``module``'s configuration and a copy of its parameters."""
        new = cls(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                  padding=module.padding, dilation=module.dilation, groups=module.groups,
                  bias=module.bias is not None, device=module.weight.device,
                  dtype=module.weight.dtype, **kwargs)
        new.load_state_dict(module.state_dict(), strict=False)
        new.train(module.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return conv2d(self.act_quant(x), self.weight_quant(self.weight), self.bias,
                      self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", weight_bits={self.weight_bits}, act_bits={self.act_bits}, "
                f"method={self.method!r}")


def quantizers(model: nn.Module) -> Iterator[nn.Module]:
    """Every :class:`FakeQuantize`, :class:`LSQQuantizer` and :class:`PACTQuantizer` in ``model``."""
    for m in model.modules():
        if isinstance(m, (FakeQuantize, LSQQuantizer, PACTQuantizer)):
            yield m


def convert_to_qat(model: nn.Module, *, weight_bits: int = 8, act_bits: int = 8, method: str = "ste",
                   observer: str = "moving_average") -> nn.Module:
    """Replace, in place, every :class:`~layers.linear.Linear` (and :class:`~layers.conv.Conv2d`)
    of ``model`` by :class:`QuantLinear` (:class:`QuantConv2d`) with the same parameters.

    Args:
        model: a float model built from ``layers`` modules (it may itself be a layer).
        weight_bits: bit width of every weight.
        act_bits: bit width of every quantized layer's input.
        method: ``"ste"``, ``"lsq"`` or ``"pact"`` (see :class:`QuantLinear`).
        observer: ``"moving_average"``, ``"minmax"`` or ``"mse"``.

    Returns:
        ``model`` (or the new layer, if ``model`` itself is a layer). Run :func:`calibrate` (or
        a training step) next, to set the quantization ranges.

    Examples:
        >>> model = nn.Sequential(Linear(64, 32), nn.ReLU(), Linear(32, 10))
        >>> model = convert_to_qat(model, weight_bits=4, act_bits=4)
        >>> type(model[0]).__name__
        'QuantLinear'
    """
    kwargs = dict(weight_bits=weight_bits, act_bits=act_bits, method=method, observer=observer)
    _check_bits("convert_to_qat", weight_bits)
    _check_bits("convert_to_qat", act_bits)
    _act_quantizer(method, act_bits, observer)                         # validates method / observer
    swap: dict[type, type] = {Linear: QuantLinear, Conv2d: QuantConv2d}
    if type(model) in swap:
        return swap[type(model)].from_float(model, **kwargs)
    for name, child in model.named_children():
        if type(child) in swap:
            setattr(model, name, swap[type(child)].from_float(child, **kwargs))
        else:
            convert_to_qat(child, **kwargs)
    return model


@torch.no_grad()
def calibrate(model: nn.Module, *inputs: Tensor) -> nn.Module:
    """Post-training calibration: run ``inputs`` through ``model`` with every observer on and
    fake quantization off (float activations, so each range is that of the float model), then
    freeze the observers and turn fake quantization on. LSQ quantizers initialize their scale.

    The rest of the model stays in eval mode (batch norm statistics do not move).

    Args:
        model: a model after :func:`convert_to_qat`.
        inputs: calibration batch(es) passed as ``model(*inputs)``.

    Returns:
        ``model``, in eval mode, ready to evaluate as a post-training-quantized model.
    """
    model.eval()
    fqs = list(quantizers(model))
    for q in fqs:
        q.train()
        if isinstance(q, FakeQuantize):
            q.enable_observer(True).enable_fake_quant(False)
        if isinstance(q, (LSQQuantizer, PACTQuantizer)):
            q.initialized.fill_(False)
    # LSQ and PACT quantizers initialize from their inputs, then quantize during the pass
    model(*inputs)
    for q in fqs:
        q.eval()
        if isinstance(q, FakeQuantize):
            q.enable_observer(False).enable_fake_quant(True)
    return model
