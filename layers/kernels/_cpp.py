"""Build and load the C++ CPU operators of :mod:`layers.kernels` (``csrc/kernels.cpp``).

The source is compiled on first use with :func:`torch.utils.cpp_extension.load`
(``ninja`` drives the compiler) into a shared library that registers the
operators ``torch.ops.layers.*`` (``is_python_module=False``: the library holds no
Python module, only ``TORCH_LIBRARY`` registrations). The build directory is
cached: ``$LAYERS_KERNELS_BUILD_DIR``, else ``$TORCH_EXTENSIONS_DIR/layers_kernels``, else
``~/.cache/layers/kernels/torch-<version>``,
so later processes load the library in well under a second; a changed source
is rebuilt.

Flags: ``-O3 -march=native -fopenmp`` (OpenMP is what makes ``at::parallel_for``
use several threads) and the SIMD level torch itself dispatches to on this CPU
(:func:`torch.backends.cpu.get_cpu_capability`): for ``AVX512``,
``-DCPU_CAPABILITY_AVX512`` with ``-mavx512f ...``, for ``AVX2``, ``-DCPU_CAPABILITY_AVX2``
with ``-mavx2 -mfma``. The define selects the matching specialisation of
``at::vec::Vectorized`` (16 or 8 floats per register, SLEEF's vectorized ``exp`` from
``libtorch_cpu``); without it the headers compile to a generic loop per lane, which
the compiler vectorizes only in part. A compiler that rejects ``-march=native``
gets the build without it.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time
from pathlib import Path

import torch
import torch.utils.cpp_extension

__all__ = ["load", "ensure_loaded", "build_dir", "build_seconds", "SOURCE", "CrossEntropyInplace"]

#: The C++ source of every operator.
SOURCE = Path(__file__).with_name("csrc") / "kernels.cpp"

_NAME = "layers_kernels"
_build_seconds: float | None = None
_loaded = False


def ensure_loaded() -> None:
    """:func:`load` unless already done: a flag test that torch.compile traces without a graph break.

    (The first load itself, a build, cannot be traced: run one call eagerly before compiling.)
    """
    if not _loaded:
        load()


def build_dir() -> Path:
    """Where the extension is built and cached."""
    env = os.environ.get("LAYERS_KERNELS_BUILD_DIR")
    if env:
        return Path(env)
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"]) / _NAME
    return Path.home() / ".cache" / "layers" / "kernels" / f"torch-{torch.__version__}"


def build_seconds() -> float | None:
    """Seconds the first :func:`load` of this process took (a build, or just loading a cached one)."""
    return _build_seconds


def _compiler() -> str:
    cxx = os.environ.get("CXX", "c++")
    path = shutil.which(cxx)
    if path is None:
        raise RuntimeError(
            f"layers.kernels backend='cpp' needs a C++ compiler to build its operators, and {cxx!r} "
            "(the $CXX variable, default 'c++') was not found on PATH: install g++ or clang++ "
            "(e.g. apt-get install g++), or use backend='compile'")
    return path


def _accepts(compiler: str, flag: str) -> bool:
    probe = subprocess.run([compiler, flag, "-x", "c++", "-E", "-o", os.devnull, os.devnull],
                           capture_output=True, check=False)
    return probe.returncode == 0


#: ``-D`` and ``-m`` flags per SIMD level, as torch builds its own kernels for that level.
_SIMD_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
}


def _flags(compiler: str) -> list[str]:
    flags = ["-O3", "-fopenmp"]
    if _accepts(compiler, "-march=native"):
        flags.append("-march=native")
    # The vector width torch itself dispatches to on this CPU (AVX512, AVX2 or DEFAULT).
    level = torch.backends.cpu.get_cpu_capability()
    extra = _SIMD_FLAGS.get(level, [])
    if extra and all(_accepts(compiler, f) for f in extra if f.startswith("-m")):
        flags += extra
    return flags


def _delay_error(outputs, tensors):
    """Make a second derivative through the gradients ``outputs`` raise, instead of coming back wrong.

    The C++ backward kernels are not differentiable: under ``create_graph=True`` their gradients
    would have no history, and a double backward would return zeros (or drop a path). Each
    gradient is routed through an error node (``DelayedError``, as in
    ``torch.autograd.function.once_differentiable``) that also takes every tensor of ``tensors``
    that requires grad, so any derivative reaching those tensors through the gradient runs the
    node and raises. No copy is made; with grad mode off (plain backward) nothing happens.
    """
    history = [t for t in tensors if isinstance(t, torch.Tensor) and t.requires_grad]
    if not torch.is_grad_enabled() or not history:
        return outputs
    single = not isinstance(outputs, tuple)
    outputs = (outputs,) if single else outputs
    message = (b"layers.kernels: the C++ operators have no double backward "
               b"(use the reference Function of layers, or backend='compile')")
    wrapped = tuple(torch._C._functions.DelayedError(message, 1 + len(history))(o.detach(), *history)[0]
                    if isinstance(o, torch.Tensor) else o for o in outputs)
    return wrapped[0] if single else wrapped


def _first_order(backward):
    """Decorate ``backward(ctx, saved, *grads)``: run it without a graph, and guard its gradients.

    The saved tensors are unpacked here, once (non-reentrant checkpointing allows one unpack), and
    passed in; the gradients go through :func:`_delay_error` with the upstream gradients and the
    saved tensors.
    """
    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        saved = ctx.saved_tensors
        with torch.no_grad():
            outputs = backward(ctx, saved, *grads)
        return _delay_error(outputs, (*grads, *saved))
    return wrapper


@functools.cache
def load() -> None:
    """Compile (first time) and load the operators; afterwards ``torch.ops.layers.gelu`` etc. exist.

    Raises:
        RuntimeError: no C++ compiler, or the build failed (the compiler's output is in the message).
    """
    global _build_seconds, _loaded
    compiler = _compiler()
    if shutil.which("ninja") is None and not torch.utils.cpp_extension.is_ninja_available():
        raise RuntimeError("layers.kernels backend='cpp' needs ninja to build its operators: pip install ninja")
    directory = build_dir()
    directory.mkdir(parents=True, exist_ok=True)
    flags = _flags(compiler)
    start = time.perf_counter()
    torch.utils.cpp_extension.load(
        name=_NAME, sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"],
        build_directory=str(directory), is_python_module=False, verbose=False)
    _build_seconds = time.perf_counter() - start
    _register()
    _loaded = True


# ------------------------------------------------------------------ autograd and fake tensors
# Registered from Python once the library is loaded: torch.library.register_autograd gives each
# forward operator its backward (built from the *_backward operators), and register_fake gives
# the shapes of its outputs, so torch.compile and torch.export trace each op as one opaque node.

def _empty(t: torch.Tensor, shape=None, dtype=None) -> torch.Tensor:
    return t.new_empty(t.shape if shape is None else shape, dtype=dtype)


def _register() -> None:
    ops = torch.ops.layers
    lib = torch.library

    # layer_norm(input, weight, bias, M, eps) -> (y, mean, rstd)
    @lib.register_fake("layers::layer_norm")
    def _(input, weight, bias, M, eps):
        rows = input.numel() // M
        return _empty(input), _empty(input, (rows,)), _empty(input, (rows,))

    @lib.register_fake("layers::layer_norm_backward")
    def _(grad_out, input, mean, rstd, weight, output_mask):
        M = input.numel() // mean.numel() if mean.numel() else (weight.numel() if weight is not None else 0)
        dx = _empty(input) if output_mask[0] else _empty(input, (0,))
        dw = _empty(weight) if output_mask[1] and weight is not None else _empty(input, (0,))
        db = _empty(input, (M,)) if output_mask[2] else _empty(input, (0,))
        return dx, dw, db

    def ln_setup(ctx, inputs, output):
        input, weight, bias, M, eps = inputs
        _, mean, rstd = output
        ctx.save_for_backward(input, weight, mean, rstd)            # x and 2 numbers per row
        ctx.bias_shape = None if bias is None else bias.shape

    @_first_order
    def ln_backward(ctx, saved, dy, _dmean, _drstd):
        input, weight, mean, rstd = saved
        need = ctx.needs_input_grad
        mask = [need[0], weight is not None and need[1], ctx.bias_shape is not None and need[2]]
        dx, dw, db = ops.layer_norm_backward(dy, input, mean, rstd, weight, mask)
        return (dx if mask[0] else None, dw if mask[1] else None,
                db.reshape(ctx.bias_shape) if mask[2] else None, None, None)

    lib.register_autograd("layers::layer_norm", ln_backward, setup_context=ln_setup)

    # cross_entropy(input, target, reduction) -> (loss, dloss/dinput)
    @lib.register_fake("layers::cross_entropy")
    def _(input, target, reduction):
        loss = _empty(input, (input.shape[0],)) if reduction == 0 else _empty(input, ())
        return loss, _empty(input)

    def ce_setup(ctx, inputs, output):
        ctx.reduction = inputs[2]
        ctx.save_for_backward(output[1])                            # only the gradient: (R, C)
        ctx.set_materialize_grads(False)                            # no (R, C) zeros for the unused output

    def ce_backward(ctx, dloss, _dgrad):
        (grad,) = ctx.saved_tensors
        if dloss is None or not ctx.needs_input_grad[0]:
            return None, None, None
        # Linear in dloss (a real path, so the double-backward jvp trick works); the path to the
        # logits through the saved gradient is what has no derivative: the error node sits there.
        grad = _delay_error(grad, (grad,))
        scale = dloss.unsqueeze(1) if ctx.reduction == 0 else dloss  # (R, 1) per row, or a scalar
        return grad * scale, None, None

    lib.register_autograd("layers::cross_entropy", ce_backward, setup_context=ce_setup)

    # cross_entropy_inplace(input!, target, reduction) -> loss; the gradient is left in input
    @lib.register_fake("layers::cross_entropy_inplace")
    def _(input, target, reduction):
        return _empty(input, (input.shape[0],)) if reduction == 0 else _empty(input, ())

    # gelu(input) -> y
    lib.register_fake("layers::gelu")(lambda input: _empty(input))
    lib.register_fake("layers::gelu_backward")(lambda grad_out, input: _empty(input))

    def gelu_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @_first_order
    def gelu_backward(ctx, saved, dy):
        (x,) = saved
        return ops.gelu_backward(dy, x)

    lib.register_autograd("layers::gelu", gelu_backward, setup_context=gelu_setup)

    # prelu(input, weight) -> y
    lib.register_fake("layers::prelu")(lambda input, weight: _empty(input))

    @lib.register_fake("layers::prelu_backward")
    def _(grad_out, input, weight, output_mask):
        return (_empty(input) if output_mask[0] else _empty(input, (0,)),
                _empty(weight) if output_mask[1] else _empty(weight, (0,)))

    def prelu_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @_first_order
    def prelu_backward(ctx, saved, dy):
        x, weight = saved
        mask = list(ctx.needs_input_grad[:2])
        dx, dw = ops.prelu_backward(dy, x, weight, mask)
        return dx if mask[0] else None, dw if mask[1] else None

    lib.register_autograd("layers::prelu", prelu_backward, setup_context=prelu_setup)

    # fake_quantize(input, scale, zero_point, quant_min, quant_max) -> (y, mask)
    @lib.register_fake("layers::fake_quantize")
    def _(input, scale, zero_point, quant_min, quant_max):
        return _empty(input), _empty(input, dtype=torch.bool)

    def fq_setup(ctx, inputs, output):
        ctx.save_for_backward(output[1])                            # one bool per element
        ctx.set_materialize_grads(False)                            # no zeros for the mask's gradient

    lib.register_fake("layers::fake_quantize_backward")(lambda grad_out, mask: _empty(grad_out))

    @_first_order
    def fq_backward(ctx, saved, dy, _dmask):
        (mask,) = saved
        dx = ops.fake_quantize_backward(dy, mask) if dy is not None and ctx.needs_input_grad[0] else None
        return dx, None, None, None, None

    lib.register_autograd("layers::fake_quantize", fq_backward, setup_context=fq_setup)


class CrossEntropyInplace(torch.autograd.Function):
    """Fused cross-entropy whose gradient overwrites the logits: ``torch.ops.layers.cross_entropy_inplace``.

    Forward writes :math:`(\\operatorname{softmax}(z) - \\text{one-hot}(y))\\cdot s` into the
    logits' own memory (``s = 1/R`` for ``"mean"``) and returns the loss; the logits' version
    counter is bumped, so any other autograd node that saved them fails loudly in backward
    instead of reading gradients as logits. Backward scales that buffer by the upstream gradient
    in place and returns it. Nothing of full size is allocated:
    this is how fused losses such as Liger-Kernel's keep one ``(R, C)`` buffer instead of two.
    The buffer can serve one backward only (a second one, ``retain_graph=True``, raises).

    Shapes: ``z`` ``(R, C)`` contiguous float32/float64 CPU, ``y`` ``(R,)`` int64; loss ``()``, or ``(R,)``
    for reduction code 0.
    """

    @staticmethod
    def forward(z: torch.Tensor, y: torch.Tensor, reduction: int) -> torch.Tensor:
        loss = torch.ops.layers.cross_entropy_inplace(z, y, reduction)    # z now holds dloss/dz
        torch.autograd.graph.increment_version(z)
        return loss

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        z, _, reduction = inputs
        ctx.reduction = reduction
        ctx.used = False
        ctx.save_for_backward(z)                                    # the logits' memory, holding the gradient

    @staticmethod
    def backward(ctx, dloss: torch.Tensor):
        if ctx.used:
            raise RuntimeError("cross_entropy(inplace=True): its gradient buffer serves one backward only "
                               "(retain_graph=True and a second backward is not supported)")
        ctx.used = True
        (grad,) = ctx.saved_tensors                                 # (R, C)
        with torch.no_grad():
            grad.mul_(dloss.unsqueeze(1) if ctx.reduction == 0 else dloss)   # (R, C) * (R, 1) or ()
        return _delay_error((grad, None, None), (dloss, grad))
