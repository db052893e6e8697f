"""``backend="triton"``: Triton kernels, forward and backward, for CUDA tensors.

Each op is one ``torch.autograd.Function`` whose forward and backward launch
``@triton.jit`` kernels. A kernel is a *program* run once per block of data: the
elementwise kernels give each program ``BLOCK`` consecutive elements
(``offs = pid * BLOCK + tl.arange(0, BLOCK)``, ``mask = offs < n`` for the last,
partial block); the row kernels (layer norm, cross-entropy) give each program one
row of the ``(R, M)`` view, the whole row in one block (``BLOCK`` is ``M``
rounded up to a power of two, the masked lanes load a neutral value).

Without CUDA, Triton's interpreter runs the same kernels on CPU tensors with
NumPy, which is how the tests and the book run them. The interpreter is chosen
when Triton is imported, from the environment variable ``TRITON_INTERPRET``:
importing :mod:`layers.kernels` on a machine without CUDA sets
``TRITON_INTERPRET=1`` unless the variable is already set or ``triton`` was
already imported. With ``TRITON_INTERPRET=0`` set explicitly (or triton imported
before), CPU tensors are refused with a clear error. The interpreter is slow:
use it on small tensors only.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import Tensor

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton
    import triton.language as tl
except ImportError:                                   # triton is optional: only backend="triton" needs it
    triton = None

__all__ = ["available", "interpreted", "check_tensors", "LayerNormTriton", "CrossEntropyTriton",
           "GELUTriton", "PReLUTriton", "FakeQuantizeTriton"]

_ELEMENTWISE_BLOCK = 1024


def available() -> bool:
    """Whether triton is installed."""
    return triton is not None


def interpreted() -> bool:
    """Whether triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` at its import)."""
    return triton is not None and os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_tensors(where: str, *tensors: Tensor) -> None:
    """Refuse what the triton backend cannot run: no triton, or CPU tensors without the interpreter."""
    if triton is None:
        raise RuntimeError(f"{where}: backend='triton' needs the triton package (pip install triton)")
    for t in tensors:
        if t is None:
            continue
        if t.device.type != "cuda" and not interpreted():
            raise ValueError(
                f"{where}: backend='triton' runs on CUDA tensors, got a tensor on {t.device}; on a machine "
                "without CUDA, set TRITON_INTERPRET=1 before triton is imported to run the kernels in "
                "Triton's interpreter")
    dtypes = {t.dtype for t in tensors if t is not None and t.is_floating_point()}
    bad = dtypes - {torch.float16, torch.bfloat16, torch.float32, torch.float64}   # the first two run in float32
    if bad:
        raise TypeError(f"{where}: backend='triton' supports float16, bfloat16, float32 and float64, "
                        f"got {sorted(map(str, bad))}")


def _grid(n: int, block: int) -> tuple[int]:
    return (max(1, triton.cdiv(n, block)),)


if triton is not None:
    # ---------------------------------------------------------------------- layer norm
    @triton.jit
    def _layer_norm_fwd(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, M, eps,
                        HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)                              # one program per row
        cols = tl.arange(0, BLOCK)
        mask = cols < M                                     # the row padded to a power of two
        x = tl.load(x_ptr + row * M + cols, mask=mask, other=0.0)
        mean = tl.sum(x, axis=0) / M
        d = tl.where(mask, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / M + eps)
        y = d * rstd
        if HAS_W:
            y = y * tl.load(w_ptr + cols, mask=mask, other=0.0)
        if HAS_B:
            y = y + tl.load(b_ptr + cols, mask=mask, other=0.0)
        tl.store(y_ptr + row * M + cols, y, mask=mask)
        tl.store(mean_ptr + row, mean)
        tl.store(rstd_ptr + row, rstd)

    @triton.jit
    def _layer_norm_bwd(g_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, gxhat_ptr, M,
                        HAS_W: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < M
        x = tl.load(x_ptr + row * M + cols, mask=mask, other=0.0)
        g = tl.load(g_ptr + row * M + cols, mask=mask, other=0.0)
        mean = tl.load(mean_ptr + row)
        rstd = tl.load(rstd_ptr + row)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        gt = g
        if HAS_W:
            gt = g * tl.load(w_ptr + cols, mask=mask, other=0.0)
        c1 = tl.sum(gt, axis=0) / M                         # mean of g~ = g w
        c2 = tl.sum(gt * xhat, axis=0) / M                  # mean of g~ xhat
        tl.store(dx_ptr + row * M + cols, rstd * (gt - c1 - xhat * c2), mask=mask)
        tl.store(gxhat_ptr + row * M + cols, g * xhat, mask=mask)   # summed over rows for dw

    class LayerNormTriton(torch.autograd.Function):
        """Layer norm of a contiguous ``(R, M)`` view; returns ``y``. Backward: dx by a row kernel, dw, db by sums."""

        @staticmethod
        def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, M: int, eps: float):
            x2 = x.contiguous().view(-1, M)                                # (R, M)
            R = x2.shape[0]
            y = torch.empty_like(x2)
            mean = x2.new_empty(R)
            rstd = x2.new_empty(R)
            weight = None if weight is None else weight.contiguous()
            bias = None if bias is None else bias.contiguous()
            if R:
                _layer_norm_fwd[(R,)](x2, weight, bias, y, mean, rstd, M, eps, HAS_W=weight is not None,
                                      HAS_B=bias is not None, BLOCK=triton.next_power_of_2(M))
            return y.view(x.shape), mean, rstd

        @staticmethod
        def setup_context(ctx, inputs, output):
            x, weight, bias, M, _ = inputs
            _, mean, rstd = output
            ctx.mark_non_differentiable(mean, rstd)
            ctx.save_for_backward(x, weight, mean, rstd)
            ctx.M, ctx.bias_shape = M, None if bias is None else bias.shape

        @staticmethod
        def backward(ctx, dy, _dmean, _drstd):
            x, weight, mean, rstd = ctx.saved_tensors
            M = ctx.M
            x2, g2 = x.contiguous().view(-1, M), dy.contiguous().view(-1, M)     # (R, M)
            R = x2.shape[0]
            dx = torch.empty_like(x2)
            gxhat = torch.empty_like(x2)
            if R:
                _layer_norm_bwd[(R,)](g2, x2, None if weight is None else weight.contiguous(), mean, rstd, dx, gxhat, M, HAS_W=weight is not None,
                                      BLOCK=triton.next_power_of_2(M))
            need = ctx.needs_input_grad
            dw = gxhat.sum(0).view(weight.shape) if weight is not None and need[1] else None
            db = g2.sum(0).view(ctx.bias_shape) if ctx.bias_shape is not None and need[2] else None
            return dx.view(x.shape) if need[0] else None, dw, db, None, None

    # ------------------------------------------------------------------- cross-entropy
    @triton.jit
    def _cross_entropy_fwd(z_ptr, t_ptr, loss_ptr, grad_ptr, C, scale, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < C
        z = tl.load(z_ptr + row * C + cols, mask=mask, other=-float("inf"))
        y = tl.load(t_ptr + row)
        mx = tl.max(z, axis=0)
        e = tl.exp(z - mx)                                  # 0 in the masked lanes
        s = tl.sum(e, axis=0)
        zy = tl.sum(tl.where(cols == y, z, 0.0), axis=0)
        tl.store(loss_ptr + row, tl.log(s) + mx - zy)       # -log softmax(z)_y
        grad = (e / s - tl.where(cols == y, 1.0, 0.0)) * scale
        tl.store(grad_ptr + row * C + cols, grad, mask=mask)

    class CrossEntropyTriton(torch.autograd.Function):
        """Fused cross-entropy of ``(R, C)`` logits: forward writes the loss and its gradient; backward scales it."""

        @staticmethod
        def forward(z: Tensor, target: Tensor, reduction: str):
            z2 = z.contiguous()
            R, C = z2.shape
            rows = z2.new_empty(R)
            grad = torch.empty_like(z2)
            scale = 1.0 / R if reduction == "mean" and R else 1.0
            if R:
                _cross_entropy_fwd[(R,)](z2, target.contiguous(), rows, grad, C, scale,
                                         BLOCK=triton.next_power_of_2(C))
            loss = rows if reduction == "none" else (rows.mean() if reduction == "mean" else rows.sum())
            return loss, grad

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.mark_non_differentiable(output[1])
            ctx.save_for_backward(output[1])                # only the gradient
            ctx.reduction = inputs[2]

        @staticmethod
        def backward(ctx, dloss, _dgrad):
            (grad,) = ctx.saved_tensors
            scale = dloss.unsqueeze(1) if ctx.reduction == "none" else dloss
            return grad * scale, None, None

    # ------------------------------------------------------------------------- GELU
    @triton.jit
    def _gelu_fwd(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        tl.store(y_ptr + offs, 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476)), mask=mask)

    @triton.jit
    def _gelu_bwd(g_ptr, x_ptr, dx_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0)
        cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
        pdf = 0.3989422804014327 * tl.exp(-0.5 * x * x)
        tl.store(dx_ptr + offs, g * (cdf + x * pdf), mask=mask)

    class GELUTriton(torch.autograd.Function):
        """Exact GELU; backward ``g (Phi(x) + x phi(x))``, both one elementwise kernel."""

        @staticmethod
        def forward(x: Tensor):
            xc = x.contiguous()
            y = torch.empty_like(xc)
            _gelu_fwd[_grid(xc.numel(), _ELEMENTWISE_BLOCK)](xc, y, xc.numel(), BLOCK=_ELEMENTWISE_BLOCK)
            return y

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, dy):
            (x,) = ctx.saved_tensors
            xc, g = x.contiguous(), dy.contiguous()
            dx = torch.empty_like(xc)
            _gelu_bwd[_grid(xc.numel(), _ELEMENTWISE_BLOCK)](g, xc, dx, xc.numel(), BLOCK=_ELEMENTWISE_BLOCK)
            return dx

    # ------------------------------------------------------------------------ PReLU
    @triton.jit
    def _prelu_fwd(x_ptr, w_ptr, y_ptr, n, S, C, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        a = tl.load(w_ptr + (offs // S) % C, mask=mask, other=0.0)   # channel of each element
        tl.store(y_ptr + offs, tl.where(x > 0, x, a * x), mask=mask)

    @triton.jit
    def _prelu_bwd(g_ptr, x_ptr, w_ptr, dx_ptr, gneg_ptr, n, S, C, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0)
        a = tl.load(w_ptr + (offs // S) % C, mask=mask, other=0.0)
        tl.store(dx_ptr + offs, tl.where(x > 0, g, a * g), mask=mask)
        tl.store(gneg_ptr + offs, tl.where(x > 0, 0.0, g * x), mask=mask)   # g min(0, x), summed per channel

    class PReLUTriton(torch.autograd.Function):
        """PReLU with channels on dim 1; the slope gradient sums ``g min(0, x)`` per channel."""

        @staticmethod
        def forward(x: Tensor, weight: Tensor):
            xc = x.contiguous()
            C = weight.numel()
            S = xc.numel() if C == 1 else xc.shape[2:].numel()        # values per (sample, channel)
            y = torch.empty_like(xc)
            if xc.numel():
                _prelu_fwd[_grid(xc.numel(), _ELEMENTWISE_BLOCK)](xc, weight.contiguous(), y, xc.numel(), S, C,
                                                                 BLOCK=_ELEMENTWISE_BLOCK)
            return y

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        @staticmethod
        def backward(ctx, dy):
            x, weight = ctx.saved_tensors
            xc, g = x.contiguous(), dy.contiguous()
            C = weight.numel()
            S = xc.numel() if C == 1 else xc.shape[2:].numel()        # values per (sample, channel)
            dx, gneg = torch.empty_like(xc), torch.empty_like(xc)
            if xc.numel():
                _prelu_bwd[_grid(xc.numel(), _ELEMENTWISE_BLOCK)](g, xc, weight.contiguous(), dx, gneg, xc.numel(),
                                                                 S, C, BLOCK=_ELEMENTWISE_BLOCK)
            dw = None
            if ctx.needs_input_grad[1]:
                if C == 1:
                    dw = gneg.sum().reshape(weight.shape)
                else:
                    dw = gneg.view(xc.shape[0], C, S).sum((0, 2)).reshape(weight.shape)    # (N, C, S) -> (C,)
            return dx if ctx.needs_input_grad[0] else None, dw

    # ------------------------------------------------------------------ fake quantize
    @triton.jit
    def _rint(v):
        """Round half to even (``std::nearbyint``): floor, then up when the fraction is above 1/2 or a tie at an odd floor."""
        r = tl.floor(v)
        f = v - r                                           # exact in floating point
        odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
        up = (f > 0.5) | ((f == 0.5) & odd)
        return tl.where(up, r + 1.0, r)

    @triton.jit
    def _fake_quantize_fwd(x_ptr, y_ptr, m_ptr, n, inv_scale, scale, z, lo, hi, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        q = _rint(x * inv_scale) + z                        # z + nearbyint(x / s)
        q = tl.where(q == q, q, lo - 1.0)                   # NaN -> below the range (fmax: quant_min)
        tl.store(m_ptr + offs, (q >= lo) & (q <= hi), mask=mask)
        y = (tl.minimum(tl.maximum(q, lo), hi) - z) * scale
        tl.store(y_ptr + offs, y.to(tl.float32), mask=mask)    # rounded to float, as torch (also for float64)

    class FakeQuantizeTriton(torch.autograd.Function):
        """Per-tensor fake quantization; forward writes ``y`` and the in-range mask; backward ``g * mask``."""

        @staticmethod
        def forward(x: Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int):
            xc = x.contiguous()
            sc = torch.tensor(scale, dtype=torch.float32)
            inv = (1.0 / sc).item()                         # 1/s rounded to float32, as torch's kernel
            y = torch.empty_like(xc)
            mask = torch.empty(xc.shape, dtype=torch.bool, device=xc.device)
            if xc.numel():
                _fake_quantize_fwd[_grid(xc.numel(), _ELEMENTWISE_BLOCK)](
                    xc, y, mask, xc.numel(), inv, sc.item(), float(zero_point), float(quant_min),
                    float(quant_max), BLOCK=_ELEMENTWISE_BLOCK)
            return y, mask

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.mark_non_differentiable(output[1])
            ctx.save_for_backward(output[1])

        @staticmethod
        def backward(ctx, dy, _dmask):
            (mask,) = ctx.saved_tensors
            return dy * mask, None, None, None, None
