"""Benchmarks: every ``layers`` layer against its PyTorch built-in (time and memory, forward + backward).

Run ``python -m benchmarks`` for the full table (writes ``benchmarks/results.csv``
and ``benchmarks/results.md``), ``python -m benchmarks --quick`` for a smoke run
with tiny sizes. See :mod:`layers.benchmarking` for how things are measured.
"""

from layers.benchmarking import (Case, Result, cases, compile_demo, format_table, profile_case, run, run_case, saved_bytes,
                    time_step, write_csv, write_markdown)

__all__ = ["Case", "Result", "cases", "compile_demo", "format_table", "profile_case", "run", "run_case",
           "saved_bytes", "time_step", "write_csv", "write_markdown"]
