"""Tensor-parallel linear layers and a DDP step on 2 CPU processes (gloo), against one process.

Both checks run in one launch (starting two Python processes that import torch
is the slow part); the launch has a timeout so a hang cannot stall the run.
"""

import pytest
import torch

from helpers import needs_gloo
from layers.distributed import launch, parallel_checks
from layers.linear import Linear
from layers.parallel import (ColumnParallelLinear, CopyToParallel, GatherFromParallel, ReduceFromParallel,
                             RowParallelLinear, ScatterToParallel)

pytestmark = needs_gloo


@pytest.fixture(scope="module")
def results():
    return launch(parallel_checks, world_size=2, timeout=120)


@pytest.mark.parametrize("rank", [0, 1])
def test_tensor_parallel_matches_unsharded_linear(results, rank):
    errors = results[rank]["tensor parallel"]
    assert len(errors) == 14 and "double backward grad row weight" in errors
    bad = {k: v for k, v in errors.items() if not v <= 1e-5}
    assert not bad, bad


@pytest.mark.parametrize("rank", [0, 1])
def test_ddp_step_matches_single_process(results, rank):
    errors = results[rank]["data parallel"]
    assert set(errors) >= {"loss", "grad 0.weight", "grad 2.bias", "param 0.weight", "param 2.bias"}
    bad = {k: v for k, v in errors.items() if not v <= 1e-6}
    assert not bad, bad


def test_single_process_layers_equal_linear():
    """Outside a process group the world size is 1 and the layers are plain Linear layers."""
    full = Linear(6, 4)
    x = torch.randn(3, 6)
    col = ColumnParallelLinear(6, 4).load_full(full)
    row = RowParallelLinear(6, 4, input_is_parallel=False).load_full(full)
    torch.testing.assert_close(col(x), full(x))
    torch.testing.assert_close(row(x), full(x))


def test_bad_inputs():
    with pytest.raises(ValueError, match="ColumnParallelLinear: expected input of size 6 in dimension -1, got 5"):
        ColumnParallelLinear(6, 4)(torch.randn(2, 5))
    with pytest.raises(TypeError, match="RowParallelLinear: expected input to be a floating-point tensor"):
        RowParallelLinear(6, 4)(torch.ones(2, 6, dtype=torch.int64))


@pytest.mark.parametrize("layer", ["column", "row"])
def test_check_layer_single_process(layer):
    """At world size 1 both layers are a Linear: the full harness against nn.Linear (same parameter names)."""
    from layers.testing import check_layer
    ours = ColumnParallelLinear(5, 4) if layer == "column" else RowParallelLinear(5, 4, input_is_parallel=False)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    check_layer(ours.double(), torch.nn.Linear(5, 4).double(), (x,))


def test_parallel_mlp_trains_single_process():
    from helpers import sgd_step_lowers_loss
    torch.manual_seed(0)
    model = torch.nn.Sequential(ColumnParallelLinear(6, 8, gather_output=False), torch.nn.ReLU(),
                                RowParallelLinear(8, 2))
    before, after = sgd_step_lowers_loss(model, torch.randn(16, 6), torch.randn(16, 2))
    assert after < before


def test_device_and_dtype_honoured():
    col = ColumnParallelLinear(4, 2, dtype=torch.float64, device="meta")
    row = RowParallelLinear(4, 2, dtype=torch.float64, device="meta")
    for p in (*col.parameters(), *row.parameters()):
        assert p.dtype == torch.float64 and p.device.type == "meta"


@pytest.mark.parametrize("fn", [CopyToParallel, ReduceFromParallel, GatherFromParallel, ScatterToParallel])
def test_communication_functions_compose_with_torch_func(fn):
    """At world size 1 each Function is the identity: vmap, jvp, jacrev, jacfwd and hessian see that."""
    from torch.func import hessian, jacfwd, jacrev, jvp, vmap
    x, t = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    eye = torch.eye(12, dtype=torch.float64).reshape(3, 4, 3, 4)
    torch.testing.assert_close(jvp(fn.apply, (x,), (t,)), (x, t))
    torch.testing.assert_close(vmap(fn.apply, in_dims=1, out_dims=1)(x), x)
    torch.testing.assert_close(jacrev(fn.apply)(x), eye)
    torch.testing.assert_close(jacfwd(fn.apply)(x), eye)
    torch.testing.assert_close(hessian(lambda x: fn.apply(x).pow(3).sum())(x).reshape(12, 12),
                               torch.diag(6 * x.reshape(-1)))


@pytest.mark.parametrize("how", ["compile", "export"])
def test_parallel_mlp_compiles_and_exports_single_process(how):
    torch.manual_seed(0)
    model = torch.nn.Sequential(ColumnParallelLinear(6, 8, gather_output=False), torch.nn.ReLU(),
                                RowParallelLinear(8, 2))
    x = torch.randn(4, 6)
    if how == "compile":
        torch._dynamo.reset()
        other = torch.compile(model, fullgraph=True, backend="aot_eager")
    else:
        other = torch.export.export(model, (x,)).module()
    torch.testing.assert_close(other(x), model(x))
    other(x).sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e)


def test_autocast_runs_in_lower_precision_like_nn_linear():
    model = torch.nn.Sequential(ColumnParallelLinear(6, 8, gather_output=False), RowParallelLinear(8, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.randn(3, 6))
        want = torch.nn.functional.linear(torch.randn(3, 6), torch.randn(2, 6), torch.randn(2))
    assert y.dtype == want.dtype == torch.bfloat16
