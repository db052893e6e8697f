"""Time and memory of every ``layers`` layer against its PyTorch built-in, forward + backward.

The measuring tools and the registry of comparisons behind ``python -m benchmarks``
(``make bench``; the ``benchmarks`` folder holds only that command line). Taught in
the chapter "Custom layers in practice" (``book/practice.ipynb``).

How it measures
---------------
* **Time**: one step is forward, then backward with a fixed upstream gradient,
  with every ``.grad`` reset to ``None`` first. After a warm-up, ours and the
  built-in are timed in alternating blocks (so a burst of load on a shared
  machine hits both), and the median time per step of each is reported. On
  CUDA every block is bracketed by ``torch.cuda.synchronize()``.
* **Memory**: the bytes an autograd graph keeps alive for backward beyond the
  inputs and parameters (which exist anyway), counted with
  ``torch.autograd.graph.saved_tensors_hooks`` over distinct storages. This is
  the number that differs between a memory-lean backward and naive autograd,
  and it is deterministic on CPU. The **peak** memory of one step is measured
  as well: on CUDA with ``torch.cuda.max_memory_allocated`` (above the
  baseline) for every case; on CPU, where PyTorch has no allocator statistics,
  with :class:`PeakMemory` for the cases that ask for it (``Case.peak``, the
  attention memory comparison). Where a peak is known, the memory ratio of the
  table is the peak ratio; otherwise it is the saved-for-backward ratio.

Every case lives in a registry (:func:`cases`) of builders; a builder whose
``layers`` module is missing or fails to import is left out with a printed note.
"""

from __future__ import annotations

import csv
import importlib
import math
import statistics
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["Case", "Result", "naive_attention", "cases", "time_step", "saved_bytes", "PeakMemory", "peak_bytes",
           "run_case", "run", "format_table", "write_csv", "write_markdown", "profile_case", "compile_demo",
           "compile_result", "format_compile"]


# ------------------------------------------------------------------------------ registry
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
        peak: measure the peak memory of a step on CPU too, with :class:`PeakMemory`
            (on CUDA it is always measured), so that the memory ratio is a peak ratio.
    """

    name: str
    shape: str
    ours: Callable
    reference: Callable
    inputs: Callable[[], list]
    targets: dict[str, float] = field(default_factory=dict)
    note: str = ""
    peak: bool = False


@dataclass
class Result:
    """Measurements of one :class:`Case`; ratios are ours / built-in.

    ``memory_ratio`` is the ratio of peaks where both peaks were measured, else
    the ratio of the bytes saved for backward.
    """

    name: str
    shape: str
    ours_ms: float
    ref_ms: float
    ours_saved_mb: float
    ref_saved_mb: float
    ours_peak_mb: float | None = None
    ref_peak_mb: float | None = None
    targets: dict[str, float] = field(default_factory=dict)
    checked: bool = True
    note: str = ""

    @property
    def time_ratio(self) -> float:
        return self.ours_ms / self.ref_ms if self.ref_ms > 0 else math.nan

    @property
    def memory_ratio(self) -> float:
        if self.ours_peak_mb is not None and self.ref_peak_mb:
            return self.ours_peak_mb / self.ref_peak_mb
        return self.ours_saved_mb / self.ref_saved_mb if self.ref_saved_mb > 0 else math.nan

    def status(self) -> str:
        """``"met"``, ``"MISSED (...)"``, ``"n/a"`` (no target) or ``"not checked"`` (``--quick``)."""
        if not self.targets:
            return "n/a"
        if not self.checked:
            return "not checked"
        missed = [f"{k} {getattr(self, k + '_ratio'):.2f} > {v}" for k, v in self.targets.items()
                  if not getattr(self, k + "_ratio") <= v]
        return "MISSED (" + "; ".join(missed) + ")" if missed else "met"


def _module_pair(ours: nn.Module, ref: nn.Module, device) -> tuple[nn.Module, nn.Module]:
    ours = ours.to(device)
    ref = ref.to(device)
    try:
        ref.load_state_dict(ours.state_dict())
    except RuntimeError:                                       # different parameter layout: own init
        pass
    return ours, ref


def _randn(*shape, device, grad=True):
    return torch.randn(*shape, device=device).requires_grad_(grad)


def naive_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    r"""Attention :math:`\operatorname{softmax}(q k^\top / \sqrt{E})\, v` from plain torch ops.

    The baseline of the attention memory comparison: autograd keeps the
    ``(..., L, S)`` probability matrix for backward.

    Args:
        q: ``(..., L, E)``.
        k: ``(..., S, E)``.
        v: ``(..., S, Ev)``.

    Returns:
        ``(..., L, Ev)``.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., L, S)
    return torch.softmax(scores, dim=-1) @ v                    # (..., L, Ev)


def _reference_focal(x: Tensor, t: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """torchvision's sigmoid_focal_loss formula (mean), in plain torch ops."""
    p = torch.sigmoid(x)
    ce = nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    return ((alpha * t + (1 - alpha) * (1 - t)) * loss).mean()


class _TorchResidualBlock(nn.Module):
    """The same block as ``layers.blocks.ResidualBlock`` built from torch.nn (same parameter names)."""

    def __init__(self, block) -> None:
        super().__init__()
        c, o, s = block.channels, block.out_channels, block.stride
        self.shortcut = block.shortcut
        self.conv1 = nn.Conv2d(c, o, 3, stride=s, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(o)
        self.conv2 = nn.Conv2d(o, o, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(o)
        self.projection = None
        if block.projection is not None:
            self.projection = nn.Sequential(nn.Conv2d(c, o, 1, stride=s, bias=False), nn.BatchNorm2d(o))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut:
            out = out + (x if self.projection is None else self.projection(x))
        return torch.relu(out)


def _builders(quick: bool, device) -> list[tuple[str, str, Callable[[], Case]]]:
    """(name, layers module it needs, builder) for every case; sizes depend on ``quick``."""
    q = quick
    d = device

    def linear():
        from layers.linear import Linear
        n, i, o = (32, 64, 64) if q else (2048, 1024, 1024)
        ours, ref = _module_pair(Linear(i, o), nn.Linear(i, o), d)
        return Case("Linear", f"({n}, {i}) -> {o}", ours, ref, lambda: [_randn(n, i, device=d)],
                    {"time": 1.2}, "one addmm forward, two matmuls and a sum backward, as nn.Linear")

    def conv():
        from layers.conv import Conv2d
        n, c, h, o = (2, 3, 8, 4) if q else (16, 32, 32, 64)
        ours, ref = _module_pair(Conv2d(c, o, 3, padding=1), nn.Conv2d(c, o, 3, padding=1), d)
        return Case("Conv2d 3x3", f"({n}, {c}, {h}, {h}) -> {o}", ours, ref,
                    lambda: [_randn(n, c, h, h, device=d)], {"time": 3.0},
                    "im2col copies each input pixel k*k = 9 times before one big matmul")

    def batchnorm():
        from layers.normalization import BatchNorm2d
        n, c, h = (4, 3, 4) if q else (32, 64, 32)
        ours, ref = _module_pair(BatchNorm2d(c), nn.BatchNorm2d(c), d)
        return Case("BatchNorm2d (train)", f"({n}, {c}, {h}, {h})", ours, ref,
                    lambda: [_randn(n, c, h, h, device=d)], {"time": 2.0})

    def layernorm():
        from layers.normalization import LayerNorm
        n, f = (8, 16) if q else (4096, 1024)
        ours, ref = _module_pair(LayerNorm(f), nn.LayerNorm(f), d)
        return Case("LayerNorm", f"({n}, {f})", ours, ref, lambda: [_randn(n, f, device=d)], {"time": 2.0})

    def attention_memory():
        from layers.attention import scaled_dot_product_attention
        b, h, L, e = (1, 2, 16, 8) if q else (1, 4, 1024, 64)
        return Case("attention vs naive autograd", f"({b}, {h}, {L}, {e})", scaled_dot_product_attention,
                    naive_attention, lambda: [_randn(b, h, L, e, device=d) for _ in range(3)],
                    {"memory": 0.5}, "memory ratio = peak of forward + backward (PeakMemory on CPU); "
                    "naive autograd keeps the L x S probability matrix for backward", peak=True)

    def attention_time():
        from layers.attention import scaled_dot_product_attention
        b, h, L, e = (1, 2, 16, 8) if q else (4, 8, 512, 64)
        return Case("attention vs F.sdpa", f"({b}, {h}, {L}, {e})", scaled_dot_product_attention,
                    nn.functional.scaled_dot_product_attention,
                    lambda: [_randn(b, h, L, e, device=d) for _ in range(3)], {},
                    "the built-in is a fused (flash-style) kernel")

    def mha():
        from layers.attention import MultiHeadAttention
        b, L, e, h = (2, 8, 16, 4) if q else (8, 256, 256, 8)
        ours = MultiHeadAttention(e, h).to(d)
        ref = nn.MultiheadAttention(e, h, batch_first=True).to(d)   # packed in_proj: separate init

        def ours_fn(x):
            return ours(x, x, x)[0]

        def ref_fn(x):
            return ref(x, x, x, need_weights=False)[0]
        ours_fn.parameters, ref_fn.parameters = ours.parameters, ref.parameters
        return Case("MultiHeadAttention", f"({b}, {L}, {e}), {h} heads", ours_fn, ref_fn,
                    lambda: [_randn(b, L, e, device=d)])

    def fake_quant():
        from layers.quantization import fake_quantize
        n = 1 << 10 if q else 1 << 22
        return Case("fake_quantize (int8)", f"({n},)", lambda x: fake_quantize(x, 0.05, 0, -128, 127),
                    lambda x: torch.fake_quantize_per_tensor_affine(x, 0.05, 0, -128, 127),
                    lambda: [_randn(n, device=d)], {"time": 2.0})

    def cross_entropy():
        from layers.losses import cross_entropy as ce
        n, c = (16, 10) if q else (8192, 1000)
        return Case("cross_entropy", f"({n}, {c})", ce, nn.functional.cross_entropy,
                    lambda: [_randn(n, c, device=d), torch.randint(0, c, (n,), device=d)])

    def focal():
        from layers.losses import focal_loss
        n = 64 if q else 1 << 20
        return Case("focal_loss", f"({n},)", focal_loss, _reference_focal,
                    lambda: [_randn(n, device=d), torch.randint(0, 2, (n,), device=d).float()])

    def residual():
        from layers.blocks import ResidualBlock
        n, c, h = (2, 4, 8) if q else (16, 32, 32)
        block = ResidualBlock(c)
        ours, ref = _module_pair(block, _TorchResidualBlock(block), d)
        return Case("ResidualBlock", f"({n}, {c}, {h}, {h})", ours, ref,
                    lambda: [_randn(n, c, h, h, device=d)], {}, "two Conv2d + two BatchNorm2d + ReLU")

    def activation(cls_name, torch_cls):
        def build():
            mod = importlib.import_module("layers.activations")
            n, f = (32, 64) if q else (4096, 1024)
            ours, ref = _module_pair(getattr(mod, cls_name)(), torch_cls(), d)
            return Case(cls_name, f"({n}, {f})", ours, ref, lambda: [_randn(n, f, device=d)])
        return build

    def scale():
        from layers.scale import Scale
        n, f = (32, 64) if q else (4096, 1024)
        ours = Scale(1.5).to(d)
        w = ours.weight
        return Case("Scale", f"({n}, {f})", ours, lambda x: x * w, lambda: [_randn(n, f, device=d)])

    return [
        ("Linear", "layers.linear", linear),
        ("Conv2d", "layers.conv", conv),
        ("BatchNorm2d", "layers.normalization", batchnorm),
        ("LayerNorm", "layers.normalization", layernorm),
        ("attention (memory)", "layers.attention", attention_memory),
        ("attention (time)", "layers.attention", attention_time),
        ("MultiHeadAttention", "layers.attention", mha),
        ("fake_quantize", "layers.quantization", fake_quant),
        ("cross_entropy", "layers.losses", cross_entropy),
        ("focal_loss", "layers.losses", focal),
        ("ResidualBlock", "layers.blocks", residual),
        ("ReLU", "layers.activations", activation("ReLU", nn.ReLU)),
        ("Sigmoid", "layers.activations", activation("Sigmoid", nn.Sigmoid)),
        ("Tanh", "layers.activations", activation("Tanh", nn.Tanh)),
        ("GELU", "layers.activations", activation("GELU", nn.GELU)),
        ("PReLU", "layers.activations", activation("PReLU", nn.PReLU)),
        ("Scale", "layers.scale", scale),
    ]


def cases(quick: bool = False, device: str | torch.device = "cpu", only: Sequence[str] | None = None,
          verbose: bool = True) -> list[Case]:
    """Build every registered :class:`Case`; missing or broken ``layers`` modules are skipped with a note.

    Args:
        quick: tiny sizes (a smoke run; targets are not checked).
        device: where inputs and parameters live.
        only: keep the cases whose registry name contains one of these strings (case-insensitive).
        verbose: print a note for every skipped case.
    """
    built = []
    for name, module, builder in _builders(quick, torch.device(device)):
        if only and not any(o.lower() in name.lower() for o in only):
            continue
        try:
            importlib.import_module(module)
            built.append(builder())
        except Exception as exc:                               # a missing/broken module skips its rows
            if verbose:
                print(f"note: skipped {name}: {module} unavailable ({type(exc).__name__}: {exc})")
    return built


# ---------------------------------------------------------------------------- measuring
def _params(fn) -> list[Tensor]:
    get = getattr(fn, "parameters", None)
    return [p for p in get() if p.requires_grad] if callable(get) else []


def _first_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _make_step(fn: Callable, inputs: list) -> Callable[[], None]:
    """A closure running forward and backward once (grads reset to None first)."""
    leaves = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad] + _params(fn)
    out = _first_output(fn(*inputs))
    grad = torch.randn_like(out)                               # fixed upstream gradient

    def step() -> None:
        for t in leaves:
            t.grad = None
        _first_output(fn(*inputs)).backward(grad)
    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_step(steps: Sequence[Callable[[], None]], device: torch.device | str = "cpu", warmup: int = 3,
              repeats: int = 7, min_block_s: float = 0.05) -> list[float]:
    """Median seconds per call of each step, timed in alternating blocks.

    Each step runs ``warmup`` times; then a block size ``number`` is chosen so a
    block of the slowest step lasts about ``min_block_s``; then ``repeats``
    rounds each time one block of every step in turn. Returns one median per step.
    """
    device = torch.device(device)
    for step in steps:
        for _ in range(warmup):
            step()
    _sync(device)
    slowest = 0.0
    for step in steps:
        t0 = time.perf_counter()
        step()
        _sync(device)
        slowest = max(slowest, time.perf_counter() - t0)
    number = max(1, int(min_block_s / max(slowest, 1e-9)))
    samples: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for i, step in enumerate(steps):
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(number):
                step()
            _sync(device)
            samples[i].append((time.perf_counter() - t0) / number)
    return [statistics.median(s) for s in samples]


def saved_bytes(fn: Callable, inputs: list) -> int:
    """Bytes of distinct storages autograd saves for backward in ``fn(*inputs)``, not counting inputs and parameters.

    Counted with ``torch.autograd.graph.saved_tensors_hooks``, which also sees
    what a custom ``autograd.Function`` stores with ``ctx.save_for_backward``
    (but not tensors it stores as plain ``ctx`` attributes).
    """
    alive = {t.untyped_storage().data_ptr() for t in list(inputs) + _params(fn) if isinstance(t, Tensor)}
    seen: dict[int, int] = {}

    def pack(t: Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in alive and ptr != 0:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    del out
    return sum(seen.values())


class PeakMemory(TorchDispatchMode):
    """Live bytes, and their maximum, of the tensors that ATen ops create while the mode is active (CPU or CUDA).

    PyTorch keeps no allocator statistics on CPU, so this dispatch mode counts
    for itself: every ATen operation passes through ``__torch_dispatch__``;
    each storage an operation *returns* that is new (not one of its inputs'
    storages, as for an in-place or ``out=`` op, and not seen before, as for a
    view) adds its ``nbytes`` to :attr:`live`, and a ``weakref.finalize`` on the
    storage subtracts them when the storage is freed. :attr:`peak` is the
    largest value :attr:`live` reached. Used around forward and backward, it
    also sees the backward's ops (autograd runs them through the dispatcher in
    the same thread) and the gradients stored into ``.grad``. The counts are
    bytes, so on a given torch version they are exactly repeatable.

    What it can see: every tensor an ATen op returns, including the ones a
    custom ``autograd.Function`` creates with torch ops in its forward and
    backward. What it cannot see: scratch memory a kernel allocates
    internally and frees before returning (the tiles of a fused attention
    kernel, oneDNN workspaces), allocator caching and fragmentation, tensors
    that existed before the mode was entered (they are not counted at all, so
    the numbers are above that baseline), and Python objects. For a fused
    built-in kernel its peak is therefore a lower bound; for code made of
    ordinary torch ops (naive attention, our layers) it is the real tensor peak.

    Attributes:
        live: bytes of the counted storages alive now.
        peak: the maximum of ``live`` since the mode was created.

    Examples:
        >>> x = torch.randn(256, 256, requires_grad=True)
        >>> with PeakMemory() as memory:
        ...     torch.exp(x).sum().backward()
        >>> memory.peak >= 2 * 256 * 256 * 4     # exp's output (saved) and the input gradient
        True
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}                       # id(storage) -> bytes, while it is alive

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, Tensor):
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key in self._sizes or key in inputs:
                continue                                       # a view or an in-place result: no new memory
            self._sizes[key] = storage.nbytes()
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)


def peak_bytes(fn: Callable, inputs: list) -> int:
    """Peak bytes of tensors created during ``fn(*inputs)`` and its backward, measured with :class:`PeakMemory`.

    Differentiable inputs are replaced by fresh leaves (no ``.grad`` from earlier
    runs); the upstream gradient is created before the measurement starts.
    """
    leaves = [t.detach().requires_grad_(t.requires_grad) if isinstance(t, Tensor) else t for t in inputs]
    step = _make_step(fn, leaves)
    for p in _params(fn):
        p.grad = None
    with PeakMemory() as memory:
        step()
    for t in leaves:
        if isinstance(t, Tensor):
            t.grad = None
    for p in _params(fn):
        p.grad = None
    return memory.peak


def _peak_bytes(step: Callable[[], None], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    _sync(device)
    return float(torch.cuda.max_memory_allocated(device) - base)


def run_case(case: Case, device: torch.device | str = "cpu", quick: bool = False) -> Result:
    """Measure one case: median step time, saved memory and (on CUDA, or with ``case.peak``) peak memory of both sides."""
    device = torch.device(device)
    ours_in, ref_in = case.inputs(), None
    ref_in = [t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, Tensor) else t for t in ours_in]
    steps = [_make_step(case.ours, ours_in), _make_step(case.reference, ref_in)]
    if quick:
        ours_t, ref_t = time_step(steps, device, warmup=1, repeats=3, min_block_s=0.002)
    else:
        ours_t, ref_t = time_step(steps, device)
    mb = 1 / 2**20
    if device.type == "cuda":
        ours_peak, ref_peak = (_peak_bytes(s, device) for s in steps)
    elif case.peak:
        ours_peak, ref_peak = peak_bytes(case.ours, ours_in), peak_bytes(case.reference, ref_in)
    else:
        ours_peak = ref_peak = None
    return Result(case.name, case.shape, ours_t * 1e3, ref_t * 1e3,
                  saved_bytes(case.ours, ours_in) * mb, saved_bytes(case.reference, ref_in) * mb,
                  None if ours_peak is None else ours_peak * mb, None if ref_peak is None else ref_peak * mb,
                  dict(case.targets), checked=not quick, note=case.note)


def run(quick: bool = False, device: str | torch.device | None = None, only: Sequence[str] | None = None,
        verbose: bool = True) -> list[Result]:
    """Measure every registered case (see :func:`cases`); CUDA when available unless ``device`` is given."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    results = []
    for case in cases(quick, device, only, verbose):
        results.append(run_case(case, device, quick))
        if verbose:
            print(f"  measured {case.name}", flush=True)
    return results


# ------------------------------------------------------------------------------ output
COLUMNS = ["layer", "input", "ours ms", "torch ms", "time ratio", "ours saved MB", "torch saved MB",
           "ours peak MB", "torch peak MB", "memory ratio", "target", "status"]


def _row(r: Result) -> list[str]:
    def f(x, fmt):
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)
    target = ", ".join(f"{k} <= {v}x" for k, v in r.targets.items()) or "-"
    return [r.name, r.shape, f(r.ours_ms, ".3f"), f(r.ref_ms, ".3f"), f(r.time_ratio, ".2f"),
            f(r.ours_saved_mb, ".2f"), f(r.ref_saved_mb, ".2f"), f(r.ours_peak_mb, ".2f"), f(r.ref_peak_mb, ".2f"),
            f(r.memory_ratio, ".2f"), target, r.status()]


def format_table(results: Sequence[Result]) -> str:
    """Plain-text table, one row per result, ratios = ours / built-in.

    MB columns are MiB (``2**20`` bytes); a peak shown as ``-`` was not measured,
    and the memory ratio is the peak ratio where both peaks are shown.
    """
    rows = [COLUMNS] + [_row(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_csv(results: Sequence[Result], path) -> None:
    """Write the table as CSV (unrounded numbers; an empty peak means "not measured")."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["layer", "input", "ours_ms", "torch_ms", "time_ratio", "ours_saved_mb", "torch_saved_mb",
                    "ours_peak_mb", "torch_peak_mb", "memory_ratio", "target", "status", "note"])
        for r in results:
            w.writerow([r.name, r.shape, r.ours_ms, r.ref_ms, r.time_ratio, r.ours_saved_mb, r.ref_saved_mb,
                        r.ours_peak_mb, r.ref_peak_mb, r.memory_ratio,
                        "; ".join(f"{k}<={v}" for k, v in r.targets.items()), r.status(), r.note])


def write_markdown(results: Sequence[Result], path, header: str = "", footer: str = "") -> None:
    """Write the table as a Markdown table, under an optional header line and above an optional footer."""
    rows = [_row(r) for r in results]
    lines = [header, ""] if header else []
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    notes = [f"* {r.name}: {r.note}" for r in results if r.note]
    if notes:
        lines += ["", "Notes:", ""] + notes
    if footer:
        lines += ["", footer]
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


# ------------------------------------------------------------------- profiling, compile
def profile_case(name: str, quick: bool = False, device: str = "cpu", row_limit: int = 12) -> str:
    """``torch.profiler`` table (self CPU time per ATen op) of ours and the built-in for one case."""
    from torch.profiler import ProfilerActivity, profile

    found = cases(quick, device, [name], verbose=True)
    if not found:
        raise ValueError(f"profile_case: no case matches {name!r}")
    case = found[0]
    ins = case.inputs()
    out = []
    for label, fn in (("ours", case.ours), ("torch", case.reference)):
        step = _make_step(fn, [t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, Tensor) else t
                               for t in ins])
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                step()
        out.append(f"== {case.name}: {label}\n"
                   + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit))
    return "\n".join(out)


def compile_demo(rows: int = 4096, features: int = 1024, device: str = "cpu") -> dict[str, float]:
    """``layers.normalization.LayerNorm`` eager, under ``torch.compile``, and ``nn.LayerNorm``: ms per fwd+bwd.

    ``torch.compile`` traces through the custom ``autograd.Function`` (forward and
    the hand-written backward) and fuses the elementwise passes. Returns
    ``{"rows", "features", "eager ms", "compiled ms", "torch ms", "compile s"}``
    (``compile s``: wall time of the first forward and backward, which compile).
    """
    from layers.normalization import LayerNorm

    device = torch.device(device)
    torch.manual_seed(0)
    ours = LayerNorm(features).to(device)
    ref = nn.LayerNorm(features).to(device)
    compiled = torch.compile(ours)
    x = torch.randn(rows, features, device=device, requires_grad=True)
    t0 = time.perf_counter()
    step_c = _make_step(compiled, [x])                          # first call compiles forward
    step_c()                                                   # first backward compiles backward
    _sync(device)
    compile_s = time.perf_counter() - t0
    x2 = x.detach().clone().requires_grad_(True)
    x3 = x.detach().clone().requires_grad_(True)
    eager_t, compiled_t, torch_t = time_step([_make_step(ours, [x2]), step_c, _make_step(ref, [x3])], device)
    return {"rows": rows, "features": features, "eager ms": eager_t * 1e3, "compiled ms": compiled_t * 1e3,
            "torch ms": torch_t * 1e3, "compile s": compile_s}


def format_compile(c: dict[str, float]) -> str:
    """One sentence describing a :func:`compile_demo` result (the speed-up is eager / compiled time)."""
    return (f"torch.compile of layers LayerNorm ({c['rows']:.0f}, {c['features']:.0f}), forward + backward: "
            f"eager {c['eager ms']:.3f} ms, compiled {c['compiled ms']:.3f} ms "
            f"(speed-up from compiling {c['eager ms'] / c['compiled ms']:.2f}x), nn.LayerNorm {c['torch ms']:.3f} ms "
            f"(compiled / nn.LayerNorm {c['compiled ms'] / c['torch ms']:.2f}); "
            f"compiling took {c['compile s']:.1f} s.")


def compile_result(c: dict[str, float]) -> Result:
    """A :func:`compile_demo` result as a table row: ours = compiled ``LayerNorm``, built-in = ``nn.LayerNorm``.

    The eager time and the compile time go into the row's note; memory is not measured.
    """
    return Result("LayerNorm under torch.compile", f"({c['rows']:.0f}, {c['features']:.0f})", c["compiled ms"],
                  c["torch ms"], math.nan, math.nan, note=f"eager (not compiled) {c['eager ms']:.3f} ms, "
                  f"speed-up from compiling {c['eager ms'] / c['compiled ms']:.2f}x; "
                  f"compiling took {c['compile s']:.1f} s")
