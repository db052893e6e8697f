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
  and it is deterministic on CPU. On CUDA the peak allocated memory during
  the step (``torch.cuda.max_memory_allocated`` above the baseline) is
  reported as well.

Every case lives in a registry (:func:`cases`) of builders; a builder whose
``layers`` module is missing or fails to import is left out with a printed note.
"""

from __future__ import annotations

import csv
import importlib
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["Case", "Result", "naive_attention", "cases", "time_step", "saved_bytes", "run_case", "run", "format_table",
           "write_csv", "write_markdown", "profile_case", "compile_demo"]


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
    """

    name: str
    shape: str
    ours: Callable
    reference: Callable
    inputs: Callable[[], list]
    targets: dict[str, float] = field(default_factory=dict)
    note: str = ""


@dataclass
class Result:
    """Measurements of one :class:`Case`; ratios are ours / built-in."""

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
                    {"memory": 0.5}, "naive autograd keeps the L x S probability matrix for backward")

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
    """Measure one case: median step time and saved (and, on CUDA, peak) memory of both sides."""
    device = torch.device(device)
    ours_in, ref_in = case.inputs(), None
    ref_in = [t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, Tensor) else t for t in ours_in]
    steps = [_make_step(case.ours, ours_in), _make_step(case.reference, ref_in)]
    if quick:
        ours_t, ref_t = time_step(steps, device, warmup=1, repeats=3, min_block_s=0.002)
    else:
        ours_t, ref_t = time_step(steps, device)
    mb = 1 / 2**20
    ours_peak, ref_peak = (_peak_bytes(s, device) for s in steps)
    return Result(case.name, case.shape, ours_t * 1e3, ref_t * 1e3,
                  saved_bytes(case.ours, ours_in) * mb, saved_bytes(case.reference, ref_in) * mb,
                  None if ours_peak is None else ours_peak * mb, None if ref_peak is None else ref_peak * mb,
                  dict(case.targets), checked=not quick)


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
           "memory ratio", "target", "status"]


def _row(r: Result) -> list[str]:
    def f(x, fmt):
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)
    target = ", ".join(f"{k} <= {v}x" for k, v in r.targets.items()) or "-"
    return [r.name, r.shape, f(r.ours_ms, ".3f"), f(r.ref_ms, ".3f"), f(r.time_ratio, ".2f"),
            f(r.ours_saved_mb, ".2f"), f(r.ref_saved_mb, ".2f"), f(r.memory_ratio, ".2f"), target, r.status()]


def format_table(results: Sequence[Result]) -> str:
    """Plain-text table, one row per result, ratios = ours / built-in."""
    rows = [COLUMNS] + [_row(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_csv(results: Sequence[Result], path) -> None:
    """Write the table as CSV (unrounded numbers)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["layer", "input", "ours_ms", "torch_ms", "time_ratio", "ours_saved_mb", "torch_saved_mb",
                    "ours_peak_mb", "torch_peak_mb", "memory_ratio", "target", "status"])
        for r in results:
            w.writerow([r.name, r.shape, r.ours_ms, r.ref_ms, r.time_ratio, r.ours_saved_mb, r.ref_saved_mb,
                        r.ours_peak_mb, r.ref_peak_mb, r.memory_ratio,
                        "; ".join(f"{k}<={v}" for k, v in r.targets.items()), r.status()])


def write_markdown(results: Sequence[Result], path, header: str = "") -> None:
    """Write the table as a Markdown table, under an optional header line."""
    rows = [_row(r) for r in results]
    lines = [header, ""] if header else []
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
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
    ``{"eager ms", "compiled ms", "torch ms", "compile s"}``.
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
    return {"eager ms": eager_t * 1e3, "compiled ms": compiled_t * 1e3, "torch ms": torch_t * 1e3,
            "compile s": compile_s}
