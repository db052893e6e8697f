"""Smoke test of the benchmark package (tiny sizes) and of its deterministic memory measurement."""

import csv
import math

import pytest
import torch

from layers.benchmarking import Result, saved_bytes
from benchmarks.__main__ import main
from layers.benchmarking import naive_attention


def test_quick_run_writes_table(tmp_path, capsys):
    assert main(["--quick", "--out-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "time ratio" in printed and "Linear" in printed
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    names = [r["layer"] for r in rows]
    assert "Linear" in names and "ReLU" in names
    for r in rows:
        assert float(r["ours_ms"]) > 0 and float(r["torch_ms"]) > 0, r
        assert r["status"] in ("n/a", "not checked"), r       # quick runs never claim a target
    md = (tmp_path / "results.md").read_text()
    assert md.count("\n|") == len(rows) + 2                    # header, separator, one line per row


def test_only_filter_and_strict_exit_code(tmp_path):
    assert main(["--quick", "--only", "Linear", "--out-dir", str(tmp_path), "--strict"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [r["layer"] for r in rows] == ["Linear"]


def test_status_reports_missed_targets():
    fast = Result("a", "", ours_ms=1.0, ref_ms=1.0, ours_saved_mb=1, ref_saved_mb=4, targets={"time": 1.2})
    slow = Result("b", "", ours_ms=3.0, ref_ms=1.0, ours_saved_mb=1, ref_saved_mb=1, targets={"time": 1.2})
    mem = Result("c", "", ours_ms=1.0, ref_ms=1.0, ours_saved_mb=3, ref_saved_mb=4, targets={"memory": 0.5})
    assert fast.status() == "met"
    assert slow.status().startswith("MISSED (time 3.00 > 1.2")
    assert mem.status().startswith("MISSED (memory 0.75")
    assert Result("d", "", 1.0, 1.0, 0, 0).status() == "n/a"
    assert math.isnan(Result("e", "", 1.0, 1.0, 0, 0).memory_ratio)


def test_saved_bytes_counts_what_backward_keeps():
    x = torch.randn(64, 32, requires_grad=True)
    assert saved_bytes(lambda t: t * 2.0, [x]) == 0           # scalar multiply saves nothing
    assert saved_bytes(torch.exp, [x]) == 64 * 32 * 4          # exp saves its output
    assert saved_bytes(lambda t: t.sin(), [x]) == 0            # sin saves its input, which is alive anyway


def test_attention_keeps_at_most_half_the_memory_of_naive_autograd():
    attention = pytest.importorskip("layers.attention")
    q, k, v = (torch.randn(1, 2, 256, 16, requires_grad=True) for _ in range(3))
    ours = saved_bytes(attention.scaled_dot_product_attention, [q, k, v])
    naive = saved_bytes(naive_attention, [q, k, v])
    assert naive >= 2 * 256 * 256 * 4                          # at least the (L, S) matrix per head
    assert ours <= 0.5 * naive, (ours, naive)
