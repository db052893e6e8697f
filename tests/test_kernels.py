"""layers.kernels: every backend against the reference Function and the torch built-in.

The C++ operators are built once per machine (cached build directory); the Triton kernels run in
Triton's interpreter on CPU tensors when there is no CUDA (layers.kernels sets TRITON_INTERPRET=1
before importing triton), so their inputs here are tiny.
"""

import functools
import math
import os
import subprocess
import sys

import pytest
import torch
import torch._functorch.config
import torch.nn.functional as F

import layers
from layers import kernels as K
from benchmarks import kernels as kernels_benchmark
from layers.kernels import _cpp, _triton, custom_ops
from layers.measuring import compile_report, format_compile_reports
from layers.testing import check_layer as _check_layer

# The fast forms are opaque operators (C++, Triton, a compiled graph) with an autograd
# formula but no vmap rule and no forward-mode formula: those two checks belong to the
# reference Functions (their own tests), not to these kernels.
check_layer = functools.partial(_check_layer, vmap=False, forward_ad=False)

BACKENDS = ["cpp", "triton", "compile"]


@pytest.fixture(scope="module", autouse=True)
def _build(one_thread, cpp_operators):
    """Every test here runs with the C++ operators built (first time on this machine) or loaded."""


def _traceable(backend):
    """Whether the compile check applies to ``backend``.

    Dynamo traces user Triton kernels on CUDA, but in the interpreter a kernel is a Python
    function whose source Triton rewrites at launch (``inspect.getsourcelines``), which Dynamo
    refuses to trace ("Unsupported method call"): the triton forms are compiled where a GPU
    runs them.
    """
    return not (backend == "triton" and _triton.interpreted())


def _leaf(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, dtype=dtype) * scale).requires_grad_()


def _check(fn, builtin, reference, inputs, backend, **kw):
    """check_layer against the built-in (all checks) and against the reference Function (values, gradients).

    The cpp and triton backwards are kernels, not differentiable torch ops: no gradgradcheck.
    The needs_input_grad check counts ATen ops, and a fused backward kernel is one op whether or not
    it computes every gradient (it takes an output mask instead; see test_backward_masks).
    """
    opts = dict(gradgradcheck=False, needs_input_grad=False)
    if backend == "compile":
        # Every new shape, dtype or requires_grad pattern recompiles (seconds each): the main checks only.
        # A compiled backward supports neither double backward nor, with donated buffers, the
        # retain_graph=True that gradcheck uses. float16, bfloat16 and autocast are three more
        # compilations of forward and backward (about 10 s an op): checked on layer norm, the op
        # whose reductions low precision strains most, and on cross-entropy, whose autocast policy
        # (a float32 loss) differs from the others', not on every op.
        opts.update(noncontiguous=False, empty_batch=False, low_precision=False)
    opts.update(compile=_traceable(backend))
    opts.update(kw)
    with torch._functorch.config.patch(donated_buffer=False):
        check_layer(fn, builtin, inputs, **opts)
    check_layer(fn, reference, inputs, gradcheck=False, gradgradcheck=False, noncontiguous=False,
                empty_batch=False, needs_input_grad=False, unmodified=False,
                compile=False)                                   # compiled once above, against the built-in


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(backend, affine):
    shape = (2, 3) if backend == "triton" else (5, 7)        # the interpreter is slow: tiny
    x = _leaf(2, *shape, dtype=torch.float64)
    w = _leaf(*shape, dtype=torch.float64) if affine else None
    b = _leaf(*shape, dtype=torch.float64) if affine else None
    inputs = [x, w, b] if affine else [x]

    def fn(x, w=None, b=None):
        return K.layer_norm(x, shape, w, b, backend=backend)

    def builtin(x, w=None, b=None):
        return F.layer_norm(x, shape, w, b)

    def reference(x, w=None, b=None):
        return layers.normalization.layer_norm(x, shape, w, b)

    if backend == "compile" and not affine:
        pytest.skip("the compile backend is checked once per op (each compile takes seconds)")
    _check(fn, builtin, reference, inputs, backend, batch_inputs=[0], low_precision=True)
    if backend != "compile":                              # float32 too
        x32 = _leaf(4, 33)
        check_layer(lambda x: K.layer_norm(x, 33, backend=backend), lambda x: F.layer_norm(x, (33,)), [x32],
                    gradcheck=False, gradgradcheck=False, needs_input_grad=False, compile=_traceable(backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(backend, reduction):
    if backend == "compile" and reduction != "mean":
        pytest.skip("the compile backend is checked once per op (each compile takes seconds)")
    n = 3 if backend == "triton" else 6
    z = _leaf(n, 5, dtype=torch.float64, scale=3.0)
    t = torch.randint(0, 5, (n,))

    def fn(z, t):
        return K.cross_entropy(z, t, reduction=reduction, backend=backend)

    _check(fn, lambda z, t: F.cross_entropy(z, t, reduction=reduction),
           lambda z, t: layers.losses.cross_entropy(z, t, reduction=reduction), [z, t], backend,
           empty_batch=backend != "compile" and reduction != "mean",     # mean of nothing is NaN on both sides
           low_precision=True)
    if backend != "compile":
        z4 = _leaf(2, 5, 3, dtype=torch.float64)             # (N, C, d): classes in dim 1
        t4 = torch.randint(0, 5, (2, 3))
        check_layer(lambda z, t: K.cross_entropy(z, t, reduction=reduction, backend=backend),
                    lambda z, t: F.cross_entropy(z, t, reduction=reduction), [z4, t4],
                    gradgradcheck=False, needs_input_grad=False, empty_batch=False, compile=_traceable(backend))


def test_cross_entropy_saves_only_the_gradient():
    z = torch.randn(8, 10, requires_grad=True)
    t = torch.randint(0, 10, (8,))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda s: saved.append(s) or s, lambda s: s):
        loss = K.cross_entropy(z, t)
    assert [tuple(s.shape) for s in saved] == [(8, 10)]
    loss.backward()
    expected = torch.softmax(z.detach(), 1) - F.one_hot(t, 10)
    torch.testing.assert_close(z.grad, expected / 8)     # the saved tensor is the gradient itself


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_inplace_matches_and_reuses_the_logits(reduction):
    h = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 6, (7,))
    ref = F.cross_entropy(h @ w.T, t, reduction=reduction)
    g = torch.rand_like(ref) + 0.5                               # not 1: backward must scale
    dh, dw = torch.autograd.grad(ref, [h, w], g)
    z = h @ w.T                                                  # logits nothing else saves (7, 6)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda s: saved.append(s) or s, lambda s: s):
        loss = K.cross_entropy(z, t, reduction=reduction, inplace=True)
    torch.testing.assert_close(loss, ref)
    own = [s for s in saved if s.untyped_storage().data_ptr() == z.untyped_storage().data_ptr()]
    assert len(own) == len(saved) == 1                           # only the logits' memory, now the gradient
    expected = torch.softmax((h @ w.T).detach(), 1) - F.one_hot(t, 6)
    if reduction == "mean":
        expected = expected / 7
    torch.testing.assert_close(z.detach(), expected)             # the logits now hold the gradient (upstream 1)
    got = torch.autograd.grad(loss, [h, w], g)
    torch.testing.assert_close(got[0], dh)
    torch.testing.assert_close(got[1], dw)


def test_cross_entropy_inplace_fails_loudly():
    t = torch.randint(0, 5, (4,))
    x = torch.randn(4, 5, requires_grad=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        K.cross_entropy(torch.tanh(x), t, inplace=True).backward()      # tanh saved its output: the logits
    loss = K.cross_entropy(x * 2, t, inplace=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward only"):
        loss.backward()
    with pytest.raises(ValueError, match="backend='cpp'"):
        K.cross_entropy(x * 2, t, backend="compile", inplace=True)
    with pytest.raises(ValueError, match=r"contiguous \(N, C\)"):
        K.cross_entropy((x * 2).T, torch.randint(0, 4, (5,)), inplace=True)
    with pytest.raises(TypeError, match="float32 or float64"):
        K.cross_entropy((x * 2).half(), t, inplace=True)
    with pytest.raises(ValueError, match="require grad"):
        K.cross_entropy(x.detach(), t, inplace=True)


def test_cross_entropy_inplace_compiles_fullgraph():
    h, y = torch.randn(8, 16), torch.randint(0, 5, (8,))
    w = torch.randn(5, 16, requires_grad=True)
    torch._dynamo.reset()
    loss = torch.compile(lambda h, w, y: K.cross_entropy(h @ w.T, y, inplace=True), fullgraph=True)(h, w, y)
    (got,) = torch.autograd.grad(loss * 3, [w])                  # an upstream gradient that is not 1
    (ref,) = torch.autograd.grad(F.cross_entropy(h @ w.T, y) * 3, [w])
    torch.testing.assert_close(got, ref)


def test_cross_entropy_memory_beyond_the_logits():
    """Peak bytes created in forward + backward, in (R, C) tensors: 3 built-in, 2 fused, 1 in place.

    The fused op's second output (its gradient) is not used downstream, and no zeros are
    materialized for it; in place, the one tensor is the copy of a leaf's gradient into .grad.
    """
    from layers.measuring import peak_bytes
    z, t = torch.randn(64, 100), torch.randint(0, 100, (64,))
    size = z.numel() * 4
    peaks = {name: peak_bytes(fn, [z.clone().requires_grad_(), t]) / size for name, fn in {
        "built-in": F.cross_entropy, "cpp": K.cross_entropy,
        "inplace": lambda z, t: K.cross_entropy(z, t, inplace=True)}.items()}
    assert [round(p) for p in peaks.values()] == [3, 2, 1], peaks


def _cpp_ops(x, w):
    """Each C++ op on ``x`` (4, 6), as a function of ``x`` (``w``: (6,) parameters)."""
    t = torch.tensor([0, 5, 2, 1])
    return {"layer_norm": lambda x: K.layer_norm(x, 6, w, w), "gelu": K.gelu, "prelu": lambda x: K.prelu(x, w),
            "cross_entropy": lambda x: K.cross_entropy(x, t, reduction="sum"),
            "fake_quantize": lambda x: K.fake_quantize(x, 0.1, 0, -128, 127)}


@pytest.mark.parametrize("name", ["layer_norm", "gelu", "prelu", "cross_entropy", "cross_entropy inplace"])
def test_cpp_second_derivative_raises(name):
    """A C++ backward is not differentiable: a second derivative through it raises, never returns zeros."""
    x = _leaf(4, 6, dtype=torch.float64)
    w = _leaf(6, dtype=torch.float64)
    t = torch.tensor([0, 5, 2, 1])
    fn = {**_cpp_ops(x, w), "cross_entropy inplace": lambda x: K.cross_entropy(x * 2, t, inplace=True)}[name]
    (g,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(g.pow(2).sum(), x)
    (g,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad((g + x).sum(), x)                      # x reached through g as well: not dropped


@pytest.mark.parametrize("name", ["layer_norm", "gelu", "prelu", "cross_entropy", "fake_quantize"])
def test_cpp_ops_under_non_reentrant_checkpoint(name):
    """Activation checkpointing (use_reentrant=False) allows one unpack of each saved tensor."""
    from torch.utils.checkpoint import checkpoint
    x, w = _leaf(4, 6, dtype=torch.float64), _leaf(6, dtype=torch.float64)
    fn = _cpp_ops(x, w)[name]
    plain = torch.autograd.grad(fn(x).sum(), [x, w], allow_unused=True)
    again = torch.autograd.grad(checkpoint(fn, x, use_reentrant=False).sum(), [x, w], allow_unused=True)
    for a, b in zip(plain, again):
        assert (a is None and b is None) or torch.equal(a, b)


def test_cpp_cross_entropy_jvp_through_double_backward():
    """torch.autograd.functional.jvp differentiates the backward in its upstream gradient: linear, so allowed."""
    z, v, t = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 5, 2, 1])
    _, ours = torch.autograd.functional.jvp(lambda z: K.cross_entropy(z, t), z, v)
    _, ref = torch.autograd.functional.jvp(lambda z: F.cross_entropy(z, t), z, v)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gelu(backend):
    x = _leaf(2, 5, dtype=torch.float64, scale=2.0) if backend == "triton" else _leaf(4, 9, dtype=torch.float64, scale=2.0)
    _check(lambda x: K.gelu(x, backend=backend), F.gelu, layers.activations.gelu, [x], backend)
    if backend != "compile":
        x32 = _leaf(3, 37, scale=3.0)                    # float32, lengths not a multiple of the vector
        check_layer(lambda x: K.gelu(x, backend=backend), F.gelu, [x32], gradcheck=False, gradgradcheck=False,
                    needs_input_grad=False, compile=_traceable(backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels", [1, 3])
def test_prelu(backend, channels):
    if backend == "compile" and channels == 1:
        pytest.skip("the compile backend is checked once per op (each compile takes seconds)")
    x = _leaf(2, 3, 2, dtype=torch.float64) if backend == "triton" else _leaf(2, 3, 4, 5, dtype=torch.float64)
    w = (torch.rand(channels, dtype=torch.float64) * 0.5).requires_grad_()
    _check(lambda x, w: K.prelu(x, w, backend=backend), F.prelu, layers.activations.prelu, [x, w], backend,
           batch_inputs=[0])
    if backend != "compile":
        x32 = _leaf(3, 4, 37)
        w32 = torch.rand(4).requires_grad_()
        check_layer(lambda x, w: K.prelu(x, w, backend=backend), F.prelu, [x32, w32], gradcheck=False,
                    gradgradcheck=False, needs_input_grad=False, batch_inputs=[0], compile=_traceable(backend))


def _quantize_inputs(dtype):
    s = 0.1
    ties = (torch.arange(-20, 20, dtype=dtype) + 0.5) * s            # exactly between two levels
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 0.0, -0.0], dtype=dtype)
    return torch.cat([torch.randn(200, dtype=dtype) * 8, ties, special]), s


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # NumPy (interpreter) on inf - inf
@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fake_quantize_bit_exact(backend, dtype):
    x, s = _quantize_inputs(dtype)
    for zp, lo, hi in [(3, -128, 127), (0, 0, 255), (-2, -8, 7)]:
        xg = x.clone().requires_grad_()
        xr = x.clone().requires_grad_()
        y = K.fake_quantize(xg, s, zp, lo, hi, backend=backend)
        r = torch.fake_quantize_per_tensor_affine(xr, s, zp, lo, hi)
        assert torch.equal(y.nan_to_num(), r.nan_to_num()) and torch.equal(y.isnan(), r.isnan())
        g = torch.randn_like(y)
        y.backward(g)
        r.backward(g)
        assert torch.equal(xg.grad, xr.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fake_quantize(backend):
    x = _leaf(6, 8, dtype=torch.float64, scale=2.0)
    _check(lambda x: K.fake_quantize(x, 0.25, 1, -8, 7, backend=backend),
           lambda x: torch.fake_quantize_per_tensor_affine(x, 0.25, 1, -8, 7),
           lambda x: layers.quantization.fake_quantize(x, 0.25, 1, -8, 7), [x], backend,
           gradcheck=False, gradgradcheck=False)      # piecewise constant: finite differences are meaningless
    if backend != "triton":
        return                 # the cpp backward is a kernel and a compiled backward has no double backward
    xg = x.detach().clone().requires_grad_()
    torch.autograd.gradcheck(lambda g: torch.autograd.grad(K.fake_quantize(xg, 0.25, 1, -8, 7, backend=backend),
                                                           xg, g, create_graph=True)[0],
                             torch.randn(6, 8, dtype=torch.float64, requires_grad=True))   # STE: linear in g


def test_backward_masks():
    """The backward kernels skip the gradients not asked for (returned as 0-element tensors)."""
    ops = torch.ops.layers
    x, w = torch.randn(4, 6), torch.randn(6)
    _, mean, rstd = ops.layer_norm(x, w, None, 6, 1e-5)
    g = torch.randn(4, 6)
    dx, dw, db = ops.layer_norm_backward(g, x, mean, rstd, w, [True, False, False])
    assert dx.shape == x.shape and dw.numel() == 0 and db.numel() == 0
    dx, dw, db = ops.layer_norm_backward(g, x, mean, rstd, w, [False, True, True])
    assert dx.numel() == 0 and dw.shape == (6,) and db.shape == (6,)
    x4, a = torch.randn(2, 3, 4), torch.rand(3)
    dx, da = ops.prelu_backward(torch.randn(2, 3, 4), x4, a, [False, True])
    assert dx.numel() == 0 and da.shape == (3,)
    w_leaf = w.clone().requires_grad_()
    K.layer_norm(x, 6, w_leaf).sum().backward()           # x needs no gradient: only dw is computed
    assert w_leaf.grad.shape == (6,)


# ------------------------------------------------------------------ compile and export of the cpp ops
def _cases():
    z, t = torch.randn(6, 5, requires_grad=True), torch.randint(0, 5, (6,))
    x, w, b = torch.randn(4, 8, requires_grad=True), torch.randn(8, requires_grad=True), torch.randn(8)
    x4, a = torch.randn(2, 3, 4, requires_grad=True), torch.rand(3, requires_grad=True)
    return {
        "layer_norm": (lambda x, w, b: K.layer_norm(x, 8, w, b), (x, w, b)),
        "cross_entropy": (lambda z, t: K.cross_entropy(z, t), (z, t)),
        "gelu": (lambda x: K.gelu(x), (x,)),
        "prelu": (lambda x, a: K.prelu(x, a), (x4, a)),
        "fake_quantize": (lambda x: K.fake_quantize(x, 0.1, 0, -128, 127), (x,)),
    }


class _Wrap(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def _layers_ops(graph: torch.fx.Graph) -> list[str]:
    return [str(n.target) for n in graph.nodes if n.op == "call_function" and str(n.target).startswith("layers.")]


@pytest.mark.parametrize("name", list(_cases()))
def test_cpp_compile_fullgraph_and_export(name):
    fn, args = _cases()[name]
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm.graph)
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    out = compiled(*args)
    leaves = [a for a in args if a.requires_grad]
    grads = torch.autograd.grad(out.sum(), leaves)
    eager = fn(*args)
    eager_grads = torch.autograd.grad(eager.sum(), leaves)
    torch.testing.assert_close(out, eager)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e)
    assert len(graphs) == 1 and _layers_ops(graphs[0]) == [f"layers.{name}"]   # one graph, one opaque op

    exported = torch.export.export(_Wrap(fn), tuple(a.detach() for a in args))
    assert _layers_ops(exported.graph) == [f"layers.{name}.default"]
    torch.testing.assert_close(exported.module()(*[a.detach() for a in args]), eager.detach())


def test_cpp_fake_tensors():
    """register_fake gives the output shapes without running the kernels."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        z, t = torch.empty(7, 11), torch.zeros(7, dtype=torch.long)
        loss, grad = torch.ops.layers.cross_entropy(z, t, 0)
        assert loss.shape == (7,) and grad.shape == (7, 11)
        y, mean, rstd = torch.ops.layers.layer_norm(torch.empty(3, 4, 5), None, None, 20, 1e-5)
        assert y.shape == (3, 4, 5) and mean.shape == (3,) and rstd.shape == (3,)
        y, mask = torch.ops.layers.fake_quantize(torch.empty(9), 0.1, 0, 0, 255)
        assert mask.dtype == torch.bool and mask.shape == (9,)
    for op in ("layer_norm", "cross_entropy", "gelu", "prelu", "fake_quantize"):
        torch.library.opcheck(*{
            "layer_norm": (torch.ops.layers.layer_norm, (torch.randn(3, 4), torch.randn(4), torch.randn(4), 4, 1e-5)),
            "cross_entropy": (torch.ops.layers.cross_entropy, (torch.randn(3, 4), torch.tensor([0, 3, 1]), 1)),
            "gelu": (torch.ops.layers.gelu, (torch.randn(5, requires_grad=True),)),
            "prelu": (torch.ops.layers.prelu, (torch.randn(2, 3, 4), torch.rand(3))),
            "fake_quantize": (torch.ops.layers.fake_quantize, (torch.randn(6), 0.1, 0, -8, 7)),
        }[op], test_utils=("test_schema", "test_faketensor"))


# ------------------------------------------------------------------------------------- bad input
def test_bad_backend_and_inputs():
    x = torch.randn(2, 3)
    for call in (lambda: K.gelu(x, backend="cuda"), lambda: K.layer_norm(x, 3, backend="CPP")):
        with pytest.raises(ValueError, match="backend"):
            call()
    with pytest.raises(TypeError, match="float16, bfloat16, float32 and float64"):
        K.gelu(x.to(torch.float8_e4m3fn))
    with pytest.raises(ValueError, match="CPU tensors"):
        K.gelu(torch.randn(3, device="meta"))
    with pytest.raises(ValueError, match="last dimensions"):
        K.layer_norm(x, 4)
    with pytest.raises(ValueError, match="class indices"):
        K.cross_entropy(x, torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="class indices"):
        K.cross_entropy(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="channels"):
        K.prelu(torch.randn(2, 4), torch.rand(3))
    with pytest.raises(ValueError, match="zero_point"):
        K.fake_quantize(x, 0.1, 300, 0, 255)


def test_autocast_follows_torch():
    x, w = torch.randn(4, 8, dtype=torch.bfloat16), torch.randn(8)
    z, t = torch.randn(4, 5, dtype=torch.bfloat16), torch.randint(0, 5, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pairs = [(K.layer_norm(x, 8, w), F.layer_norm(x, (8,), w)), (K.cross_entropy(z, t), F.cross_entropy(z, t))]
    for ours, theirs in pairs:
        assert ours.dtype == theirs.dtype
        torch.testing.assert_close(ours, theirs)
    assert pairs[1][0].dtype == torch.float32                  # the loss in float32, as torch's


def test_missing_compiler_is_named(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    with pytest.raises(RuntimeError, match="no-such-c\\+\\+-compiler"):
        _cpp._compiler()


def test_triton_interpreter_on_cpu():
    assert _triton.interpreted() == (not torch.cuda.is_available())


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU tensors are only refused without CUDA")
def test_triton_refuses_cpu_tensors_without_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": os.getcwd()}
    code = ("import torch, layers.kernels as K\n"
            "try:\n    K.gelu(torch.randn(3), backend='triton')\n"
            "except ValueError as e:\n    print('ValueError:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "ValueError:" in out.stdout and "TRITON_INTERPRET=1" in out.stdout, out.stderr[-2000:]


# ------------------------------------------------------------- one layer, two registrations
def test_custom_op_gelu_matches_function_and_builtin():
    x = _leaf(3, 4, dtype=torch.float64)
    check_layer(custom_ops.reference_gelu, F.gelu, [x], needs_input_grad=False)   # gradgradcheck too
    check_layer(custom_ops.reference_gelu, custom_ops.function_gelu, [x], gradcheck=False, gradgradcheck=False,
                needs_input_grad=False)


def test_compile_report_of_the_two_registrations():
    x = torch.randn(8, 8)
    fn = compile_report("autograd.Function", custom_ops.function_gelu, x, backend="aot_eager")
    op = compile_report("custom_op", custom_ops.reference_gelu, x, backend="aot_eager")
    assert fn.graph_breaks == op.graph_breaks == 0 and fn.graphs == op.graphs == 1
    assert op.graph_ops == ["layers.reference_gelu.default"] and op.export_ops == ["layers.reference_gelu.default"]
    # The Function is inlined: its forward appears as the ATen ops it calls (x * Phi(x), Phi via erf).
    assert "layers.reference_gelu.default" not in fn.export_ops and "aten.erf.default" in fn.export_ops   # inlined
    assert all(t.startswith("aten.") for t in fn.export_ops)
    assert fn.fake_output == op.fake_output == "FakeTensor(8, 8) float32"
    assert min(fn.compile_s, fn.eager_ms, fn.compiled_ms, op.compile_s, op.eager_ms, op.compiled_ms) > 0
    text = format_compile_reports([fn, op]).split("\n")
    assert len(text) == 10 and text[5] == "custom_op:" and text[9].startswith("  compile (first call) ")


# ----------------------------------------------------------------------------- the benchmark
def test_benchmark_rows_and_targets():
    rows, bandwidth = kernels_benchmark.run(quick=True, only=["gelu"], forms=["cpp"])
    assert bandwidth > 0 and [r.form for r in rows] == ["built-in", "cpp"]
    cpp = rows[1]
    assert cpp.ms > 0 and cpp.builtin_ms == rows[0].ms and 0 < cpp.bandwidth and cpp.status() == "not checked"
    assert "gelu" in kernels_benchmark.format_table(rows)
    slow = kernels_benchmark.Row("gelu", "cpp", "(1,)", 2.0, 1.0, 0.0, 0.0, 3.0, 2.0, 0.4, 1.0,
                                 targets={"time": 1.2, "bandwidth": 0.5})
    assert slow.peak_ratio == 1.5 and math.isnan(slow.saved_ratio)
    assert slow.missed() == ["time 2.00 > 1.2", "bandwidth 0.40 < 0.5"] and slow.status().startswith("MISSED")
