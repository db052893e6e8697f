"""Tests of the test harness itself: it must catch each kind of broken layer."""

import pytest
import torch
from torch import nn

import layers
from layers.linear import LinearFunction
from layers.teaching import check_exercise
from layers.testing import (CheckSetup, LayerCheckError, check_compile, check_forward_ad, check_layer,
                            check_low_precision, check_vmap, numerical_gradient, relative_error)

# the transform checks, which the toy layers below (built on LinearFunction) need not pass
NO_TRANSFORMS = dict(vmap=False, forward_ad=False, compile=False, low_precision=False)


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
        check_layer(_linear_with_backward(backward), nn.Linear(4, 3), (x,), **NO_TRANSFORMS)
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
    report = check_layer(layers.Linear(4, 2), nn.Linear(4, 2), (x,), raise_on_failure=False)
    names = [r.name for r in report.results]
    assert names == ["inputs unmodified", "reference", "gradcheck", "gradgradcheck",
                     "non-contiguous", "empty batch", "needs_input_grad", "vmap", "forward_ad", "compile",
                     "low_precision", "cuda"]
    text = str(report)
    assert text.startswith("check_layer(Linear): ") and "max abs" in text
    passed = check_layer(torch.tanh, torch.tanh, (x,))
    assert str(passed).startswith("check_layer(tanh): passed")
    assert [r.name for r in check_layer(torch.tanh, torch.tanh, (x,), **NO_TRANSFORMS).results] == [
        "inputs unmodified", "reference", "gradcheck", "gradgradcheck", "non-contiguous", "empty batch",
        "needs_input_grad", "cuda"]


def test_integer_inputs_pass_through():
    logits = torch.randn(5, 3, requires_grad=True)
    target = torch.tensor([0, 2, 1, 1, 0])
    check_layer(nn.functional.cross_entropy, nn.functional.cross_entropy, (logits, target),
                empty_batch=False, low_precision=False)


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


# ------------------------------------------------ transform checks, on toy layers y = 3x
class _Triple(torch.autograd.Function):
    """y = 3x, without a vmap rule or a jvp."""

    @staticmethod
    def forward(x):
        return x * 3

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g * 3


class _TripleVmap(_Triple):
    generate_vmap_rule = True


class _TripleJvp(_TripleVmap):
    @staticmethod
    def jvp(ctx, dx):
        return dx * 3


class _WrongJvp(_TripleVmap):
    @staticmethod
    def jvp(ctx, dx):
        return dx * 2


def _triple(x):
    return x * 3


def _x():
    return torch.randn(4, 3, requires_grad=True)


def test_vmap_check_fails_without_a_vmap_rule():
    failed = check_vmap(CheckSetup(_Triple.apply, _triple, (_x(),)))
    assert not failed.passed and "vmap" in failed.detail
    assert check_vmap(CheckSetup(_TripleVmap.apply, _triple, (_x(),))).status == "ok"


def test_vmap_check_catches_a_wrong_batched_result():
    class Leaky(_Triple):                                      # its vmap rule mixes the samples
        @staticmethod
        def vmap(info, in_dims, x):
            return x * 3 + x.mean(in_dims[0], keepdim=True), in_dims[0]

    result = check_vmap(CheckSetup(Leaky.apply, _triple, (_x(),)))
    assert not result.passed and "output 0 differs" in result.detail


def test_vmap_check_is_skipped_where_torch_fails_too():
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    result = check_vmap(CheckSetup(nn.BatchNorm2d(3), nn.BatchNorm2d(3), (x,)))
    assert result.status == "skipped" and "reference fails under vmap too" in result.detail


def test_forward_ad_check_needs_a_right_jvp():
    assert not check_forward_ad(CheckSetup(_TripleVmap.apply, _triple, (_x(),))).passed   # no jvp
    wrong = check_forward_ad(CheckSetup(_WrongJvp.apply, _triple, (_x(),)))
    assert not wrong.passed and "by jvp" in wrong.detail
    assert check_forward_ad(CheckSetup(_TripleJvp.apply, _triple, (_x(),))).status == "ok"


def test_compile_check_catches_a_graph_break():
    def reads_a_value(x):
        return x * 3 if x.sum().item() > -1e9 else x            # .item(): a graph break

    assert not check_compile(CheckSetup(reads_a_value, _triple, (_x(),))).passed
    assert check_compile(CheckSetup(_TripleVmap.apply, _triple, (_x(),))).status == "ok"
    # torch 2.13's Dynamo cannot trace a Function that defines jvp: "Unsupported custom jvp"
    assert "custom jvp" in check_compile(CheckSetup(_TripleJvp.apply, _triple, (_x(),))).detail


def test_low_precision_check_catches_lost_precision():
    def through_bfloat16(x):                                   # rounds to bfloat16 whatever the dtype
        return x.to(torch.bfloat16).to(x.dtype) * 3

    result = check_low_precision(CheckSetup(through_bfloat16, _triple, (_x(),)))
    assert not result.passed and "float16" in result.detail
    good = check_low_precision(CheckSetup(_TripleJvp.apply, _triple, (_x(),)))
    assert good.status == "ok" and "autocast bfloat16" in good.detail


def test_low_precision_check_compares_the_autocast_dtype():
    w = torch.randn(2, 3, requires_grad=True)

    def float32_out(x, w):                                     # autocast gives torch's linear bfloat16
        return (x @ w.T).float()

    result = check_low_precision(CheckSetup(float32_out, nn.functional.linear, (_x(), w)))
    assert not result.passed and "output dtypes" in result.detail
    assert check_low_precision(CheckSetup(lambda x, w: x @ w.T, nn.functional.linear, (_x(), w))).passed


def test_each_transform_check_has_a_switch():
    report = check_layer(_Triple.apply, _triple, (_x(),), raise_on_failure=False)
    assert {r.name for r in report.failed} == {"vmap", "forward_ad"}
    assert check_layer(_Triple.apply, _triple, (_x(),), vmap=False, forward_ad=False).passed
    assert check_layer(_TripleJvp.apply, _triple, (_x(),), compile=False).passed
