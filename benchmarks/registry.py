"""The registry of benchmark cases: each ``layers`` layer next to its PyTorch built-in, on the same inputs.

:func:`cases` builds them. Other modules of this package add cases by defining
a function ``builders(quick, device)`` that returns ``[(name, builder), ...]``
(a builder takes no arguments and returns a :class:`Case`): every module of
``benchmarks/`` that defines one is collected, after the built-in list below.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from layers.activations import GELU, PReLU, ReLU, Sigmoid, Tanh
from layers.attention import MultiHeadAttention, scaled_dot_product_attention
from layers.blocks import ResidualBlock
from layers.conv import Conv2d
from layers.linear import Linear
from layers.losses import cross_entropy, focal_loss
from layers.normalization import BatchNorm2d, LayerNorm
from layers.quantization import fake_quantize
from layers.references import TorchResidualBlock, naive_attention, sigmoid_focal_loss
from layers.scale import Scale

__all__ = ["Case", "Builder", "builders", "cases", "module_pair", "randn"]

#: ``(name, builder)``: a builder takes no arguments and returns a :class:`Case`.
Builder = tuple[str, Callable[[], "Case"]]


@dataclass
class Case:
    """One comparison: our layer and the built-in, on the same inputs.

    Attributes:
        name: row label.
        shape: human-readable input shape.
        ours: callable taking ``*inputs`` (a module or a function).
        reference: the PyTorch built-in with the same semantics (same parameters loaded).
        inputs: builds fresh inputs (differentiable ones with ``requires_grad=True``).
        targets: ``{"time": r}`` and/or ``{"memory": r}``: the ratio ours / built-in
            must be at most ``r`` (checked by the full run, not by ``--quick``).
        note: one line shown under the table.
        peak: measure the peak memory of a step on CPU too, with
            :class:`layers.measuring.PeakMemory` (on CUDA it is always measured),
            so that the memory ratio is a peak ratio.
    """

    name: str
    shape: str
    ours: Callable
    reference: Callable
    inputs: Callable[[], list]
    targets: dict[str, float] = field(default_factory=dict)
    note: str = ""
    peak: bool = False


def module_pair(ours: nn.Module, ref: nn.Module, device) -> tuple[nn.Module, nn.Module]:
    """Both modules on ``device``, the built-in with our parameters (their names must match)."""
    ours, ref = ours.to(device), ref.to(device)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def randn(*shape, device, grad: bool = True) -> torch.Tensor:
    """A standard normal leaf on ``device`` (differentiable unless ``grad=False``)."""
    return torch.randn(*shape, device=device).requires_grad_(grad)


def builders(quick: bool, device) -> list[Builder]:
    """``(name, builder)`` for every built-in case; sizes depend on ``quick``."""
    q, d = quick, device

    # A readable reference (one out-of-place backward, written as its math) is held to 4x of
    # the fused built-in; the speed targets of the fast forms are in benchmarks/kernels.py.
    reference = {"time": 4.0}

    def linear():
        n, i, o = (32, 64, 64) if q else (2048, 1024, 1024)
        ours, ref = module_pair(Linear(i, o), nn.Linear(i, o), d)
        return Case("Linear", f"({n}, {i}) -> {o}", ours, ref, lambda: [randn(n, i, device=d)],
                    {"time": 1.2}, "one matmul and a bias add forward, two matmuls and a sum backward")

    def conv():
        n, c, h, o = (2, 3, 8, 4) if q else (16, 32, 32, 64)
        ours, ref = module_pair(Conv2d(c, o, 3, padding=1), nn.Conv2d(c, o, 3, padding=1), d)
        return Case("Conv2d 3x3", f"({n}, {c}, {h}, {h}) -> {o}", ours, ref,
                    lambda: [randn(n, c, h, h, device=d)], reference,
                    "im2col copies each input pixel k*k = 9 times before one big matmul")

    def batchnorm():
        n, c, h = (4, 3, 4) if q else (32, 64, 32)
        ours, ref = module_pair(BatchNorm2d(c), nn.BatchNorm2d(c), d)
        return Case("BatchNorm2d (train)", f"({n}, {c}, {h}, {h})", ours, ref,
                    lambda: [randn(n, c, h, h, device=d)], reference)

    def layernorm():
        n, f = (8, 16) if q else (4096, 1024)
        ours, ref = module_pair(LayerNorm(f), nn.LayerNorm(f), d)
        return Case("LayerNorm", f"({n}, {f})", ours, ref, lambda: [randn(n, f, device=d)], reference)

    def attention_memory():
        b, h, L, e = (1, 2, 16, 8) if q else (1, 4, 1024, 64)
        return Case("attention vs naive autograd", f"({b}, {h}, {L}, {e})", scaled_dot_product_attention,
                    naive_attention, lambda: [randn(b, h, L, e, device=d) for _ in range(3)],
                    {"memory": 0.5}, "memory ratio = peak of forward + backward (PeakMemory on CPU); "
                    "naive autograd keeps the L x S probability matrix for backward", peak=True)

    def attention_time():
        b, h, L, e = (1, 2, 16, 8) if q else (4, 8, 512, 64)
        return Case("attention vs F.sdpa", f"({b}, {h}, {L}, {e})", scaled_dot_product_attention,
                    nn.functional.scaled_dot_product_attention,
                    lambda: [randn(b, h, L, e, device=d) for _ in range(3)], reference,
                    "the built-in is a fused (flash-style) kernel")

    def mha():
        b, L, e, h = (2, 8, 16, 4) if q else (8, 256, 256, 8)
        ours = MultiHeadAttention(e, h, batch_first=True).to(d)
        ref = ours.to_torch().to(d)                            # nn.MultiheadAttention with our weights

        def ours_fn(x):
            return ours(x, x, x, need_weights=False)[0]

        def ref_fn(x):
            return ref(x, x, x, need_weights=False)[0]
        ours_fn.parameters, ref_fn.parameters = ours.parameters, ref.parameters
        return Case("MultiHeadAttention", f"({b}, {L}, {e}), {h} heads", ours_fn, ref_fn,
                    lambda: [randn(b, L, e, device=d)])

    def fake_quant():
        n = 1 << 10 if q else 1 << 22
        return Case("fake_quantize (int8)", f"({n},)", lambda x: fake_quantize(x, 0.05, 0, -128, 127),
                    lambda x: torch.fake_quantize_per_tensor_affine(x, 0.05, 0, -128, 127),
                    lambda: [randn(n, device=d)], reference)

    def ce():
        n, c = (16, 10) if q else (8192, 1000)
        return Case("cross_entropy", f"({n}, {c})", cross_entropy, nn.functional.cross_entropy,
                    lambda: [randn(n, c, device=d), torch.randint(0, c, (n,), device=d)], reference)

    def focal():
        n = 64 if q else 1 << 20
        return Case("focal_loss", f"({n},)", focal_loss,
                    lambda x, t: sigmoid_focal_loss(x, t, reduction="mean"),
                    lambda: [randn(n, device=d), torch.randint(0, 2, (n,), device=d).float()], reference)

    def residual():
        n, c, h = (2, 4, 8) if q else (16, 32, 32)
        block = ResidualBlock(c).to(d)
        return Case("ResidualBlock", f"({n}, {c}, {h}, {h})", block, TorchResidualBlock.like(block),
                    lambda: [randn(n, c, h, h, device=d)], reference, "two Conv2d + two BatchNorm2d + ReLU")

    def activation(cls, torch_cls):
        def build():
            n, f = (32, 64) if q else (4096, 1024)
            ours, ref = module_pair(cls(), torch_cls(), d)
            return Case(cls.__name__, f"({n}, {f})", ours, ref, lambda: [randn(n, f, device=d)], reference)
        return build

    def scale():
        n, f = (32, 64) if q else (4096, 1024)
        ours = Scale(1.5).to(d)
        w = ours.weight
        return Case("Scale", f"({n}, {f})", ours, lambda x: x * w, lambda: [randn(n, f, device=d)], reference)

    return [
        ("Linear", linear), ("Conv2d", conv), ("BatchNorm2d", batchnorm), ("LayerNorm", layernorm),
        ("attention (memory)", attention_memory), ("attention (time)", attention_time),
        ("MultiHeadAttention", mha), ("fake_quantize", fake_quant), ("cross_entropy", ce),
        ("focal_loss", focal), ("ResidualBlock", residual),
        ("ReLU", activation(ReLU, nn.ReLU)), ("Sigmoid", activation(Sigmoid, nn.Sigmoid)),
        ("Tanh", activation(Tanh, nn.Tanh)), ("GELU", activation(GELU, nn.GELU)),
        ("PReLU", activation(PReLU, nn.PReLU)), ("Scale", scale),
    ]


#: modules of this package that are not case lists
_NOT_CASES = {"__main__", "registry", "report", "runner"}


def extra_builders(quick: bool, device) -> list[Builder]:
    """The builders contributed by the other modules of ``benchmarks/`` (a ``builders(quick, device)`` each)."""
    found: list[Builder] = []
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda i: i.name):
        if info.name in _NOT_CASES:
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        if callable(getattr(module, "builders", None)):
            found.extend(module.builders(quick, device))
    return found


def cases(quick: bool = False, device: str | torch.device = "cpu", only: Sequence[str] | None = None) -> list[Case]:
    """Build every registered :class:`Case` (the list above, then the extra modules').

    Args:
        quick: tiny sizes (a smoke run; targets are not checked).
        device: where inputs and parameters live.
        only: keep the cases whose registry name contains one of these strings (case-insensitive).
    """
    device = torch.device(device)
    found = builders(quick, device) + extra_builders(quick, device)
    return [build() for name, build in found if not only or any(o.lower() in name.lower() for o in only)]
