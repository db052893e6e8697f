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
