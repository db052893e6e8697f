"""Tensor-parallel linear layers (as in Megatron-LM) and a small launcher for ``torch.distributed``.

Taught in the chapter "Custom layers in practice" (``book/practice.ipynb``).

A :class:`ColumnParallelLinear` splits the weight's output rows across ``P``
processes: each process computes a slice of the output features. A
:class:`RowParallelLinear` splits the weight's input columns: each process
computes a partial sum that one all-reduce adds up. Chained (column, then row)
they form a parallel MLP that needs one all-reduce in forward and one in
backward, which is Megatron-LM's design. The communication lives in four tiny
``autograd.Function`` s whose backward is the transpose of their forward:

=============================  ===============================  ===============================
Function                       forward                          backward
=============================  ===============================  ===============================
:class:`CopyToParallel`        identity                         all-reduce (sum)
:class:`ReduceFromParallel`    all-reduce (sum)                 identity
:class:`GatherFromParallel`    all-gather the last dimension    keep this rank's slice
:class:`ScatterToParallel`     keep this rank's slice           all-gather the last dimension
=============================  ===============================  ===============================

Each backward is another of the four Functions (the transpose of an
all-reduce-in-forward is an identity-in-forward, and so on), so the
backward is itself differentiable and double backward works across
processes too. Each has a ``jvp`` (forward-mode: the tangent goes through
the same collective as the value) and an explicit ``vmap`` rule (the
collective runs once on the whole batch). At world size 1 they are plain
views, copies and slices.

The layers call :func:`layers.linear.linear` for the local matrix product, so
the gradients of the shards come from the hand-written
:class:`~layers.linear.LinearFunction`. :func:`launch` starts ``P`` CPU
processes with the gloo backend (for the tests and the chapter).

PyTorch's own engines take the package's layers too, and the per-process
checks below compare each with one process:

- :func:`dtensor_parallel_check`: ``parallelize_module`` with torch's
  ``ColwiseParallel`` / ``RowwiseParallel`` on an MLP of
  :class:`~layers.linear.Linear` (an ``nn.Linear`` subclass, so the plan
  accepts it). The same math as the Megatron layers here, but the shards are
  ``DTensor`` parameters and the collectives are chosen by DTensor's sharding
  rules instead of being written out as the four Functions above.
- :func:`fsdp_check`: FSDP2's ``fully_shard`` on a model of Conv2d,
  BatchNorm2d, ReLU, LayerNorm, MultiHeadAttention, Linear and GELU: each rank
  stores half of every parameter and all-gathers it for forward and backward.
"""

from __future__ import annotations

import datetime
import copy
import math
import os
import socket
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from .composable import autocast_dtype
from ._validation import check_same_device, check_same_dtype, check_tensor
from .activations import GELU, ReLU, relu
from .attention import MultiHeadAttention
from .conv import Conv2d
from .linear import Linear, compilable_apply, linear
from .normalization import BatchNorm2d, LayerNorm

__all__ = [
    "CopyToParallel",
    "ReduceFromParallel",
    "GatherFromParallel",
    "ScatterToParallel",
    "ColumnParallelLinear",
    "RowParallelLinear",
    "free_port",
    "launch",
    "tensor_parallel_check",
    "ddp_step_check",
    "parallel_checks",
    "dtensor_parallel_check",
    "fsdp_check",
    "distributed_checks",
]


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(x: Tensor) -> Tensor:
    """Sum of ``x`` over all processes (a new tensor; ``x`` is untouched)."""
    _, world = _world()
    out = x.clone()
    if world > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def _all_gather_last(x: Tensor) -> Tensor:
    """Concatenate every process's ``x`` along the last dimension: ``(*, n) -> (*, P n)``."""
    _, world = _world()
    if world == 1:
        return x.clone()
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=-1)                            # (*, P n)


def _my_slice_last(x: Tensor) -> Tensor:
    """This rank's equal slice of the last dimension: ``(*, P n) -> (*, n)``."""
    rank, world = _world()
    n = x.shape[-1] // world
    return x[..., rank * n:(rank + 1) * n].contiguous()      # (*, n)


def _batched_apply(fn: Callable, in_dims: tuple, x: Tensor) -> tuple[Tensor, int | None]:
    """vmap rule of a collective: run it once on the whole batch (batch moved to dim 0).

    Each sample's collective is the same collective on a slice, so one call on
    the batched tensor does them all (a collective cannot run on vmap's
    per-sample wrappers).
    """
    if in_dims[0] is None:
        return fn(x), None
    return fn(x.movedim(in_dims[0], 0)), 0


class CopyToParallel(torch.autograd.Function):
    r"""Megatron's :math:`f`: identity in forward, all-reduce of the gradient in backward.

    Put before a column-parallel layer: every rank uses the same input, so the
    input's gradient is the sum of the ranks' partial gradients:
    :math:`\partial x = \sum_p g_p`. Forward-mode: :math:`\dot y = \dot x`.
    """

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x.view_as(x)                                    # (*)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        dx = _reduce_apply(grad_out)                 # (*) sum over ranks
        return dx

    @staticmethod
    def jvp(ctx, x_t: Tensor) -> Tensor:
        return x_t.view_as(x_t)                                # (*)

    @staticmethod
    def vmap(info, in_dims, x):
        return _batched_apply(_copy_apply, in_dims, x)


_copy_apply = compilable_apply(CopyToParallel)


class ReduceFromParallel(torch.autograd.Function):
    r"""Megatron's :math:`g`: all-reduce in forward, identity in backward.

    Put after a row-parallel layer: the ranks' partial products add up to the
    output, :math:`y = \sum_p x_p`, and the output's gradient (the same on
    every rank) reaches every partial product unchanged: :math:`\partial x_p = g`.
    Forward-mode: :math:`\dot y = \sum_p \dot x_p`.
    """

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return _all_reduce(x)                                  # (*)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        dx = _copy_apply(grad_out)                 # (*)
        return dx

    @staticmethod
    def jvp(ctx, x_t: Tensor) -> Tensor:
        return _all_reduce(x_t)                                # (*)

    @staticmethod
    def vmap(info, in_dims, x):
        return _batched_apply(_reduce_apply, in_dims, x)


_reduce_apply = compilable_apply(ReduceFromParallel)


class GatherFromParallel(torch.autograd.Function):
    r"""All-gather along the last dimension in forward; keep this rank's slice of the gradient in backward.

    :math:`y = [x_0, \dots, x_{P-1}]`, :math:`\partial x_p = g[..., p n:(p+1) n]`;
    forward-mode gathers the tangents.
    """

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return _all_gather_last(x)                             # (*, n) -> (*, P n)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        dx = _scatter_apply(grad_out)                 # (*, P n) -> (*, n)
        return dx

    @staticmethod
    def jvp(ctx, x_t: Tensor) -> Tensor:
        return _all_gather_last(x_t)                           # (*, n) -> (*, P n)

    @staticmethod
    def vmap(info, in_dims, x):
        return _batched_apply(_gather_apply, in_dims, x)


_gather_apply = compilable_apply(GatherFromParallel)


class ScatterToParallel(torch.autograd.Function):
    r"""Keep this rank's slice of the last dimension in forward; all-gather the gradient in backward.

    :math:`y = x[..., p n:(p+1) n]`, :math:`\partial x = [g_0, \dots, g_{P-1}]`;
    forward-mode slices the tangent.
    """

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return _my_slice_last(x)                               # (*, P n) -> (*, n)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        dx = _gather_apply(grad_out)                 # (*, n) -> (*, P n)
        return dx

    @staticmethod
    def jvp(ctx, x_t: Tensor) -> Tensor:
        return _my_slice_last(x_t)                             # (*, P n) -> (*, n)

    @staticmethod
    def vmap(info, in_dims, x):
        return _batched_apply(_scatter_apply, in_dims, x)


_scatter_apply = compilable_apply(ScatterToParallel)


def _shard_size(where: str, features: int, world: int, what: str) -> int:
    if features % world != 0:
        raise ValueError(f"{where}: expected {what} divisible by the world size {world}, got {features}")
    return features // world


def _allocate(layer: nn.Module, weight_shape: tuple[int, int], bias_size: int | None,
              device=None, dtype=None) -> None:
    """Give a shard its ``weight`` (and ``bias``, or a registered ``None``), then initialize them."""
    layer.weight = nn.Parameter(torch.empty(weight_shape, device=device, dtype=dtype))
    if bias_size is not None:
        layer.bias = nn.Parameter(torch.empty(bias_size, device=device, dtype=dtype))
    else:
        layer.register_parameter("bias", None)
    layer.reset_parameters()


def _init_like_linear(layer: nn.Module) -> None:
    """U(-1/sqrt(in_features), 1/sqrt(in_features)) for a shard's weight and bias, as nn.Linear draws them."""
    bound = 1 / math.sqrt(layer.in_features) if layer.in_features > 0 else 0
    nn.init.uniform_(layer.weight, -bound, bound)
    if layer.bias is not None:
        nn.init.uniform_(layer.bias, -bound, bound)


class ColumnParallelLinear(nn.Module):
    r"""Linear layer whose output features are split across processes: :math:`Y_p = X W_p^\top + b_p`.

    Rank :math:`p` holds rows :math:`W_p` of the full weight
    :math:`W = [W_0; \dots; W_{P-1}]` (shape ``(out/P, in)``) and the matching
    slice of the bias. Forward applies :class:`CopyToParallel` to the input (so
    backward all-reduces the input gradient) and, if ``gather_output``,
    :class:`GatherFromParallel` to the output.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample of the *full* layer; divisible
            by the world size.
        bias: learn an additive bias. Default: ``True``.
        gather_output: all-gather the output so every rank holds all
            ``out_features``; if ``False`` each rank keeps its ``out/P`` slice
            (what a following :class:`RowParallelLinear` wants).
        device, dtype: where and in which dtype to create the shard.

    Shape:
        - Input: :math:`(*, H_{in})`, the same on every rank.
        - Output: :math:`(*, H_{out})` if ``gather_output`` else :math:`(*, H_{out}/P)`.

    Attributes:
        weight: this rank's ``(out_features / P, in_features)`` shard.
        bias: this rank's ``(out_features / P,)`` shard, or ``None``.

    Examples:
        >>> layer = ColumnParallelLinear(8, 4)           # outside a process group P = 1
        >>> layer(torch.randn(2, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 gather_output: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.rank, self.world_size = _world()
        self.in_features, self.out_features = in_features, out_features
        self.gather_output = gather_output
        local = _shard_size("ColumnParallelLinear", out_features, self.world_size, "out_features")
        _allocate(self, (local, in_features), local if bias else None, device, dtype)   # this rank's rows

    def reset_parameters(self) -> None:
        """Initialize the shard as the matching rows of an ``nn.Linear`` initialization would be."""
        _init_like_linear(self)

    @torch.no_grad()
    def load_full(self, full: Linear | nn.Linear) -> ColumnParallelLinear:
        """Copy this rank's rows of an unsharded layer's weight and bias into the shard."""
        n = self.weight.shape[0]
        rows = slice(self.rank * n, (self.rank + 1) * n)
        self.weight.copy_(full.weight[rows])
        if self.bias is not None:
            self.bias.copy_(full.bias[rows])
        return self

    def forward(self, input: Tensor) -> Tensor:
        check_tensor(input, "ColumnParallelLinear", min_ndim=1, size={-1: self.in_features})
        check_same_device("ColumnParallelLinear", input, self.weight)
        if autocast_dtype(input.device.type, "lower") is None:   # under autocast linear casts
            check_same_dtype("ColumnParallelLinear", input, self.weight)
        x = _copy_apply(input)                            # backward: all-reduce dX
        y = linear(x, self.weight, self.bias)                  # (*, out/P)
        return _gather_apply(y) if self.gather_output else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, world_size={self.world_size}, gather_output={self.gather_output}")


class RowParallelLinear(nn.Module):
    r"""Linear layer whose input features are split across processes: :math:`Y = \sum_p X_p W_p^\top + b`.

    Rank :math:`p` holds columns :math:`W_p` of the full weight
    :math:`W = [W_0, \dots, W_{P-1}]` (shape ``(out, in/P)``); the partial
    products are summed by :class:`ReduceFromParallel`, and the bias (kept whole
    on every rank) is added once, after the sum.

    Args:
        in_features: size of each input sample of the *full* layer; divisible by
            the world size.
        out_features: size of each output sample.
        bias: learn an additive bias. Default: ``True``.
        input_is_parallel: the input is already this rank's ``in/P`` slice (the
            output of a :class:`ColumnParallelLinear` with
            ``gather_output=False``); if ``False`` the full input is sliced here
            with :class:`ScatterToParallel`.
        device, dtype: where and in which dtype to create the shard.

    Shape:
        - Input: :math:`(*, H_{in}/P)` if ``input_is_parallel`` else :math:`(*, H_{in})`.
        - Output: :math:`(*, H_{out})`, the same on every rank.

    Attributes:
        weight: this rank's ``(out_features, in_features / P)`` shard.
        bias: the full ``(out_features,)`` bias (replicated), or ``None``.

    Examples:
        >>> layer = RowParallelLinear(8, 4, input_is_parallel=False)
        >>> layer(torch.randn(2, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 input_is_parallel: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.rank, self.world_size = _world()
        self.in_features, self.out_features = in_features, out_features
        self.input_is_parallel = input_is_parallel
        self.local_in = _shard_size("RowParallelLinear", in_features, self.world_size, "in_features")
        _allocate(self, (out_features, self.local_in), out_features if bias else None,
                  device, dtype)   # its columns

    def reset_parameters(self) -> None:
        """Initialize the shard as the matching columns of an ``nn.Linear`` initialization would be."""
        _init_like_linear(self)

    @torch.no_grad()
    def load_full(self, full: Linear | nn.Linear) -> RowParallelLinear:
        """Copy this rank's columns of an unsharded layer's weight (and the whole bias) into the shard."""
        cols = slice(self.rank * self.local_in, (self.rank + 1) * self.local_in)
        self.weight.copy_(full.weight[:, cols])
        if self.bias is not None:
            self.bias.copy_(full.bias)
        return self

    def forward(self, input: Tensor) -> Tensor:
        expected = self.local_in if self.input_is_parallel else self.in_features
        check_tensor(input, "RowParallelLinear", min_ndim=1, size={-1: expected})
        check_same_device("RowParallelLinear", input, self.weight)
        if autocast_dtype(input.device.type, "lower") is None:   # under autocast linear casts
            check_same_dtype("RowParallelLinear", input, self.weight)
        x = input if self.input_is_parallel else _scatter_apply(input)   # (*, in/P)
        partial = linear(x, self.weight, None)                 # (*, in/P) @ (in/P, out) -> (*, out)
        y = _reduce_apply(partial)                  # (*, out), sum over ranks
        return y if self.bias is None else y + self.bias.to(y.dtype)   # bias cast only under autocast

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, world_size={self.world_size}, "
                f"input_is_parallel={self.input_is_parallel}")


# ------------------------------------------------------------------------------ launcher
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0 and read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, world_size: int, port: int, results, args: tuple) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        results.put((rank, fn(rank, world_size, *args)))
    finally:
        dist.destroy_process_group()


def launch(fn: Callable, world_size: int = 2, args: tuple = (), timeout: float = 120.0) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` CPU processes joined by gloo.

    ``fn`` must be importable (defined in a module, not in a notebook cell or a
    ``lambda``), because the processes are started with ``spawn``. Each
    process's return value (picklable) comes back in rank order.

    Args:
        fn: the per-process function.
        world_size: number of processes.
        args: extra positional arguments for ``fn``.
        timeout: seconds before the processes are killed and ``TimeoutError`` is
            raised, so a hang cannot stall a test run.

    Returns:
        ``[fn(0, ...), fn(1, ...), ...]``.
    """
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    port = free_port()
    procs = mp.start_processes(_entry, args=(fn, world_size, port, results, args),
                               nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    out: dict[int, object] = {}
    try:
        while True:
            while not results.empty():                         # drain, so no child blocks on a full pipe
                rank, value = results.get()
                out[rank] = value
            if procs.join(timeout=0.1):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"launch: {world_size} processes did not finish in {timeout:.0f} s")
    finally:
        for p in procs.processes:
            if p.is_alive():
                p.kill()
    while not results.empty():
        rank, value = results.get()
        out[rank] = value
    return [out[r] for r in range(world_size)]


# ------------------------------------------------------------------- checks run per process
def _max_err(a: Tensor, b: Tensor) -> float:
    return (a.detach() - b.detach()).abs().max().item()


@torch.random.fork_rng()                                          # seeds its own draws, leaves the caller's RNG alone
def tensor_parallel_check(rank: int, world_size: int, seed: int = 0) -> dict[str, float]:
    """Compare the tensor-parallel layers on this rank with one unsharded :class:`~layers.linear.Linear`.

    Run under :func:`launch`. Every rank builds the same unsharded two-layer MLP
    ``Linear(8, 16) -> relu -> Linear(16, 4)`` (same seed), then the parallel
    MLP ``ColumnParallelLinear(gather_output=False) -> relu -> RowParallelLinear``
    from its shards, runs forward and backward on the same input and upstream
    gradient, and also checks a lone ``ColumnParallelLinear`` with
    ``gather_output=True`` and a lone ``RowParallelLinear`` with
    ``input_is_parallel=False``.

    It also differentiates the MLP's input gradient again (``create_graph=True``),
    which runs the Functions' backwards backward, across the processes.

    Returns:
        ``{quantity: max abs difference}`` for outputs, input gradients, this
        rank's slices of the weight and bias gradients, and the double-backward
        weight gradients.
    """
    torch.manual_seed(seed)                                    # the same on every rank
    fc1, fc2 = Linear(8, 16), Linear(16, 4)
    x = torch.randn(6, 8)
    g = torch.randn(6, 4)                                      # upstream gradient
    x_ref = x.clone().requires_grad_(True)
    y_ref = fc2(relu(fc1(x_ref)))
    y_ref.backward(g)

    col = ColumnParallelLinear(8, 16, gather_output=False).load_full(fc1)
    row = RowParallelLinear(16, 4, input_is_parallel=True).load_full(fc2)
    x_par = x.clone().requires_grad_(True)
    y_par = row(relu(col(x_par)))                              # (6, 4) on every rank
    y_par.backward(g)
    n1, n2 = col.weight.shape[0], row.weight.shape[1]
    rows, cols = slice(rank * n1, (rank + 1) * n1), slice(rank * n2, (rank + 1) * n2)
    errors = {
        "mlp output": _max_err(y_par, y_ref),
        "mlp grad input": _max_err(x_par.grad, x_ref.grad),
        "column grad weight": _max_err(col.weight.grad, fc1.weight.grad[rows]),
        "column grad bias": _max_err(col.bias.grad, fc1.bias.grad[rows]),
        "row grad weight": _max_err(row.weight.grad, fc2.weight.grad[:, cols]),
        "row grad bias": _max_err(row.bias.grad, fc2.bias.grad),
    }

    # double backward through the collectives: d/dW of (dL/dx . v), across processes
    v = torch.randn(6, 8)
    fc1.zero_grad(), fc2.zero_grad(), col.zero_grad(), row.zero_grad()
    for model, x_in in ((lambda t: fc2(relu(fc1(t))), x_ref), (lambda t: row(relu(col(t))), x_par)):
        (dx,) = torch.autograd.grad(model(x_in), x_in, g, create_graph=True)
        (dx * v).sum().backward()
    errors["double backward grad column weight"] = _max_err(col.weight.grad, fc1.weight.grad[rows])
    errors["double backward grad row weight"] = _max_err(row.weight.grad, fc2.weight.grad[:, cols])

    # each layer on its own, with the other communication pattern
    fc1.zero_grad()
    col_g = ColumnParallelLinear(8, 16, gather_output=True).load_full(fc1)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    g16 = torch.randn(6, 16)
    y1 = col_g(x1)
    y1.backward(g16)
    y2 = fc1(x2)
    y2.backward(g16)
    errors["gathered column output"] = _max_err(y1, y2)
    errors["gathered column grad input"] = _max_err(x1.grad, x2.grad)
    errors["gathered column grad weight"] = _max_err(col_g.weight.grad, fc1.weight.grad[rows])

    fc2.zero_grad()
    row_s = RowParallelLinear(16, 4, input_is_parallel=False).load_full(fc2)
    h = torch.randn(6, 16)
    h1, h2 = h.clone().requires_grad_(True), h.clone().requires_grad_(True)
    y1 = row_s(h1)
    y1.backward(g)
    y2 = fc2(h2)
    y2.backward(g)
    errors["scattered row output"] = _max_err(y1, y2)
    errors["scattered row grad input"] = _max_err(h1.grad, h2.grad)
    errors["scattered row grad weight"] = _max_err(row_s.weight.grad, fc2.weight.grad[:, cols])
    return errors


@torch.random.fork_rng()                                          # seeds its own draws, leaves the caller's RNG alone
def ddp_step_check(rank: int, world_size: int, seed: int = 0) -> dict[str, float]:
    """One data-parallel SGD step of a ``layers`` MLP against the same step in one process.

    Run under :func:`launch`. Every rank builds the same model ``Linear(8, 16)
    -> ReLU -> Linear(16, 3)`` and the same batch of 8; the reference copy
    trains on the whole batch in this process, while the
    :class:`torch.nn.parallel.DistributedDataParallel` copy trains on this
    rank's ``8 / world_size`` rows and averages gradients over the ranks. With
    equal shards and a mean loss the two gradients are the same.

    Returns:
        ``{"loss", "grad <name>", "param <name>"}``: the max abs differences of
        the loss averaged over ranks, of each gradient, and of each parameter
        after one SGD step.
    """
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(seed)
    model = nn.Sequential(Linear(8, 16), ReLU(), Linear(16, 3))
    reference = copy.deepcopy(model)
    x, y = torch.randn(8, 8), torch.randint(0, 3, (8,))
    per_rank = len(x) // world_size
    shard = slice(rank * per_rank, (rank + 1) * per_rank)

    opt_ref = torch.optim.SGD(reference.parameters(), lr=0.1)
    loss_ref = nn.functional.cross_entropy(reference(x), y)
    loss_ref.backward()

    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(ddp(x[shard]), y[shard])
    loss.backward()                                            # DDP all-reduces (averages) the gradients
    mean_loss = _all_reduce(loss.detach()) / world_size

    errors = {"loss": _max_err(mean_loss, loss_ref)}
    for (name, p), p_ref in zip(model.named_parameters(), reference.parameters()):
        errors[f"grad {name}"] = _max_err(p.grad, p_ref.grad)
    opt.step()
    opt_ref.step()
    for (name, p), p_ref in zip(model.named_parameters(), reference.parameters()):
        errors[f"param {name}"] = _max_err(p, p_ref)
    return errors


def parallel_checks(rank: int, world_size: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Both :func:`tensor_parallel_check` and :func:`ddp_step_check` in one launch (one process start-up)."""
    return {"tensor parallel": tensor_parallel_check(rank, world_size, seed),
            "data parallel": ddp_step_check(rank, world_size, seed)}


# ---------------------------------------------------------------- torch's own engines
def _backward_nodes(t: Tensor) -> set[str]:
    """Names of every autograd node that produced ``t`` (to see which Functions ran)."""
    seen, stack, names = set(), [t.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    return names


def _grad_errors(model: nn.Module, reference: nn.Module) -> dict[str, float]:
    """Max abs difference of each parameter's gradient (a DTensor's is gathered first)."""
    errors = {}
    for (name, p), p_ref in zip(model.named_parameters(), reference.parameters()):
        grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        errors[f"grad {name}"] = _max_err(grad, p_ref.grad)
    return errors


@torch.random.fork_rng()                                          # seeds its own draws, leaves the caller's RNG alone
def dtensor_parallel_check(rank: int, world_size: int, seed: int = 0) -> dict[str, float]:
    """DTensor tensor parallelism on a ``layers`` MLP against the same MLP in one process.

    Run under :func:`launch`. Every rank builds ``Linear(8, 16) -> ReLU ->
    Linear(16, 4)`` (same seed) and a copy; the model is parallelized with
    ``parallelize_module(model, mesh, {"0": ColwiseParallel(), "2":
    RowwiseParallel()})``, so its weights become ``DTensor`` shards (rows of the
    first, columns of the second) and :class:`~layers.linear.LinearFunction`
    runs on them. Both copies see the same batch.

    Returns:
        ``{"loss", "grad <name>", "ours ran", "sharded"}``: max abs differences
        of the loss and of each full gradient; ``"ours ran"`` is 0 when the
        autograd graph contains ``LinearFunctionBackward`` (else 1), and
        ``"sharded"`` is 0 when the weights are DTensors holding
        ``1 / world_size`` of the rows / columns.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    torch.manual_seed(seed)                                    # the same on every rank
    model = nn.Sequential(Linear(8, 16), ReLU(), Linear(16, 4))
    reference = copy.deepcopy(model)
    x, target = torch.randn(6, 8), torch.randn(6, 4)
    mesh = init_device_mesh("cpu", (world_size,))
    parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})

    loss = nn.functional.mse_loss(model(x), target)
    loss.backward()
    loss_ref = nn.functional.mse_loss(reference(x), target)
    loss_ref.backward()
    w1, w2 = model[0].weight, model[2].weight
    sharded = (isinstance(w1, DTensor) and w1.to_local().shape == (16 // world_size, 8)
               and isinstance(w2, DTensor) and w2.to_local().shape == (4, 16 // world_size))
    return {"loss": _max_err(loss, loss_ref), **_grad_errors(model, reference),
            "ours ran": float("LinearFunctionBackward" not in _backward_nodes(loss)),
            "sharded": float(not sharded)}


class _FSDPNet(nn.Module):
    """Conv2d -> BatchNorm2d -> ReLU, then the pixels as tokens: LayerNorm -> attention -> MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = Conv2d(3, 8, 3, padding=1)
        self.bn = BatchNorm2d(8)
        self.act = ReLU()
        self.norm = LayerNorm(8)
        self.attn = MultiHeadAttention(8, 2, batch_first=True)   # (B, tokens, 8), as the tokens come
        self.fc1 = Linear(8, 16)
        self.gelu = GELU()
        self.fc2 = Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.bn(self.conv(x)))                    # (B, 8, H, W)
        h = self.norm(h.flatten(2).transpose(1, 2))            # (B, H W, 8): pixels as tokens
        h = h + self.attn(h, h, h, need_weights=False)[0]      # (B, H W, 8): attention over the pixels
        return self.fc2(self.gelu(self.fc1(h))).mean(1)        # (B, 3)


@torch.random.fork_rng()                                          # seeds its own draws, leaves the caller's RNG alone
def fsdp_check(rank: int, world_size: int, seed: int = 0) -> dict[str, float]:
    """FSDP2 (``fully_shard``) on a model of ``layers`` against the same model in one process.

    Run under :func:`launch`. Every rank builds the same model (Conv2d,
    BatchNorm2d, ReLU, LayerNorm, MultiHeadAttention, Linear, GELU) and the same
    global batch of 4 images; ``fully_shard`` is applied to each layer with
    parameters and to the root, so each rank stores half of every parameter.
    The sharded model trains on this rank's ``4 / world_size`` images and FSDP
    averages the gradients; the reference averages the losses of the same
    shards in one process (batch norm sees each shard's statistics in both).

    Returns:
        ``{"loss", "grad <name>", "sharded"}``: max abs differences of the loss
        averaged over ranks and of each full gradient; ``"sharded"`` is 0 when
        every parameter is a DTensor holding part of the tensor.
    """
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.manual_seed(seed)
    model = _FSDPNet()
    reference = copy.deepcopy(model)
    x, target = torch.randn(4, 3, 4, 4), torch.randn(4, 3)
    per_rank = len(x) // world_size
    for layer in (model.conv, model.bn, model.norm, model.attn, model.fc1, model.fc2):
        fully_shard(layer)
    fully_shard(model)

    shard = slice(rank * per_rank, (rank + 1) * per_rank)
    loss = nn.functional.mse_loss(model(x[shard]), target[shard])
    loss.backward()                                            # FSDP reduce-scatters (averages) the gradients
    mean_loss = _all_reduce(loss.detach()) / world_size
    loss_ref = sum(nn.functional.mse_loss(reference(x[r * per_rank:(r + 1) * per_rank]),
                                          target[r * per_rank:(r + 1) * per_rank])
                   for r in range(world_size)) / world_size
    loss_ref.backward()
    sharded = all(isinstance(p, DTensor) and p.to_local().numel() < p.numel() for p in model.parameters())
    return {"loss": _max_err(mean_loss, loss_ref), **_grad_errors(model, reference),
            "sharded": float(not sharded)}


def distributed_checks(rank: int, world_size: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """:func:`fsdp_check` and :func:`dtensor_parallel_check` in one launch (one process start-up)."""
    return {"fsdp": fsdp_check(rank, world_size, seed),
            "dtensor tensor parallel": dtensor_parallel_check(rank, world_size, seed)}
