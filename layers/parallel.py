"""Tensor-parallel linear layers (as in Megatron-LM) and the four communication Functions they use.

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
:class:`~layers.linear.LinearFunction`.

The process launcher and the per-process checks (these layers against one
process, a DDP step, and PyTorch's own DTensor and FSDP2 engines on the
package's layers) live in :mod:`layers.distributed`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .composable import autocast_dtype
from ._validation import check_same_device, check_same_dtype, check_tensor
from .linear import Linear, compilable_apply, linear

__all__ = [
    "CopyToParallel",
    "ReduceFromParallel",
    "GatherFromParallel",
    "ScatterToParallel",
    "ColumnParallelLinear",
    "RowParallelLinear",
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
