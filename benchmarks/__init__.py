"""Benchmarks: every ``layers`` layer against its PyTorch built-in (time and memory, forward + backward).

Run ``python -m benchmarks`` for the full table (writes ``benchmarks/results.csv``
and ``benchmarks/results.md``), ``python -m benchmarks --quick`` for a smoke run
with tiny sizes. The cases are in :mod:`benchmarks.registry` (another module here
adds cases by defining ``builders(quick, device)``), the tables in
:mod:`benchmarks.report`, the measuring runs in :mod:`benchmarks.runner`; the
measuring tools are :mod:`layers.measuring`.
"""

from .registry import Case, cases
from .report import Result, format_table, write_csv, write_markdown
from .runner import compile_demo, compile_result, format_compile, profile_case, run, run_case

__all__ = ["Case", "Result", "cases", "compile_demo", "compile_result", "format_compile", "format_table",
           "profile_case", "run", "run_case", "write_csv", "write_markdown"]
