"""Measuring the cases: :func:`run_case`, :func:`run`, :func:`profile_case` and the torch.compile demonstration.

The measuring tools themselves are in :mod:`layers.measuring`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from layers.measuring import cuda_peak_bytes, make_step, peak_bytes, profile_table, saved_bytes, time_step
from layers.normalization import LayerNorm

from .registry import Case, cases
from .report import Result

__all__ = ["compile_demo", "compile_result", "format_compile", "profile_case", "run", "run_case"]


def _fresh(inputs: Sequence) -> list:
    return [t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, Tensor) else t for t in inputs]


def run_case(case: Case, device: torch.device | str = "cpu", quick: bool = False, seed: int = 0) -> Result:
    """Measure one case: step time, bytes saved for backward and (on CUDA, or with ``case.peak``) peak memory."""
    device = torch.device(device)
    ours_in = case.inputs()
    ref_in = _fresh(ours_in)
    steps = [make_step(case.ours, ours_in, torch.Generator().manual_seed(seed)),
             make_step(case.reference, ref_in, torch.Generator().manual_seed(seed))]
    if quick:
        ours_t, ref_t = time_step(steps, device, warmup=1, repeats=3, min_block_s=0.002)
    else:
        ours_t, ref_t = time_step(steps, device)
    mb = 1 / 2**20
    if device.type == "cuda":
        ours_peak, ref_peak = (cuda_peak_bytes(s, device) for s in steps)
    elif case.peak:
        ours_peak, ref_peak = peak_bytes(case.ours, ours_in), peak_bytes(case.reference, ref_in)
    else:
        ours_peak = ref_peak = None
    return Result(case.name, case.shape, ours_t * 1e3, ref_t * 1e3,
                  saved_bytes(case.ours, ours_in) * mb, saved_bytes(case.reference, ref_in) * mb,
                  None if ours_peak is None else ours_peak * mb, None if ref_peak is None else ref_peak * mb,
                  dict(case.targets), checked=not quick, note=case.note)


def run(quick: bool = False, device: str | torch.device | None = None, only: Sequence[str] | None = None,
        verbose: bool = True, seed: int = 0) -> list[Result]:
    """Measure every registered case (see :func:`benchmarks.registry.cases`); CUDA when available unless ``device`` is given.

    Parameters and inputs are drawn under ``torch.random.fork_rng`` seeded with
    ``seed``, so the global random state is the same afterwards.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    results = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for case in cases(quick, device, only):
            results.append(run_case(case, device, quick, seed))
            if verbose:
                print(f"  measured {case.name}", flush=True)
    return results


def profile_case(name: str, quick: bool = False, device: str = "cpu", row_limit: int = 12) -> str:
    """``torch.profiler`` tables (self CPU time per ATen op) of ours and the built-in for the first matching case."""
    found = cases(quick, device, [name])
    if not found:
        raise ValueError(f"profile_case: no case matches {name!r}")
    case = found[0]
    ins = case.inputs()
    return "\n".join(f"== {case.name}: {label}\n" + profile_table(fn, ins, row_limit=row_limit)
                     for label, fn in (("ours", case.ours), ("torch", case.reference)))


def compile_demo(rows: int = 4096, features: int = 1024, device: str = "cpu", seed: int = 0) -> dict[str, float]:
    """``layers.normalization.LayerNorm`` eager, under ``torch.compile``, and ``nn.LayerNorm``: ms per fwd+bwd.

    ``torch.compile`` traces through the custom ``autograd.Function`` (forward and
    the hand-written backward) and fuses the elementwise passes. Returns
    ``{"rows", "features", "eager ms", "compiled ms", "torch ms", "compile s"}``
    (``compile s``: wall time of the first forward and backward, which compile).
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    ours = LayerNorm(features).to(device)
    ref = nn.LayerNorm(features).to(device)
    compiled = torch.compile(ours)
    x = torch.randn(rows, features, generator=gen).to(device).requires_grad_(True)
    t0 = time.perf_counter()
    step_c = make_step(compiled, [x], gen)                     # first call compiles forward
    step_c()                                                   # first backward compiles backward
    if device.type == "cuda":
        torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    eager_t, compiled_t, torch_t = time_step(
        [make_step(ours, _fresh([x]), gen), step_c, make_step(ref, _fresh([x]), gen)], device)
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
