"""Tests of layers.quantization: bit-exact fake quantization, STE/LSQ/PACT gradients, observers,
quantized layers and QAT conversion."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import sgd_step_lowers_loss
from layers.conv import Conv2d
from layers.data import load_digits
from layers.linear import Linear
from layers.quantization import (
    FakeQuantize, LSQQuantizer, MinMaxObserver, MovingAverageMinMaxObserver, MSEObserver, PACTQuantizer,
    QuantConv2d, QuantLinear, calibrate, convert_to_qat, fake_quantize, lsq_quantize, mse_clip_search,
    pact_quantize, qparams_from_range, quant_range, sqnr,
)
from layers.testing import check_layer
from layers.training import accuracy, fit

QRANGES = [(0, 255, 0), (0, 255, 128), (-128, 127, 0), (-127, 127, 3), (0, 3, 1), (-1, 1, 0),
           (-32768, 32767, 0), (0, 65535, 40000)]
SCALES = [1e-38, 1e-30, 1e-8, 3e-4, 0.1, 0.37, 1.0, 7.3, 1e6, 1e30, 3e38]


def edge_inputs(scale: float, qmin: int, qmax: int, z: int, dtype: torch.dtype, n: int = 400) -> torch.Tensor:
    """Random values over (and past) the range, exact rounding ties, the clamp bounds, 0, +-inf, NaN."""
    gen = torch.Generator().manual_seed(0)
    rand = torch.randn(n, generator=gen, dtype=torch.float64) * scale * (qmax - qmin) / 4
    k = torch.arange(-60, 60, dtype=torch.float64)
    ties = (k + 0.5) * scale                                            # x exactly at (k + 1/2) s
    bounds = torch.tensor([qmin - z, qmax - z, qmin - z - 1, qmax - z + 1, qmin - z - 0.5, qmax - z + 0.5,
                           qmin - z - 0.51, qmax - z + 0.49], dtype=torch.float64) * scale
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan")], dtype=torch.float64)
    return torch.cat([rand, ties, bounds, special]).to(dtype)


def assert_bit_equal(ours: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(ours, ref, rtol=0, atol=0, equal_nan=True)


# ------------------------------------------------------------------------ bit-exact forward
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("qmin,qmax,z", QRANGES)
def test_fake_quantize_per_tensor_is_bit_exact(dtype, qmin, qmax, z):
    for scale in SCALES:
        x = edge_inputs(scale, qmin, qmax, z, dtype)
        x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
        ref = torch.fake_quantize_per_tensor_affine(x_ref, scale, z, qmin, qmax)
        ours = fake_quantize(x_ours, scale, z, qmin, qmax)
        assert_bit_equal(ours, ref)
        g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        ref.backward(g)
        ours.backward(g)
        assert_bit_equal(x_ours.grad, x_ref.grad)                       # same STE mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("float_zero_point", [False, True])
@pytest.mark.parametrize("qmin,qmax,z", QRANGES)
def test_fake_quantize_per_channel_is_bit_exact(dtype, float_zero_point, qmin, qmax, z):
    for scale in SCALES[1:-1]:
        x = edge_inputs(scale, qmin, qmax, z, dtype, n=399).reshape(4, -1)    # (C=4, 133)
        scales = torch.tensor([scale, scale * 1.7, scale * 0.3, scale], dtype=torch.float32)
        zps = torch.tensor([z, qmin, qmax, z], dtype=torch.int32)
        if float_zero_point:
            zps = zps.float()
        for axis, xx in ((0, x), (1, x.t().contiguous())):
            x_ref, x_ours = xx.clone().requires_grad_(), xx.clone().requires_grad_()
            ref = torch.fake_quantize_per_channel_affine(x_ref, scales, zps, axis, qmin, qmax)
            ours = fake_quantize(x_ours, scales, zps, qmin, qmax, axis=axis)
            assert_bit_equal(ours, ref)
            g = torch.randn(xx.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
            ref.backward(g)
            ours.backward(g)
            assert_bit_equal(x_ours.grad, x_ref.grad)


def test_fake_quantize_check_layer():
    x = torch.randn(6, 5, requires_grad=True) * 2

    def ours(t):
        return fake_quantize(t, 0.25, 3, 0, 15)

    def ref(t):
        return torch.fake_quantize_per_tensor_affine(t, 0.25, 3, 0, 15)

    # gradcheck is off: the STE is by design not the derivative of a staircase (which is 0)
    check_layer(ours, ref, (x.detach().requires_grad_(),), gradcheck=False)


def test_fake_quantize_per_channel_check_layer():
    x = torch.randn(4, 3, 5) * 2
    scale, zp = torch.tensor([0.1, 0.3, 0.5]), torch.tensor([0, 2, -1], dtype=torch.int32)
    check_layer(lambda t: fake_quantize(t, scale, zp, -8, 7, axis=1),
                lambda t: torch.fake_quantize_per_channel_affine(t, scale, zp, 1, -8, 7),
                (x.requires_grad_(),), gradcheck=False)


def test_without_ste_the_gradient_is_zero():
    """The true derivative of the staircase is 0 almost everywhere: a central difference sees nothing."""
    x = torch.rand(50, dtype=torch.float64) * 3 + 0.013                # away from the steps
    h = 1e-6
    num = (fake_quantize(x + h, 0.5, 0, 0, 255) - fake_quantize(x - h, 0.5, 0, 0, 255)) / (2 * h)
    assert num.abs().max() == 0
    xg = x.clone().requires_grad_()
    fake_quantize(xg, 0.5, 0, 0, 255).sum().backward()
    assert torch.equal(xg.grad, torch.ones_like(x))                   # STE: identity inside the range


# ------------------------------------------------------------------------------------ LSQ
LSQ_CASES = [(qmin, qmax, zf) for qmin, qmax in [(0, 255), (-128, 127), (0, 3), (-1, 1), (0, 15)]
             for zf in [0.0, 1.3, 2.5, 3.5, -0.7, -0.3] if qmin <= round(zf) <= qmax]


def _lsq_leaves(x, s0, zf, channels):
    """(input, scale, zero_point) leaves; per channel, the scales and zero points vary by channel."""
    if channels is None:
        return [x.clone().requires_grad_(), torch.tensor([s0], requires_grad=True),
                torch.tensor([zf], requires_grad=True)]
    spread = torch.linspace(0.7, 1.3, channels)
    return [x.clone().requires_grad_(), (s0 * spread).requires_grad_(),
            torch.full((channels,), zf).requires_grad_()]


@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("qmin,qmax,zf", LSQ_CASES)
@pytest.mark.parametrize("grad_factor", [1.0, 0.05])
def test_lsq_matches_torch_learnable(qmin, qmax, zf, grad_factor, axis):
    """Per tensor against torch._fake_quantize_learnable_per_tensor_affine (whose backward rounds
    the zero point as trunc(z + 0.5)), per channel against ..._per_channel_affine (round half
    to even in forward and backward): the zero points 2.5 and -0.3 tell the two apart."""
    for s0 in [0.01, 0.37, 2.0]:
        gen = torch.Generator().manual_seed(0)
        x = torch.cat([torch.randn(1000, generator=gen) * s0 * (qmax - qmin) / 3,
                       (torch.arange(-50, 50) + 0.5) * s0])
        if axis is not None:
            x = x.reshape(4, 275) if axis == 0 else x.reshape(275, 4)
        channels = None if axis is None else x.shape[axis]
        leaves = [_lsq_leaves(x, s0, zf, channels) for _ in range(2)]
        g = torch.randn(x.shape, generator=gen)
        if axis is None:
            ref = torch._fake_quantize_learnable_per_tensor_affine(*leaves[0], qmin, qmax, grad_factor)
        else:
            ref = torch._fake_quantize_learnable_per_channel_affine(*leaves[0], axis, qmin, qmax, grad_factor)
        ours = lsq_quantize(*leaves[1], qmin, qmax, grad_factor, axis=axis)
        assert torch.equal(ours, ref)
        ref.backward(g)
        ours.backward(g)
        assert torch.equal(leaves[1][0].grad, leaves[0][0].grad)
        # scale / zero-point gradients are sums over 1100 float32 terms: same terms, other order
        torch.testing.assert_close(leaves[1][1].grad, leaves[0][1].grad, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(leaves[1][2].grad, leaves[0][2].grad, rtol=1e-4, atol=1e-3)


def _lsq_reference(x, scale, zero_point, qmin, qmax, grad_factor, axis):
    """LSQ by the "detach trick": round and the gradient scale enter only through detached terms."""
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    s = scale.reshape(shape)
    s = s * grad_factor + (s - s * grad_factor).detach()              # value s, gradient * grad_factor
    zf = zero_point.reshape(shape)
    zf = zf * grad_factor + (zf - zf * grad_factor).detach()
    z = zf + (torch.round(zf) - zf).detach()                          # round with STE
    v = x / s + z
    v = v + (torch.round(v) - v).detach()
    return (torch.clamp(v, qmin, qmax) - z) * s


@pytest.mark.parametrize("axis", [None, 1])
def test_lsq_check_layer_against_detach_trick(axis):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64) * 2
    c = 1 if axis is None else 3
    scale = torch.linspace(0.3, 0.5, c, dtype=torch.float64).requires_grad_()
    zp = torch.full((c,), 2.2, dtype=torch.float64).requires_grad_()
    check_layer(lambda t, s, z: lsq_quantize(t, s, z, 0, 7, 0.5, axis),
                lambda t, s, z: _lsq_reference(t, s, z, 0, 7, 0.5, axis),
                (x.requires_grad_(), scale, zp), gradcheck=False, gradgradcheck=False, empty_batch=False)


def test_lsq_scale_gradcheck_where_exact():
    """In the clamped region y = (q_max - z) s exactly, so LSQ's scale gradient is the derivative."""
    x = torch.cat([torch.linspace(3.0, 9.0, 7), torch.linspace(-9.0, -3.0, 7)]).double().requires_grad_()
    scale = torch.tensor([0.2], dtype=torch.float64, requires_grad=True)
    zp = torch.tensor([3.0], dtype=torch.float64)
    # grad_factor 1: any other value scales the scale gradient on purpose (LSQ's gradient scale)
    assert torch.autograd.gradcheck(lambda t, s: lsq_quantize(t, s, zp, 0, 7, 1.0), (x, scale))


# ----------------------------------------------------------------------------------- PACT
def _pact_reference(x, alpha, bits):
    """PACT with autograd: clip (gradient to alpha where x >= alpha), STE through the rounding."""
    a = alpha.reshape(())
    y = torch.where(x >= a, a, torch.where(x < 0, torch.zeros_like(x), x))
    step = (a / (2**bits - 1)).detach()
    return y + (torch.round(y / step) * step - y).detach()


def test_pact_check_layer():
    x = torch.randn(8, 5, dtype=torch.float64) * 2
    alpha = torch.tensor([1.3], dtype=torch.float64, requires_grad=True)
    check_layer(lambda t, a: pact_quantize(t, a, 3), lambda t, a: _pact_reference(t, a, 3),
                (x.requires_grad_(), alpha), gradcheck=False, gradgradcheck=False)


def test_pact_alpha_gradcheck_where_exact():
    """Away from [0, alpha) the output is 0 or alpha exactly: the published gradient is the derivative."""
    x = torch.cat([torch.linspace(2.0, 5.0, 6), torch.linspace(-3.0, -0.5, 6)]).double().requires_grad_()
    alpha = torch.tensor([1.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, a: pact_quantize(t, a, 4), (x, alpha))


def test_pact_values_on_the_grid():
    x = torch.linspace(-1, 3, 101)
    y = pact_quantize(x, torch.tensor([2.0]), 2)
    assert set(torch.round(y * 1.5).tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert y.max().item() == pytest.approx(2.0)


# ------------------------------------------------------------------------------ observers
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_minmax_observer_matches_torch(bits, symmetric):
    qmin, qmax = quant_range(bits, symmetric)
    kw = dict(quant_min=qmin, quant_max=qmax)
    if symmetric:
        ref = torch.ao.quantization.MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, **kw)
        ref_c = torch.ao.quantization.PerChannelMinMaxObserver(
            ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, **kw)
    else:
        ref = torch.ao.quantization.MinMaxObserver(dtype=torch.quint8, **kw)
        ref_c = torch.ao.quantization.PerChannelMinMaxObserver(ch_axis=0, dtype=torch.quint8,
                                                                qscheme=torch.per_channel_affine, **kw)
    ours, ours_c = MinMaxObserver(bits, symmetric), MinMaxObserver(bits, symmetric, ch_axis=0)
    for i in range(3):
        x = torch.randn(6, 10) * (i + 1) + 0.3
        for o in (ours, ref, ours_c, ref_c):
            o(x)
    for a, b in ((ours, ref), (ours_c, ref_c)):
        s, z = a.calculate_qparams()
        s_ref, z_ref = b.calculate_qparams()
        torch.testing.assert_close(s.reshape(-1), s_ref.reshape(-1), rtol=0, atol=0)
        assert torch.equal(z.reshape(-1).long(), z_ref.reshape(-1).long())


def test_moving_average_observer_matches_torch():
    ours = MovingAverageMinMaxObserver(8, averaging_constant=0.1)
    ref = torch.ao.quantization.MovingAverageMinMaxObserver(averaging_constant=0.1, quant_min=0, quant_max=255)
    for i in range(5):
        x = torch.randn(100) * (i + 1)
        ours(x)
        ref(x)
    torch.testing.assert_close(ours.min_val, ref.min_val)
    torch.testing.assert_close(ours.max_val, ref.max_val)
    torch.testing.assert_close(ours.calculate_qparams()[0].reshape(1), ref.calculate_qparams()[0])


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_mse_clip_beats_minmax(bits, symmetric):
    x = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    qmin, qmax = quant_range(bits, symmetric)

    def mse(lo, hi):
        s, z = qparams_from_range(lo, hi, qmin, qmax, symmetric)
        return (fake_quantize(x, s, z, qmin, qmax) - x).pow(2).mean().item()

    lo, hi = mse_clip_search(x, bits, symmetric)
    assert mse(lo, hi) <= mse(x.min(), x.max())
    if bits <= 4:                                                     # clipping pays at low bit widths
        assert hi < 0.8 * x.max() and mse(lo, hi) < 0.8 * mse(x.min(), x.max())


def test_sqnr_six_db_per_bit():
    x = torch.rand(100000, generator=torch.Generator().manual_seed(0))
    values = []
    for bits in (4, 6, 8):
        s, z = qparams_from_range(x.min(), x.max(), *quant_range(bits))
        values.append(sqnr(x, fake_quantize(x, s, z, *quant_range(bits))))
    slope = (values[-1] - values[0]) / 4
    assert 5.8 < slope < 6.3


# ---------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("call,error,match", [
    (lambda: quant_range(1), ValueError, "bits to be an integer in 2..16, got 1"),
    (lambda: quant_range(17), ValueError, "bits to be an integer in 2..16, got 17"),
    (lambda: FakeQuantize(bits=0), ValueError, "FakeQuantize: expected bits"),
    (lambda: fake_quantize(torch.randn(3), 0.0, 0, 0, 255), ValueError, "positive finite scale, got 0.0"),
    (lambda: fake_quantize(torch.randn(3), -0.1, 0, 0, 255), ValueError, "positive finite scale"),
    (lambda: fake_quantize(torch.randn(3), 0.1, 300, 0, 255), ValueError, r"zero_point in \[quant_min"),
    (lambda: fake_quantize(torch.randn(3), 1e-50, 0, 0, 255), ValueError, "positive finite scale, got 0.0"),
    (lambda: fake_quantize(torch.randn(3), float("nan"), 0, 0, 255), ValueError, "positive finite scale, got nan"),
    (lambda: fake_quantize(torch.randn(3), 0.1, float("nan"), 0, 255), ValueError, "integer zero_point, got nan"),
    (lambda: fake_quantize(torch.randn(3), 0.1, float("inf"), 0, 255), ValueError, "zero_point in .*got inf"),
    (lambda: fake_quantize(torch.randn(3), 0.1, 2.5, 0, 255), ValueError, "integer zero_point, got 2.5"),
    (lambda: fake_quantize(torch.randn(3), torch.tensor(0.1), torch.tensor(256), 0, 255), ValueError,
     r"zero_point in \[quant_min, quant_max\] = \[0, 255\], got 256$"),
    (lambda: fake_quantize(torch.randn(3), 0.1, 0, 5, 5), ValueError, "quant_min < quant_max"),
    (lambda: fake_quantize(torch.arange(3), 0.1, 0, 0, 255), TypeError, "floating-point"),
    (lambda: fake_quantize(torch.randn(2, 3), torch.tensor([0.1, 0.0, 0.1]), torch.zeros(3, dtype=torch.int32),
                           0, 255, axis=1), ValueError, "positive finite scale"),
    (lambda: fake_quantize(torch.randn(2, 3), torch.ones(2), torch.zeros(2, dtype=torch.int32), 0, 255, axis=1),
     ValueError, r"scale of shape \(3,\)"),
    (lambda: lsq_quantize(torch.randn(3), torch.tensor([-1.0]), torch.tensor([0.0]), 0, 7), ValueError,
     "positive finite scale"),
    (lambda: lsq_quantize(torch.randn(3), torch.tensor([1.0]), torch.tensor([9.0]), 0, 7), ValueError,
     "zero_point in"),
    (lambda: lsq_quantize(torch.randn(3), torch.tensor([1.0]), torch.tensor([7.5]), 0, 7), ValueError,
     r"got 7.5 \(rounds to 8\)"),                                 # half to even: 7.5 -> 8, outside [0, 7]
    (lambda: pact_quantize(torch.randn(3), torch.tensor([0.0]), 4), ValueError, "positive finite alpha"),
    (lambda: pact_quantize(torch.randn(3), torch.tensor([1.0]), 1), ValueError, "bits"),
    (lambda: MinMaxObserver()(torch.tensor([1.0, float("nan")])), ValueError, "NaN/Inf"),
    (lambda: MSEObserver(4)(torch.tensor([1.0, float("inf")])), ValueError, "NaN/Inf"),
    (lambda: FakeQuantize()(torch.tensor([0.0, float("-inf")])), ValueError, "NaN/Inf"),
    (lambda: MinMaxObserver().calculate_qparams(), RuntimeError, "no tensor observed"),
    (lambda: convert_to_qat(nn.Sequential(Linear(2, 2)), method="nope"), ValueError, "method"),
])
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_learned_zero_point_rounds_half_to_even_into_the_range():
    # not integers (integer=False): 6.5 rounds to 6 (even), inside [0, 7]; the check lets it through
    y = lsq_quantize(torch.randn(3), torch.tensor([1.0]), torch.tensor([6.5]), 0, 7)
    assert y.shape == (3,)


@pytest.mark.parametrize("scale", [-0.5, float("nan")])
def test_a_bad_python_scale_is_refused_while_tracing(scale):
    # a Python number is checked in plain Python, so torch.compile and meta tensors see the check too
    compiled = torch.compile(lambda x: fake_quantize(x, scale, 0, 0, 255), backend="eager", fullgraph=True)
    with pytest.raises(Exception, match="positive finite scale"):      # torch.compile may wrap the error
        compiled(torch.randn(4))
    with pytest.raises(ValueError, match="positive finite scale"):
        fake_quantize(torch.randn(4, device="meta"), scale, 0, 0, 255)


# ------------------------------------------------------------------------ modules, layers
def test_fake_quantize_module_modes():
    fq = FakeQuantize(bits=4)
    x = torch.linspace(-1, 1, 11)
    y = fq(x)                                                        # training: observes, quantizes
    assert torch.equal(y, fake_quantize(x, fq.scale, fq.zero_point, 0, 15))
    fq.eval()
    scale = fq.scale.clone()
    fq(x * 10)                                                       # eval: range frozen
    assert torch.equal(fq.scale, scale)
    fq.enable_fake_quant(False)
    assert torch.equal(fq(x), x)


class _RefQuantLinear(nn.Module):
    """QuantLinear(method="ste") rebuilt from torch's observers and fake-quant ops."""

    def __init__(self, layer: QuantLinear):
        super().__init__()
        self.weight, self.bias = nn.Parameter(layer.weight.detach().clone()), nn.Parameter(layer.bias.detach().clone())
        self.wb, self.ab = layer.weight_bits, layer.act_bits

    def forward(self, x):
        qmin, qmax = quant_range(self.ab)
        obs = torch.ao.quantization.MinMaxObserver(dtype=torch.quint8, quant_min=qmin, quant_max=qmax)
        obs(x.detach())
        s, z = obs.calculate_qparams()
        xq = torch.fake_quantize_per_tensor_affine(x, s.item(), int(z), qmin, qmax)
        wmin, wmax = quant_range(self.wb, symmetric=True)
        wobs = torch.ao.quantization.PerChannelMinMaxObserver(
            ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=wmin, quant_max=wmax)
        wobs(self.weight.detach())
        ws, wz = wobs.calculate_qparams()
        wq = torch.fake_quantize_per_channel_affine(self.weight, ws, wz.int(), 0, wmin, wmax)
        return F.linear(xq, wq, self.bias)


@pytest.mark.filterwarnings("ignore:must run observer")        # torch's observer on the empty batch
@pytest.mark.parametrize("bits", [(8, 8), (4, 3), (2, 2)])
def test_quant_linear_check_layer(bits):
    layer = QuantLinear(5, 4, weight_bits=bits[0], act_bits=bits[1])
    x = torch.randn(6, 5, requires_grad=True)
    check_layer(layer, _RefQuantLinear(layer), (x,), gradcheck=False, gradgradcheck=False, sync_state=False)


class _TorchConvQuant(QuantConv2d):
    """The same quantizers around torch's own convolution."""

    def forward(self, x):
        return F.conv2d(self.act_quant(x), self.weight_quant(self.weight), self.bias, self.stride,
                        self.padding, self.dilation, self.groups)


@pytest.mark.parametrize("method", ["ste", "lsq", "pact"])
def test_quant_conv2d_check_layer(method):
    kw = dict(padding=1, weight_bits=4, act_bits=4, method=method)
    layer, ref = QuantConv2d(2, 3, 3, **kw), _TorchConvQuant(2, 3, 3, **kw)
    x = torch.rand(2, 2, 5, 5)
    layer(x)                                                        # initialize the ranges (LSQ, PACT)
    layer.eval()                                                    # freeze them: both sides then agree
    ref.load_state_dict(layer.state_dict())
    ref.eval()
    check_layer(layer, ref, (x.requires_grad_(),), gradcheck=False, gradgradcheck=False)


def test_convert_to_qat_swaps_and_keeps_weights():
    model = nn.Sequential(Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Sequential(Linear(256, 16), nn.ReLU()), Linear(16, 10))
    x = torch.rand(8, 1, 8, 8)
    want = model(x)
    qat = convert_to_qat(copy.deepcopy(model), weight_bits=16, act_bits=16)
    assert isinstance(qat[0], QuantConv2d) and isinstance(qat[3][0], QuantLinear) and isinstance(qat[4], QuantLinear)
    assert torch.equal(qat[4].weight, model[4].weight)
    torch.testing.assert_close(qat(x), want, rtol=1e-3, atol=1e-3)   # 16 bits: close to float
    single = convert_to_qat(Linear(3, 2), method="lsq")
    assert isinstance(single, QuantLinear) and isinstance(single.act_quant, LSQQuantizer)


@pytest.mark.parametrize("method", ["ste", "lsq", "pact"])
def test_quant_linear_trains(method):
    model = nn.Sequential(QuantLinear(6, 8, weight_bits=4, act_bits=4, method=method), nn.ReLU(),
                          QuantLinear(8, 3, weight_bits=4, act_bits=4, method=method))
    x, target = torch.rand(32, 6), torch.randn(32, 3)
    model(x)                                                         # initialize the ranges
    before, after = sgd_step_lowers_loss(model, x, target, lr=0.05)
    assert after < before
    if method == "pact":
        assert isinstance(model[0].act_quant, PACTQuantizer) and model[0].act_quant.alpha.grad is not None


def _test_loss(model: nn.Module, data) -> float:
    model.eval()
    with torch.no_grad():
        return F.cross_entropy(model(data.x_test), data.y_test).item()


def _ptq(model: nn.Module, data, bits: int, observer: str) -> nn.Module:
    ptq = convert_to_qat(copy.deepcopy(model), weight_bits=bits, act_bits=bits, observer=observer)
    return calibrate(ptq, data.x_train if observer == "minmax" else data.x_train[:512])


def test_qat_beats_ptq_at_3_bits():
    """QAT against PTQ of a float model trained for the same total number of epochs.

    Each seed: a float MLP trained to convergence (Adam, 30 epochs); QAT fine-tunes it for 3 epochs
    (PACT, W3A3); the fair baseline trains the float model for the same 3 extra epochs and is then
    quantized with the better of min-max and MSE-clip calibration. At 3 bits the accuracy gain is
    small (the chapter measures about one point; a test image is 0.0022), so the claim is checked on
    the mean over 3 seeds: higher test accuracy and a clearly lower test loss.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                         # tiny matrices: threads only cost
    try:
        data = load_digits()
        qat_acc, ptq_acc, qat_loss, ptq_loss = [], [], [], []
        for seed in range(3):
            torch.manual_seed(seed)
            base = nn.Sequential(Linear(64, 64), nn.ReLU(), Linear(64, 64), nn.ReLU(), Linear(64, 10))
            fit(base, data, epochs=30, lr=2e-3, optimizer="adam", seed=seed, verbose=False)
            longer = copy.deepcopy(base)                                 # float, same total epochs as QAT
            fit(longer, data, epochs=3, lr=1e-3, optimizer="adam", seed=seed, verbose=False)
            ptqs = [_ptq(longer, data, 3, observer) for observer in ("minmax", "mse")]
            ptq_acc.append(max(accuracy(m, data.x_test, data.y_test) for m in ptqs))
            ptq_loss.append(min(_test_loss(m, data) for m in ptqs))
            qat = convert_to_qat(copy.deepcopy(base), weight_bits=3, act_bits=3, method="pact")
            fit(qat, data, epochs=3, lr=1e-3, optimizer="adam", seed=seed, verbose=False)
            qat_acc.append(accuracy(qat, data.x_test, data.y_test))
            qat_loss.append(_test_loss(qat, data))
    finally:
        torch.set_num_threads(threads)
    mean = lambda v: sum(v) / len(v)                                 # noqa: E731
    assert mean(qat_acc) > mean(ptq_acc) + 0.004, (qat_acc, ptq_acc)
    assert mean(qat_loss) < 0.9 * mean(ptq_loss), (qat_loss, ptq_loss)


def test_plot_helpers_return_figures():
    from matplotlib.figure import Figure

    from layers.viz import plot_quantizer, plot_series
    fig = plot_quantizer(lambda t: fake_quantize(t, 0.25, 0, -4, 3), torch.linspace(-2, 2, 101), torch.randn(500))
    assert isinstance(fig, Figure) and fig.axes[0].get_xlabel() == "input x"
    fig = plot_series([2, 4], {"a": [1.0, 2.0], "b": [0.5, 1.0]}, "t", "bits", "dB", errors={"a": [0.1, 0.1]})
    assert isinstance(fig, Figure) and fig.axes[0].get_legend() is not None


def test_lsq_quantizer_survives_a_nonpositive_learned_scale():
    # An optimizer step can drive the learned step size to zero or below: the quantizer
    # then uses float32's eps instead of raising or producing NaN.
    from layers.quantization import LSQQuantizer
    q = LSQQuantizer(bits=4, symmetric=True)
    x = torch.randn(8, 5)
    q.train()
    q(x)                                                     # initializes the scale
    with torch.no_grad():
        q.scale.fill_(-0.3)
    out = q(x)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(q.scale.grad).all()
