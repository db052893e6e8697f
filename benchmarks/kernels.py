"""Benchmark of :mod:`layers.kernels`: each fast form against the torch built-in and the memory limit.

``python -m benchmarks.kernels [--quick] [--strict] [--out-dir DIR] [--only NAME]`` prints one row per
(op, form) and writes ``kernels_results.md`` and ``kernels_results.csv`` next to this file (full
runs only, unless ``--out-dir`` is given). :func:`run` returns the rows.

For each op the forms are the reference ``autograd.Function`` of :mod:`layers` (eager), the
``"compile"``, ``"cpp"`` and, on CUDA only, ``"triton"`` backends of :mod:`layers.kernels`, and the
built-in. Columns:

* **time ratio**: forward + backward of the form over that of the built-in. Every form is warmed
  up, then timed in alternating rounds (one block of calls of each form in turn, the order
  reversed each round); each side's *minimum* block time is kept. On a shared machine this is far
  steadier than medians (other processes only ever add time).
* **saved ratio**: bytes of the distinct storages autograd keeps for backward
  (``torch.autograd.graph.saved_tensors_hooks``; inputs and parameters not counted) over the
  built-in's.
* **peak ratio**: the peak bytes of the tensors the op creates in forward + backward
  (:func:`layers.measuring.peak_bytes`) over the built-in's.
* **bandwidth**: the bytes the op must move at least (each input read and each output written
  once, in forward and in backward; listed per op in :data:`MIN_BYTES`) divided by the time,
  as a fraction of this machine's copy bandwidth measured in the same run: copying a 64 MiB
  tensor into another (read + write over its time) is one more step in every op's alternating
  rounds, and its best time over the whole run is the limit. (Into a preallocated tensor: a
  ``clone`` of 64 MiB gets fresh pages from the OS each time and would time their page faults.) The elementwise ops are memory bound, so 1.0 is the
  roofline: a kernel near it cannot get much faster.

Targets (checked by ``--strict``, which exits 1 when one is missed): cpp ``layer_norm`` <= 1.2x
``F.layer_norm``; cpp ``cross_entropy`` <= 1.0x ``F.cross_entropy``, and with ``inplace=True`` (the
gradient written into the logits' memory) also <= 0.5x its saved memory;
cpp ``gelu`` <= 1.2x; cpp ``prelu`` <= 1.2x; cpp ``fake_quantize`` <= 1.0x; the elementwise cpp
kernels (gelu, prelu, fake_quantize) at >= 50% of copy bandwidth.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

import layers
from layers import kernels as K
from layers.measuring import peak_bytes, saved_bytes, time_step

__all__ = ["Row", "MIN_BYTES", "TARGETS", "copy_bandwidth", "run", "format_table", "write_csv", "write_markdown",
           "main"]

#: Bytes an op must move at least, forward + backward, per element of the input (float32):
#: reads and writes of full-size tensors (4 bytes each) and bool masks (1 byte).
MIN_BYTES = {
    "layer_norm": 5 * 4,         # fwd: read x, write y; bwd: read x, g, write dx
    "cross_entropy": 4 * 4,      # fwd: read z, write the gradient; bwd: read it, write dz (in place: the same)
    "gelu": 5 * 4,               # fwd: read x, write y; bwd: read x, g, write dx
    "prelu": 5 * 4,              # as gelu (the slopes are a few bytes)
    "fake_quantize": 4 * 4 + 2,  # fwd: read x, write y and a bool mask; bwd: read g and the mask, write dx
}

#: {(op, form): {quantity: limit}}; quantities: "time" and "saved" ratios, "bandwidth" (minimum).
#: cross_entropy's memory target is for the form that reuses the logits' memory for the gradient
#: (``inplace=True``): the default cpp form saves a gradient of the log-softmax's size.
TARGETS = {
    ("layer_norm", "cpp"): {"time": 1.2},
    ("cross_entropy", "cpp"): {"time": 1.0},
    ("cross_entropy", "cpp inplace"): {"time": 1.0, "saved": 0.5},
    ("gelu", "cpp"): {"time": 1.2, "bandwidth": 0.5},
    ("prelu", "cpp"): {"time": 1.2, "bandwidth": 0.5},
    ("fake_quantize", "cpp"): {"time": 1.0, "bandwidth": 0.5},
}


@dataclass
class Row:
    """One (op, form): its times and memory, and the ratios to the built-in of the same op."""

    op: str
    form: str
    shape: str
    ms: float
    builtin_ms: float
    saved_mb: float
    builtin_saved_mb: float
    peak_mb: float
    builtin_peak_mb: float
    bandwidth: float                 # fraction of copy bandwidth
    gbps: float
    targets: dict[str, float] = field(default_factory=dict)
    checked: bool = True

    @property
    def time_ratio(self) -> float:
        return self.ms / self.builtin_ms if self.builtin_ms > 0 else math.nan

    @property
    def saved_ratio(self) -> float:
        return self.saved_mb / self.builtin_saved_mb if self.builtin_saved_mb > 0 else math.nan

    @property
    def peak_ratio(self) -> float:
        return self.peak_mb / self.builtin_peak_mb if self.builtin_peak_mb > 0 else math.nan

    def missed(self) -> list[str]:
        out = []
        for k, v in self.targets.items():
            if k == "bandwidth":
                if not self.bandwidth >= v:
                    out.append(f"bandwidth {self.bandwidth:.2f} < {v}")
            elif not getattr(self, k + "_ratio") <= v:
                out.append(f"{k} {getattr(self, k + '_ratio'):.2f} > {v}")
        return out

    def status(self) -> str:
        if not self.targets:
            return "-"
        if not self.checked:
            return "not checked"
        missed = self.missed()
        return "MISSED (" + "; ".join(missed) + ")" if missed else "met"

    def target_text(self) -> str:
        names = {"time": "time <= {}x", "saved": "saved <= {}x", "bandwidth": "bandwidth >= {:.0%}"}
        return ", ".join(names[k].format(v) for k, v in self.targets.items()) or "-"


# ----------------------------------------------------------------------------------- cases
def _cases(quick: bool, device: torch.device) -> dict[str, tuple[str, Callable[[], list], dict[str, Callable]]]:
    """{op: (shape text, make inputs, {form: fn(*inputs)})}; the built-in is the form "built-in"."""
    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, device=device) * scale).requires_grad_()

    n, d = (64, 256) if quick else (2048, 1024)
    r, c = (64, 100) if quick else (4096, 1000)
    img = (2, 8, 16, 16) if quick else (32, 64, 32, 32)
    flat = 16384 if quick else 2 * 1024 * 1024

    def fast(fn):
        return {b: (lambda *a, b=b: fn(*a, backend=b)) for b in _backends(device)}

    # the logits' memory reused for the gradient: each call overwrites the leaf with its gradient,
    # which changes its values (the work per element is the same) but not its shape
    inplace = {"cpp inplace": lambda z, t: K.cross_entropy(z, t, inplace=True)} if device.type == "cpu" else {}

    return {
        "layer_norm": (f"({n}, {d})", lambda: [leaf(n, d), leaf(d), leaf(d)], {
            "built-in": lambda x, w, b: F.layer_norm(x, (d,), w, b),
            "reference": lambda x, w, b: layers.normalization.layer_norm(x, d, w, b),
            **fast(lambda x, w, b, backend: K.layer_norm(x, d, w, b, backend=backend))}),
        "cross_entropy": (f"({r}, {c})", lambda: [leaf(r, c, scale=2.0), torch.randint(0, c, (r,), device=device)], {
            "built-in": F.cross_entropy,
            "reference": layers.losses.cross_entropy,
            **fast(lambda z, t, backend: K.cross_entropy(z, t, backend=backend)), **inplace}),
        "gelu": (f"({n}, {d})", lambda: [leaf(n, d, scale=2.0)], {
            "built-in": F.gelu,
            "reference": layers.activations.gelu,
            **fast(lambda x, backend: K.gelu(x, backend=backend))}),
        "prelu": (str(img), lambda: [leaf(*img), (torch.rand(img[1], device=device) * 0.5).requires_grad_()], {
            "built-in": F.prelu,
            "reference": layers.activations.prelu,
            **fast(lambda x, a, backend: K.prelu(x, a, backend=backend))}),
        "fake_quantize": (f"({flat},)", lambda: [leaf(flat, scale=3.0)], {
            "built-in": lambda x: torch.fake_quantize_per_tensor_affine(x, 0.05, 0, -128, 127),
            "reference": lambda x: layers.quantization.fake_quantize(x, 0.05, 0, -128, 127),
            **fast(lambda x, backend: K.fake_quantize(x, 0.05, 0, -128, 127, backend=backend))}),
    }


def _backends(device: torch.device) -> list[str]:
    return ["compile", "cpp"] if device.type == "cpu" else ["compile", "triton"]


def _step(fn: Callable, inputs: list) -> Callable[[], None]:
    """Forward + backward with a fixed upstream gradient; gradients are dropped, not accumulated."""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    out = fn(*inputs)
    grad = torch.randn_like(out)

    def step() -> None:
        torch.autograd.grad(fn(*inputs), leaves, grad)
    return step


def copy_bandwidth(device: torch.device | str = "cpu", mib: int = 64, repeats: int = 15) -> float:
    """Bytes per second of copying a ``mib`` MiB float32 tensor into another (read + write), best of ``repeats``."""
    device = torch.device(device)
    x = torch.randn(mib * 2**18, device=device)
    y = torch.empty_like(x)
    (seconds,) = time_step([lambda: y.copy_(x)], device, warmup=2, repeats=repeats, min_block_s=0.05)
    return 2 * x.nbytes / seconds


def run(quick: bool = False, device: str | torch.device | None = None, only: list[str] | None = None,
        forms: list[str] | None = None) -> tuple[list[Row], float]:
    """Measure every (op, form); returns the rows and the copy bandwidth (bytes/s) they are compared with.

    Args:
        quick: tiny sizes and few repeats (a smoke test; targets are not checked).
        device: ``"cpu"`` or ``"cuda"`` (default: cuda when available).
        only: op names to run (default: all).
        forms: forms to run besides the built-in (default: reference and every backend for the device).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    repeats = 3 if quick else 40
    # The copy that defines the bandwidth runs in the same alternating rounds as every op, so it
    # sees the same machine; its best time over all rounds is the limit.
    big = torch.randn((1 if quick else 16) * 2**20, device=device)          # 4 or 64 MiB
    dst = torch.empty_like(big)
    copy_best = math.inf
    rows = []
    for op, (shape, make, fns) in _cases(quick, device).items():
        if only and op not in only:
            continue
        names = [f for f in fns if f == "built-in" or forms is None or f in forms]
        inputs = make()
        steps = [_step(fns[f], inputs) for f in names] + [lambda: dst.copy_(big)]
        *times, copy_s = time_step(steps, device, repeats=repeats, min_block_s=0.005 if quick else 0.01)
        copy_best = min(copy_best, copy_s)
        saved = [saved_bytes(fns[f], inputs) / 2**20 for f in names]
        # PeakMemory is a dispatch mode, under which torch.compile runs the function eagerly: no peak for it
        peak = [math.nan if f == "compile" else peak_bytes(fns[f], inputs) / 2**20 for f in names]
        numel = inputs[0].numel()
        base = names.index("built-in")
        for f, t, s, p in zip(names, times, saved, peak):
            gbps = MIN_BYTES[op] * numel / t / 1e9
            rows.append(Row(op, f, shape, t * 1e3, times[base] * 1e3, s, saved[base], p, peak[base], math.nan, gbps,
                            targets=TARGETS.get((op, f), {}), checked=not quick))
    bandwidth = 2 * big.nbytes / copy_best                           # the best copy of the whole run
    for r in rows:
        r.bandwidth = r.gbps * 1e9 / bandwidth
    return rows, bandwidth


# ---------------------------------------------------------------------------------- output
_COLUMNS = ["op", "form", "input", "ms", "time ratio", "saved MiB", "saved ratio", "peak MiB", "peak ratio", "GB/s",
            "of copy bandwidth", "target", "status"]


def _cells(r: Row) -> list[str]:
    return [r.op, r.form, r.shape, f"{r.ms:.3f}", f"{r.time_ratio:.2f}", f"{r.saved_mb:.2f}",
            "-" if math.isnan(r.saved_ratio) else f"{r.saved_ratio:.2f}", "-" if math.isnan(r.peak_mb) else f"{r.peak_mb:.2f}",
            "-" if math.isnan(r.peak_ratio) else f"{r.peak_ratio:.2f}", f"{r.gbps:.1f}", f"{r.bandwidth:.0%}",
            r.target_text(), r.status()]


def format_table(rows: list[Row]) -> str:
    cells = [_COLUMNS] + [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in cells)


def write_csv(rows: list[Row], path: Path, bandwidth: float) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["op", "form", "input", "ms", "builtin_ms", "time_ratio", "saved_mb", "builtin_saved_mb",
                    "saved_ratio", "peak_mb", "builtin_peak_mb", "peak_ratio", "gbps", "copy_gbps",
                    "bandwidth_fraction", "target", "status"])
        for r in rows:
            w.writerow([r.op, r.form, r.shape, f"{r.ms:.4f}", f"{r.builtin_ms:.4f}", f"{r.time_ratio:.3f}",
                        f"{r.saved_mb:.3f}", f"{r.builtin_saved_mb:.3f}", f"{r.saved_ratio:.3f}", f"{r.peak_mb:.3f}",
                        f"{r.builtin_peak_mb:.3f}", f"{r.peak_ratio:.3f}", f"{r.gbps:.2f}",
                        f"{bandwidth / 1e9:.2f}", f"{r.bandwidth:.3f}", r.target_text(), r.status()])


def write_markdown(rows: list[Row], path: Path, header: str, bandwidth: float) -> None:
    lines = [header, "",
             f"Copy bandwidth (64 MiB copied into a preallocated tensor, read + write, timed in every op's rounds), "
             "best of the run: "
             f"{bandwidth / 1e9:.1f} GB/s.",
             "", "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    lines += ["", "Notes:", "",
              "* time ratio: forward + backward over the built-in's, minimum of alternating repeats after warm-up.",
              "* saved: distinct storages autograd keeps for backward (inputs and parameters not counted).",
              "* MiB: 2**20 bytes (the csv columns saved_mb, peak_mb hold MiB too).",
              "* of copy bandwidth: minimum bytes the op must move (forward + backward) per second, over the copy "
              "bandwidth above; 100% is the memory roofline (above 100%: part of the op's 8-16 MiB "
              "tensors stayed in cache, which a 64 MiB copy cannot).",
              "* measured on a machine shared with other jobs: the ratios come from minimum times, but a quiet "
              "rerun is needed before quoting absolute numbers.",
              "* peak: the largest total of tensors alive during forward + backward that the op created "
              "(layers.measuring.PeakMemory; the gradient stored in .grad included), above the inputs. Not "
              "measured for compile (\"-\"): PeakMemory is a dispatch mode, under which torch.compile runs the "
              "function eagerly, so it would report the reference's peak.",
              "* cross_entropy: the fused cpp form saves its float32 gradient, the same size as the log-softmax the "
              "built-in saves, so its saved ratio is 1.0. \"cpp inplace\" (inplace=True) writes that gradient into "
              "the logits' own memory: the one storage autograd keeps is the logits' (not counted, being the "
              "input), now holding the gradient, and nothing of their size is created in forward; its peak is the "
              "copy autograd makes when it stores the gradient of a leaf into .grad (a classifier's logits come "
              "from a matmul, whose backward takes the buffer itself). The leaf logits are overwritten at every "
              "call; the work per element does not depend on the values.",
              "* reference: the eager autograd.Function of layers; compile: the same under torch.compile."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, targets not checked")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--only", action="append", default=None)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    where = (torch.cuda.get_device_name() if device.type == "cuda"
             else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    header = f"layers.kernels, forward + backward. torch {torch.__version__} on {where}" + (
        " -- QUICK smoke run, tiny sizes" if args.quick else "")
    print(header)
    rows, bandwidth = run(quick=args.quick, device=device, only=args.only)
    print(f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s\n")
    print(format_table(rows))
    full = not args.quick and not args.only
    out_dir = args.out_dir if args.out_dir is not None else (Path(__file__).parent if full else None)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        suffix = "" if device.type == "cpu" else "_cuda"
        write_csv(rows, out_dir / f"kernels_results{suffix}.csv", bandwidth)
        write_markdown(rows, out_dir / f"kernels_results{suffix}.md", header + ".", bandwidth)
        print(f"\nwrote {out_dir / f'kernels_results{suffix}.md'} and .csv")
    missed = [f"{r.op} {r.form}" for r in rows if r.status().startswith("MISSED")]
    if missed:
        print(f"\n{len(missed)} target(s) missed: " + ", ".join(missed))
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
