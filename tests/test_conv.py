import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import sgd_step_lowers_loss
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
    # compile (about half a second a call): once per path through conv2d's Python, which differs
    # only in padding or not and bias or not (every argument set, groups, no padding)
    check_layer(ours, ref, (x,), compile=case in (CASES[0], CASES[3], CASES[5]))


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


# ------------------------------------------------------------ torch's argument surface
@pytest.mark.parametrize("padding, dilation, kernel", [("same", 1, 3), ("same", 2, (2, 3)), ("valid", 1, 3)])
def test_string_padding_matches_torch(padding, dilation, kernel):
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, *((kernel, kernel) if isinstance(kernel, int) else kernel),
                    dtype=torch.float64, requires_grad=True)
    check_layer(lambda x, w: conv2d(x, w, padding=padding, dilation=dilation),
                lambda x, w: F.conv2d(x, w, padding=padding, dilation=dilation), (x, w), empty_batch=False)


def test_same_padding_refuses_stride():
    with pytest.raises(ValueError, match="padding='same' is not supported for strided"):
        conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), stride=2, padding="same")
    with pytest.raises(ValueError, match="got 'full'"):
        conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), padding="full")


def test_unbatched_input():
    x = torch.randn(2, 5, 5, dtype=torch.float64, requires_grad=True)
    ours, ref = Conv2d(2, 3, 3, padding=1).double(), nn.Conv2d(2, 3, 3, padding=1).double()
    check_layer(ours, ref, (x,), empty_batch=False)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes(mode):
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    ours = Conv2d(2, 3, 3, padding=1, padding_mode=mode).double()
    ref = nn.Conv2d(2, 3, 3, padding=1, padding_mode=mode).double()
    check_layer(ours, ref, (x,), gradgradcheck=False)
    ours_same = Conv2d(2, 3, (2, 3), padding="same", padding_mode=mode).double()
    ref_same = nn.Conv2d(2, 3, (2, 3), padding="same", padding_mode=mode).double()
    ref_same.load_state_dict(ours_same.state_dict())
    torch.testing.assert_close(ours_same(x), ref_same(x))
    with pytest.raises(ValueError, match="padding_mode .*'mirror'"):
        Conv2d(2, 3, 3, padding_mode="mirror")


def test_keyword_names_as_torch():
    x, w, b = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), torch.randn(3)
    kw = dict(input=x, weight=w, bias=b, stride=1, padding=1, dilation=1, groups=1)
    torch.testing.assert_close(conv2d(**kw), F.conv2d(**kw))
    m = Conv2d(in_channels=2, out_channels=3, kernel_size=3, stride=1, padding=0, dilation=1, groups=1,
               bias=True, padding_mode="zeros", device="cpu", dtype=torch.float64)
    assert m.weight.dtype == torch.float64 and m(input=x.double()).shape == (1, 3, 3, 3)
    assert Conv2d(2, 2, 1, device="meta").weight.is_meta


# ------------------------------------------------------------ composability
def test_vmap_jvp_jacobians():
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    w = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    f = lambda x, w, b: conv2d(x, w, b, stride=2, padding=1)      # noqa: E731
    g = lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1)    # noqa: E731
    torch.testing.assert_close(torch.func.vmap(f, in_dims=(0, None, None))(x[:, None], w, b),
                               torch.func.vmap(g, in_dims=(0, None, None))(x[:, None], w, b))
    t = tuple(torch.randn_like(v) for v in (x, w, b))
    torch.testing.assert_close(torch.func.jvp(f, (x, w, b), t), torch.func.jvp(g, (x, w, b), t))
    xs = x[:1, :, :3, :3]
    for jac in (torch.func.jacrev, torch.func.jacfwd):
        torch.testing.assert_close(jac(f, argnums=(0, 1))(xs, w, b), jac(g, argnums=(0, 1))(xs, w, b))


def test_autocast_bfloat16_like_torch():
    x = torch.randn(2, 3, 6, 6)
    ours = Conv2d(3, 4, 3)
    ref = nn.Conv2d(3, 4, 3)
    ref.load_state_dict(ours.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_ref = ours(x), ref(x)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_ref, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_error_like_torch(dtype):
    x = torch.randn(4, 8, 10, 10, dtype=torch.float64)
    w = torch.randn(6, 8, 3, 3, dtype=torch.float64) * 0.2
    b = torch.randn(6, dtype=torch.float64)
    g = torch.randn(4, 6, 8, 8, dtype=torch.float64)
    errs = []
    for fn in (conv2d, F.conv2d):
        leaves = [t.to(dtype).requires_grad_(True) for t in (x, w, b)]
        y = fn(*leaves)
        y.backward(g.to(dtype))
        truth = [t.requires_grad_(True) for t in (x.clone(), w.clone(), b.clone())]
        y64 = F.conv2d(*truth)
        y64.backward(g)
        errs.append([(a.double() - e).abs().max().item() for a, e in
                     zip([y] + [v.grad for v in leaves], [y64] + [v.grad for v in truth])])
    for ours, torch_err in zip(*errs):
        assert ours <= 1.5 * torch_err + 1e-3, errs
