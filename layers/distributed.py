"""The launcher for ``torch.distributed`` and the checks that run in each process.

Taught in the chapter "Custom layers in practice" (``book/practice.ipynb``).

:func:`launch` starts ``P`` CPU processes with the gloo backend (for the tests
and the chapter) and returns each one's result. Each check below runs in every
process and compares a distributed computation with the same computation in one
process:

- :func:`tensor_parallel_check`: the Megatron-style layers of
  :mod:`layers.parallel` (:class:`~layers.parallel.ColumnParallelLinear`,
  :class:`~layers.parallel.RowParallelLinear`) against one unsharded
  :class:`~layers.linear.Linear`, forward, backward and double backward.
- :func:`ddp_step_check`: one ``DistributedDataParallel`` SGD step of a
  ``layers`` MLP. :func:`parallel_checks` runs these two in one launch.

PyTorch's own engines take the package's layers too:

- :func:`dtensor_parallel_check`: ``parallelize_module`` with torch's
  ``ColwiseParallel`` / ``RowwiseParallel`` on an MLP of
  :class:`~layers.linear.Linear` (an ``nn.Linear`` subclass, so the plan
  accepts it). The same math as the Megatron layers, but the shards are
  ``DTensor`` parameters and the collectives are chosen by DTensor's sharding
  rules instead of being written out as Functions.
- :func:`fsdp_check`: FSDP2's ``fully_shard`` on a model of Conv2d,
  BatchNorm2d, ReLU, LayerNorm, MultiHeadAttention, Linear and GELU: each rank
  stores half of every parameter and all-gathers it for forward and backward.
  :func:`distributed_checks` runs these two in one launch.
"""

from __future__ import annotations

import copy
import datetime
import os
import socket
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from .activations import GELU, ReLU, relu
from .attention import MultiHeadAttention
from .conv import Conv2d
from .linear import Linear
from .normalization import BatchNorm2d, LayerNorm
from .parallel import ColumnParallelLinear, RowParallelLinear, _all_reduce

__all__ = [
    "free_port",
    "launch",
    "tensor_parallel_check",
    "ddp_step_check",
    "parallel_checks",
    "dtensor_parallel_check",
    "fsdp_check",
    "distributed_checks",
]


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
