"""Tests for layers.losses: MSE, cross-entropy, binary and softmax focal loss."""

import pytest
import torch
import torch.nn.functional as F

from layers.linear import Linear
from layers.losses import (
    CrossEntropyLoss, FocalLoss, MSELoss, SoftmaxFocalLoss,
    cross_entropy, focal_loss, mse_loss, softmax_focal_loss,
)
from layers.testing import check_layer


# ------------------------------------------------------------------ references
def torchvision_sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss, written out with torch ops (torchvision is not installed)."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    return loss


def reference_softmax_focal(logits, target, alpha=None, gamma=2.0, reduction="mean"):
    logp_y = torch.log_softmax(logits, dim=-1).gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -(1 - logp_y.exp()) ** gamma * logp_y
    if alpha is not None:
        loss = alpha[target] * loss
    return {"mean": loss.mean(), "sum": loss.sum(), "none": loss}[reduction]


DTYPES = [torch.float64, torch.float32]


def leaf(*shape, dtype=torch.float64, scale=1.0):
    return (torch.randn(*shape, dtype=dtype) * scale).requires_grad_(True)


# ------------------------------------------------------------------------- MSE
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(3, 2), (4,), (2, 3, 1)])
def test_mse_check_layer(dtype, reduction, shape):
    x, t = leaf(*shape, dtype=dtype), leaf(*shape, dtype=dtype)
    check_layer(MSELoss(reduction), torch.nn.MSELoss(reduction=reduction), (x, t),
                gradcheck=dtype == torch.float64, gradgradcheck=dtype == torch.float64)


def test_mse_target_without_grad():
    x, t = leaf(3, 2), torch.randn(3, 2, dtype=torch.float64)
    check_layer(lambda a, b: mse_loss(a, b), F.mse_loss, (x, t))


# ---------------------------------------------------------------- cross-entropy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("with_ignored", [False, True])
def test_cross_entropy_check_layer(dtype, reduction, label_smoothing, with_ignored):
    x = leaf(4, 3, dtype=dtype)
    y = torch.tensor([0, 2, 1, 2])
    if with_ignored:
        y[2] = -100
    check_layer(CrossEntropyLoss(reduction, label_smoothing), torch.nn.CrossEntropyLoss(
        reduction=reduction, label_smoothing=label_smoothing), (x, y), gradcheck=dtype == torch.float64, gradgradcheck=dtype == torch.float64)


@pytest.mark.parametrize("logit_shape,target_shape", [((2, 3, 4), (2, 4)), ((2, 3, 2, 2), (2, 2, 2)), ((5,), ())])
def test_cross_entropy_other_shapes(logit_shape, target_shape):
    x = leaf(*logit_shape)
    C = logit_shape[0] if len(logit_shape) == 1 else logit_shape[1]
    y = torch.randint(0, C, target_shape)
    check_layer(cross_entropy, F.cross_entropy, (x, y), empty_batch=len(logit_shape) > 1)


def test_cross_entropy_custom_ignore_index():
    x, y = leaf(4, 3), torch.tensor([0, 7, 2, 1])
    check_layer(lambda a, b: cross_entropy(a, b, ignore_index=7),
                lambda a, b: F.cross_entropy(a, b, ignore_index=7), (x, y))


def test_cross_entropy_large_logits_stay_finite():
    x = torch.tensor([[1000.0, 0.0, -1000.0], [-1000.0, 1000.0, 0.0]], requires_grad=True)
    y = torch.tensor([2, 1])
    loss = cross_entropy(x, y)
    loss.backward()
    ref_x = x.detach().clone().requires_grad_(True)
    ref = F.cross_entropy(ref_x, y)
    ref.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(x.grad, ref_x.grad)


# ------------------------------------------------------------------- focal loss
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("alpha", [0.25, -1.0])
@pytest.mark.parametrize("reduction", ["mean", "none"])           # "sum": test_focal_soft_targets
def test_focal_matches_torchvision_formula(dtype, gamma, alpha, reduction):
    x = leaf(4, 2, dtype=dtype, scale=2.0)
    t = (torch.rand(4, 2) > 0.6).to(dtype)
    check_layer(FocalLoss(alpha, gamma, reduction),
                lambda a, b: torchvision_sigmoid_focal_loss(a, b, alpha, gamma, reduction), (x, t),
                gradcheck=dtype == torch.float64, gradgradcheck=dtype == torch.float64)


def test_focal_soft_targets():
    x, t = leaf(4, 3), torch.rand(4, 3, dtype=torch.float64)
    check_layer(lambda a, b: focal_loss(a, b, 0.5, 1.5, "sum"),
                lambda a, b: torchvision_sigmoid_focal_loss(a, b, 0.5, 1.5, "sum"), (x, t))


def test_focal_gamma_zero_is_bce():
    x, t = torch.randn(10), (torch.rand(10) > 0.5).float()
    torch.testing.assert_close(focal_loss(x, t, alpha=-1, gamma=0.0), F.binary_cross_entropy_with_logits(x, t))


@pytest.mark.parametrize("gamma", [0.3, 0.5, 2.0])
def test_focal_large_logits_no_nan(gamma):
    x = torch.tensor([-200.0, -50.0, -20.0, 0.0, 20.0, 50.0, 200.0], requires_grad=True)
    for t in (torch.zeros(7), torch.ones(7)):
        x.grad = None
        loss = focal_loss(x, t, gamma=gamma, reduction="sum")
        loss.backward()
        assert torch.isfinite(loss), loss
        assert torch.isfinite(x.grad).all(), x.grad
    # the confidently right end has zero gradient, the confidently wrong end a finite, non-zero one
    assert x.grad[-1].abs() < 1e-12 and x.grad[0].abs() > 0.1


def test_focal_gradient_agrees_with_float64_autograd_at_gamma_below_one():
    x = torch.linspace(-30, 30, 61, dtype=torch.float64, requires_grad=True)
    t = (torch.arange(61) % 2).double()
    (g,) = torch.autograd.grad(focal_loss(x, t, gamma=0.5, reduction="sum"), x)
    xr = x.detach().clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(torchvision_sigmoid_focal_loss(xr, t, gamma=0.5, reduction="sum"), xr)
    torch.testing.assert_close(g, gr)


# ---------------------------------------------------------- softmax focal loss
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("with_alpha", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_softmax_focal_check_layer(dtype, gamma, with_alpha, reduction):
    x, y = leaf(3, 3, dtype=dtype), torch.tensor([0, 2, 1])
    alpha = torch.tensor([0.2, 0.3, 0.5], dtype=dtype) if with_alpha else None
    check_layer(SoftmaxFocalLoss(alpha, gamma, reduction),
                lambda a, b: reference_softmax_focal(a, b, alpha, gamma, reduction), (x, y),
                gradcheck=dtype == torch.float64, gradgradcheck=dtype == torch.float64)


def test_softmax_focal_gamma_zero_is_cross_entropy():
    x, y = torch.randn(6, 5), torch.randint(0, 5, (6,))
    torch.testing.assert_close(softmax_focal_loss(x, y, gamma=0.0), F.cross_entropy(x, y))


@pytest.mark.parametrize("gamma", [0.3, 2.0])
def test_softmax_focal_large_logits_no_nan(gamma):
    x = torch.tensor([[500.0, 0.0, -500.0], [-500.0, 0.0, 500.0], [30.0, 0.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0, 0])
    loss = softmax_focal_loss(x, y, gamma=gamma, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert x.grad[1].abs().sum() > 0.1 and x.grad[0].abs().sum() < 1e-12


# ------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call,error,match", [
    (lambda: cross_entropy(torch.randn(3, 4), torch.tensor([0, 4, 1])), ValueError, r"in \[0, 3\].*got 4"),
    (lambda: cross_entropy(torch.randn(3, 4), torch.tensor([0, -1, 1])), ValueError, r"got -1"),
    (lambda: cross_entropy(torch.randn(3, 4), torch.tensor([0, 1])), ValueError, r"target of shape \(3,\)"),
    (lambda: cross_entropy(torch.randn(3, 4), torch.tensor([0.0, 1.0, 2.0])), TypeError, r"integer tensor"),
    (lambda: cross_entropy(torch.ones(3, 4, dtype=torch.long), torch.tensor([0, 1, 2])), TypeError, "floating-point"),
    (lambda: cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 2]), reduction="avg"), ValueError, "reduction"),
    (lambda: cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 2]), label_smoothing=1.5), ValueError, "label_smoothing"),
    (lambda: mse_loss(torch.randn(3), torch.randn(4)), ValueError, r"target of shape \(3,\)"),
    (lambda: mse_loss(torch.randn(3), torch.randn(3, dtype=torch.float64)), TypeError, "dtype"),
    (lambda: focal_loss(torch.randn(3), torch.ones(2)), ValueError, r"targets of shape \(3,\)"),
    (lambda: focal_loss(torch.randn(3), torch.ones(3), gamma=-1.0), ValueError, "gamma >= 0"),
    (lambda: focal_loss(torch.randn(3), torch.ones(3, dtype=torch.long)), TypeError, "floating-point"),
    (lambda: softmax_focal_loss(torch.randn(3, 2), torch.tensor([0, 2, 1])), ValueError, r"in \[0, 1\].*got 2"),
    (lambda: softmax_focal_loss(torch.randn(3, 2), torch.tensor([0, 1, 1]), alpha=[1.0]), ValueError, "per class"),
    (lambda: MSELoss("avg"), ValueError, "reduction"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------- it trains
@pytest.mark.parametrize("loss_fn,make_target", [
    (CrossEntropyLoss(), lambda n: torch.randint(0, 3, (n,))),
    (SoftmaxFocalLoss(gamma=2.0), lambda n: torch.randint(0, 3, (n,))),
    (FocalLoss(), lambda n: (torch.rand(n, 3) > 0.5).float()),
    (MSELoss(), lambda n: torch.randn(n, 3)),
])
def test_one_sgd_step_lowers_loss(loss_fn, make_target):
    model = Linear(4, 3)
    x, y = torch.randn(32, 4), make_target(32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = loss_fn(model(x), y)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss_fn(model(x), y)
    assert after.item() < before.item()
