"""Validation sweep over every public layer, and the adversarial-example helpers.

Every layer in the registry below gets the same bad inputs. The contract
(``layers._validation``): a clear ``ValueError``/``TypeError`` whose message
starts with the layer's name, or a documented result, which for every layer
here is "the same as the PyTorch built-in" (NaN and Inf propagate exactly as
they do in torch, an empty batch gives an empty output, a parameter-free layer
on the meta device returns a meta tensor). Never a crash deep inside torch
(``RuntimeError``, ``IndexError``, ...), never a NaN where torch has none.

Layers whose module is missing or does not import are left out with a note.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from layers.robustness import accuracy_under_attack, fgsm, input_gradient, pgd


@dataclass
class Entry:
    name: str                    # also the expected message prefix
    layer: Callable              # callable taking *inputs
    reference: Callable | None   # torch built-in with the same parameters, or None
    inputs: Callable[[], list]   # good inputs; the first one is the one corrupted
    bad_shape: Callable[[], list] | None = None
    has_params: bool = False
    also_named: tuple[str, ...] = ()   # other accepted message prefixes (the sub-layer that checks)
    documented: dict[str, str] | None = None  # case -> "+inf" or "finite": our documented result
                                              # where torch's differs (NaN)

    def prefixes(self) -> tuple[str, ...]:
        return (self.name, *self.also_named)

    def pattern(self) -> str:
        return "^(" + "|".join(self.prefixes()) + "): expected"


def _pair(ours: nn.Module, ref: nn.Module):
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _registry() -> list[Entry]:
    entries: list[Entry] = []

    def add(module: str, build: Callable[[], list[Entry]]):
        try:
            importlib.import_module(module)
            entries.extend(build())
        except Exception as exc:                               # missing or broken module: leave it out
            print(f"note: {module} left out of the sweep ({type(exc).__name__}: {exc})")

    def foundation():
        from layers.activations import GELU, PReLU, ReLU, Sigmoid, Tanh, gelu, relu, sigmoid, tanh
        from layers.linear import Linear, linear
        from layers.scale import Scale
        x = lambda: [torch.randn(2, 3, 4)]                     # noqa: E731
        # torch's vectorized CPU kernel gives NaN for gelu(+inf); ours gives the limit, +inf.
        gelu_inf = {"inf": "+inf"}
        out = [Entry(n, m(), r(), x, documented=k) for n, m, r, k in [
            ("ReLU", ReLU, nn.ReLU, None), ("Sigmoid", Sigmoid, nn.Sigmoid, None),
            ("Tanh", Tanh, nn.Tanh, None), ("GELU", GELU, nn.GELU, gelu_inf)]]
        out += [Entry(f.__name__, f, r, x, documented=k) for f, r, k in [
            (relu, torch.relu, None), (sigmoid, torch.sigmoid, None), (tanh, torch.tanh, None),
            (gelu, nn.functional.gelu, gelu_inf)]]
        lin, ref = _pair(Linear(4, 3), nn.Linear(4, 3))
        out.append(Entry("Linear", lin, ref, lambda: [torch.randn(2, 4)], lambda: [torch.randn(2, 5)], True))
        w, b = torch.randn(3, 4), torch.randn(3)
        out.append(Entry("linear", lambda x: linear(x, w, b), lambda x: nn.functional.linear(x, w, b),
                         lambda: [torch.randn(2, 4)], lambda: [torch.randn(2, 5)], True))
        pre, pref = _pair(PReLU(3), nn.PReLU(3))
        out.append(Entry("PReLU", pre, pref, lambda: [torch.randn(2, 3, 4)], lambda: [torch.randn(2, 5, 4)], True))
        sc = Scale(1.5)
        out.append(Entry("Scale", sc, lambda x: x * sc.weight.reshape(()), x, None, True))
        return out

    def conv():
        from layers.conv import Conv2d
        c, r = _pair(Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1))
        return [Entry("Conv2d", c, r, lambda: [torch.randn(2, 3, 5, 5)], lambda: [torch.randn(2, 2, 5, 5)], True,
                      also_named=("conv2d",))]                 # the module's messages say "conv2d:"

    def normalization():
        from layers.normalization import BatchNorm2d, LayerNorm
        bn, bref = _pair(BatchNorm2d(3), nn.BatchNorm2d(3))
        ln, lref = _pair(LayerNorm(4), nn.LayerNorm(4))
        return [Entry("BatchNorm2d", bn, bref, lambda: [torch.randn(2, 3, 4, 4)], lambda: [torch.randn(2, 4, 4, 4)], True),
                Entry("LayerNorm", ln, lref, lambda: [torch.randn(2, 4)], lambda: [torch.randn(2, 5)], True)]

    def blocks():
        from layers.benchmarking import _TorchResidualBlock
        from layers.blocks import ResidualBlock
        block = ResidualBlock(3)
        ours, ref = _pair(block, _TorchResidualBlock(block))
        return [Entry("ResidualBlock", ours, ref, lambda: [torch.randn(2, 3, 4, 4)],
                      lambda: [torch.randn(2, 2, 4, 4)], True, also_named=("Conv2d", "conv2d"))]

    def attention():
        from layers.attention import MultiHeadAttention, scaled_dot_product_attention
        qkv = lambda: [torch.randn(1, 2, 3, 4) for _ in range(3)]            # noqa: E731
        bad = lambda: [torch.randn(1, 2, 3, 5), torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)]  # noqa: E731
        mha = MultiHeadAttention(8, 2)
        ref = nn.MultiheadAttention(8, 2, batch_first=True)
        with torch.no_grad():
            ref.in_proj_weight.copy_(torch.cat([mha.q_proj.weight, mha.k_proj.weight, mha.v_proj.weight]))
            ref.in_proj_bias.copy_(torch.cat([mha.q_proj.bias, mha.k_proj.bias, mha.v_proj.bias]))
            ref.out_proj.load_state_dict(mha.out_proj.state_dict())
        # documented result = the formula softmax(q k^T / sqrt(E)) v: a NaN query row gives a NaN
        # output row (torch's fused CPU kernel returns zeros there instead)
        return [Entry("scaled_dot_product_attention", scaled_dot_product_attention, naive_attention, qkv, bad),
                Entry("MultiHeadAttention", lambda x: mha(x, x, x)[0], lambda x: ref(x, x, x, need_weights=False)[0],
                      lambda: [torch.randn(2, 3, 8)], lambda: [torch.randn(2, 3, 6)], True,
                      also_named=("Linear",))]                  # dtype/device are checked by its projections

    def losses():
        from layers.benchmarking import _reference_focal
        from layers.losses import cross_entropy, focal_loss, mse_loss, softmax_focal_loss
        t5 = torch.tensor([0, 4, 2])
        tf = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
        tm = torch.randn(3, 4)
        return [
            Entry("cross_entropy", lambda x: cross_entropy(x, t5[:len(x)]),
                  lambda x: nn.functional.cross_entropy(x, t5[:len(x)]), lambda: [torch.randn(3, 5)],
                  lambda: [torch.randn(4, 5)]),
            Entry("softmax_focal_loss", lambda x: softmax_focal_loss(x, t5[:len(x)], gamma=0.0),
                  lambda x: nn.functional.cross_entropy(x, t5[:len(x)]), lambda: [torch.randn(3, 5)],
                  lambda: [torch.randn(4, 5)]),
            Entry("focal_loss", lambda x: focal_loss(x, tf[:len(x)]), lambda x: _reference_focal(x, tf[:len(x)]),
                  lambda: [torch.randn(6)], lambda: [torch.randn(7)],
                  # a -inf logit with target 0 is a perfectly confident negative: loss 0, where
                  # the torchvision formula computes -inf * 0 inside its BCE and gives NaN
                  documented={"-inf": "finite"}),
            Entry("mse_loss", lambda x: mse_loss(x, tm[:len(x)]), lambda x: nn.functional.mse_loss(x, tm[:len(x)]),
                  lambda: [torch.randn(3, 4)], lambda: [torch.randn(3, 5)]),
        ]

    def quantization():
        from layers.quantization import fake_quantize
        return [Entry("fake_quantize", lambda x: fake_quantize(x, 0.1, 0, -8, 7),
                      lambda x: torch.fake_quantize_per_tensor_affine(x, 0.1, 0, -8, 7),
                      lambda: [torch.randn(2, 5)])]

    def parallel():
        from layers.parallel import ColumnParallelLinear, RowParallelLinear
        full = nn.Linear(4, 6)
        col = ColumnParallelLinear(4, 6).load_full(full)
        row = RowParallelLinear(6, 4, input_is_parallel=False)
        rref = nn.Linear(6, 4)
        rref.load_state_dict(row.state_dict())
        return [Entry("ColumnParallelLinear", col, full, lambda: [torch.randn(2, 4)], lambda: [torch.randn(2, 5)], True),
                Entry("RowParallelLinear", row, rref, lambda: [torch.randn(2, 6)], lambda: [torch.randn(2, 5)], True)]

    for module, build in [("layers.activations", foundation), ("layers.conv", conv),
                          ("layers.normalization", normalization), ("layers.blocks", blocks),
                          ("layers.attention", attention), ("layers.losses", losses),
                          ("layers.quantization", quantization), ("layers.parallel", parallel)]:
        add(module, build)
    return entries


def naive_attention(q, k, v):
    from layers.benchmarking import naive_attention as naive
    return naive(q, k, v)


REGISTRY = _registry()
IDS = [e.name for e in REGISTRY]


def _call(entry: Entry, args):
    layer = copy.deepcopy(entry.layer) if isinstance(entry.layer, nn.Module) else entry.layer
    return layer(*args)


def _clear_error_or(entry: Entry, args, check_result: Callable[[torch.Tensor], None]) -> str:
    """Run the layer: a ValueError/TypeError must name the layer; otherwise ``check_result(output)``."""
    try:
        out = _call(entry, args)
    except (ValueError, TypeError) as exc:
        assert str(exc).startswith(tuple(f"{p}:" for p in entry.prefixes())), f"unclear message: {exc}"
        return "error"
    check_result(out)
    return "result"


def _same_as_reference(entry: Entry, args):
    def check(out):
        assert entry.reference is not None
        try:
            ref = _call(Entry(entry.name, entry.reference, None, entry.inputs), [a.clone() for a in args])
        except NotImplementedError:                            # the built-in has no meta kernel
            assert out.device.type == "meta" and args[0].device.type == "meta"
            return
        assert out.shape == ref.shape and out.dtype == ref.dtype and out.device == ref.device
        if out.device.type != "meta":
            torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4, equal_nan=True)
    return check


def test_registry_covers_the_package():
    names = set(IDS)
    assert {"Linear", "ReLU", "PReLU", "Scale"} <= names
    assert len(names) == len(IDS), "duplicate names"


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_not_a_tensor(entry):
    args = entry.inputs()
    args[0] = args[0].tolist()
    with pytest.raises(TypeError, match=entry.pattern() + " .* torch.Tensor, got list"):
        _call(entry, args)


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_integer_dtype(entry):
    args = entry.inputs()
    args[0] = args[0].round().to(torch.int64)
    with pytest.raises(TypeError, match=entry.pattern() + " .*floating-point.*, got torch.int64"):
        _call(entry, args)


@pytest.mark.parametrize("entry", [e for e in REGISTRY if e.bad_shape], ids=[e.name for e in REGISTRY if e.bad_shape])
def test_wrong_shape(entry):
    with pytest.raises(ValueError, match=entry.pattern()):
        _call(entry, entry.bad_shape())


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_wrong_float_dtype(entry):
    """float64 input: layers with float32 parameters refuse it; parameter-free ones compute in float64, like torch."""
    args = [a.double() for a in entry.inputs()]
    outcome = _clear_error_or(entry, args, _same_as_reference(entry, args))
    if entry.has_params:
        assert outcome == "error"


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_meta_device(entry):
    """A tensor on another device: layers with parameters refuse it; parameter-free ones follow the input."""
    args = [a.to("meta") for a in entry.inputs()]
    outcome = _clear_error_or(entry, args, _same_as_reference(entry, args))
    if entry.has_params:
        assert outcome == "error"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_non_finite(entry, value):
    case = {float("inf"): "inf", float("-inf"): "-inf"}.get(value, "nan")
    args = entry.inputs()
    args[0] = args[0].clone()
    args[0].view(-1)[1] = value
    if entry.documented and case in entry.documented:
        def documented(out):
            if entry.documented[case] == "finite":             # finite where torch's formula gives NaN
                assert torch.isfinite(out).all()
                return
            assert out.view(-1)[1].item() == float("inf")      # "+inf": the element holds the limit,
            rest = torch.ones_like(out, dtype=torch.bool)
            rest.view(-1)[1] = False                           # and the rest matches torch
            ref = _call(Entry(entry.name, entry.reference, None, entry.inputs), [a.clone() for a in args])
            torch.testing.assert_close(out[rest], ref[rest], atol=1e-4, rtol=1e-4)
        _clear_error_or(entry, args, documented)
        return
    _clear_error_or(entry, args, _same_as_reference(entry, args))


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_finite_input_gives_finite_output(entry):
    args = entry.inputs()
    out = _call(entry, args)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_empty_batch(entry):
    args = [a[:0] if a.dim() > 0 else a for a in entry.inputs()]
    _clear_error_or(entry, args, _same_as_reference(entry, args))


# --------------------------------------------------------------------- adversarial helpers
def _digits_model():
    from layers.activations import ReLU
    from layers.linear import Linear
    torch.manual_seed(0)
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
