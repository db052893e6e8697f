import copy

import pytest
import torch
from torch import nn

import layers
from helpers import batch_norm_biases, sgd_step_lowers_loss
from layers.blocks import DepthwiseSeparableConv2d, ResidualBlock
from layers.conv import conv2d_cost
from layers.references import TorchResidualBlock
from layers.testing import check_layer


pytestmark = pytest.mark.usefixtures("one_thread")   # see conftest.py


@pytest.mark.parametrize("cin, cout, stride, shortcut", [
    (2, 2, 1, True),        # identity shortcut
    (2, 3, 1, True),        # projection for channels
    (2, 2, 2, True),        # projection for stride
    (2, 2, 1, False),       # plain stack
])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_check_layer_against_torch_block(cin, cout, stride, shortcut, train):
    ours = ResidualBlock(cin, cout, stride=stride, shortcut=shortcut).train(train)
    ref = TorchResidualBlock(cin, cout, stride, shortcut).train(train)
    x = torch.randn(2, cin, 4, 4, requires_grad=True)
    # gradgradcheck is covered by the parts' own tests; here it would dominate the run time.
    # compile (seconds a call): the identity shortcut and the strided projection, in both modes
    check_layer(ours, ref, (x,), gradgradcheck=False, needs_input_grad=train,
                shared_work=batch_norm_biases(ours), compile=shortcut and cin == cout)


def test_projection_only_when_needed():
    assert ResidualBlock(4).projection is None
    assert ResidualBlock(4, 8).projection is not None
    assert ResidualBlock(4, stride=2).projection is not None
    assert ResidualBlock(4, 8, shortcut=False).projection is None


def test_identity_gradient_path():
    """With zero-initialised final BN scale, the block is ReLU(x): the gradient passes unchanged."""
    block = ResidualBlock(3)
    with torch.no_grad():
        block.bn2.weight.zero_()
    x = (torch.rand(2, 3, 4, 4) + 0.1).requires_grad_(True)        # positive, so ReLU passes it
    block(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


def test_bad_input():
    with pytest.raises(ValueError, match="expected input with 3 channels in dimension 1"):
        ResidualBlock(3)(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match="expected input with 4 dimensions"):
        ResidualBlock(3)(torch.randn(3, 5, 5))


def test_it_trains():
    model = nn.Sequential(ResidualBlock(2, 4, stride=2), nn.Flatten(), nn.Linear(16, 3))
    before, after = sgd_step_lowers_loss(model, torch.randn(8, 2, 4, 4), torch.randn(8, 3), lr=0.1)
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
    x = torch.randn(2, 3, 4, 4, requires_grad=True)       # small: gradgradcheck perturbs every element
    check_layer(m, TorchSeparable(3, 5, stride), (x,), shared_work=batch_norm_biases(m),
                compile=stride == 2)                          # compile (seconds a call): once


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
    assert layers.DepthwiseSeparableConv2d is DepthwiseSeparableConv2d


# ------------------------------------------------------------ a small CNN under compile, export, trace
def _cnn():
    return nn.Sequential(layers.Conv2d(2, 4, 3, padding=1), layers.BatchNorm2d(4), layers.ReLU(),
                         ResidualBlock(4), DepthwiseSeparableConv2d(4, 6, stride=2))


def _torch_cnn():
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         TorchResidualBlock(4, 4), TorchSeparable(4, 6, 2))


def _run(model, x):
    model.zero_grad()
    y = model(x)
    y.pow(2).sum().backward()
    return y.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_compile_fullgraph_matches_eager(train):
    torch._dynamo.reset()
    eager = _cnn().train(train)
    compiled_model = copy.deepcopy(eager)
    x = torch.randn(2, 2, 6, 6)
    y, grads = _run(eager, x)
    y_c, grads_c = _run(torch.compile(compiled_model, fullgraph=True, backend="aot_eager"), x)
    torch.testing.assert_close(y_c, y)
    torch.testing.assert_close(grads_c, grads)
    for (name, a), b in zip(eager.named_buffers(), compiled_model.buffers()):
        torch.testing.assert_close(b, a, msg=name)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_export_matches_eager(train):
    model = _cnn().train(train)
    x = torch.randn(2, 2, 6, 6)
    program = torch.export.export(copy.deepcopy(model), (x,))
    torch.testing.assert_close(program.module()(x), model(x))


def test_jit_trace_matches_eager():
    model = _cnn().eval()
    x = torch.randn(2, 2, 6, 6)
    traced = torch.jit.trace(model, (x,), check_trace=False)
    torch.testing.assert_close(traced(x), model(x))
    torch.testing.assert_close(traced(x + 1), model(x + 1))


def test_torch_cnn_equivalent():
    ours, ref = _cnn(), _torch_cnn()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 2, 6, 6)
    torch.testing.assert_close(ours(x), ref(x))


def test_per_sample_gradients_with_vmap():
    model = nn.Sequential(layers.Conv2d(1, 2, 3), layers.LayerNorm([2, 3, 3]), nn.Flatten(), nn.Linear(18, 1))
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, t = torch.randn(4, 1, 5, 5), torch.randn(4, 1)

    def loss(p, xi, ti):
        return (torch.func.functional_call(model, p, (xi[None],)) - ti).pow(2).sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, t)
    for i in range(4):
        g = torch.func.grad(loss)(params, x[i], t[i])
        for k in params:
            torch.testing.assert_close(per_sample[k][i], g[k])
