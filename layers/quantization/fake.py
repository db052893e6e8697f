"""Fake quantization: integer ranges, scale and zero point, and the straight-through Functions.

Part of :mod:`layers.quantization`, taught in the chapter "Quantization-aware training"
(``book/quantization.ipynb``).

* :func:`quant_range` and :func:`qparams_from_range`: the integer grid of a ``bits``-bit
  quantizer, and the ``(scale, zero_point)`` that maps a float range onto it.
* :func:`fake_quantize` (per tensor, or per channel with ``axis=``): quantize to integers and
  back in one step, with the straight-through estimator (STE) as its gradient. The forward is
  bit-for-bit :func:`torch.fake_quantize_per_tensor_affine` /
  :func:`torch.fake_quantize_per_channel_affine` on CPU (same rounding, same order of
  floating-point operations), and the gradient mask is the one those ops use.
* :func:`sqnr`: the signal-to-quantization-noise ratio.

Checks that read tensor *values* (a positive scale, a zero point inside the range, finite
data) run only in eager mode, outside ``torch.compile``/``torch.export`` tracing and
``vmap``: there they would be a graph break and a host synchronisation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..composable import autocast_apply, compilable_apply, values_checkable
from .._validation import check_tensor

__all__ = ["quant_range", "qparams_from_range", "sqnr", "FakeQuantizeFunction",
           "FakeQuantizePerChannelFunction", "fake_quantize"]


# ----------------------------------------------------------------------------- checks
def check_bits(where: str, bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"{where}: expected bits to be an integer in 2..16, got {bits!r}")
    return bits


def check_qrange(where: str, quant_min: int, quant_max: int) -> None:
    for name, v in (("quant_min", quant_min), ("quant_max", quant_max)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{where}: expected {name} to be an int, got {type(v).__name__}")
    if quant_min >= quant_max:
        raise ValueError(f"{where}: expected quant_min < quant_max, got quant_min={quant_min}, quant_max={quant_max}")
    if quant_max - quant_min > 2**16 - 1:
        raise ValueError(f"{where}: expected at most 2**16 levels (16 bits), got quant_min={quant_min}, "
                         f"quant_max={quant_max}")


def check_finite(where: str, x: Tensor, name: str = "input") -> None:
    """Raise ``ValueError`` on NaN/Inf in ``x`` (eager mode only: it reads the values)."""
    if x.numel() and values_checkable(x) and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{where}: expected a finite {name}, got {bad} NaN/Inf value(s) of {x.numel()}")


def check_scale_values(where: str, scale: Tensor | float) -> None:
    """Raise ``ValueError`` unless every scale is positive and finite (a tensor, or a Python number).

    A Python number is always checked. A tensor is checked in eager mode only
    (:func:`~layers.composable.values_checkable`: not while torch.compile or torch.func
    traces, not on the meta device); a one-element tensor is read once (``.item()``) and
    checked in plain Python, many times cheaper than tensor comparisons for one value.
    """
    if isinstance(scale, Tensor):
        if not values_checkable(scale):
            return
        if scale.numel() != 1:
            if not bool(((scale > 0) & torch.isfinite(scale)).all()):
                raise ValueError(f"{where}: expected a positive finite scale, got {scale.detach().min().item()} "
                                 "(the smallest of the scales)")
            return
        scale = scale.item()
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{where}: expected a positive finite scale, got {scale}")


def check_zero_point_values(where: str, zero_point: Tensor | float, quant_min: int, quant_max: int,
                            integer: bool = True) -> None:
    """Raise ``ValueError`` unless every zero point, rounded half to even, lies in ``[quant_min, quant_max]``
    and, with ``integer``, is a whole number.

    ``zero_point``: a Python number (always checked) or a tensor (checked in eager mode only,
    as in :func:`check_scale_values`; a one-element tensor is read once and checked as a number).
    """
    if isinstance(zero_point, Tensor):
        if not values_checkable(zero_point):
            return
        if zero_point.numel() != 1:
            if integer and zero_point.is_floating_point() and not bool((zero_point == torch.round(zero_point)).all()):
                raise ValueError(f"{where}: expected an integer zero_point, got {zero_point.detach().tolist()}")
            z = torch.round(zero_point.detach().double())
            if not bool(((z >= quant_min) & (z <= quant_max)).all()):
                raise ValueError(f"{where}: expected zero_point in [quant_min, quant_max] = [{quant_min}, {quant_max}], "
                                 f"got values from {z.min().item():g} to {z.max().item():g}")
            return
        zero_point = zero_point.item()
    z = float(zero_point)
    rounded = float(round(z)) if math.isfinite(z) else z      # round() is half to even, as torch.round
    if integer and not z == rounded:
        raise ValueError(f"{where}: expected an integer zero_point, got {zero_point}")
    if not quant_min <= rounded <= quant_max:
        raise ValueError(f"{where}: expected zero_point in [quant_min, quant_max] = [{quant_min}, {quant_max}], "
                         f"got {z:g}" + (f" (rounds to {rounded:g})" if rounded != z and z == z else ""))


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
    check_bits("quant_range", bits)
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
    check_qrange("qparams_from_range", quant_min, quant_max)
    min_val = torch.as_tensor(min_val, dtype=torch.float32)
    max_val = torch.as_tensor(max_val, dtype=torch.float32)
    check_finite("qparams_from_range", min_val, "min_val")
    check_finite("qparams_from_range", max_val, "max_val")
    if values_checkable(min_val, max_val) and bool((min_val > max_val).any()):
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
        m = [q_{\min} \le q \le q_{\max}], \qquad
        y = (\operatorname{clamp}(q, q_{\min}, q_{\max}) - z)\, s .

    ``round`` is round-half-to-even (``std::nearbyint``), the product :math:`x \cdot (1/s)` is
    taken in float32 for float32/float16/bfloat16 inputs (float64 for float64), and the last
    product in float32. NaN in :math:`q` clamps to :math:`q_{\min}` (``std::fmax``).

    Backward (STE): the rounding is treated as the identity, so the gradient passes where
    :math:`q` fell inside the range and is zero where it was clamped: :math:`dx = g\, m`.
    Forward-mode AD is the same map on the tangent: :math:`\dot y = \dot x\, m`.

    Takes ``scale`` and ``zero_point`` as 0-dim tensors (float32 and integer) and returns
    ``(y, mask)``; the boolean mask is what backward needs and is not differentiable. The
    backward is linear in ``g`` with a constant mask, so it is twice differentiable (the
    second derivative is zero almost everywhere, as for the staircase itself).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int):
        sc = scale.to(torch.float32)                                   # () the kernel's float scale
        inv_scale = 1.0 / sc                                           # () float32, as `1.0f / sc`
        work = torch.float64 if input.dtype == torch.float64 else torch.float32
        q = torch.round(input.to(work) * inv_scale.to(work)) + zero_point.to(work)  # (*) z + nearbyint(x / s)
        mask = (q >= quant_min) & (q <= quant_max)                     # (*) in range; NaN -> False
        q = torch.fmin(torch.fmax(q, torch.tensor(float(quant_min), dtype=work, device=q.device)),
                       torch.tensor(float(quant_max), dtype=work, device=q.device))  # (*) NaN -> quant_min
        y = (q - zero_point.to(work)).to(torch.float32) * sc           # (*) (q - z) * s in float
        return y.to(input.dtype), mask

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, mask = output
        ctx.mark_non_differentiable(mask)
        ctx.save_for_backward(mask)                                    # one bool per element
        ctx.save_for_forward(mask)

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_mask: Tensor | None):
        (mask,) = ctx.saved_tensors
        dx = grad_out * mask if ctx.needs_input_grad[0] else None      # (*) STE: pass inside the range
        return dx, None, None, None, None

    @staticmethod
    def jvp(ctx, input_t: Tensor, scale_t, zero_point_t, quant_min_t, quant_max_t):
        (mask,) = ctx.saved_tensors
        return input_t * mask, None                                    # (*) tangent through the STE


# ---------------------------------------------------------- fake quantize (STE), per channel
class FakeQuantizePerChannelFunction(torch.autograd.Function):
    r"""Per-channel fake quantization with the STE, as :func:`torch.fake_quantize_per_channel_affine`.

    Each slice ``input.select(axis, c)`` uses its own ``scale[c]`` and ``zero_point[c]``. With
    an integer zero point the CPU kernel computes
    :math:`q = \operatorname{int64}(z + \operatorname{round}(x \cdot (1/s)))` (the float sum
    converted to int64: an out-of-range, infinite or NaN value becomes the most negative int64,
    which then clamps to :math:`q_{\min}`, even for :math:`+\infty`); with a floating zero point
    it rounds after adding, :math:`q = \operatorname{round}(z + x \cdot (1/s))`, the sum taken
    as a fused multiply-add (one rounding), as the compiled kernel does. Then
    :math:`m = [q_{\min} \le q \le q_{\max}]` and
    :math:`y = (\operatorname{clamp}(q, q_{\min}, q_{\max}) - z)\, s`.
    Backward: :math:`dx = g\, m`; forward-mode AD: :math:`\dot y = \dot x\, m`.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, scale: Tensor, zero_point: Tensor, axis: int, quant_min: int, quant_max: int):
        shape = [1] * input.dim()
        shape[axis] = -1                                               # broadcast along axis: (1, .., C, .., 1)
        sc = scale.to(torch.float32).reshape(shape)                    # (1, .., C, .., 1)
        inv_scale = 1.0 / sc                                           # float32 per channel
        work = torch.float64 if input.dtype == torch.float64 else torch.float32
        if zero_point.is_floating_point():
            zp = zero_point.to(work).reshape(shape)
            # lrintf(z + x * inv_scale): the kernel is compiled with fused multiply-add, so
            # x * inv_scale + z is rounded once, and lrintf takes a float (float64 inputs too)
            r = (input.double() * inv_scale.double() + zp.double()).to(torch.float32)   # (*)
            q = _to_int64(torch.round(r))                              # (*) integer levels
            mask = (q >= quant_min) & (q <= quant_max)                 # (*)
            y = (q.clamp(quant_min, quant_max).double() - zp.double()) * sc.double()  # (*) double, then stored
        else:
            zp = zero_point.to(torch.int64).reshape(shape)
            t = input.to(work) * inv_scale.to(work)                    # (*) x / s
            q = _to_int64(torch.round(t) + zp.to(work))                # (*) static_cast<int64_t>(z + nearbyint)
            mask = (q >= quant_min) & (q <= quant_max)                 # (*)
            y = (q.clamp(quant_min, quant_max) - zp).double() * sc.double()  # (*) double product, then stored
        return y.to(input.dtype), mask

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, mask = output
        ctx.mark_non_differentiable(mask)
        ctx.save_for_backward(mask)
        ctx.save_for_forward(mask)

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_mask: Tensor | None):
        (mask,) = ctx.saved_tensors
        dx = grad_out * mask if ctx.needs_input_grad[0] else None      # (*) STE
        return dx, None, None, None, None, None

    @staticmethod
    def jvp(ctx, input_t: Tensor, *_):
        (mask,) = ctx.saved_tensors
        return input_t * mask, None                                    # (*)


_fake_quantize_apply = compilable_apply(FakeQuantizeFunction)
_fake_quantize_per_channel_apply = compilable_apply(FakeQuantizePerChannelFunction)


def _to_int64(q: Tensor) -> Tensor:
    """Float to int64 as the x86 conversion does: NaN, inf and out-of-range values become the
    most negative int64 (``static_cast<int64_t>`` / ``lrintf`` in the CPU kernels)."""
    limit = 2.0**63
    valid = torch.isfinite(q) & (q >= -limit) & (q < limit)
    return torch.where(valid, q, torch.full_like(q, -limit)).to(torch.int64)


def fake_quantize(input: Tensor, scale: float | Tensor, zero_point: int | Tensor, quant_min: int, quant_max: int,
                  axis: int | None = None) -> Tensor:
    r"""Quantize to integers and back, :math:`y = (\operatorname{clamp}(\operatorname{round}(x/s) + z,
    q_{\min}, q_{\max}) - z)\, s`, with the straight-through estimator as gradient.

    Bit-for-bit equal to :func:`torch.fake_quantize_per_tensor_affine` (``axis=None``) or
    :func:`torch.fake_quantize_per_channel_affine` (``axis`` given) on CPU, gradient included.
    See :class:`FakeQuantizeFunction` and :class:`FakeQuantizePerChannelFunction`.

    Under ``torch.autocast`` it does what torch does: per tensor with Python-number (or
    ``float``) ``scale`` and ``zero_point`` it runs and returns in float32 (the op is on
    autocast's float32 list); with tensor qparams, and per channel, it keeps the input dtype.
    Value checks (positive scale, zero point in range) run in eager mode only.

    Args:
        input: any shape, floating point.
        scale: step size :math:`s > 0`: a number or a one-element (also 0-dim) tensor per
            tensor, or a ``(C,)`` tensor per channel.
        zero_point: integer :math:`z` in ``[quant_min, quant_max]`` mapped to 0.0; a number or
            one-element integer tensor per tensor, or a ``(C,)`` int32 (or float) tensor per channel.
        quant_min: smallest integer level.
        quant_max: largest integer level (at most :math:`2^{16}` levels in all).
        axis: channel dimension for per-channel quantization, ``None`` for per tensor.

    Shape:
        - Input: :math:`(*)`; with ``axis``, ``input.shape[axis] == C``.
        - Output: same shape and dtype as the input.

    Examples:
        >>> fake_quantize(torch.tensor([0.26, -1.0, 9.0]), 0.5, 0, -4, 3)
        tensor([ 0.5000, -1.0000,  1.5000])
    """
    where = "fake_quantize"
    check_tensor(input, where)
    check_qrange(where, quant_min, quant_max)
    if axis is None:
        for name, t in (("scale", scale), ("zero_point", zero_point)):
            if isinstance(t, Tensor) and t.numel() != 1:
                raise ValueError(f"{where}: expected a one-element {name} for per-tensor quantization, "
                                 f"got shape {tuple(t.shape)} (use axis= for per-channel)")
        policy = None
        if not isinstance(scale, Tensor):                             # the scalar overload: float32 under autocast
            check_scale_values(where, float(scale))                   # in plain Python: also under tracing
            scale, policy = torch.tensor(float(scale), dtype=torch.float32, device=input.device), "float32"
        check_scale_values(where, scale)                              # the float32 value the Function uses
        check_zero_point_values(where, zero_point, quant_min, quant_max)
        if not isinstance(zero_point, Tensor):
            zero_point = torch.tensor(int(zero_point), dtype=torch.int32, device=input.device)
        args = (input, scale.reshape(()), zero_point.reshape(()), quant_min, quant_max)
        if policy is None:
            return _fake_quantize_apply(*args)[0]
        return autocast_apply(_fake_quantize_apply, policy, *args)[0]
    if not -input.dim() <= axis < max(input.dim(), 1):
        raise ValueError(f"{where}: expected axis in [{-input.dim()}, {input.dim() - 1}], got {axis}")
    axis = axis % input.dim()
    scale = torch.as_tensor(scale)
    zero_point = torch.as_tensor(zero_point)
    channels = input.shape[axis]
    for name, t in (("scale", scale), ("zero_point", zero_point)):
        if t.shape != (channels,):
            raise ValueError(f"{where}: expected {name} of shape ({channels},) for axis {axis}, "
                             f"got {tuple(t.shape)}")
    check_scale_values(where, scale)
    if not zero_point.is_floating_point():
        check_zero_point_values(where, zero_point, quant_min, quant_max)
    return _fake_quantize_per_channel_apply(input, scale, zero_point, axis, quant_min, quant_max)[0]
