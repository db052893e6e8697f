"""layers.teaching.check_layer_exercise: the feedback a reader gets on an exercise Function."""

import torch

from layers.teaching import check_layer_exercise


class _Stub(torch.autograd.Function):
    @staticmethod
    def forward(x):
        raise NotImplementedError

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        raise NotImplementedError


class _Tanh(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x.tanh()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class _WrongTanh(_Tanh):
    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y)                       # wrong derivative


class _StubBackward(_Tanh):
    @staticmethod
    def backward(ctx, g):
        raise NotImplementedError


def _x():
    return torch.randn(4, 3, dtype=torch.float64, requires_grad=True)


def test_an_unfilled_stub_is_not_done_yet(capsys):
    for fn in (_Stub.apply, _StubBackward.apply):
        assert check_layer_exercise(fn, torch.tanh, (_x(),), what="MyTanh") is False
        assert capsys.readouterr().out.startswith("Not done yet: MyTanh still raises NotImplementedError")


def test_a_right_function_passes_and_a_wrong_one_names_the_failing_checks(capsys):
    assert check_layer_exercise(_Tanh.apply, torch.tanh, (_x(),), what="MyTanh") is True
    assert capsys.readouterr().out.startswith("Correct: MyTanh passes")
    assert check_layer_exercise(_WrongTanh.apply, torch.tanh, (_x(),), what="MyTanh") is False
    out = capsys.readouterr().out
    assert out.startswith("Not yet: MyTanh fails") and "reference (grad input 0 differs" in out and "gradcheck" in out


def test_composable_checks_are_off_unless_asked(capsys):
    # _Tanh has no vmap rule and no jvp: it passes as an exercise, not with composable=True
    assert check_layer_exercise(_Tanh.apply, torch.tanh, (_x(),)) is True
    capsys.readouterr()
    assert check_layer_exercise(_Tanh.apply, torch.tanh, (_x(),), composable=True) is False
    out = capsys.readouterr().out
    assert "vmap" in out and "forward_ad" in out
