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
