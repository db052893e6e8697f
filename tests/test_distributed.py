"""PyTorch's distributed engines on the package's layers, on 2 CPU processes (gloo, loopback).

FSDP2's ``fully_shard`` on a model of ``layers.*`` and DTensor tensor
parallelism (``parallelize_module`` with torch's ``ColwiseParallel`` /
``RowwiseParallel`` on ``layers.Linear``) must give the loss and gradients of
one process. Both run in one launch, with a timeout so a hang cannot stall
the run (the timeout itself is tested last). The package's own Megatron-style
layers, with the tensor-parallel and DDP checks of ``layers.distributed``, are
tested in test_parallel.py.
"""

import pytest

from helpers import needs_gloo
from layers.distributed import distributed_checks, launch

pytestmark = needs_gloo


@pytest.fixture(scope="module")
def results():
    return launch(distributed_checks, world_size=2, timeout=120)


@pytest.mark.parametrize("rank", [0, 1])
def test_fsdp2_matches_one_process(results, rank):
    errors = results[rank]["fsdp"]
    assert errors["sharded"] == 0, "fully_shard left a parameter unsharded"
    expected = {"loss", "grad conv.weight", "grad bn.bias", "grad norm.weight",
                "grad attn.in_proj_weight", "grad attn.out_proj.bias", "grad fc1.weight", "grad fc2.bias"}
    assert set(errors) >= expected
    bad = {k: v for k, v in errors.items() if not v <= 1e-6}
    assert not bad, bad


@pytest.mark.parametrize("rank", [0, 1])
def test_dtensor_tensor_parallel_matches_one_process(results, rank):
    errors = results[rank]["dtensor tensor parallel"]
    assert errors["ours ran"] == 0, "LinearFunction did not run on the DTensor shards"
    assert errors["sharded"] == 0, "parallelize_module did not shard the weights"
    assert set(errors) >= {"loss", "grad 0.weight", "grad 0.bias", "grad 2.weight", "grad 2.bias"}
    bad = {k: v for k, v in errors.items() if not v <= 1e-6}
    assert not bad, bad


def test_launch_times_out():
    with pytest.raises(TimeoutError, match="did not finish"):
        launch(_sleep, world_size=2, timeout=0.5)


def _sleep(rank, world_size):
    import time
    time.sleep(30)
