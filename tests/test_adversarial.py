"""The adversarial-example helpers of ``layers.robustness``: FGSM, PGD and accuracy under attack."""

import pytest
import torch
from torch import nn

from layers.activations import ReLU
from layers.linear import Linear
from layers.robustness import accuracy_under_attack, fgsm, input_gradient, pgd


def _digits_model():
    torch.manual_seed(0)                                       # the test's own fixed model
    return nn.Sequential(Linear(16, 12), ReLU(), Linear(12, 3))


def test_input_gradient_matches_autograd_and_leaves_model_alone():
    model, x, y = _digits_model(), torch.rand(5, 16), torch.tensor([0, 1, 2, 1, 0])
    x_ref = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(x_ref), y, reduction="sum").backward()
    torch.testing.assert_close(input_gradient(model, x, y), x_ref.grad)
    model.zero_grad(set_to_none=True)
    input_gradient(model, x, y)
    assert all(p.grad is None for p in model.parameters())


def test_fgsm_and_pgd_stay_in_budget_and_raise_the_loss():
    model, x, y = _digits_model(), torch.rand(32, 16), torch.randint(0, 3, (32,))
    loss = lambda inp: nn.functional.cross_entropy(model(inp), y).item()   # noqa: E731
    for x_adv in (fgsm(model, x, y, 0.1), pgd(model, x, y, 0.1, steps=5)):
        assert (x_adv - x).abs().max() <= 0.1 + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert loss(x_adv) > loss(x) + 0.01
    assert loss(pgd(model, x, y, 0.1, steps=5)) >= loss(fgsm(model, x, y, 0.1)) - 1e-6


def test_accuracy_under_attack_falls_with_epsilon():
    model, x = _digits_model(), torch.rand(64, 16)
    with torch.no_grad():
        y = model(x).argmax(-1)                                # labels the model gets right
    accs = accuracy_under_attack(model, x, y, [0.0, 0.05, 0.3])
    assert accs[0] == 1.0 and accs[2] < accs[0]
    assert model.training                                      # mode restored


def test_attack_bad_inputs():
    model = _digits_model()
    with pytest.raises(ValueError, match="fgsm: expected one label per row of x"):
        fgsm(model, torch.rand(3, 16), torch.tensor([0, 1]), 0.1)
    with pytest.raises(ValueError, match="pgd: expected eps >= 0"):
        pgd(model, torch.rand(2, 16), torch.tensor([0, 1]), -0.1)
    with pytest.raises(TypeError, match="fgsm: expected y to be"):
        fgsm(model, torch.rand(2, 16), [0, 1], 0.1)
    with pytest.raises(ValueError, match="accuracy_under_attack: expected attack"):
        accuracy_under_attack(model, torch.rand(2, 16), torch.tensor([0, 1]), [0.1], attack="cw")
