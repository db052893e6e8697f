"""Learned quantizers: LSQ (learned step size) and PACT (learned clipping level).

Part of :mod:`layers.quantization`, taught in the chapter "Quantization-aware training".

* :func:`lsq_quantize` / :class:`LSQFunction`: learned step size quantization (Esser et al.
  2020, "Learned Step Size Quantization", ICLR), whose output and gradients for ``input``,
  ``scale`` and ``zero_point`` match ``torch._fake_quantize_learnable_per_tensor_affine``
  (per tensor) and ``torch._fake_quantize_learnable_per_channel_affine`` (with ``axis``).
* :func:`pact_quantize` / :class:`PACTFunction`: PACT (Choi et al. 2018), activations clipped
  to a learned :math:`[0, \\alpha]` and quantized, with the published gradient for :math:`\\alpha`.
* The modules :class:`LSQQuantizer` and :class:`PACTQuantizer`, which hold the learned
  parameters and initialize them from their first input.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..composable import compilable_apply, values_checkable
from .._validation import check_tensor
from .fake import (check_scale_values,
                   check_zero_point_values, check_bits, check_finite, check_qrange, qparams_from_range,
                   quant_range)

__all__ = ["LSQFunction", "PACTFunction", "lsq_quantize", "pact_quantize", "LSQQuantizer", "PACTQuantizer"]


# ----------------------------------------------------------------------------------- LSQ
def _channel_shape(x: Tensor, axis: int | None) -> list[int]:
    """``[1] * x.dim()`` with ``-1`` at ``axis`` (per-channel broadcasting), or ``[1] * x.dim()`` per tensor."""
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    return shape


def _sum_over_channel(t: Tensor, axis: int | None) -> Tensor:
    """Sum over every element (per tensor) or every dimension but ``axis`` (per channel)."""
    if axis is None:
        return t.sum()
    dims = [d for d in range(t.dim()) if d != axis]
    return t.sum(dims) if dims else t


def _lsq_partials(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                  axis: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """LSQ's per-element derivatives ``(dy/dx, dy/ds, dy/dz)``, before the gradient scale.

    Computed as torch's backward kernels do: in float32 (float64 for float64 input), with
    :math:`q = \\operatorname{round}(z + x/s)` taken as one fused multiply-add, and the zero point
    rounded as ``int64(clamp(z + 0.5))`` per tensor, ``clamp(round(z))`` per channel.
    """
    shape = _channel_shape(x, axis)
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    xw = x.to(work)                                                    # (*)
    s = scale.to(work).reshape(shape)                                  # (1, .., C, .., 1)
    inv_scale = 1.0 / s
    zf = zero_point.to(work).reshape(shape)
    if axis is None:
        z = torch.trunc((zf + 0.5).clamp(quant_min, quant_max))        # int64(clamp(z + 0.5f))
    else:
        z = torch.round(zf).clamp(quant_min, quant_max)                # clamp(round(z)), as in forward
    if work == torch.float32:                                          # nearbyint(z + x * inv_scale), one
        q = torch.round((xw.double() * inv_scale.double() + z.double()).float())   # fused multiply-add rounding
    else:
        q = torch.round(z + xw * inv_scale)                            # (*)
    below, above = q < quant_min, q > quant_max                        # (*)
    inside = ~(below | above)                                          # (*)
    x_hat = (q.clamp(quant_min, quant_max) - z) * s                    # (*) dequantized value
    dy_dx = inside.to(work)                                            # (*) STE
    dy_ds = torch.where(inside, (x_hat - xw) * inv_scale,              # (*) rounding error inside,
                        torch.where(below, quant_min - z, quant_max - z))  # clamped level outside
    dy_dz = torch.where(inside, torch.zeros_like(xw), -s)              # (*) -s where clamped
    return dy_dx, dy_ds, dy_dz


class LSQFunction(torch.autograd.Function):
    r"""Learned step size quantization (LSQ) with gradients for ``input``, ``scale`` and ``zero_point``.

    Forward: :func:`~layers.quantization.fake_quantize` with
    :math:`z = \operatorname{clamp}(\operatorname{round}(z_f), q_{\min}, q_{\max})` (the zero point
    is a float parameter): :math:`y = (\operatorname{clamp}(\operatorname{round}(x/s) + z) - z)\, s`,
    for finite float32 inputs bit-for-bit the forward of torch's learnable fake-quantize ops
    (per channel too: there torch takes the last product in double, which for an integer
    times a float32 rounds to the same float32). float64 inputs are computed in float64
    throughout (torch's learnable ops have no float64 backward), so ``gradcheck`` can run.

    Backward, treating ``round`` as the identity (STE), with :math:`q = \operatorname{round}(z + x/s)`,
    :math:`\hat x = (\operatorname{clamp}(q) - z) s` and the gradient scale :math:`\gamma`
    (``grad_factor``):

    .. math::

        \frac{\partial y}{\partial x} = [q_{\min} \le q \le q_{\max}], \quad
        \frac{\partial y}{\partial s} = \gamma \begin{cases}
            q_{\min} - z & q < q_{\min} \\ q_{\max} - z & q > q_{\max} \\
            (\hat x - x)/s & \text{else} \end{cases}, \quad
        \frac{\partial y}{\partial z} = \gamma \begin{cases}
            -s & q \text{ clamped} \\ 0 & \text{else,} \end{cases}

    then :math:`dx = g\, \partial y/\partial x`, and :math:`ds`, :math:`dz` the sums of
    :math:`g\, \partial y/\partial s`, :math:`g\, \partial y/\partial z` over every element (per
    channel: over every element of the channel). Forward-mode AD uses the same partials:
    :math:`\dot y = \partial_x y\, \dot x + \partial_s y\, \dot s + \partial_z y\, \dot z`.

    Inside the range :math:`(\hat x - x)/s = \operatorname{round}(x/s) - x/s`: the rounding
    error, which the true derivative of :math:`s \operatorname{round}(x/s)` (namely
    :math:`\operatorname{round}(x/s)`) lacks; it is what lets LSQ move :math:`s` toward the
    step that balances rounding and clipping error.
    As torch's kernels do, the per-tensor backward rounds the zero point as :math:`z_f + 1/2`
    truncated toward zero (forward uses round-half-even: they differ at :math:`z_f = k + 1/2`
    with :math:`k` even, and for negative :math:`z_f`), while the per-channel backward rounds
    as its forward. :math:`\gamma` scales the ``scale`` and ``zero_point`` gradients, not the
    ``input`` gradient. The backward is written in differentiable ops, so it can itself be
    differentiated (piecewise: the masks and the rounding are constant between steps).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                grad_factor: float, axis: int | None) -> Tensor:
        shape = _channel_shape(input, axis)
        work = torch.float64 if input.dtype == torch.float64 else torch.float32
        s = scale.to(work).reshape(shape)                              # (1, .., C, .., 1)
        inv_scale = 1.0 / s                                            # float32 as the kernels' `1.0f / s`
        z = torch.round(zero_point.to(torch.float32)).clamp(quant_min, quant_max).to(work).reshape(shape)
        q = torch.round(input.to(work) * inv_scale) + z                # (*) z + nearbyint(x / s)
        q = torch.fmin(torch.fmax(q, torch.tensor(float(quant_min), dtype=work, device=q.device)),
                       torch.tensor(float(quant_max), dtype=work, device=q.device))  # (*)
        return ((q - z) * s).to(input.dtype)                           # (*) dequantize

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, scale, zero_point, quant_min, quant_max, grad_factor, axis = inputs
        ctx.save_for_backward(input, scale, zero_point)
        ctx.save_for_forward(input, scale, zero_point)
        ctx.qrange, ctx.grad_factor, ctx.axis = (quant_min, quant_max), grad_factor, axis

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, scale, zero_point = ctx.saved_tensors
        dy_dx, dy_ds, dy_dz = _lsq_partials(x, scale, zero_point, *ctx.qrange, ctx.axis)   # (*) each
        g = grad_out.to(dy_dx.dtype)                                   # (*)
        dx = ds = dz = None
        if ctx.needs_input_grad[0]:
            dx = (g * dy_dx).to(x.dtype)                               # (*)
        if ctx.needs_input_grad[1]:
            ds = _sum_over_channel(g * dy_ds * ctx.grad_factor, ctx.axis)   # () or (C,)
            ds = ds.reshape(scale.shape).to(scale.dtype)
        if ctx.needs_input_grad[2]:
            dz = _sum_over_channel(g * dy_dz * ctx.grad_factor, ctx.axis)   # () or (C,)
            dz = dz.reshape(zero_point.shape).to(zero_point.dtype)
        return dx, ds, dz, None, None, None, None

    @staticmethod
    def jvp(ctx, input_t, scale_t, zero_point_t, *_):
        x, scale, zero_point = ctx.saved_tensors
        dy_dx, dy_ds, dy_dz = _lsq_partials(x, scale, zero_point, *ctx.qrange, ctx.axis)
        shape = _channel_shape(x, ctx.axis)
        y_t = torch.zeros_like(dy_dx)                                  # (*)
        if input_t is not None:
            y_t = y_t + dy_dx * input_t
        if scale_t is not None:
            y_t = y_t + ctx.grad_factor * dy_ds * scale_t.reshape(shape)
        if zero_point_t is not None:
            y_t = y_t + ctx.grad_factor * dy_dz * zero_point_t.reshape(shape)
        return y_t.to(x.dtype)


_l_s_q_apply = compilable_apply(LSQFunction)


def lsq_quantize(input: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                 grad_factor: float = 1.0, axis: int | None = None) -> Tensor:
    r"""Learned step size quantization (LSQ): :func:`~layers.quantization.fake_quantize` whose
    ``scale`` and ``zero_point`` are learnable tensors.

    Output and gradients equal ``torch._fake_quantize_learnable_per_tensor_affine(input, scale,
    zero_point, quant_min, quant_max, grad_factor)`` (``axis=None``) and
    ``torch._fake_quantize_learnable_per_channel_affine(input, scale, zero_point, axis,
    quant_min, quant_max, grad_factor)``; see :class:`LSQFunction` for the gradients.
    Esser et al. recommend ``grad_factor`` :math:`= 1/\sqrt{N Q_P}` with :math:`N` the
    number of elements per sample (or weights per layer) and :math:`Q_P` = ``quant_max``.
    Value checks run in eager mode only.

    Args:
        input: any shape, floating point.
        scale: positive step size, shape ``(1,)`` or ``()`` (``(C,)`` with ``axis``).
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
    check_tensor(input, where)
    check_tensor(scale, where, "scale")
    check_tensor(zero_point, where, "zero_point")
    check_qrange(where, quant_min, quant_max)
    if axis is not None:
        if not -input.dim() <= axis < max(input.dim(), 1):
            raise ValueError(f"{where}: expected axis in [{-input.dim()}, {input.dim() - 1}], got {axis}")
        axis = axis % input.dim()
    channels = 1 if axis is None else input.shape[axis]
    for name, t in (("scale", scale), ("zero_point", zero_point)):
        ok = t.shape == (channels,) or (axis is None and t.dim() == 0)
        if not ok:
            raise ValueError(f"{where}: expected {name} of shape ({channels},)"
                             f"{' or ()' if axis is None else ''}, got {tuple(t.shape)}")
    check_scale_values(where, scale)
    check_zero_point_values(where, zero_point, quant_min, quant_max, integer=False)
    if isinstance(grad_factor, Tensor):
        grad_factor = grad_factor.item()
    fn = _l_s_q_apply
    return fn.apply(input, scale, zero_point, quant_min, quant_max, float(grad_factor), axis)


# ---------------------------------------------------------------------------------- PACT
class PACTFunction(torch.autograd.Function):
    r"""PACT: clip to :math:`[0, \alpha]`, then quantize uniformly to :math:`2^b` levels.

    .. math::

        y = \operatorname{clamp}(x, 0, \alpha), \qquad
        y_q = \operatorname{round}\!\left(y \cdot \frac{2^b - 1}{\alpha}\right) \frac{\alpha}{2^b - 1}.

    Backward, as published (Choi et al. 2018, eq. 3), with the STE through the rounding:
    :math:`dx = g\,[0 \le x < \alpha]` and :math:`d\alpha = \sum g\,[x \ge \alpha]`. Inputs
    above the clip push :math:`\alpha` up; weight decay on :math:`\alpha` pulls it down.
    Forward-mode AD: :math:`\dot y = \dot x\,[0 \le x < \alpha] + \dot\alpha\,[x \ge \alpha]`.
    The backward is linear in :math:`g` with constant masks, so it is twice differentiable.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, alpha: Tensor, bits: int) -> Tensor:
        levels = 2**bits - 1
        a = alpha.reshape(())                                          # ()
        y = torch.minimum(input.clamp_min(0), a)                       # (*) clip to [0, alpha]
        step = a / levels                                              # ()
        return torch.round(y / step) * step                            # (*)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, alpha, _ = inputs
        ctx.save_for_backward(x, alpha)
        ctx.save_for_forward(x, alpha)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, alpha = ctx.saved_tensors
        a = alpha.reshape(())
        dx = dalpha = None
        if ctx.needs_input_grad[0]:
            dx = grad_out * ((x >= 0) & (x < a))                       # (*) pass inside [0, alpha)
        if ctx.needs_input_grad[1]:
            dalpha = (grad_out * (x >= a)).sum().reshape(alpha.shape)  # () or (1,): clipped inputs
        return dx, dalpha, None

    @staticmethod
    def jvp(ctx, input_t, alpha_t, _):
        x, alpha = ctx.saved_tensors
        a = alpha.reshape(())
        y_t = torch.zeros_like(x)                                      # (*)
        if input_t is not None:
            y_t = y_t + input_t * ((x >= 0) & (x < a))
        if alpha_t is not None:
            y_t = y_t + alpha_t.reshape(()) * (x >= a)
        return y_t


_p_a_c_t_apply = compilable_apply(PACTFunction)


def pact_quantize(input: Tensor, alpha: Tensor, bits: int) -> Tensor:
    r"""PACT activation quantization: clip to the learnable :math:`[0, \alpha]`, quantize to
    ``bits`` bits. See :class:`PACTFunction` for the gradient.

    Args:
        input: activations, any shape.
        alpha: learnable clipping level, shape ``(1,)`` or ``()``, positive (checked in eager mode).
        bits: bit width, 2 to 16.

    Shape:
        - Input: :math:`(*)`; output: same shape, values in :math:`\{k\alpha/(2^b-1)\}`.

    Examples:
        >>> pact_quantize(torch.tensor([-1.0, 0.4, 3.0]), torch.tensor([1.0]), 2)
        tensor([0.0000, 0.3333, 1.0000])
    """
    where = "pact_quantize"
    check_tensor(input, where)
    check_tensor(alpha, where, "alpha")
    if alpha.numel() != 1 or alpha.dim() > 1:
        raise ValueError(f"{where}: expected alpha of shape (1,) or (), got {tuple(alpha.shape)}")
    check_bits(where, bits)
    if values_checkable(alpha) and not bool((torch.isfinite(alpha) & (alpha > 0)).all()):
        raise ValueError(f"{where}: expected a positive finite alpha, got {alpha.detach().reshape(()).item()}")
    fn = _p_a_c_t_apply
    return fn.apply(input, alpha, bits)


# ------------------------------------------------------------------------------- modules
def initialize_once(quantizer: nn.Module, x: Tensor) -> None:
    """Initialize a learnable quantizer from its first input, which must come in training mode.

    Reads the ``initialized`` flag, so it runs in eager mode only: initialize (one eager call,
    or :func:`~layers.quantization.calibrate`) before ``torch.compile``, ``torch.export`` or ``vmap``.
    """
    if not values_checkable(x, quantizer.initialized) or bool(quantizer.initialized):
        return
    if not quantizer.training:
        raise RuntimeError(f"{type(quantizer).__name__}: not initialized; "
                           "call it in training mode (or calibrate) first")
    quantizer.initialize(x)


class LSQQuantizer(nn.Module):
    r"""Learnable step size quantizer: :func:`lsq_quantize` with ``scale`` (and, asymmetric,
    ``zero_point``) as parameters (Esser et al. 2020, "Learned Step Size Quantization").

    The first call in training mode (or under :func:`~layers.quantization.calibrate`)
    initializes the scale from that input and the zero point to :math:`q_{\min}`:

    * ``scale_init="lsq"`` (default, the paper's rule): :math:`s = 2\,\operatorname{mean}|x| / \sqrt{Q_P}`
      with :math:`Q_P` = ``quant_max`` (per channel with ``ch_axis``);
    * ``scale_init="minmax"``: the min-max scale of :func:`~layers.quantization.qparams_from_range`.

    With ``grad_scale=True`` (default, the paper's rule) the ``scale`` and ``zero_point``
    gradients are multiplied by :math:`g = 1/\sqrt{N Q_P}`, :math:`N` the elements per channel
    (per-channel weights) or per sample (activations), so that the step size learns at a rate
    comparable to the weights; ``False`` gives :math:`g = 1`, as torch's ``_LearnableFakeQuantize``.

    Args:
        bits: bit width, 2 to 16.
        symmetric: symmetric signed range (zero point fixed at 0, not learned).
        ch_axis: channel dimension for per-channel scales, or ``None``.
        channels: number of channels (with ``ch_axis``).
        scale_init: ``"lsq"`` or ``"minmax"``.
        grad_scale: scale the step-size gradient by :math:`1/\sqrt{N Q_P}`.
        device, dtype: of the parameters (default: float32 on the default device).

    Attributes:
        scale: learnable step size, ``(1,)`` or ``(C,)``.
        zero_point: learnable float zero point (asymmetric) or a zero buffer (symmetric).
    """

    def __init__(self, bits: int = 8, symmetric: bool = False, ch_axis: int | None = None, channels: int = 1,
                 *, scale_init: str = "lsq", grad_scale: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        if scale_init not in ("lsq", "minmax"):
            raise ValueError(f"LSQQuantizer: expected scale_init 'lsq' or 'minmax', got {scale_init!r}")
        self.bits, self.symmetric, self.ch_axis = check_bits("LSQQuantizer", bits), symmetric, ch_axis
        self.scale_init, self.grad_scale = scale_init, bool(grad_scale)
        self.quant_min, self.quant_max = quant_range(bits, symmetric)
        n = channels if ch_axis is not None else 1
        kw = dict(device=device, dtype=dtype or torch.float32)
        self.scale = nn.Parameter(torch.ones(n, **kw))
        if symmetric:
            self.register_buffer("zero_point", torch.zeros(n, **kw))
        else:
            self.zero_point = nn.Parameter(torch.full((n,), float(self.quant_min), **kw))
        self.register_buffer("initialized", torch.tensor(False, device=device))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the scale from ``x`` (see ``scale_init``)."""
        check_finite("LSQQuantizer", x)
        xf = x.detach().float()
        flat = xf.reshape(1, -1) if self.ch_axis is None else xf.transpose(0, self.ch_axis).reshape(
            x.shape[self.ch_axis], -1)                                 # (C, rest)
        if self.scale_init == "lsq":
            scale = 2 * flat.abs().mean(1) / math.sqrt(self.quant_max)  # (C,)
        else:
            scale, _ = qparams_from_range(flat.min(1).values, flat.max(1).values, self.quant_min,
                                          self.quant_max, self.symmetric)
        self.scale.copy_(scale.clamp_min(1e-8))
        self.initialized.fill_(True)

    def grad_factor(self, x: Tensor) -> float:
        r""":math:`1/\sqrt{N Q_P}` for input ``x`` (1 with ``grad_scale=False``)."""
        if not self.grad_scale:
            return 1.0
        if self.ch_axis is not None:
            per = x.numel() // max(x.shape[self.ch_axis], 1)           # elements per channel
        else:
            per = math.prod(x.shape[1:]) if x.dim() > 1 else x.numel()  # elements per sample
        return 1.0 / math.sqrt(max(per, 1) * self.quant_max)

    def forward(self, x: Tensor) -> Tensor:
        initialize_once(self, x)
        # An optimizer step can push the learned scale to zero or below; use at least
        # float32's eps, as torch's _LearnableFakeQuantize does, but in the graph (a
        # differentiable clamp) instead of by writing to the parameter's .data.
        scale = self.scale.clamp_min(torch.finfo(torch.float32).eps)
        return lsq_quantize(x, scale, self.zero_point, self.quant_min, self.quant_max,
                            self.grad_factor(x), self.ch_axis)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, symmetric={self.symmetric}, ch_axis={self.ch_axis}, "
                f"scale_init={self.scale_init!r}, grad_scale={self.grad_scale}")


class PACTQuantizer(nn.Module):
    r"""PACT activation quantizer: :func:`pact_quantize` with a learnable clip ``alpha``.

    Args:
        bits: bit width, 2 to 16.
        alpha: initial clipping level. ``None`` (default) sets it on the first call in training
            mode (or under :func:`~layers.quantization.calibrate`) to the 99th percentile of
            that input, so that the largest 1% start clipped and the loss can move
            :math:`\alpha` both ways (with no input above the clip its gradient is zero); the
            PACT paper starts at 10.
        device, dtype: of the parameter (default: float32 on the default device).

    Attributes:
        alpha: learnable ``(1,)`` clipping level.
    """

    def __init__(self, bits: int = 8, alpha: float | None = None, *, device=None, dtype=None) -> None:
        super().__init__()
        self.bits = check_bits("PACTQuantizer", bits)
        self.alpha = nn.Parameter(torch.tensor([1.0 if alpha is None else float(alpha)],
                                               device=device, dtype=dtype or torch.float32))
        self.register_buffer("initialized", torch.tensor(alpha is not None, device=device))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``alpha`` to the 99th percentile of ``x`` (at least a small positive number)."""
        check_finite("PACTQuantizer", x)
        flat = x.detach().float().flatten()
        if flat.numel() > 100_000:                                     # torch.quantile has a size limit
            keep = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:100_000]
            flat = flat[keep.to(flat.device)]
        self.alpha.fill_(max(torch.quantile(flat, 0.99).item(), 1e-3))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        initialize_once(self, x)
        return pact_quantize(x, self.alpha, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
