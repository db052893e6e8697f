"""Validation sweep over every public layer: the same bad inputs for each.

Every layer in the registry below gets the same bad inputs. The contract
(``layers._validation``): a clear ``ValueError``/``TypeError`` whose message
starts with the layer's name, or a documented result, which for every layer
here is "the same as the PyTorch built-in" (NaN and Inf propagate exactly as
they do in torch, an empty batch gives an empty output, a parameter-free layer
on the meta device returns a meta tensor). Never a crash deep inside torch
(``RuntimeError``, ``IndexError``, ...), never a NaN where torch has none.

Every layer is imported at the top: a layer that fails to import fails the whole file. The registry is
built group by group (activations and linear, conv, ...): a layer whose constructor raises fails
``test_every_group_builds`` for its group and the coverage test, and the other groups still run.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from layers.activations import GELU, PReLU, ReLU, Sigmoid, Tanh, gelu, relu, sigmoid, tanh
from layers.attention import MultiHeadAttention, scaled_dot_product_attention
from layers.blocks import ResidualBlock
from layers.conv import Conv2d
from layers.linear import Linear, linear
from layers.losses import cross_entropy, focal_loss, mse_loss, softmax_focal_loss
from layers.normalization import BatchNorm2d, LayerNorm
from layers.parallel import ColumnParallelLinear, RowParallelLinear
from layers.quantization import fake_quantize
from layers.references import TorchResidualBlock, naive_attention, sigmoid_focal_loss
from layers.scale import Scale


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


def _registry() -> tuple[list[Entry], dict[str, Exception | None]]:
    entries: list[Entry] = []

    def foundation():
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
        c, r = _pair(Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1))
        return [Entry("Conv2d", c, r, lambda: [torch.randn(2, 3, 5, 5)], lambda: [torch.randn(2, 2, 5, 5)], True,
                      also_named=("conv2d",))]                 # the module's messages say "conv2d:"

    def normalization():
        bn, bref = _pair(BatchNorm2d(3), nn.BatchNorm2d(3))
        ln, lref = _pair(LayerNorm(4), nn.LayerNorm(4))
        return [Entry("BatchNorm2d", bn, bref, lambda: [torch.randn(2, 3, 4, 4)], lambda: [torch.randn(2, 4, 4, 4)], True),
                Entry("LayerNorm", ln, lref, lambda: [torch.randn(2, 4)], lambda: [torch.randn(2, 5)], True)]

    def blocks():
        block = ResidualBlock(3)
        return [Entry("ResidualBlock", block, TorchResidualBlock.like(block), lambda: [torch.randn(2, 3, 4, 4)],
                      lambda: [torch.randn(2, 2, 4, 4)], True, also_named=("Conv2d", "conv2d"))]

    def attention():
        qkv = lambda: [torch.randn(1, 2, 3, 4) for _ in range(3)]            # noqa: E731
        bad = lambda: [torch.randn(1, 2, 3, 5), torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)]  # noqa: E731
        mha = MultiHeadAttention(8, 2)
        ref = mha.to_torch()                                   # nn.MultiheadAttention with the same weights
        # documented result = the formula softmax(q k^T / sqrt(E)) v: a NaN query row gives a NaN
        # output row (torch's fused CPU kernel returns zeros there instead)
        return [Entry("scaled_dot_product_attention", scaled_dot_product_attention, naive_attention, qkv, bad),
                Entry("MultiHeadAttention", lambda x: mha(x, x, x)[0], lambda x: ref(x, x, x, need_weights=False)[0],
                      lambda: [torch.randn(2, 3, 8)], lambda: [torch.randn(2, 3, 6)], True,
                      also_named=("Linear",))]                  # dtype/device are checked by its projections

    def losses():
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
            # both reduced to the mean (the default of both is torchvision's "none")
            Entry("focal_loss", lambda x: focal_loss(x, tf[:len(x)], reduction="mean"),
                  lambda x: sigmoid_focal_loss(x, tf[:len(x)], reduction="mean"),
                  lambda: [torch.randn(6)], lambda: [torch.randn(7)],
                  # a -inf logit with target 0 is a perfectly confident negative: loss 0, where
                  # the torchvision formula computes -inf * 0 inside its BCE and gives NaN
                  documented={"-inf": "finite"}),
            Entry("mse_loss", lambda x: mse_loss(x, tm[:len(x)]), lambda x: nn.functional.mse_loss(x, tm[:len(x)]),
                  lambda: [torch.randn(3, 4)], lambda: [torch.randn(3, 5)]),
        ]

    def quantization():
        return [Entry("fake_quantize", lambda x: fake_quantize(x, 0.1, 0, -8, 7),
                      lambda x: torch.fake_quantize_per_tensor_affine(x, 0.1, 0, -8, 7),
                      lambda: [torch.randn(2, 5)])]

    def parallel():
        full = nn.Linear(4, 6)
        col = ColumnParallelLinear(4, 6).load_full(full)
        row = RowParallelLinear(6, 4, input_is_parallel=False)
        rref = nn.Linear(6, 4)
        rref.load_state_dict(row.state_dict())
        return [Entry("ColumnParallelLinear", col, full, lambda: [torch.randn(2, 4)], lambda: [torch.randn(2, 5)], True),
                Entry("RowParallelLinear", row, rref, lambda: [torch.randn(2, 6)], lambda: [torch.randn(2, 5)], True)]

    errors: dict[str, Exception | None] = {}                  # group -> what its building raised, or None
    for build in (foundation, conv, normalization, blocks, attention, losses, quantization, parallel):
        try:
            entries.extend(build())
            errors[build.__name__] = None
        except Exception as exc:  # noqa: BLE001 -- test_every_group_builds fails with it; the other groups still run
            errors[build.__name__] = exc
    return entries, errors


REGISTRY, BUILD_ERRORS = _registry()
IDS = [e.name for e in REGISTRY]


@pytest.mark.parametrize("group", BUILD_ERRORS)
def test_every_group_builds(group):
    """A layer whose constructor raises fails here (and in the coverage test below), not at collection."""
    if BUILD_ERRORS[group] is not None:
        raise BUILD_ERRORS[group]


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
    assert {"Linear", "ReLU", "PReLU", "Scale", "Conv2d", "BatchNorm2d", "LayerNorm", "ResidualBlock",
            "scaled_dot_product_attention", "MultiHeadAttention", "cross_entropy", "focal_loss",
            "fake_quantize", "ColumnParallelLinear"} <= names
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
