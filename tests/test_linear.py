import copy

import pytest
import torch
from torch import nn

import layers
from layers.linear import LinearFunction, linear
from layers.testing import check_layer
from helpers import sgd_step_lowers_loss


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4), (4,)])
def test_check_layer_against_nn_linear(bias, shape):
    x = torch.randn(*shape, requires_grad=True)
    check_layer(layers.Linear(4, 3, bias=bias), nn.Linear(4, 3, bias=bias), (x,),
                empty_batch=len(shape) > 1)


def test_float64_and_odd_sizes():
    x = torch.randn(7, 13, dtype=torch.float64, requires_grad=True)
    check_layer(layers.Linear(13, 1).double(), nn.Linear(13, 1).double(), (x,), gradcheck=False,
                gradgradcheck=False)


def test_functional_form_matches_module():
    m = layers.Linear(4, 3)
    x = torch.randn(2, 4)
    torch.testing.assert_close(linear(x, m.weight, m.bias), m(x))
    torch.testing.assert_close(linear(x, m.weight), nn.functional.linear(x, m.weight))


def test_same_init_as_torch():
    torch.manual_seed(1)
    ours = layers.Linear(16, 8)
    torch.manual_seed(1)
    ref = nn.Linear(16, 8)
    torch.testing.assert_close(ours.weight, ref.weight, rtol=0, atol=0)
    torch.testing.assert_close(ours.bias, ref.bias, rtol=0, atol=0)


def test_state_dict_round_trip_both_ways():
    ours, ref = layers.Linear(5, 2), nn.Linear(5, 2)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 5)
    torch.testing.assert_close(ours(x), ref(x))
    ours2, ref2 = layers.Linear(5, 2), nn.Linear(5, 2)
    ref2.load_state_dict(ours2.state_dict())
    torch.testing.assert_close(ref2(x), ours2(x))
    assert set(layers.Linear(5, 2, bias=False).state_dict()) == set(nn.Linear(5, 2, bias=False).state_dict())


def test_needs_input_grad_skips_weight_gradient():
    calls = {}

    class Spy(LinearFunction):
        @staticmethod
        def backward(ctx, grad_out):
            calls["needs"] = tuple(ctx.needs_input_grad)
            return LinearFunction.backward(ctx, grad_out)

    w = torch.randn(3, 4)                                   # frozen weight: no gradient wanted
    x = torch.randn(2, 4, requires_grad=True)
    Spy.apply(x, w, None).sum().backward()
    assert calls["needs"] == (True, False, False)
    assert w.grad is None


def test_repr():
    assert repr(layers.Linear(4, 3, bias=False)) == "Linear(in_features=4, out_features=3, bias=False)"


@pytest.mark.parametrize(
    "x, error, match",
    [
        (torch.randn(2, 5), ValueError, "expected input with 4 features in its last dimension, got 5"),
        (torch.ones(2, 4, dtype=torch.int64), TypeError, "floating-point tensor, got torch.int64"),
        (torch.tensor(1.0), ValueError, "at least 1 dimensions, got 0"),
        (torch.randn(2, 4, dtype=torch.float64), TypeError, "dtype torch.float32"),
        ([[1.0, 2.0, 3.0, 4.0]], TypeError, "torch.Tensor, got list"),
    ],
)
def test_bad_input(x, error, match):
    with pytest.raises(error, match=match):
        layers.Linear(4, 3)(x)


def test_bad_device():
    m = layers.Linear(4, 3).to("meta")
    with pytest.raises(ValueError, match="expected input on meta"):
        m(torch.randn(2, 4))


def test_negative_size():
    with pytest.raises(ValueError, match="non-negative"):
        layers.Linear(-1, 3)


def test_sgd_step_lowers_loss():
    model = nn.Sequential(layers.Linear(6, 8), layers.Tanh(), layers.Linear(8, 2))
    x, y = torch.randn(32, 6), torch.randn(32, 2)
    before, after = sgd_step_lowers_loss(model, x, y)
    assert after < before


@pytest.mark.parametrize("with_bias", [True, False])
def test_check_layer_functional(with_bias):
    x = torch.randn(5, 4, requires_grad=True)
    w = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(3, requires_grad=True) if with_bias else None
    args = (x, w, b) if with_bias else (x, w)
    check_layer(linear, nn.functional.linear, args, batch_inputs=(0,))


# ------------------------------------------------------------------ drop-in for nn.Linear
def test_is_an_nn_linear_with_our_forward():
    m = layers.Linear(4, 3)
    assert isinstance(m, nn.Linear)                          # what parallelize_module and others test
    assert type(m(torch.randn(2, 4)).grad_fn).__name__ == "LinearFunctionBackward"


def test_keyword_names_as_torch():
    x, w, b = torch.randn(2, 4), torch.randn(3, 4), torch.randn(3)
    torch.testing.assert_close(linear(input=x, weight=w, bias=b), nn.functional.linear(input=x, weight=w, bias=b))
    m = layers.Linear(in_features=4, out_features=3, bias=False, device="meta", dtype=torch.float64)
    assert m.weight.device.type == "meta" and m.weight.dtype == torch.float64 and m.bias is None
    torch.testing.assert_close(layers.Linear(4, 3)(input=x).shape, (2, 3))


def test_bad_weight_and_bias():
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"linear: expected bias of shape \(3,\), got \(4,\)"):
        linear(x, torch.randn(3, 4), torch.randn(4))
    with pytest.raises(ValueError, match="linear: expected weight with 2 dimensions, got 1"):
        linear(x, torch.randn(4))
    with pytest.raises(TypeError, match="linear: expected bias to be a torch.Tensor, got float"):
        linear(x, torch.randn(3, 4), 1.0)


# ------------------------------------------------------------------ torch.func
def test_torch_func_transforms_match_torch():
    """vmap, jvp, jacrev, jacfwd and hessian over input, weight and bias equal those of F.linear."""
    from torch.func import hessian, jacfwd, jacrev, jvp, vmap
    args = (torch.randn(5, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64),
            torch.randn(3, dtype=torch.float64))
    ref = nn.functional.linear
    tangents = tuple(torch.randn_like(a) for a in args)
    torch.testing.assert_close(jvp(linear, args, tangents), jvp(ref, args, tangents))
    torch.testing.assert_close(jvp(lambda w: linear(args[0], w), args[1:2], tangents[1:2]),
                               jvp(lambda w: ref(args[0], w), args[1:2], tangents[1:2]))
    torch.testing.assert_close(vmap(linear, in_dims=(0, None, None))(*args), ref(*args))
    torch.testing.assert_close(vmap(linear, in_dims=(None, 0, None))(args[0], args[1][None].expand(2, 3, 4), args[2]),
                               ref(*args).expand(2, 5, 3))
    for transform in (jacrev, jacfwd):
        torch.testing.assert_close(transform(linear, (0, 1, 2))(*args), jacrev(ref, (0, 1, 2))(*args))
    scalar = lambda f: (lambda *a: f(*a).tanh().sum())       # noqa: E731
    torch.testing.assert_close(hessian(scalar(linear), (0, 1))(*args), hessian(scalar(ref), (0, 1))(*args))


# ------------------------------------------------------------------ autocast and low precision
def test_autocast_runs_in_lower_precision_like_torch():
    torch.manual_seed(0)
    ours = nn.Sequential(layers.Linear(4, 8), layers.Linear(8, 2))
    ref = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = ours(x), ref(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want)
    got.float().sum().backward()
    assert ours[0].weight.grad.dtype == torch.float32         # gradients reach the float32 parameters


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_no_less_accurate_than_torch(dtype):
    torch.manual_seed(0)
    ours, ref = layers.Linear(32, 16), nn.Linear(32, 16)
    ref.load_state_dict(ours.state_dict())
    x, g = torch.randn(64, 32).to(dtype), torch.randn(64, 16).to(dtype)

    def run(module, x):
        x = x.clone().requires_grad_(True)
        out = module(x)
        return (out, *torch.autograd.grad(out, (x, *module.parameters()), g.to(x.dtype)))

    truth = run(copy.deepcopy(ref).double(), x.double())
    errors = {label: [(r.double() - t).abs().max().item() for r, t in zip(run(m.to(dtype), x), truth)]
              for label, m in (("ours", ours), ("torch", ref))}
    for what, a, b in zip(("output", "input", "weight", "bias"), errors["ours"], errors["torch"]):
        assert a <= 1.5 * b + 1e-12, f"{what} gradient: ours {a:.3g}, torch {b:.3g}"


# ------------------------------------------------------------------ compile, export, TorchScript
def _model():
    """One model of every layer in linear, activations and scale."""
    torch.manual_seed(0)
    return nn.Sequential(layers.Linear(4, 8), layers.GELU(), layers.PReLU(8), layers.Tanh(),
                         layers.Linear(8, 8, bias=False), layers.Sigmoid(), layers.ReLU(), layers.Scale(2.0),
                         layers.GELU("tanh"), layers.Linear(8, 2))


def _outputs_and_grads(model, x):
    x = x.clone().requires_grad_(True)
    out = model(x)
    grads = torch.autograd.grad(out.square().sum(), (x, *model.parameters()))
    return out, grads


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("how", ["compile", "export", "jit.trace"])
def test_compiled_exported_traced_equal_eager(how, mode):
    model = _model().train(mode == "train")
    x = torch.randn(5, 4)
    if how == "compile":
        torch._dynamo.reset()
        other = torch.compile(model, fullgraph=True, backend="aot_eager")
    elif how == "export":
        other = torch.export.export(model, (x,)).module()
    else:
        other = torch.jit.trace(model, (x,))
    out, grads = _outputs_and_grads(model, x)
    x2 = torch.randn(5, 4)
    other_out, other_grads = _outputs_and_grads(other, x)
    torch.testing.assert_close(other_out, out)
    for a, b in zip(other_grads, grads):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(other(x2), model(x2))          # a new input, not a replay


def test_per_sample_gradients_equal_a_loop():
    """vmap(grad(functional_call)) over the batch equals one backward per sample."""
    from torch.func import functional_call, grad, vmap
    model = _model()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(6, 4), torch.randn(6, 2)

    def loss(p, xi, yi):
        return nn.functional.mse_loss(functional_call(model, p, (xi[None],)), yi[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(len(x)):
        model.zero_grad()
        loss(dict(model.named_parameters()), x[i], y[i]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad)
