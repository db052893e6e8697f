import pytest
import torch
from torch import nn

import layers
from layers.testing import check_layer
from helpers import sgd_step_lowers_loss


class TorchScale(nn.Module):
    """The reference: the same computation with autograd's own multiply."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.weight


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (6,)])
def test_check_layer(shape):
    x = torch.randn(*shape, requires_grad=True)
    check_layer(layers.Scale(1.7), TorchScale(), (x,))


def test_zero_dim_input_keeps_shape():
    assert layers.Scale(2.0)(torch.tensor(3.0)).shape == ()


def test_init_and_repr():
    s = layers.Scale(0.5)
    assert s.weight.item() == 0.5 and s.weight.shape == (1,)
    assert repr(s) == "Scale(init=0.5)"


def test_bad_input():
    with pytest.raises(TypeError, match="floating-point tensor, got torch.int32"):
        layers.Scale()(torch.ones(3, dtype=torch.int32))
    with pytest.raises(TypeError, match="torch.Tensor, got float"):
        layers.Scale()(3.0)


def test_sgd_step_lowers_loss():
    model = layers.Scale(0.1)
    x = torch.randn(64, 3)
    before, after = sgd_step_lowers_loss(model, x, 2.0 * x, lr=0.1)
    assert after < before
