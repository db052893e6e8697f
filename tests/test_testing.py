"""Tests of the test harness itself: it must catch each kind of broken layer."""

import pytest
import torch
from torch import nn

import layers
from layers.linear import LinearFunction
from layers.testing import (LayerCheckError, check_exercise, check_layer, numerical_gradient,
                            relative_error)


def _linear_with_backward(backward):
    """A Linear module whose Function uses the given (broken) backward."""

    class BrokenFunction(LinearFunction):
        pass

    BrokenFunction.backward = staticmethod(backward)

    class BrokenLinear(layers.Linear):
        def forward(self, x):
            return BrokenFunction.apply(x, self.weight, self.bias)

    return BrokenLinear(4, 3)


def _missing_transpose(ctx, g):          # dW = g^T x written as x^T g... (wrong shape)
    x, w = ctx.saved_tensors
    return g @ w, (x.T @ g).T * 1.0 + 0.1, g.sum(0)


def _forgotten_bias_sum(ctx, g):
    x, w = ctx.saved_tensors
    return g @ w, g.T @ x, g[0]          # bias gradient from the first row only


def _wrong_scale(ctx, g):
    x, w = ctx.saved_tensors
    return 2 * (g @ w), g.T @ x, g.sum(0)


@pytest.mark.parametrize("backward, bad", [
    (_missing_transpose, "grad weight"),
    (_forgotten_bias_sum, "grad bias"),
    (_wrong_scale, "grad input 0"),
])
def test_wrong_backward_fails(backward, bad):
    x = torch.randn(5, 4, requires_grad=True)
    with pytest.raises(LayerCheckError) as info:
        check_layer(_linear_with_backward(backward), nn.Linear(4, 3), (x,))
    report = info.value.report
    assert not report["reference"].passed
    assert bad in report["reference"].detail
    assert not report["gradcheck"].passed
    assert "FAILED" in str(info.value) and "reference" in str(info.value)


def test_report_without_raising():
    x = torch.randn(5, 4, requires_grad=True)
    report = check_layer(_linear_with_backward(_wrong_scale), nn.Linear(4, 3), (x,), raise_on_failure=False)
    assert not report.passed
    assert {r.name for r in report.failed} >= {"reference", "gradcheck"}
    assert report["reference"].max_abs > 1e-3


def test_wrong_forward_fails():
    x = torch.randn(5, 4, requires_grad=True)
    report = check_layer(layers.Sigmoid(), nn.Tanh(), (x,), raise_on_failure=False)
    assert not report["reference"].passed and "output 0" in report["reference"].detail


def _eager_backward(ctx, g):                # right values, but ignores needs_input_grad
    x, w = ctx.saved_tensors
    return g @ w, g.T @ x, g.sum(0)          # always computes all three


def test_ignoring_needs_input_grad_is_caught():
    x = torch.randn(5, 4, requires_grad=True)
    report = check_layer(_linear_with_backward(_eager_backward), nn.Linear(4, 3), (x,), raise_on_failure=False)
    assert not report["needs_input_grad"].passed
    assert "still computed" in report["needs_input_grad"].detail
    assert report["reference"].passed


def test_in_place_write_is_caught():
    class Sneaky(nn.Module):
        def forward(self, x):
            x.data.add_(1.0)                       # a hidden write, invisible to autograd
            return x * 2

    x = torch.randn(3, requires_grad=True)
    report = check_layer(Sneaky(), lambda x: x * 2, (x,), raise_on_failure=False)
    assert not report["inputs unmodified"].passed


def test_contiguity_bug_is_caught():
    class ViewFunction(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return x * 3

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.shape = inputs[0].shape

        @staticmethod
        def backward(ctx, g):
            return g.view(-1).view(ctx.shape) * 3   # .view fails on non-contiguous g

    x = torch.randn(4, 5, requires_grad=True)
    report = check_layer(ViewFunction.apply, lambda x: x * 3, (x,), raise_on_failure=False)
    assert not report["non-contiguous"].passed and "RuntimeError" in report["non-contiguous"].detail
    assert report["reference"].passed


def test_empty_batch_crash_is_caught():
    def mean_then_divide(x):
        return x / x.shape[0] if x.shape[0] else x.sum(0).reshape(1, -1).expand(1, 3)[0:0].reshape(1, 0)

    x = torch.randn(4, 3, requires_grad=True)
    report = check_layer(mean_then_divide, lambda x: x / x.shape[0], (x,), raise_on_failure=False,
                         gradcheck=False, gradgradcheck=False)
    assert not report["empty batch"].passed


def test_tolerances_are_per_dtype():
    x32 = torch.randn(6, 4, requires_grad=True)
    noisy = lambda x: x * (1 + 1e-6)               # noqa: E731  relative error 1e-6
    assert check_layer(noisy, lambda x: x, (x32,), gradcheck=False, gradgradcheck=False).passed
    x64 = x32.detach().double().requires_grad_(True)
    report = check_layer(noisy, lambda x: x, (x64,), gradcheck=False, gradgradcheck=False,
                         raise_on_failure=False)
    assert not report["reference"].passed


def test_report_lists_every_check():
    x = torch.randn(3, 4, requires_grad=True)
    report = check_layer(layers.Linear(4, 2), nn.Linear(4, 2), (x,))
    names = [r.name for r in report.results]
    assert names == ["inputs unmodified", "reference", "gradcheck", "gradgradcheck",
                     "non-contiguous", "empty batch", "needs_input_grad", "cuda"]
    text = str(report)
    assert text.startswith("check_layer(Linear): passed") and "max abs" in text


def test_integer_inputs_pass_through():
    logits = torch.randn(5, 3, requires_grad=True)
    target = torch.tensor([0, 2, 1, 1, 0])
    check_layer(nn.functional.cross_entropy, nn.functional.cross_entropy, (logits, target),
                empty_batch=False)


def test_numerical_gradient_matches_autograd():
    x = torch.randn(3, 4, dtype=torch.float64)
    w = torch.randn(2, 4, dtype=torch.float64)
    g = torch.randn(3, 2, dtype=torch.float64)
    num = numerical_gradient(lambda t: torch.tanh(t @ w.T), x, g)
    xr = x.clone().requires_grad_(True)
    (ana,) = torch.autograd.grad(torch.tanh(xr @ w.T), xr, g)
    assert relative_error(num, ana) < 1e-7
    assert num.shape == x.shape


def test_numerical_gradient_leaves_input_alone_and_catches_bugs():
    x = torch.randn(5, dtype=torch.float64)
    x0 = x.clone()
    num = numerical_gradient(torch.sin, x)
    assert torch.equal(x, x0)
    assert relative_error(num, torch.cos(x)) < 1e-7
    assert relative_error(num, -torch.cos(x)) > 0.5   # a sign error is obvious


def test_relative_error_edge_cases():
    assert relative_error(torch.zeros(3), torch.zeros(3)) == 0.0
    assert relative_error(torch.empty(0), torch.empty(0)) == 0.0
    assert relative_error(torch.tensor([1.0]), torch.tensor([-1.0])) == 1.0


def test_check_exercise(capsys):
    assert not check_exercise(None, 1.0)
    assert "Not yet: no answer given" in capsys.readouterr().out
    assert not check_exercise(torch.ones(2), torch.ones(3))
    assert "shape" in capsys.readouterr().out
    assert not check_exercise(1.5, 1.0, what="slope")
    assert "slope differs" in capsys.readouterr().out
    assert check_exercise(torch.tensor([1.0, 2.0]), [1.0, 2.0])
    assert "Correct" in capsys.readouterr().out


def test_shared_work_relaxes_only_the_named_gradient():
    x = torch.randn(5, 4, requires_grad=True)
    report = check_layer(_linear_with_backward(_eager_backward), nn.Linear(4, 3), (x,), shared_work=("bias",),
                         raise_on_failure=False)
    assert not report["needs_input_grad"].passed
    assert "'input 0'" in report["needs_input_grad"].detail      # the unnamed leaves are still checked
