"""``python -m benchmarks``: print the ratio table (ours / built-in) and write it as CSV and Markdown.

Options:
    --quick         tiny sizes, a smoke run; targets are not checked and nothing is
                    written unless --out-dir is given.
    --out-dir DIR   where results.csv and results.md go (default: benchmarks/ for a full run).
    --only NAME     only the cases whose name contains NAME (repeatable); nothing is written
                    unless --out-dir is given, so a partial run never replaces the full table.
    --device DEV    cpu or cuda (default: cuda when available).
    --no-compile    skip the torch.compile demonstration (a full run adds it to the printed output
                    and, as a row and a closing section, to results.csv and results.md).
    --profile NAME  print a torch.profiler table of ours vs the built-in for one case and exit.
    --strict        exit with status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

from .report import format_table, write_csv, write_markdown
from .runner import compile_demo, compile_result, format_compile, profile_case, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--only", action="append", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args(argv)

    if args.profile:
        print(profile_case(args.profile, quick=args.quick, device=args.device or "cpu"))
        return 0

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    where = (torch.cuda.get_device_name() if device.startswith("cuda")
             else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    header = f"torch {torch.__version__} on {where}" + (" -- QUICK smoke run, tiny sizes" if args.quick else "")
    print(header)
    results = run(quick=args.quick, device=device, only=args.only)
    print()
    print(format_table(results))

    compiled_rows, footer = [], ""
    if not args.quick and not args.no_compile and not args.only:
        try:
            c = compile_demo(device=device)
            footer = "## torch.compile\n\n" + format_compile(c)
            compiled_rows = [compile_result(c)]
            print("\n" + format_compile(c))
        except Exception as exc:                               # no compiler, unsupported platform, ...
            footer = f"## torch.compile\n\nnot measured: {type(exc).__name__}: {exc}"
            print(f"\nnote: torch.compile demonstration skipped ({type(exc).__name__}: {exc})")

    full_run = not args.quick and not args.only
    out_dir = args.out_dir if args.out_dir is not None else (Path(__file__).parent if full_run else None)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_csv(results + compiled_rows, out_dir / "results.csv")
        write_markdown(results + compiled_rows, out_dir / "results.md",
                       header=f"Forward + backward, ours / built-in. {header}.", footer=footer)
        print(f"\nwrote {out_dir / 'results.csv'} and {out_dir / 'results.md'}")

    missed = [r for r in results if r.status().startswith("MISSED")]
    if missed:
        print(f"\n{len(missed)} target(s) missed: " + ", ".join(r.name for r in missed))
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
