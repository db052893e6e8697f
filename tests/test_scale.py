import copy

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


def test_keyword_input_and_factory_kwargs():
    s = layers.Scale(2.0, dtype=torch.float64, device="meta")
    assert s.weight.dtype == torch.float64 and s.weight.device.type == "meta"
    torch.testing.assert_close(layers.Scale(2.0)(input=torch.ones(2)), torch.full((2,), 2.0))


def test_torch_func_transforms_match_autograd():
    """vmap, jvp, jacrev, jacfwd and hessian of ScaleFunction equal those of x * s."""
    from torch.func import hessian, jacfwd, jacrev, jvp, vmap
    ours, ref = layers.ScaleFunction.apply, lambda x, s: x * s
    args = (torch.randn(3, 4, dtype=torch.float64), torch.tensor([1.5], dtype=torch.float64))
    tangents = tuple(torch.randn_like(a) for a in args)
    torch.testing.assert_close(jvp(ours, args, tangents), jvp(ref, args, tangents))
    torch.testing.assert_close(vmap(ours, in_dims=(1, None))(*args), args[0].T * args[1])
    for transform in (jacrev, jacfwd):
        torch.testing.assert_close(transform(ours, (0, 1))(*args), jacrev(ref, (0, 1))(*args))
    cube = lambda f: (lambda *a: f(*a).pow(3).sum())          # noqa: E731
    torch.testing.assert_close(hessian(cube(ours), (0, 1))(*args), hessian(cube(ref), (0, 1))(*args))


def test_autocast_computes_in_float32_like_a_torch_multiply():
    ours, ref = layers.Scale(1.5), TorchScale()
    x = torch.randn(4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = ours(x), ref(x)
    assert got.dtype == want.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_no_less_accurate_than_torch(dtype):
    ours, ref = layers.Scale(1.7), TorchScale()
    with torch.no_grad():
        ref.weight.fill_(1.7)
    x, g = torch.randn(256).to(dtype), torch.randn(256).to(dtype)

    def run(module, x):
        x = x.clone().requires_grad_(True)
        out = module(x)
        return (out, *torch.autograd.grad(out, (x, module.weight), g.to(x.dtype)))

    truth = run(copy.deepcopy(ref).double(), x.double())
    errors = {label: [(r.double() - t).abs().max().item() for r, t in zip(run(m.to(dtype), x), truth)]
              for label, m in (("ours", ours), ("torch", ref))}
    for what, a, b in zip(("output", "input gradient", "scale gradient"), errors["ours"], errors["torch"]):
        assert a <= 1.5 * b + 1e-12, f"{what}: ours {a:.3g}, torch {b:.3g}"
