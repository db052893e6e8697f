import pytest
import torch
from torch import nn

from helpers import batch_norm_biases, sgd_step_lowers_loss
from layers.blocks import ResidualBlock
from layers.testing import check_layer


pytestmark = pytest.mark.usefixtures("one_thread")   # see conftest.py


class TorchResidualBlock(nn.Module):
    """The same block from torch.nn layers, with the same parameter names."""

    def __init__(self, cin, cout, stride=1, shortcut=True):
        super().__init__()
        self.shortcut = shortcut
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.projection = None
        if shortcut and (stride != 1 or cin != cout):
            self.projection = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        if self.shortcut:
            out = out + (x if self.projection is None else self.projection(x))
        return torch.relu(out)


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
    check_layer(ours, ref, (x,), gradgradcheck=False, needs_input_grad=train,
                shared_work=batch_norm_biases(ours))


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
