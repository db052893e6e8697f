"""PyTorch's own test samples (module_db, op_db) through our counterparts, torch as the oracle.

One test per pair and dtype fails on any mismatch or crash and prints the pair's line (samples,
matched, unsupported with the reasons); ``test_coverage`` asserts that at least 85% of all
counted samples match. The harness itself is in ``torch_samples.py``; the ``test_harness_*``
tests check that it finds a wrong forward, a wrong backward and a crash, and that it classifies
a refusal.

The per-layer table for the API pages:
``python tests/test_torch_samples.py --markdown book/api/torch_support.md``.
"""

import argparse
import functools
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torch_samples as ts

# torch's own notice for one Conv2d sample (padding="same", even kernel), not ours
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

DTYPES = {"float64": torch.float64, "float32": torch.float32}
MIN_COVERAGE = 0.85


@functools.cache
def _outcomes(name: str, dtype_name: str) -> tuple:
    torch.manual_seed(0)
    pair = next(p for p in ts.PAIRS if p.name == name)
    return tuple(ts.run_pair(pair, DTYPES[dtype_name]))


def _all_results() -> dict:
    return {p.name: [o for d in DTYPES for o in _outcomes(p.name, d)] for p in ts.PAIRS}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("name", [p.name for p in ts.PAIRS])
def test_samples(name, dtype_name):
    outcomes = _outcomes(name, dtype_name)
    print(ts.line(f"{name} {dtype_name}", list(outcomes)))
    assert outcomes, f"{name}: torch's database gives no samples"
    bad = [o for o in outcomes if o.status in ("mismatch", "crash")]
    assert not bad, f"{len(bad)} of {len(outcomes)} samples fail:\n" + "\n".join(
        f"{o.status}: {o.sample}\n    {o.detail}" for o in bad[:12])


def test_coverage():
    results = _all_results()
    for name, outcomes in results.items():
        print(ts.line(name, outcomes))
    matched = sum(ts.coverage(o)[0] for o in results.values())
    counted = sum(ts.coverage(o)[1] for o in results.values())
    print(f"total: {matched} of {counted} counted samples matched ({matched / counted:.1%})")
    assert matched >= MIN_COVERAGE * counted, (
        f"{matched} of {counted} samples matched ({matched / counted:.1%}), "
        f"below {MIN_COVERAGE:.0%}")


# ------------------------------------------------------------------------- the harness itself
LINEAR_OP = next(p for p in ts.OP_PAIRS if p.name == "F.linear")
LINEAR_MODULE = next(p for p in ts.MODULE_PAIRS if p.name == "nn.Linear")


class _LinearWrongBackward(torch.autograd.Function):
    """F.linear forward; backward with the input gradient 0.1% too large."""

    @staticmethod
    def forward(input, weight, bias):
        return F.linear(input, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1])
        ctx.has_bias = inputs[2] is not None

    @staticmethod
    def backward(ctx, grad_out):
        input, weight = ctx.saved_tensors
        dx = 1.001 * grad_out @ weight                                      # (*, in)
        dw = grad_out.reshape(-1, grad_out.shape[-1]).T @ input.reshape(-1, input.shape[-1])
        db = grad_out.reshape(-1, grad_out.shape[-1]).sum(0) if ctx.has_bias else None
        return dx, dw, db


def _statuses(pair, **changes):
    return ts.counts(ts.run_pair(ts.dataclasses.replace(pair, **changes), torch.float64))


def _only_empty_match(pair, **changes):
    """All samples mismatch except those with an empty input (nothing to differ in)."""
    outcomes = ts.run_pair(ts.dataclasses.replace(pair, **changes), torch.float64)
    matched = [o.sample for o in outcomes if o.status == "matched"]
    return (ts.counts(outcomes)["mismatch"] > 0 and all("T[0, " in m for m in matched)
            and set(ts.counts(outcomes)) <= {"mismatch", "matched"}), outcomes


def test_harness_matches_torch_itself():
    def torch_linear(input, weight, bias=None):
        return F.linear(input, weight, bias)

    op = _statuses(LINEAR_OP, ours=torch_linear)
    module = _statuses(LINEAR_MODULE, ours=nn.Linear)
    assert set(op) == {"matched"} and set(module) == {"matched"}, (op, module)


def _torch_as_ours(pair):
    """The pair with torch's own module or op in the place of ours."""
    if pair.is_module:
        return ts.dataclasses.replace(pair, ours=ts._databases()[0][pair.db_name].module_cls)

    def call(*args, **kwargs):
        return pair.torch_fn(*args, **kwargs)
    call.__signature__ = pair.torch_sig
    return ts.dataclasses.replace(pair, ours=call, refusals=())


@pytest.mark.parametrize("name", [p.name for p in ts.PAIRS])
def test_harness_torch_against_itself(name):
    """With torch in the place of ours every sample matches: no false alarm, and torch's
    valid samples are not turned into rejections by the way the harness calls them."""
    pair = _torch_as_ours(next(p for p in ts.PAIRS if p.name == name))
    got = ts.counts(ts.run_pair(pair, torch.float64))
    assert set(got) == {"matched"}, got


def test_harness_finds_wrong_forward():
    def shifted(input, weight, bias=None):
        return F.linear(input, weight, bias) + 1e-3

    class ShiftedLinear(nn.Linear):
        def forward(self, input):
            return super().forward(input) + 1e-3

    ok, outcomes = _only_empty_match(LINEAR_OP, ours=shifted)
    assert ok, ts.counts(outcomes)
    assert set(_statuses(LINEAR_MODULE, ours=ShiftedLinear)) == {"mismatch"}


def test_harness_finds_wrong_running_statistics():
    class DriftingBatchNorm2d(nn.BatchNorm2d):
        def forward(self, input):
            out = super().forward(input)
            if self.training and self.running_var is not None:
                with torch.no_grad():
                    self.running_var.mul_(1.01)
            return out

    pair = next(p for p in ts.MODULE_PAIRS if p.name == "nn.BatchNorm2d")
    outcomes = ts.run_pair(ts.dataclasses.replace(pair, ours=DriftingBatchNorm2d), torch.float64)
    drifted = [o for o in outcomes if o.status == "mismatch"]
    assert drifted and all("state running_var" in o.detail for o in drifted), ts.counts(outcomes)
    assert all(o.status == "matched" for o in outcomes
               if o.sample.startswith("eval") or "track_running_stats=False" in o.sample)


def test_harness_finds_wrong_backward():
    def wrong(input, weight, bias=None):
        return _LinearWrongBackward.apply(input, weight, bias)

    ok, outcomes = _only_empty_match(LINEAR_OP, ours=wrong)
    assert ok, ts.counts(outcomes)


def test_harness_classifies_refusals_and_crashes():
    def refuses_bias(input, weight, bias=None):
        if bias is not None:
            raise ValueError("linear: bias is not supported")
        return F.linear(input, weight)

    def breaks(input, weight, bias=None):
        raise RuntimeError("something else went wrong")

    def renamed(x, weight, bias=None):
        return F.linear(x, weight, bias)

    refused = ts.run_pair(ts.dataclasses.replace(LINEAR_OP, ours=refuses_bias), torch.float64)
    assert ts.counts(refused) == {"matched": 9, "unsupported": 9}, ts.counts(refused)
    assert set(ts.reasons(refused)) == {"`bias`: ValueError: linear: bias is not supported"}
    allowed = ts.dataclasses.replace(LINEAR_OP, ours=refuses_bias,
                                     refusals=(("bias", lambda v: v is not None),))
    assert ts.counts(ts.run_pair(allowed, torch.float64)) == {"matched": 9, "refused": 9}
    assert set(_statuses(LINEAR_OP, ours=breaks)) == {"crash"}
    names = ts.run_pair(ts.dataclasses.replace(LINEAR_OP, ours=renamed), torch.float64)
    assert set(ts.reasons(names)) == {"`input` is named `x`"} and set(ts.counts(names)) == {
        "unsupported"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", type=Path, help="write the per-layer table to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", "Using padding='same'", UserWarning)
    results = _all_results()
    for name, outcomes in results.items():
        print(ts.line(name, outcomes))
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(ts.markdown(results))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
