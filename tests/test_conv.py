import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import batch_norm_biases, sgd_step_lowers_loss
from layers.blocks import DepthwiseSeparableConv2d
from layers.conv import (Conv2d, Conv2dFunction, conv2d, conv2d_cost,
                         conv_output_size, im2col)
from layers.testing import check_layer


pytestmark = pytest.mark.usefixtures("one_thread")   # see conftest.py

# (in, out, kernel, stride, padding, dilation, groups, H, W)
CASES = [
    (2, 3, 3, 1, 0, 1, 1, 5, 5),                 # plain valid 3x3
    (2, 3, 3, 1, 1, 1, 1, 4, 5),                 # "same" padding, odd width
    (2, 4, 3, 2, 1, 1, 1, 6, 5),                 # stride 2 with leftover rows/columns
    (3, 2, (3, 2), (2, 1), (1, 0), (2, 1), 1, 7, 5),   # rectangular everything
    (4, 4, 3, 1, 1, 1, 2, 4, 4),                 # two groups
    (4, 4, 3, 2, 1, 1, 4, 5, 5),                 # depthwise, strided
    (2, 4, 1, 1, 0, 1, 1, 3, 3),                 # pointwise 1x1
    (2, 2, 3, 3, 2, 2, 1, 5, 6),                 # stride 3, dilation 2, padding 2
    (1, 2, 5, 1, 0, 1, 1, 5, 5),                 # kernel as large as the input
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "k{2}s{3}p{4}d{5}g{6}".format(*c).replace(" ", ""))
def test_check_layer_against_nn_conv2d(case, bias):
    cin, cout, k, s, p, d, g, h, w = case
    x = torch.randn(2, cin, h, w, requires_grad=True)
    ours = Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=bias)
    ref = nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=bias)
    check_layer(ours, ref, (x,))


def test_functional_matches_torch_float32_larger():
    x = torch.randn(4, 8, 12, 11, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    check_layer(lambda x, w, b: conv2d(x, w, b, stride=2, padding=1, groups=2),
                lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=2),
                (x, w, b), gradcheck=False, gradgradcheck=False)


def test_functional_gradcheck_float64():
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 2, 3, dtype=torch.float64, requires_grad=True)
    check_layer(lambda x, w: conv2d(x, w, None, (1, 2), (1, 0), (2, 1), 2),
                lambda x, w: F.conv2d(x, w, None, (1, 2), (1, 0), (2, 1), 2), (x, w))


def test_im2col_matches_unfold():
    x = torch.randn(2, 3, 7, 6)
    cols = im2col(x, (3, 2), (2, 1), (1, 0), (1, 2))
    ref = F.unfold(x, (3, 2), dilation=(1, 2), padding=(1, 0), stride=(2, 1))   # (N, C*kh*kw, L)
    torch.testing.assert_close(cols.reshape(ref.shape), ref, rtol=0, atol=0)


def test_output_size_formula():
    for size, k, s, p, d in [(8, 3, 1, 1, 1), (7, 3, 2, 0, 1), (9, 3, 3, 2, 2), (5, 5, 1, 0, 1)]:
        expect = nn.Conv2d(1, 1, k, s, p, d)(torch.zeros(1, 1, size, size)).shape[-1]
        assert conv_output_size(size, k, s, p, d) == expect


def test_same_init_and_state_dict_both_ways():
    torch.manual_seed(3)
    ours = Conv2d(4, 6, 3, groups=2)
    torch.manual_seed(3)
    ref = nn.Conv2d(4, 6, 3, groups=2)
    torch.testing.assert_close(ours.weight, ref.weight, rtol=0, atol=0)
    torch.testing.assert_close(ours.bias, ref.bias, rtol=0, atol=0)
    ref2 = nn.Conv2d(4, 6, 3, groups=2)
    ref2.load_state_dict(ours.state_dict())
    ours.load_state_dict(nn.Conv2d(4, 6, 3, groups=2).state_dict())
    assert set(Conv2d(2, 2, 1, bias=False).state_dict()) == set(nn.Conv2d(2, 2, 1, bias=False).state_dict())


def test_extra_repr_like_torch():
    assert repr(Conv2d(3, 8, 3, padding=1)) == "Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))"
    assert "groups=2, bias=False" in repr(Conv2d(4, 4, 3, groups=2, bias=False))


def test_needs_input_grad_passed_through():
    calls = {}

    class Spy(Conv2dFunction):
        @staticmethod
        def backward(ctx, grad_out):
            calls["needs"] = tuple(ctx.needs_input_grad[:3])
            return Conv2dFunction.backward(ctx, grad_out)

    x = torch.randn(1, 2, 4, 4)                            # no grad for x
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    Spy.apply(x, w, None, (1, 1), (0, 0), (1, 1), 1).sum().backward()
    assert calls["needs"] == (False, True, False)


@pytest.mark.parametrize("make_input, error, match", [
    (lambda: torch.randn(8, 8), ValueError, "expected input with 3 .unbatched. or 4 .batched. dimensions, got 2"),
    (lambda: torch.randn(1, 2, 8, 8), ValueError, "expected input with 3 channels in dimension 1 .*got 2"),
    (lambda: torch.randn(1, 3, 2, 8), ValueError, "kernel height 3 .* larger than the padded input height"),
    (lambda: torch.randint(0, 5, (1, 3, 8, 8)), TypeError, "floating-point"),
    (lambda: torch.randn(1, 3, 8, 8, dtype=torch.float64), TypeError, "dtype torch.float32"),
])
def test_bad_input(make_input, error, match):
    with pytest.raises(error, match=match):
        conv2d(make_input(), torch.randn(4, 3, 3, 3))
    with pytest.raises(error, match=match):
        Conv2d(3, 4, 3)(make_input())


def test_bad_construction():
    with pytest.raises(ValueError, match="divisible by groups=2"):
        Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="stride >= 1"):
        Conv2d(3, 4, 3, stride=0)
    with pytest.raises(TypeError, match="kernel_size to be an int or a pair"):
        Conv2d(3, 4, (3, 3, 3))
    with pytest.raises(ValueError, match="bias of size 4"):
        conv2d(torch.randn(1, 3, 5, 5), torch.randn(4, 3, 3, 3), torch.randn(5))


def test_it_trains():
    model = nn.Sequential(Conv2d(1, 4, 3, padding=1), nn.ReLU(), Conv2d(4, 2, 3, stride=2))
    x = torch.randn(8, 1, 8, 8)
    target = torch.randn(8, 2, 3, 3)
    before, after = sgd_step_lowers_loss(model, x, target, lr=0.1)
    assert after < before


# ------------------------------------------------------------ depthwise separable
class TorchSeparable(nn.Module):
    """The same block from torch.nn layers, with the same parameter names."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.bn2(self.pointwise(torch.relu(self.bn1(self.depthwise(x))))))


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_separable_against_torch(stride):
    m = DepthwiseSeparableConv2d(3, 5, stride=stride)
    x = torch.randn(4, 3, 6, 6, requires_grad=True)
    check_layer(m, TorchSeparable(3, 5, stride), (x,), shared_work=batch_norm_biases(m))


def test_depthwise_separable_eval_and_cost():
    m = DepthwiseSeparableConv2d(8, 16).eval()
    ref = TorchSeparable(8, 16).eval()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(m(x), ref(x))
    n_params = sum(p.numel() for p in m.parameters() if p.dim() == 4)
    assert n_params == 8 * 9 + 8 * 16
    sep = m.cost(5, 5)
    std = conv2d_cost(8, 16, 3, 5, 5, padding=1, bias=False)
    assert sep["params"] == n_params and std["params"] == 16 * 8 * 9
    assert sep["mult_adds"] == (8 * 9 + 8 * 16) * 25 and std["mult_adds"] == 16 * 8 * 9 * 25
