import copy

import pytest
import torch
from torch import nn

import layers
from layers.testing import check_layer
from helpers import sgd_step_lowers_loss

PAIRS = {
    "relu": (layers.ReLU, nn.ReLU),
    "sigmoid": (layers.Sigmoid, nn.Sigmoid),
    "tanh": (layers.Tanh, nn.Tanh),
    "gelu": (layers.GELU, nn.GELU),
    "gelu_tanh": (lambda: layers.GELU("tanh"), lambda: nn.GELU(approximate="tanh")),
}


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 4, 5), (7,)])
def test_check_layer(name, shape):
    ours, ref = PAIRS[name]
    x = torch.randn(*shape, requires_grad=True) * 3          # wide range: both tails
    x = x.detach().requires_grad_(True)
    check_layer(ours(), ref(), (x,))


@pytest.mark.parametrize("name", PAIRS)
def test_float64_wide_range(name):
    ours, ref = PAIRS[name]
    x = torch.linspace(-30, 30, 121, dtype=torch.float64, requires_grad=True)
    check_layer(ours(), ref(), (x,), gradcheck=False, gradgradcheck=False, empty_batch=False)


@pytest.mark.parametrize("name, fn, ref", [
    ("relu", layers.relu, torch.relu), ("sigmoid", layers.sigmoid, torch.sigmoid),
    ("tanh", layers.tanh, torch.tanh), ("gelu", layers.gelu, nn.functional.gelu),
])
def test_functional_forms(name, fn, ref):
    x = torch.randn(3, 4, requires_grad=True)
    check_layer(fn, ref, (x,))


def test_relu_gradient_at_zero_is_zero_like_torch():
    x = torch.zeros(3, requires_grad=True)
    layers.relu(x).sum().backward()
    assert torch.equal(x.grad, torch.zeros(3))


@pytest.mark.parametrize("num_parameters, shape", [
    (1, (4, 3)), (3, (4, 3)), (3, (2, 3, 5)), (3, (2, 3, 4, 4)), (1, (5,)), (1, ()),
])
def test_prelu_matches_torch(num_parameters, shape):
    x = torch.randn(shape, requires_grad=True)
    ours, ref = layers.PReLU(num_parameters, init=0.1), nn.PReLU(num_parameters, init=0.1)
    with torch.no_grad():
        ours.weight.uniform_(-0.5, 0.5)                        # distinct slopes per channel
    check_layer(ours, ref, (x,), empty_batch=len(shape) > 0)


@pytest.mark.parametrize("slope", [0.25, -0.5])
def test_prelu_special_values_like_torch(slope):
    # the slope at exactly 0 is a (as torch), infinities pass through the max/min pieces
    values = [0.0, -0.0, 1.0, -1.0, float("inf"), -float("inf")]
    x, xr = (torch.tensor(values, requires_grad=True) for _ in range(2))
    w, wr = (torch.tensor([slope], requires_grad=True) for _ in range(2))
    y, yr = layers.prelu(x, w), nn.functional.prelu(xr, wr)
    torch.testing.assert_close(y, yr)
    y.sum().backward()
    yr.sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_values_and_slopes_like_torch_over_a_wide_range(approximate):
    # the tanh form is computed as x sigmoid(2u) and phi through exp2: same values as torch's
    x = torch.linspace(-12, 12, 2001, dtype=torch.float64, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    y, yr = layers.gelu(x, approximate), nn.functional.gelu(xr, approximate=approximate)
    torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-12)
    y.sum().backward()
    yr.sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-12, atol=1e-12)


def test_prelu_functional_and_repr():
    w = torch.tensor([0.1, 0.2, 0.3], requires_grad=True)
    x = torch.randn(2, 3, 4, requires_grad=True)
    check_layer(layers.prelu, nn.functional.prelu, (x, w))
    assert repr(layers.PReLU(3, 0.2)) == "PReLU(num_parameters=3, init=0.2)"


def test_prelu_state_dict_compatible():
    ref = nn.PReLU(4)
    ours = layers.PReLU(4)
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())


@pytest.mark.parametrize("module", [layers.ReLU(), layers.Sigmoid(), layers.Tanh(), layers.GELU(), layers.PReLU()])
def test_bad_dtype(module):
    with pytest.raises(TypeError, match="floating-point tensor, got torch.int64"):
        module(torch.arange(4))


def test_prelu_bad_channels():
    with pytest.raises(ValueError, match="expected input with 3 channels in dimension 1, got 4"):
        layers.PReLU(3)(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, ...\) for 3 slopes, got shape \(3,\)"):
        layers.PReLU(3)(torch.randn(3))                       # torch.nn.PReLU(3) refuses this too
    with pytest.raises(ValueError, match="num_parameters >= 1"):
        layers.PReLU(0)


def test_gelu_bad_approximate():
    with pytest.raises(ValueError, match="'none' or 'tanh', got 'fast'"):
        layers.GELU("fast")
    with pytest.raises(ValueError, match="'none' or 'tanh'"):
        layers.gelu(torch.randn(2), approximate="erf")


def test_prelu_trains():
    torch.manual_seed(0)
    model = nn.Sequential(layers.Linear(4, 8), layers.PReLU(8), layers.Linear(8, 1))
    x = torch.randn(64, 4)
    before, after = sgd_step_lowers_loss(model, x, x.abs().sum(1, keepdim=True))
    assert after < before
    assert model[1].weight.grad is not None and model[1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("act", [layers.ReLU, layers.Sigmoid, layers.Tanh, layers.GELU])
def test_activation_trains(act):
    model = nn.Sequential(layers.Linear(4, 8), act(), layers.Linear(8, 1))
    x = torch.randn(64, 4)
    before, after = sgd_step_lowers_loss(model, x, x.sum(1, keepdim=True))
    assert after < before


# ------------------------------------------------------------------ torch names and arguments
def test_keyword_names_as_torch():
    x, w = torch.randn(2, 3, 4), torch.rand(3)
    F = nn.functional
    torch.testing.assert_close(layers.relu(input=x), F.relu(input=x))
    torch.testing.assert_close(layers.sigmoid(input=x), torch.sigmoid(input=x))
    torch.testing.assert_close(layers.tanh(input=x), torch.tanh(input=x))
    torch.testing.assert_close(layers.gelu(input=x, approximate="tanh"), F.gelu(input=x, approximate="tanh"))
    torch.testing.assert_close(layers.prelu(input=x, weight=w), F.prelu(input=x, weight=w))
    torch.testing.assert_close(layers.PReLU(num_parameters=3, init=0.1)(input=x),
                               nn.PReLU(num_parameters=3, init=0.1)(input=x))
    assert layers.GELU(approximate="tanh").approximate == nn.GELU(approximate="tanh").approximate


def test_relu_inplace_false_accepted_true_refused():
    x = torch.randn(5)
    torch.testing.assert_close(layers.ReLU(inplace=False)(x), torch.relu(x))
    torch.testing.assert_close(layers.relu(x, inplace=False), torch.relu(x))
    with pytest.raises(ValueError, match="ReLU: inplace=True is not supported"):
        layers.ReLU(inplace=True)
    with pytest.raises(ValueError, match="relu: inplace=True is not supported"):
        layers.relu(x, inplace=True)


def test_prelu_device_dtype_and_zero_dim_weight():
    m = layers.PReLU(3, dtype=torch.float64, device="meta")
    assert m.weight.dtype == torch.float64 and m.weight.device.type == "meta"
    x = torch.randn(2, 3, 4, requires_grad=True)
    w = torch.tensor(0.3, requires_grad=True)                # 0-dim slope, as F.prelu accepts
    check_layer(layers.prelu, nn.functional.prelu, (x, w), batch_inputs=(0,))


def test_prelu_bad_weight():
    with pytest.raises(ValueError, match=r"weight with at most 1 dimension, got shape \(3, 1\)"):
        layers.prelu(torch.randn(2, 3), torch.rand(3, 1))
    with pytest.raises(TypeError, match="dtype torch.float32"):
        layers.prelu(torch.randn(2, 3, dtype=torch.float64), torch.rand(3))


# ------------------------------------------------------------------ torch.func
FUNCTIONS = {
    "relu": (layers.relu, nn.functional.relu),
    "sigmoid": (layers.sigmoid, torch.sigmoid),
    "tanh": (layers.tanh, torch.tanh),
    "gelu": (layers.gelu, nn.functional.gelu),
    "gelu_tanh": (lambda x: layers.gelu(x, approximate="tanh"), lambda x: nn.functional.gelu(x, approximate="tanh")),
    "prelu": (lambda x, w: layers.prelu(x, w), nn.functional.prelu),
}


def _args(name):
    x = torch.randn(3, 4, dtype=torch.float64)
    return (x, torch.rand(4, dtype=torch.float64)) if name == "prelu" else (x,)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_torch_func_transforms_match_torch(name):
    """vmap, jvp (forward mode), jacrev, jacfwd and hessian of ours equal those of torch's op."""
    from torch.func import hessian, jacfwd, jacrev, jvp, vmap
    ours, ref = FUNCTIONS[name]
    args = _args(name)
    tangents = tuple(torch.randn_like(a) for a in args)
    torch.testing.assert_close(jvp(ours, args, tangents), jvp(ref, args, tangents))
    rest = args[1:]
    per_sample = args[0].unsqueeze(1)                         # (3, 1, 4): vmap over samples (1, 4)
    torch.testing.assert_close(vmap(lambda x: ours(x, *rest))(per_sample),
                               torch.stack([ref(x, *rest) for x in per_sample]))
    argnums = tuple(range(len(args)))
    for transform in (jacrev, jacfwd):
        torch.testing.assert_close(transform(ours, argnums)(*args), jacrev(ref, argnums)(*args))
    scalar = lambda f: (lambda *a: f(*a).sin().sum())          # noqa: E731
    torch.testing.assert_close(hessian(scalar(ours), argnums)(*args), hessian(scalar(ref), argnums)(*args))


# ------------------------------------------------------------------ autocast and low precision
MODULES = {
    "relu": (layers.ReLU, nn.ReLU), "sigmoid": (layers.Sigmoid, nn.Sigmoid), "tanh": (layers.Tanh, nn.Tanh),
    "gelu": (layers.GELU, nn.GELU), "gelu_tanh": (lambda: layers.GELU("tanh"), lambda: nn.GELU("tanh")),
    "prelu": (lambda: layers.PReLU(3), lambda: nn.PReLU(3)),
}


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autocast_output_dtype_as_torch(name, dtype):
    ours, ref = (make() for make in MODULES[name])
    x = torch.randn(2, 3, 4).to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = ours(x), ref(x)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want)




@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_no_less_accurate_than_torch(name, dtype):
    """Error against float64 (on the same rounded inputs) of the output and every gradient."""
    ours, ref = (make() for make in MODULES[name])
    with torch.no_grad():
        for p in (*ours.parameters(), *ref.parameters()):
            p.copy_(torch.linspace(-0.5, 0.5, p.numel()).reshape(p.shape))
    x = (torch.randn(64, 3, 8) * 3).to(dtype)
    g = torch.randn(64, 3, 8).to(dtype)

    def run(module, x):
        x = x.clone().requires_grad_(True)
        out = module(x)
        return (out, *torch.autograd.grad(out, (x, *module.parameters()), g.to(x.dtype)))

    errors = {}
    truth = run(copy.deepcopy(ref).double(), x.double())
    for label, module in (("ours", ours), ("torch", ref)):
        results = run(module.to(dtype), x)
        assert all(r.dtype == dtype for r in results)
        errors[label] = [(r.double() - t).abs().max().item() for r, t in zip(results, truth)]
    for i, (ours_err, torch_err) in enumerate(zip(errors["ours"], errors["torch"])):
        what = ["output", "input gradient", "weight gradient"][i]
        assert ours_err <= 1.5 * torch_err + 1e-12, f"{what}: ours {ours_err:.3g}, torch {torch_err:.3g}"
