"""Smoke test of the benchmark package (tiny sizes) and of its deterministic memory measurement."""

import csv
import math

import pytest
import torch

from benchmarks.__main__ import main
from layers.benchmarking import (PeakMemory, Result, compile_result, format_compile, naive_attention, peak_bytes,
                                 saved_bytes, write_csv, write_markdown)


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
    attention = [r for r in rows if r["layer"] == "attention vs naive autograd"]
    if attention:                                              # peak measured on CPU: the ratio is the peak ratio
        (a,) = attention
        assert float(a["ours_peak_mb"]) > 0 and float(a["torch_peak_mb"]) > 0
        assert float(a["memory_ratio"]) == pytest.approx(float(a["ours_peak_mb"]) / float(a["torch_peak_mb"]))
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


def test_peak_memory_counts_temporaries_and_frees():
    x = torch.randn(128, 128)
    nbytes = x.numel() * 4
    with PeakMemory() as memory:
        y = (x * 2).exp()                                      # two new tensors, the first freed at once
        del y
    assert memory.peak == 2 * nbytes
    assert memory.live == 0
    with PeakMemory() as memory:
        z = x.clone()
        z.mul_(3).add_(1)                                      # in place: no new memory
        w = z.view(-1)                                         # a view: no new memory
    assert memory.peak == nbytes and memory.live == nbytes
    del z, w


def test_peak_bytes_sees_forward_and_backward():
    x = torch.randn(64, 32, requires_grad=True)
    # exp's output (saved for backward) and the gradient; upstream gradient and inputs exist before
    assert peak_bytes(torch.exp, [x]) >= 2 * 64 * 32 * 4
    assert x.grad is None                                      # leaves are fresh copies


def test_attention_peak_is_at_most_half_of_naive_autograd_at_length_1024():
    attention = pytest.importorskip("layers.attention")
    q, k, v = (torch.randn(1, 1, 1024, 16, requires_grad=True) for _ in range(3))
    ours = peak_bytes(attention.scaled_dot_product_attention, [q, k, v])
    naive = peak_bytes(naive_attention, [q, k, v])
    assert naive >= 2 * 1024 * 1024 * 4                        # scores and probabilities at least
    assert ours <= 0.5 * naive, (ours, naive)


def test_compile_result_is_written(tmp_path):
    c = {"rows": 8, "features": 4, "eager ms": 2.0, "compiled ms": 1.0, "torch ms": 0.5, "compile s": 3.0}
    line = format_compile(c)
    assert "(8, 4)" in line and "speed-up from compiling 2.00x" in line and "compiled / nn.LayerNorm 2.00" in line
    row = compile_result(c)
    assert row.time_ratio == 2.0 and row.status() == "n/a" and "3.0 s" in row.note
    write_csv([row], tmp_path / "r.csv")
    write_markdown([row], tmp_path / "r.md", header="h", footer="## torch.compile\n\n" + line)
    (got,) = csv.DictReader(open(tmp_path / "r.csv"))
    assert got["layer"] == "LayerNorm under torch.compile" and float(got["time_ratio"]) == 2.0
    md = (tmp_path / "r.md").read_text()
    assert "## torch.compile" in md and line in md and "LayerNorm under torch.compile" in md
