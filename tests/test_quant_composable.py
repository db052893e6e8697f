"""layers.quantization with torch's transforms and tools: vmap, forward-mode AD, second
derivatives, torch.compile(fullgraph=True), torch.export (train and eval), autocast,
device=/dtype= factory arguments, 0-dim scalars, and the LSQ options."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layers.conv import Conv2d
from layers.linear import Linear
from layers.quantization import (FakeQuantize, LSQQuantizer, PACTQuantizer, QuantConv2d, QuantLinear,
                                 convert_to_qat, fake_quantize, lsq_quantize, pact_quantize, quant_range)

S4 = torch.tensor([0.1, 0.2, 0.3, 0.4])
Z4 = torch.tensor([0, 1, -1, 2], dtype=torch.int32)

# name -> function of one input x of shape (4, 5); each quantization Function appears once
FUNCTIONS = {
    "per_tensor": lambda t: fake_quantize(t, 0.1, 2, -8, 7),
    "per_tensor_tensor_qparams": lambda t: fake_quantize(t, torch.tensor(0.1), torch.tensor(2), -8, 7),
    "per_channel": lambda t: fake_quantize(t, S4, Z4, -8, 7, axis=0),
    "per_channel_float_zp": lambda t: fake_quantize(t, S4, Z4.float() + 0.3, -8, 7, axis=0),
    "lsq": lambda t: lsq_quantize(t, torch.tensor([0.1]), torch.tensor([1.3]), -8, 7, 0.5),
    "lsq_per_channel": lambda t: lsq_quantize(t, S4, Z4.float(), -8, 7, 0.5, axis=0),
    "pact": lambda t: pact_quantize(t, torch.tensor(1.0), 3),
}
TORCH_STE = {                                                          # torch's op for the same call
    "per_tensor": lambda t: torch.fake_quantize_per_tensor_affine(t, 0.1, 2, -8, 7),
    "per_channel": lambda t: torch.fake_quantize_per_channel_affine(t, S4, Z4, 0, -8, 7),
}


def _x(seed=0, *shape):
    return torch.randn(*(shape or (4, 5)), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ torch.func
@pytest.mark.parametrize("name", FUNCTIONS)
def test_vmap_equals_a_loop(name):
    f = FUNCTIONS[name]
    xs = _x(0, 3, 4, 5)
    torch.testing.assert_close(torch.func.vmap(f)(xs), torch.stack([f(x) for x in xs]), rtol=0, atol=0)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_jvp_equals_the_transposed_vjp(name):
    """Forward mode (jacfwd, through the jvp staticmethod) and reverse mode (jacrev) agree."""
    f, x = FUNCTIONS[name], _x(1)
    torch.testing.assert_close(torch.func.jacfwd(f)(x), torch.func.jacrev(f)(x), rtol=0, atol=0)
    tangent = _x(2)
    _, y_t = torch.func.jvp(f, (x,), (tangent,))
    _, vjp = torch.func.vjp(f, x)
    if name in TORCH_STE:                                              # STE: a diagonal Jacobian, torch's mask
        xr = x.clone().requires_grad_()
        (want,) = torch.autograd.grad(TORCH_STE[name](xr), xr, tangent)
        torch.testing.assert_close(y_t, want, rtol=0, atol=0)
    torch.testing.assert_close((y_t * tangent).sum(), (vjp(tangent)[0] * tangent).sum())


def test_lsq_jvp_in_scale_and_zero_point():
    """LSQ's tangent for scale and zero point is the transpose of its (grad-scaled) gradient."""
    x = _x(3, 6, 4)
    for axis, s, z in ((None, torch.tensor([0.3]), torch.tensor([1.2])), (1, S4 + 0.05, Z4.float() + 0.2)):
        f = lambda s_, z_: lsq_quantize(x, s_, z_, -8, 7, 0.5, axis=axis)   # noqa: E731
        fwd = torch.func.jacfwd(f, argnums=(0, 1))(s, z)
        rev = torch.func.jacrev(f, argnums=(0, 1))(s, z)
        for a, b in zip(fwd, rev):
            torch.testing.assert_close(a, b)


def test_per_sample_gradients_of_a_qat_model():
    """vmap(grad(functional_call)) over a QAT model (ranges frozen) equals a loop over samples."""
    torch.manual_seed(0)
    model = convert_to_qat(nn.Sequential(Linear(5, 6), nn.ReLU(), Linear(6, 2)), weight_bits=4, act_bits=4)
    x, target = torch.rand(8, 5), torch.randn(8, 2)
    model(x)                                                           # observe once, then freeze
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p, xi, ti):
        out = torch.func.functional_call(model, (p, buffers), (xi[None],))
        return F.mse_loss(out, ti[None])

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, target)
    for i in range(len(x)):
        grads = torch.func.grad(loss)(params, x[i], target[i])
        for k in params:
            torch.testing.assert_close(per_sample[k][i], grads[k])


# ------------------------------------------------------------------------ second derivatives
def _away_from_steps(scale, zero, n=12, dtype=torch.float64):
    """Inputs whose x / s + z sits a quarter step from an integer, inside and outside the range."""
    k = torch.arange(-n // 2, n // 2, dtype=dtype) * 2.0
    return ((k + 0.25) - zero) * scale


def test_gradgradcheck_where_it_applies():
    """The STE, PACT and LSQ backwards are written in differentiable ops: gradgradcheck passes
    away from the steps (there the masks and the rounding are locally constant). gradcheck of
    the STE itself does not apply: the true derivative of a staircase is 0, the STE's is 1."""
    gg = torch.autograd.gradgradcheck
    x = _away_from_steps(0.5, 1).requires_grad_()
    assert gg(lambda t: fake_quantize(t, 0.5, 1, -4, 3), (x,))
    x2 = torch.stack([_away_from_steps(s, 0) for s in (0.1, 0.2, 0.3)]).requires_grad_()
    assert gg(lambda t: fake_quantize(t, torch.tensor([0.1, 0.2, 0.3]), torch.zeros(3, dtype=torch.int32),
                                      -4, 3, axis=0), (x2,))
    xp = torch.tensor([-1.0, 0.12, 0.5, 0.91, 1.7, 3.0], dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    assert gg(lambda t, a: pact_quantize(t, a, 3), (xp, alpha))
    s = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    z = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    assert gg(lambda t, s_, z_: lsq_quantize(t, s_, z_, -4, 3, 0.3), (x, s, z))
    sc = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64, requires_grad=True)
    zc = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    assert gg(lambda t, s_, z_: lsq_quantize(t, s_, z_, -4, 3, 0.3, axis=0), (x2, sc, zc))


# -------------------------------------------------------------------- compile and export
@pytest.mark.parametrize("name", FUNCTIONS)
def test_compile_fullgraph_forward_backward(name):
    """fullgraph=True fails on any graph break, and .item() / bool(tensor) would be one."""
    f, x = FUNCTIONS[name], _x(4)
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = f(xa), compiled(xb)
    torch.testing.assert_close(yb, ya, rtol=0, atol=0)
    ya.backward(torch.ones_like(ya))
    yb.backward(torch.ones_like(yb))
    torch.testing.assert_close(xb.grad, xa.grad, rtol=0, atol=0)


def _qat_cnn(method):
    torch.manual_seed(0)
    base = nn.Sequential(Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), Linear(48, 5))
    model = convert_to_qat(base, weight_bits=4, act_bits=4, method=method)
    x = torch.rand(2, 1, 4, 4)
    model(x)                                                           # eager first call: initializes LSQ/PACT
    return model, torch.rand(2, 1, 4, 4)


@pytest.mark.parametrize("method,training", [("ste", True), ("ste", False), ("lsq", False), ("pact", True)])
def test_compile_qat_model(method, training):
    """Train mode (observers and PACT update in the graph) and eval mode; a few pairs, to stay fast."""
    model, x = _qat_cnn(method)
    model.train(training)
    eager, traced = copy.deepcopy(model), copy.deepcopy(model)
    torch._dynamo.reset()
    compiled = torch.compile(traced, fullgraph=True, backend="aot_eager")
    ya, yb = eager(x), compiled(x)
    torch.testing.assert_close(yb, ya)
    ya.sum().backward()
    yb.sum().backward()
    for (name, p), (_, q) in zip(eager.named_parameters(), traced.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    for (name, b), (_, c) in zip(eager.named_buffers(), traced.named_buffers()):
        torch.testing.assert_close(c, b, msg=name)                    # observers updated alike


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("method", ["ste", "lsq", "pact"])
def test_export_qat_model(method, training):
    model, x = _qat_cnn(method)
    model.train(training)
    eager, exported = copy.deepcopy(model), copy.deepcopy(model)
    program = torch.export.export(exported, (x,))
    want = eager(x)
    torch.testing.assert_close(program.module()(x), want)
    if training and method == "ste":                                   # the observer update is in the graph
        ops = {str(n.target) for n in program.graph.nodes}
        assert any("copy" in op for op in ops), ops


# -------------------------------------------------------------------------------- autocast
def test_autocast_follows_torch():
    """CPU bfloat16 autocast: torch puts the scalar-qparams per-tensor op on its float32 list and
    leaves the tensor-qparams and per-channel ops alone; fake_quantize does the same."""
    x = _x(5).bfloat16()
    calls = [
        (lambda t: fake_quantize(t, 0.1, 0, -8, 7), lambda t: torch.fake_quantize_per_tensor_affine(t, 0.1, 0, -8, 7)),
        (lambda t: fake_quantize(t, torch.tensor(0.1), torch.tensor(0, dtype=torch.int32), -8, 7),
         lambda t: torch.fake_quantize_per_tensor_affine(t, torch.tensor(0.1), torch.tensor(0, dtype=torch.int32),
                                                         -8, 7)),
        (lambda t: fake_quantize(t, S4, Z4, -8, 7, axis=0),
         lambda t: torch.fake_quantize_per_channel_affine(t, S4, Z4, 0, -8, 7)),
    ]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for ours, ref in calls:
            got, want = ours(x), ref(x)
            assert got.dtype == want.dtype
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_quant_linear_under_autocast_casts_like_linear():
    """The quantizers run in the input's dtype (float32 here); the inner linear then runs in
    bfloat16, as F.linear does under autocast."""
    layer = QuantLinear(5, 3, weight_bits=4, act_bits=4)
    x = torch.rand(6, 5)
    layer(x)
    layer.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x)
        want = F.linear(layer.act_quant(x), layer.weight_quant(layer.weight), layer.bias)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------ device and dtype
@pytest.mark.parametrize("method", ["ste", "lsq", "pact"])
def test_factory_kwargs(method):
    for layer in (QuantLinear(4, 3, method=method, dtype=torch.float64),
                  QuantConv2d(2, 3, 3, method=method, dtype=torch.float64)):
        tensors = dict(layer.named_parameters()) | dict(layer.named_buffers())
        floating = {k: t.dtype for k, t in tensors.items() if t.is_floating_point()}
        assert set(floating.values()) == {torch.float64}, floating
        assert "act_quant.scale" in floating or "act_quant.alpha" in floating
    layer = QuantLinear(4, 3, method=method, dtype=torch.float64)
    y = layer(torch.rand(2, 4, dtype=torch.float64))
    assert y.dtype == torch.float64
    meta = QuantLinear(4, 3, method=method, device="meta")
    devices = {k: t.device.type for k, t in list(meta.named_parameters()) + list(meta.named_buffers())}
    assert set(devices.values()) == {"meta"}, devices


def test_quantizer_modules_factory_kwargs():
    for q in (FakeQuantize(4, ch_axis=0, channels=3, device="meta", dtype=torch.float64),
              LSQQuantizer(4, device="meta", dtype=torch.float64), PACTQuantizer(4, device="meta", dtype=torch.float64)):
        for name, t in list(q.named_parameters()) + list(q.named_buffers()):
            assert t.device.type == "meta", name
            assert t.dtype in (torch.float64, torch.int32, torch.bool), (name, t.dtype)


# ------------------------------------------------------------------------------ 0-dim scalars
def test_zero_dim_tensors_where_torch_takes_a_scalar():
    x = _x(6)
    torch.testing.assert_close(fake_quantize(x, torch.tensor(0.1), torch.tensor(2), -8, 7),
                               torch.fake_quantize_per_tensor_affine(x, 0.1, 2, -8, 7), rtol=0, atol=0)
    a0, a1 = torch.tensor(1.2, requires_grad=True), torch.tensor([1.2], requires_grad=True)
    pact_quantize(x, a0, 3).sum().backward()
    pact_quantize(x, a1, 3).sum().backward()
    assert a0.grad.shape == () and torch.equal(a0.grad.reshape(1), a1.grad)
    s0, z0 = torch.tensor(0.2, requires_grad=True), torch.tensor(1.0, requires_grad=True)
    y = lsq_quantize(x, s0, z0, -8, 7)
    y.sum().backward()
    assert s0.grad.shape == () and z0.grad.shape == ()
    ref = torch._fake_quantize_learnable_per_tensor_affine(x, torch.tensor([0.2]), torch.tensor([1.0]), -8, 7, 1.0)
    assert torch.equal(y, ref)


def test_keyword_calls_written_for_torch():
    x = _x(8)
    kw = dict(input=x, scale=0.1, zero_point=2, quant_min=-8, quant_max=7)
    assert torch.equal(fake_quantize(**kw), torch.fake_quantize_per_tensor_affine(**kw))
    kw = dict(input=x, scale=S4, zero_point=Z4, axis=0, quant_min=-8, quant_max=7)
    assert torch.equal(fake_quantize(**kw), torch.fake_quantize_per_channel_affine(**kw))
    kw = dict(input=x, scale=torch.tensor([0.1]), zero_point=torch.tensor([1.0]), quant_min=-8, quant_max=7,
              grad_factor=0.5)
    assert torch.equal(lsq_quantize(**kw), torch._fake_quantize_learnable_per_tensor_affine(**kw))
    assert pact_quantize(input=x, alpha=torch.tensor(1.0), bits=2).shape == x.shape


@pytest.mark.parametrize("call,match", [
    (lambda: pact_quantize(torch.randn(3), torch.ones(2), 4), r"alpha of shape \(1,\) or \(\)"),
    (lambda: lsq_quantize(torch.randn(2, 3), torch.ones(2), torch.zeros(2), 0, 7, axis=1), r"scale of shape \(3,\)"),
    (lambda: lsq_quantize(torch.randn(2, 3), torch.ones(3), torch.zeros(3), 0, 7, axis=2), "axis"),
    (lambda: LSQQuantizer(4, scale_init="max"), "scale_init"),
    (lambda: fake_quantize(torch.randn(3), torch.ones(2), 0, 0, 7), "one-element scale"),
])
def test_bad_inputs_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------- LSQ options
def test_lsq_step_size_initialisation_and_gradient_scale():
    """Esser et al. 2020: s0 = 2 mean|x| / sqrt(Q_P), gradient scale g = 1 / sqrt(N Q_P)."""
    x = torch.randn(16, 10, generator=torch.Generator().manual_seed(7)).abs()
    qmin, qmax = quant_range(3)
    lsq = LSQQuantizer(3)
    lsq(x)
    assert torch.allclose(lsq.scale, 2 * x.abs().mean() / math.sqrt(qmax))
    minmax = LSQQuantizer(3, scale_init="minmax")
    minmax(x)
    assert torch.allclose(minmax.scale, x.max() / (qmax - qmin))
    weights = LSQQuantizer(4, symmetric=True, ch_axis=0, channels=16)
    weights(x)
    wmax = quant_range(4, symmetric=True)[1]
    torch.testing.assert_close(weights.scale, 2 * x.abs().mean(1) / math.sqrt(wmax))
    grads = {}
    for grad_scale in (True, False):
        q = LSQQuantizer(3, grad_scale=grad_scale)
        q(x)
        q(x).sum().backward()
        grads[grad_scale] = q.scale.grad
    n = x.shape[1]                                                     # elements per sample
    torch.testing.assert_close(grads[True], grads[False] / math.sqrt(n * qmax))


def test_meta_inputs_give_meta_outputs():
    """The value checks cannot read meta tensors, so they are skipped there (shape checks still run)."""
    x = torch.randn(4, 5, device="meta")
    outs = [fake_quantize(x, 0.1, 0, -8, 7), fake_quantize(x, S4.to("meta"), Z4.to("meta"), -8, 7, axis=0),
            lsq_quantize(x, torch.ones(1, device="meta"), torch.zeros(1, device="meta"), -8, 7),
            pact_quantize(x, torch.ones((), device="meta"), 4)]
    assert all(o.device.type == "meta" and o.shape == x.shape for o in outs)
    with pytest.raises(ValueError, match=r"scale of shape \(4,\)"):
        fake_quantize(x, torch.ones(3, device="meta"), torch.zeros(3, device="meta"), -8, 7, axis=0)
