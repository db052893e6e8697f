"""Fast forms of five costly layers: ``torch.compile``, C++ operators and Triton kernels.

Taught in the chapter "Making a custom layer fast". Each function here computes
the same thing as a reference ``autograd.Function`` of ``layers`` and as a torch
built-in, and picks its implementation with ``backend=``:

``"compile"``
    the reference functional form (:func:`layers.normalization.layer_norm`,
    :func:`layers.losses.cross_entropy`, :func:`layers.activations.gelu`,
    :func:`layers.activations.prelu`, :func:`layers.quantization.fake_quantize`)
    under :func:`torch.compile`, compiled once per process. Any device and dtype
    the reference takes; twice differentiable where the reference is.
``"cpp"`` (default)
    a C++ CPU kernel (``layers/kernels/csrc/kernels.cpp``): one or two passes over
    memory per direction, vectorized with ``at::vec::Vectorized`` and split across
    threads with ``at::parallel_for``. The kernels are registered as operators
    ``torch.ops.layers.<name>`` (``TORCH_LIBRARY`` schema + ``TORCH_LIBRARY_IMPL``
    for CPU), and from Python with :func:`torch.library.register_autograd` and
    :func:`torch.library.register_fake`, so autograd, ``torch.compile(fullgraph=True)``
    and :func:`torch.export.export` see one opaque operator per call. Built on
    first use (see :mod:`layers.kernels._cpp`; 13-20 s here, one extension for all five ops,
    then cached). CPU tensors; the kernels are compiled for float32 and float64, and
    float16/bfloat16 inputs are computed in float32 (statistics and sums accumulate in
    float32) and returned in the input's dtype. Under CPU autocast each op follows torch's:
    ``layer_norm`` and ``cross_entropy`` in float32, ``prelu`` in the lower precision. The
    backward is not itself differentiable: a second derivative through it raises.
``"triton"``
    ``@triton.jit`` kernels, forward and backward, for CUDA tensors; without CUDA
    they run in Triton's CPU interpreter (see :mod:`layers.kernels._triton` for
    when ``TRITON_INTERPRET`` is set). float32 and float64, float16/bfloat16 computed in
    float32 as for ``"cpp"``; no double backward. ``torch.compile`` traces these kernels
    on CUDA only: in the interpreter a kernel is plain Python that Dynamo cannot trace.

Where the fast forms save work (the numbers are in ``benchmarks/kernels_results.md``):

* ``layer_norm``: two reductions and one write per row in forward (mean, variance,
  output), one read of ``x`` and ``g`` for both row sums in backward; saves ``x``
  and two numbers per row.
* ``cross_entropy``: fused. Forward reads the logits once for the row maximum and
  once more to write :math:`e^{z - \\max}` into the gradient buffer while summing
  it, then scales that buffer in place into :math:`(\\operatorname{softmax}(z) -
  \\text{one-hot}(y))/R`. Only that gradient is saved; backward is one multiply by
  the upstream gradient. The log-softmax is never stored.
* ``gelu``, ``prelu``, ``fake_quantize``: one read and one write per element in each
  direction (``prelu``'s backward also reduces :math:`g \\min(0, x)` per channel
  into per-thread partial sums).

Errors: an unknown ``backend`` is a ``ValueError``; ``"cpp"`` on a non-CPU tensor a
``ValueError`` and on a dtype other than float16, bfloat16, float32 and float64 a
``TypeError``; ``"cpp"`` without a C++ compiler a ``RuntimeError`` naming the compiler;
``"triton"`` on a CPU tensor without the interpreter a ``ValueError``.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .. import composable
from .._validation import check_same_device, check_same_dtype, check_tensor
from ..activations import _check_prelu_input
from ..losses._common import _check_reduction
from ..quantization.fake import check_qrange, check_scale_values, check_zero_point_values
from . import _compile, _cpp, _triton, custom_ops

__all__ = ["BACKENDS", "layer_norm", "cross_entropy", "gelu", "prelu", "fake_quantize"]

#: The implementations every function here offers.
BACKENDS = ("compile", "cpp", "triton")

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}

#: Computed in float32 by the cpp and triton kernels, returned in their own dtype.
_LOW = (torch.float16, torch.bfloat16)


def _check_backend(where: str, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"{where}: expected backend to be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")


def _widened(fn, *args):
    """``fn`` on float32 copies of the float16/bfloat16 tensors in ``args``; floating outputs cast back.

    The kernels exist for float32 and float64 only; this is how the lower precisions run
    in them (every sum in float32, one rounding of the result).
    """
    low = next((a.dtype for a in args if isinstance(a, Tensor) and a.dtype in _LOW), None)
    if low is None:
        return fn(*args)
    out = fn(*(a.float() if isinstance(a, Tensor) and a.dtype in _LOW else a for a in args))

    def back(t):
        return t.to(low) if isinstance(t, Tensor) and t.is_floating_point() else t

    return tuple(back(t) for t in out) if isinstance(out, tuple) else back(out)


def _check_cpp(where: str, *tensors: Tensor | None, policy: str | None = None) -> None:
    """CPU tensors of float16/bfloat16/float32/float64 (or any floating dtype that autocast's ``policy`` casts to float32)."""
    cast = policy is not None and composable.autocast_dtype("cpu", policy) == torch.float32
    for t in tensors:
        if t is None:
            continue
        if t.device.type != "cpu":
            raise ValueError(f"{where}: backend='cpp' runs on CPU tensors, got a tensor on {t.device}")
        if t.is_floating_point() and t.dtype not in (*_LOW, torch.float32, torch.float64) and not cast:
            raise TypeError(f"{where}: backend='cpp' supports float16, bfloat16, float32 and float64, got {t.dtype}")
    _cpp.ensure_loaded()


# ------------------------------------------------------------------------------ layer norm
def layer_norm(input: Tensor, normalized_shape: int | tuple[int, ...], weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5, *, backend: str = "cpp") -> Tensor:
    r"""Layer normalization over the last dimensions, as :func:`torch.nn.functional.layer_norm`.

    .. math:: y = \gamma \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

    Backward, with :math:`\hat x = (x - \mu)/\sigma`, :math:`\tilde g = \gamma g` and means
    over the :math:`M` normalized values of each row:
    :math:`\partial x = (\tilde g - \overline{\tilde g} - \hat x\,\overline{\tilde g \hat x}) / \sigma`,
    :math:`\partial\gamma = \sum_{\text{rows}} g \hat x`, :math:`\partial\beta = \sum_{\text{rows}} g`.

    Args:
        input: ``(*, *normalized_shape)``.
        normalized_shape: the trailing shape to normalize over.
        weight: :math:`\gamma` of shape ``normalized_shape``, or ``None``.
        bias: :math:`\beta` of shape ``normalized_shape``, or ``None``.
        eps: added to the variance.
        backend: ``"cpp"``, ``"compile"`` or ``"triton"`` (see the module docstring).

    Shape:
        - Input: :math:`(*, \text{normalized\_shape})`; output the same.

    Examples:
        >>> y = layer_norm(torch.randn(2, 5), 5)
        >>> bool(y.mean(-1).abs().max() < 1e-6)
        True
    """
    where = "layer_norm"
    _check_backend(where, backend)
    if backend == "compile":
        return _compile.compiled("layer_norm")(input, normalized_shape, weight=weight, bias=bias, eps=eps)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    check_tensor(input, where, min_ndim=len(shape))
    if tuple(input.shape[input.dim() - len(shape):]) != shape:
        raise ValueError(f"{where}: expected input whose last dimensions are {shape}, got shape {tuple(input.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            if tuple(t.shape) != shape:
                raise ValueError(f"{where}: expected {name} of shape {shape}, got {tuple(t.shape)}")
            if composable.autocast_dtype(input.device.type, "float32") is None:   # autocast casts all to float32
                check_same_dtype(where, input, t)
            check_same_device(where, input, t)
    M = 1
    for s in shape:
        M *= s
    # float16/bfloat16 (or mixed dtypes under autocast): statistics and output in float32, the output
    # returned in the input's dtype, as F.layer_norm does on CPU.
    low = input.dtype in (torch.float16, torch.bfloat16) or composable.autocast_dtype(input.device.type, "float32") is not None
    args = [t if t is None or not low else t.float() for t in (input, weight, bias)]
    if backend == "cpp":
        _check_cpp(where, *args)
        y = torch.ops.layers.layer_norm(*args, M, float(eps))[0]
    else:
        _triton.check_tensors(where, *args)
        y = _triton.LayerNormTriton.apply(*args, M, float(eps))[0]
    return y.to(input.dtype) if low else y


# --------------------------------------------------------------------------- cross-entropy
def cross_entropy(input: Tensor, target: Tensor, *, reduction: str = "mean", backend: str = "cpp",
                  inplace: bool = False) -> Tensor:
    r"""Softmax cross-entropy on class indices, :math:`-\log\operatorname{softmax}(z)_y`, fused with its gradient.

    Forward computes both the loss and
    :math:`\partial\ell/\partial z = \operatorname{softmax}(z) - \text{one-hot}(y)` (divided by
    :math:`R`, the number of rows, for ``"mean"``) in one sweep over the logits, and saves only
    that gradient; backward multiplies it by the upstream gradient (per row for ``"none"``).
    The ``"compile"`` backend is :func:`layers.losses.cross_entropy` (which recomputes the
    softmax in backward instead).

    ``inplace=True`` (``"cpp"`` only) writes that gradient into the logits' own memory instead of
    a new buffer (``layers.kernels._cpp.CrossEntropyInplace``): afterwards ``input`` holds
    the gradient, not the logits, and nothing of the logits' size is saved or allocated, in
    forward or backward. Use it where nothing else reads the logits, as for the output layer of
    a classifier or a language model (``cross_entropy(h @ W.T, y, inplace=True)``); an autograd
    node that saved them fails loudly in backward. It needs contiguous ``(N, C)`` float32/float64
    logits that require grad, and serves one backward.

    Args:
        input: logits ``(N, C)``, ``(C,)`` or ``(N, C, d1, ...)``.
        target: class indices in ``[0, C)``: ``(N,)``, ``()`` or ``(N, d1, ...)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        backend: ``"cpp"``, ``"compile"`` or ``"triton"``.
        inplace: reuse the logits' memory for their gradient (see above).

    Returns:
        A scalar, or the per-row loss of ``target``'s shape for ``"none"``.

    Examples:
        >>> z = torch.tensor([[2.0, 0.0, 0.0]])
        >>> bool(cross_entropy(z, torch.tensor([0])) < 0.25)
        True
    """
    where = "cross_entropy"
    _check_backend(where, backend)
    if inplace:
        _check_inplace(where, input, backend)
    if backend == "compile":
        return _compile.compiled("cross_entropy")(input, target, reduction=reduction)
    _check_reduction(where, reduction)
    check_tensor(input, where, min_ndim=1)
    check_tensor(target, where, "target", floating=False)
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{where}: expected target to hold class indices (an integer tensor), got {target.dtype}")
    expected = () if input.dim() == 1 else (input.shape[0], *input.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"{where}: expected target of shape {expected} for input of shape {tuple(input.shape)} "
                         f"(classes in dimension 1), got {tuple(target.shape)}")
    check_same_device(where, target, input, "target")
    C = input.shape[0] if input.dim() == 1 else input.shape[1]
    if not torch.compiler.is_compiling() and target.numel():       # a value check: eager only
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= C:
            raise ValueError(f"{where}: expected target class indices in [0, {C - 1}], got {lo if lo < 0 else hi}")
    z = input.unsqueeze(0) if input.dim() == 1 else input.movedim(1, -1).reshape(-1, C)   # (R, C)
    y = target.reshape(-1).long()                                                          # (R,)
    if inplace:
        _check_cpp(where, input)
        return _cpp.CrossEntropyInplace.apply(input, y, _REDUCTIONS[reduction])
    if backend == "cpp":
        _check_cpp(where, input, policy="float32")
        loss = composable.autocast_apply(functools.partial(_widened, torch.ops.layers.cross_entropy), "float32",
                                         z, y, _REDUCTIONS[reduction])[0]
    else:
        _triton.check_tensors(where, input)
        loss = composable.autocast_apply(functools.partial(_widened, _triton.CrossEntropyTriton.apply), "float32",
                                         z, y, reduction)[0]
    return loss.reshape(target.shape) if reduction == "none" else loss


def _check_inplace(where: str, input: Tensor, backend: str) -> None:
    """What ``inplace=True`` needs: the cpp kernel writing into the logits themselves."""
    if backend != "cpp":
        raise ValueError(f"{where}: inplace=True needs backend='cpp', got backend={backend!r}")
    if not isinstance(input, Tensor):
        raise TypeError(f"{where}: expected input to be a Tensor, got {type(input).__name__}")
    if input.dim() != 2 or not input.is_contiguous():
        raise ValueError(f"{where}: inplace=True needs contiguous (N, C) logits, got shape {tuple(input.shape)}"
                         f"{'' if input.is_contiguous() else ' (not contiguous)'}")
    if input.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{where}: inplace=True writes the gradient in the logits' dtype and needs float32 or "
                        f"float64 logits, got {input.dtype}")
    if not input.requires_grad:
        raise ValueError(f"{where}: inplace=True replaces the logits by their gradient, so it needs logits "
                         "that require grad")


# ------------------------------------------------------------------------------------ GELU
def gelu(input: Tensor, *, backend: str = "cpp") -> Tensor:
    r"""Exact GELU, :math:`y = x\,\Phi(x) = \tfrac12 x\,(1 + \operatorname{erf}(x/\sqrt2))`, as :func:`torch.nn.functional.gelu`.

    Backward: :math:`\partial x = g\,(\Phi(x) + x\,\varphi(x))`. Saves the input.

    Args:
        input: any shape.
        backend: ``"cpp"``, ``"compile"`` or ``"triton"``.

    Examples:
        >>> gelu(torch.tensor([0.0, 1.0])).round(decimals=4)
        tensor([0.0000, 0.8413])
    """
    where = "gelu"
    _check_backend(where, backend)
    if backend == "compile":
        return _compile.compiled("gelu")(input)
    check_tensor(input, where)
    if backend == "cpp":
        _check_cpp(where, input)
        return _widened(torch.ops.layers.gelu, input)
    _triton.check_tensors(where, input)
    return _widened(_triton.GELUTriton.apply, input)


# ----------------------------------------------------------------------------------- PReLU
def prelu(input: Tensor, weight: Tensor, *, backend: str = "cpp") -> Tensor:
    r"""Parametric ReLU :math:`y = \max(0, x) + a \min(0, x)`, one slope per channel (dim 1) or one shared.

    Backward: :math:`\partial x = g` where :math:`x > 0`, :math:`a\,g` elsewhere;
    :math:`\partial a_c = \sum_{\text{all but channel } c} g \min(0, x)`.

    Args:
        input: ``(N, C, *)``, or any shape when ``weight`` has one element.
        weight: slopes ``(C,)`` or ``(1,)``.
        backend: ``"cpp"``, ``"compile"`` or ``"triton"``.

    Examples:
        >>> prelu(torch.tensor([[-2.0, 3.0]]), torch.tensor([0.25]))
        tensor([[-0.5000,  3.0000]])
    """
    where = "prelu"
    _check_backend(where, backend)
    if backend == "compile":
        return _compile.compiled("prelu")(input, weight)
    _check_prelu_input(where, input, weight)
    if backend == "cpp":
        _check_cpp(where, input, weight)
        op = torch.ops.layers.prelu
    else:
        _triton.check_tensors(where, input, weight)
        op = _triton.PReLUTriton.apply
    return composable.autocast_apply(functools.partial(_widened, op), "lower", input, weight)   # as torch's prelu


# --------------------------------------------------------------------------- fake quantize
def fake_quantize(input: Tensor, scale: float | Tensor, zero_point: int | Tensor, quant_min: int, quant_max: int,
                  *, backend: str = "cpp") -> Tensor:
    r"""Per-tensor fake quantization with the straight-through gradient, bit-exact with
    :func:`torch.fake_quantize_per_tensor_affine`.

    .. math:: q = \operatorname{round}(x \cdot (1/s)) + z, \qquad y = (\operatorname{clamp}(q, q_{\min}, q_{\max}) - z)\, s

    with :math:`1/s` in float32 and round half to even; :math:`\partial x = g\,[q_{\min} \le q \le q_{\max}]`.
    Saves one bool per element.

    Args:
        input: any shape, floating point.
        scale: step :math:`s > 0` (a number or one-element tensor).
        zero_point: integer :math:`z` in ``[quant_min, quant_max]``.
        quant_min: smallest integer level.
        quant_max: largest integer level.
        backend: ``"cpp"``, ``"compile"`` or ``"triton"``.

    Examples:
        >>> fake_quantize(torch.tensor([0.26, -1.0, 9.0]), 0.5, 0, -4, 3)
        tensor([ 0.5000, -1.0000,  1.5000])
    """
    where = "fake_quantize"
    _check_backend(where, backend)
    if backend == "compile":
        return _compile.compiled("fake_quantize")(input, scale, zero_point=zero_point, quant_min=quant_min,
                                                 quant_max=quant_max)
    check_tensor(input, where)
    check_qrange(where, quant_min, quant_max)
    # Python numbers are checked as they are (also while tracing), tensors in eager mode; the scale
    # once more as the float32 the kernel uses (1e-50 becomes 0)
    if not isinstance(scale, Tensor):
        check_scale_values(where, float(scale))
    if not isinstance(zero_point, Tensor):
        check_zero_point_values(where, zero_point, quant_min, quant_max)
    scale_t, zero_point_t = torch.as_tensor(scale, dtype=torch.float32), torch.as_tensor(zero_point)
    for name, t in (("scale", scale_t), ("zero_point", zero_point_t)):
        if t.numel() != 1:
            raise ValueError(f"{where}: expected a one-element {name} (per-tensor quantization), got shape {tuple(t.shape)}")
    check_scale_values(where, scale_t)
    check_zero_point_values(where, zero_point_t, quant_min, quant_max)
    scale, zero_point = float(scale_t), int(zero_point_t)        # the operators take Python numbers
    if backend == "cpp":
        _check_cpp(where, input)
        return _widened(torch.ops.layers.fake_quantize, input, scale, zero_point, quant_min, quant_max)[0]
    _triton.check_tensors(where, input)
    return _widened(_triton.FakeQuantizeTriton.apply, input, scale, zero_point, quant_min, quant_max)[0]
