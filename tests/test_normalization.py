import pytest
import torch
from torch import nn

from helpers import sgd_step_lowers_loss
from layers.measuring import saved_bytes
from layers.normalization import BatchNorm2d, LayerNorm, batch_norm, layer_norm
from layers.testing import check_layer


pytestmark = pytest.mark.usefixtures("one_thread")   # see conftest.py


# ------------------------------------------------------------------------ BatchNorm2d
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kwargs", [{}, {"affine": False}, {"track_running_stats": False},
                                    {"momentum": None}, {"eps": 1e-2, "momentum": 0.5}],
                         ids=["default", "no-affine", "no-running", "cumulative", "eps-momentum"])
def test_check_layer_against_nn_batchnorm(kwargs, train):
    ours, ref = BatchNorm2d(3, **kwargs), nn.BatchNorm2d(3, **kwargs)
    if kwargs.get("affine", True):
        with torch.no_grad():                              # non-trivial gamma, beta, running stats
            ours.weight.uniform_(0.5, 1.5)
            ours.bias.uniform_(-0.5, 0.5)
    if kwargs.get("track_running_stats", True):
        ours.running_mean.uniform_(-1, 1)
        ours.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 3, 3, 2, requires_grad=True) * 2 + 1
    x = x.detach().requires_grad_(True)
    # In training mode sum(g) is both the bias gradient and a term of dx: skipping db saves nothing.
    check_layer(ours.train(train), ref.train(train), (x,), shared_work=("bias",))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_stats_follow_torch_over_steps(momentum):
    ours, ref = BatchNorm2d(4, momentum=momentum), nn.BatchNorm2d(4, momentum=momentum)
    for step in range(5):
        x = torch.randn(3 + step, 4, 5, 2) * (step + 1) + step
        torch.testing.assert_close(ours(x), ref(x))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), msg=name)
    ours.eval(), ref.eval()
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(ours(x), ref(x))


def test_running_var_is_unbiased():
    bn = BatchNorm2d(1, momentum=1.0)
    x = torch.randn(2, 1, 3, 3)
    bn(x)
    torch.testing.assert_close(bn.running_var, x.var(unbiased=True).reshape(1))
    torch.testing.assert_close(bn.running_mean, x.mean().reshape(1))


def test_eval_mode_uses_running_stats_not_batch():
    bn = BatchNorm2d(2).eval()
    x = torch.randn(3, 2, 4, 4) * 5 + 3
    torch.testing.assert_close(bn(x), x / (1 + 1e-5) ** 0.5)   # running stats are 0 and 1
    assert int(bn.num_batches_tracked) == 0


def test_state_dict_both_ways():
    ours, ref = BatchNorm2d(3), nn.BatchNorm2d(3)
    ref(torch.randn(4, 3, 2, 2))
    ours.load_state_dict(ref.state_dict())
    ref2 = nn.BatchNorm2d(3)
    ref2.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert repr(ours) == "BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"


def test_functional_matches_torch():
    x = torch.randn(4, 3, 2, 2)
    rm, rv = torch.zeros(3), torch.ones(3)
    rm2, rv2 = rm.clone(), rv.clone()
    torch.testing.assert_close(batch_norm(x, rm, rv, training=True, momentum=0.3),
                               nn.functional.batch_norm(x, rm2, rv2, training=True, momentum=0.3))
    torch.testing.assert_close((rm, rv), (rm2, rv2))


@pytest.mark.parametrize("make_input, error, match", [
    (lambda: torch.randn(4, 3, 5), ValueError, "expected input with 4 dimensions, got 3"),
    (lambda: torch.randn(4, 2, 5, 5), ValueError, "expected input of size 3 in dimension 1, got 2"),
    (lambda: torch.randn(1, 3, 1, 1), ValueError, "more than 1 value per channel when training"),
    (lambda: torch.zeros(4, 3, 2, 2, dtype=torch.long), TypeError, "floating-point"),
])
def test_batchnorm_bad_input(make_input, error, match):
    with pytest.raises(error, match=match):
        BatchNorm2d(3)(make_input())


def test_batch_of_one_fine_in_eval():
    assert BatchNorm2d(3).eval()(torch.randn(1, 3, 1, 1)).shape == (1, 3, 1, 1)


def test_batchnorm_it_trains():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 3))
    before, after = sgd_step_lowers_loss(model, torch.randn(8, 2, 4, 4), torch.randn(8, 3), lr=0.1)
    assert after < before


def test_saves_less_than_autograd_through_formula():
    x = torch.randn(8, 4, 6, 6, requires_grad=True)
    bn = BatchNorm2d(4)

    def formula(t):
        mean, var = t.mean((0, 2, 3), keepdim=True), t.var((0, 2, 3), unbiased=False, keepdim=True)
        return (t - mean) / (var + 1e-5).sqrt() * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)

    ours, autograd = (saved_bytes(fn, [x], include_inputs=True) for fn in (bn, formula))
    assert ours < 0.6 * autograd


# -------------------------------------------------------------------------- LayerNorm
@pytest.mark.parametrize("shape, normalized", [((3, 5), 5), ((2, 3, 4), (3, 4)), ((2, 2, 3), 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_check_layer_against_nn_layernorm(shape, normalized, affine):
    ours, ref = LayerNorm(normalized, elementwise_affine=affine), nn.LayerNorm(normalized, elementwise_affine=affine)
    if affine:
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5)
            ours.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(*shape) * 3 + 1).requires_grad_(True)
    check_layer(ours, ref, (x,), empty_batch=len(shape) > 1)


def test_layernorm_functional_and_state_dict():
    x = torch.randn(4, 6)
    w, b = torch.rand(6), torch.randn(6)
    torch.testing.assert_close(layer_norm(x, 6, w, b, 1e-3), nn.functional.layer_norm(x, (6,), w, b, 1e-3))
    ref = nn.LayerNorm(6)
    LayerNorm(6).load_state_dict(ref.state_dict())
    ref.load_state_dict(LayerNorm(6).state_dict())


def test_layernorm_bad_input():
    with pytest.raises(ValueError, match=r"last dimensions are \(4,\), got shape \(2, 5\)"):
        LayerNorm(4)(torch.randn(2, 5))
    with pytest.raises(TypeError, match="floating-point"):
        LayerNorm(4)(torch.ones(2, 4, dtype=torch.int32))


def test_layernorm_it_trains():
    model = nn.Sequential(nn.Linear(5, 8), LayerNorm(8), nn.Linear(8, 2))
    before, after = sgd_step_lowers_loss(model, torch.randn(16, 5), torch.randn(16, 2), lr=0.1)
    assert after < before


# ------------------------------------------------------------ torch's argument surface
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (2, 3, 2, 2, 2)])
def test_batch_norm_any_rank(shape):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, dtype=torch.float64).add(0.5).requires_grad_(True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    check_layer(lambda x, w, b: batch_norm(x, None, None, w, b, training=True),
                lambda x, w, b: nn.functional.batch_norm(x, None, None, w, b, training=True),
                (x, w, b), empty_batch=False, shared_work=("input 2",))


def test_layernorm_without_bias_and_keywords():
    ours, ref = LayerNorm(6, bias=False), nn.LayerNorm(6, bias=False)
    assert ours.bias is None and list(ours.state_dict()) == list(ref.state_dict())
    check_layer(ours, ref, (torch.randn(3, 6, requires_grad=True),))
    x, w, b = torch.randn(2, 6), torch.rand(6), torch.randn(6)
    torch.testing.assert_close(layer_norm(input=x, normalized_shape=[6], weight=w, bias=b, eps=1e-5),
                               nn.functional.layer_norm(input=x, normalized_shape=[6], weight=w, bias=b, eps=1e-5))
    assert LayerNorm(4, dtype=torch.float64).weight.dtype == torch.float64


# ------------------------------------------------------------ low precision and autocast
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("which", ["batch_norm", "layer_norm"])
def test_low_precision_error_like_torch(dtype, which):
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64) * 10 + 10     # values ~10: float16 squares overflow
    g = torch.randn_like(x)
    if which == "batch_norm":
        ours, ref = BatchNorm2d(3), nn.BatchNorm2d(3)
    else:
        ours, ref = LayerNorm([5, 5]), nn.LayerNorm([5, 5])
    errors = []
    for m in (ours, ref):
        xl = x.to(dtype).requires_grad_(True)
        y = m.to(dtype)(xl)
        y.backward(g.to(dtype))
        x64 = x.clone().requires_grad_(True)
        y64 = ref.double()(x64)
        y64.backward(g)
        errors.append([(y.double() - y64).abs().max().item(), (xl.grad.double() - x64.grad).abs().max().item()])
    assert errors[0][0] < 0.5                                       # not all zeros
    for mine, theirs in zip(*errors):
        assert mine <= 1.5 * theirs + 1e-3, errors


def test_autocast_bfloat16_like_torch():
    x = torch.randn(2, 3, 4, 4)
    conv = nn.Conv2d(3, 3, 1)
    for ours, ref in ((BatchNorm2d(3), nn.BatchNorm2d(3)), (LayerNorm(4), nn.LayerNorm(4))):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = conv(x)                                             # bfloat16 activations
            y, y_ref = ours(h), ref(h)
            y32 = ours(x)
        assert y.dtype == y_ref.dtype == torch.bfloat16 and y32.dtype == torch.float32
        torch.testing.assert_close(y, y_ref)


# ------------------------------------------------------------ torch.func
def test_vmap_and_jvp():
    x = torch.randn(3, 4, 2, 3, 3, dtype=torch.float64)
    w, b = torch.rand(2, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    f = lambda x: batch_norm(x, None, None, w, b, training=True)                    # noqa: E731
    g = lambda x: nn.functional.batch_norm(x, None, None, w, b, training=True)      # noqa: E731
    torch.testing.assert_close(torch.func.vmap(f)(x), torch.func.vmap(g)(x))
    rm, rv = torch.randn(2, dtype=torch.float64), torch.rand(2, dtype=torch.float64) + 0.5
    for ours, ref in ((f, g), (lambda x: batch_norm(x, rm, rv, w, b),
                               lambda x: nn.functional.batch_norm(x, rm, rv, w, b)),
                      (lambda x: layer_norm(x, (3, 3), w[0].expand(3, 3), None),
                       lambda x: nn.functional.layer_norm(x, (3, 3), w[0].expand(3, 3), None))):
        t = torch.randn_like(x[0])
        torch.testing.assert_close(torch.func.jvp(ours, (x[0],), (t,)), torch.func.jvp(ref, (x[0],), (t,)))
        torch.testing.assert_close(torch.func.vmap(ours)(x), torch.func.vmap(ref)(x))


@pytest.mark.parametrize("jac", [torch.func.jacrev, torch.func.jacfwd], ids=["jacrev", "jacfwd"])
def test_jacobian_through_batch_norm_with_running_stats(jac):
    """The running statistics are updated below the transform, once, as torch's own op does.
    (Both modules also bump num_batches_tracked in place, which torch.func refuses for each.)"""
    x = torch.randn(4, 2, 2, 2, dtype=torch.float64)
    stats = [torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)]
    ref_stats = [t.clone() for t in stats]
    got = jac(lambda x: batch_norm(x, *stats, training=True))(x)
    want = jac(lambda x: nn.functional.batch_norm(x, *ref_stats, training=True))(x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(stats, ref_stats)


def test_batchnorm2d_without_bias_matches_torch_and_loads_its_state():
    torch.manual_seed(0)
    ours, ref = BatchNorm2d(3, bias=False), nn.BatchNorm2d(3, bias=False)
    assert ours.bias is None and set(ours.state_dict()) == set(ref.state_dict())
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(ours(x), ref(x))


def test_batch_norm_of_an_empty_1d_input_is_empty_as_in_torch():
    x = torch.empty(0, requires_grad=True)
    out = batch_norm(x, torch.empty(0), torch.empty(0), training=True)
    assert out.shape == (0,)
