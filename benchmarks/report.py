"""Benchmark results and their tables: :class:`Result`, a plain-text table, CSV and Markdown files."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["COLUMNS", "Result", "format_table", "write_csv", "write_markdown"]


@dataclass
class Result:
    """Measurements of one case; ratios are ours / built-in.

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
