"""Smoke test of the benchmark package (tiny sizes) and of its deterministic memory measurement."""

import csv
import math
import os

import pytest
import torch

from benchmarks import registry as cases_module
from benchmarks.__main__ import main
from benchmarks.registry import Case, cases
from benchmarks.report import Result, write_csv, write_markdown
from benchmarks.runner import compile_result, format_compile
from layers.attention import scaled_dot_product_attention
from layers.measuring import OpCounter, PeakMemory, peak_bytes, saved_bytes, stderr_silenced, time_step
from layers.references import naive_attention


def test_quick_run_writes_table(tmp_path, capsys):
    assert main(["--quick", "--out-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "time ratio" in printed and "Linear" in printed
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    names = [r["layer"] for r in rows]
    assert names == [c.name for c in cases(quick=True)]         # every registered case has its row
    assert {"Linear", "ReLU", "MultiHeadAttention", "attention vs naive autograd"} <= set(names)
    for r in rows:
        assert float(r["ours_ms"]) > 0 and float(r["torch_ms"]) > 0, r
        assert r["status"] in ("n/a", "not checked"), r       # quick runs never claim a target
    (a,) = [r for r in rows if r["layer"] == "attention vs naive autograd"]
    assert float(a["ours_peak_mb"]) > 0 and float(a["torch_peak_mb"]) > 0
    assert float(a["memory_ratio"]) == pytest.approx(float(a["ours_peak_mb"]) / float(a["torch_peak_mb"]))
    md = (tmp_path / "results.md").read_text()
    assert md.count("\n|") == len(rows) + 2                    # header, separator, one line per row


def test_only_filter_and_strict_exit_code(tmp_path):
    assert main(["--quick", "--only", "Linear", "--out-dir", str(tmp_path), "--strict"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [r["layer"] for r in rows] == ["Linear"]


def test_strict_fails_on_a_missed_target(monkeypatch, tmp_path):
    def builders(quick, device):                               # a case that cannot meet its target
        slow = Case("slow", "(8,)", lambda x: (x.exp() * 2).exp().log(), lambda x: x * 2,
                    lambda: [torch.randn(8, requires_grad=True)], {"time": 1e-6})
        return [("slow", lambda: slow)]
    monkeypatch.setattr(cases_module, "builders", builders)
    monkeypatch.setattr(cases_module, "extra_builders", lambda quick, device: [])
    args = ["--only", "slow", "--out-dir", str(tmp_path), "--no-compile"]
    assert main(args) == 0                                     # reported, but not an error without --strict
    assert main(args + ["--strict"]) == 1


def test_other_benchmark_modules_add_cases(monkeypatch):
    class Module:
        @staticmethod
        def builders(quick, device):
            return [("extra", lambda: Case("extra", "()", torch.exp, torch.exp, lambda: [torch.randn(2)]))]
    monkeypatch.setattr(cases_module.importlib, "import_module", lambda name: Module)
    monkeypatch.setattr(cases_module.pkgutil, "iter_modules",
                        lambda paths: [type("Info", (), {"name": "kernels"})(), type("Info", (), {"name": "report"})()])
    assert [c.name for c in cases(quick=True, only=["extra"])] == ["extra"]


def test_time_step_reports_the_minimum_of_alternating_blocks():
    calls = []
    fast, slow = (lambda: calls.append("a")), (lambda: (calls.append("b"), sum(range(20000))))
    t_fast, t_slow = time_step([fast, slow], warmup=1, repeats=3, min_block_s=0.001)
    assert 0 < t_fast < t_slow
    timed = [c for c in calls[4:] if c]                        # after warm-up and sizing
    assert timed.index("b") > 0 and "a" in timed[timed.index("b"):]   # blocks alternate
    blocks = [c for i, c in enumerate(timed) if i == 0 or timed[i - 1] != c]   # runs of one step
    assert blocks == ["a", "b", "a", "b"]        # rounds a b | b a | a b: the order reverses every other round


def test_op_counter_counts_names_and_largest():
    x = torch.randn(16, 8, requires_grad=True)
    with OpCounter() as ops:
        (x * 2).sum().backward()
    assert ops.count == len(ops.names) > 0 and "mul" in ops.names and ops.largest == 16 * 8
    with OpCounter(min_numel=16 * 8, skip_views=True) as big:
        x.t().exp().sum()
    assert big.names == ["exp", "sum"]                         # the transpose is a view
    assert big.ops == [("exp", 1, 1), ("sum", 1, 0)]           # full-size reads and writes per op
    with OpCounter(min_numel=16 * 8) as passes:
        torch.mul(x, x).detach()
    assert passes.ops == [("mul", 2, 1), ("detach", 1, 1)]     # x read twice; detach is a view (not skipped)


def test_stderr_silenced_hides_writes_to_file_descriptor_2(capfd):
    with stderr_silenced():
        os.write(2, b"profiler noise\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


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


def test_saved_bytes_can_include_the_inputs():
    x = torch.randn(64, 32, requires_grad=True)
    assert saved_bytes(lambda t: t.sin(), [x], include_inputs=True) == 64 * 32 * 4


def test_attention_keeps_at_most_half_the_memory_of_naive_autograd():
    q, k, v = (torch.randn(1, 2, 256, 16, requires_grad=True) for _ in range(3))
    ours = saved_bytes(scaled_dot_product_attention, [q, k, v])
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
    q, k, v = (torch.randn(1, 1, 1024, 16, requires_grad=True) for _ in range(3))
    ours = peak_bytes(scaled_dot_product_attention, [q, k, v])
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
