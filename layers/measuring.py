"""Measuring tools: time, bytes saved for backward, peak memory and ATen operation counts.

Used by :mod:`layers.testing` (the ``needs_input_grad`` check counts operations),
by the benchmarks (``python -m benchmarks``, ``python -m benchmarks.kernels``) and by
the chapters (taught in "Custom layers in practice", ``book/practice.ipynb``), which
import them instead of writing their own.

* **Time** (:func:`time_step`): each step is warmed up, then the steps are timed
  in alternating blocks, the order reversed every other round (ours, built-in |
  built-in, ours | ...), so a burst of load on a shared machine hits both, and
  neither side always runs in the other's wake (its caches, its freed memory); the
  *minimum* time per call over the repeats is reported, the least disturbed
  estimate. On CUDA every block is bracketed by ``torch.cuda.synchronize()``.
* **Bytes saved for backward** (:func:`saved_bytes`): distinct storages that
  autograd keeps alive for backward, seen with
  ``torch.autograd.graph.saved_tensors_hooks``; deterministic on CPU.
* **Peak memory** (:class:`PeakMemory`, :func:`peak_bytes`): the largest total
  size of the tensors created during forward and backward, counted by a
  ``TorchDispatchMode`` (PyTorch keeps no allocator statistics on CPU);
  :func:`cuda_peak_bytes` uses the CUDA allocator's statistics.
* **Operations** (:class:`OpCounter`): the ATen operations run while active, their
  names, how many large tensors each reads and writes, and the largest tensor any of
  them returned.
* **Quiet profiling** (:func:`profile_table`, :func:`stderr_silenced`): the profiler's
  table without its log lines on standard error.
* **What the compiler sees** (:func:`compile_report`): graph breaks and the operators in
  Dynamo's and ``torch.export``'s graphs, the output on a fake tensor, the first compiled
  call's duration, and forward + backward time eager and compiled.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["CompileReport", "OpCounter", "PeakMemory", "compile_report", "cuda_peak_bytes", "format_compile_reports",
           "make_step", "parameters_of", "peak_bytes", "profile_table", "saved_bytes", "stderr_silenced", "time_step"]


# ----------------------------------------------------------------------------- steps
def parameters_of(fn) -> list[Tensor]:
    """The parameters of ``fn`` that require a gradient: ``fn.parameters()`` if it has one, else none."""
    get = getattr(fn, "parameters", None)
    return [p for p in get() if p.requires_grad] if callable(get) else []


def _first_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def make_step(fn: Callable, inputs: Sequence, generator: torch.Generator | None = None) -> Callable[[], None]:
    """A closure running ``fn(*inputs)`` forward and backward once, with every ``.grad`` reset to ``None`` first.

    The upstream gradient is drawn once (from ``generator``) and reused by every call;
    for a tuple output (``MultiHeadAttention``) the first element is differentiated.
    """
    leaves = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad] + parameters_of(fn)
    out = _first_output(fn(*inputs))
    grad = torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)

    def step() -> None:
        for t in leaves:
            t.grad = None
        _first_output(fn(*inputs)).backward(grad)
    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------ time
def time_step(steps: Sequence[Callable[[], None]], device: torch.device | str = "cpu", warmup: int = 3,
               repeats: int = 7, min_block_s: float = 0.05) -> list[float]:
    """Minimum seconds per call of each step, timed in alternating blocks after a warm-up.

    Each step runs ``warmup`` times; a block size ``number`` is chosen so that a
    block of the slowest step lasts about ``min_block_s``; then ``repeats`` rounds
    each time one block of every step in turn. Returns, per step, the smallest
    block time divided by ``number``. The order of the steps is reversed every
    other round, so neither side always runs right after the other.

    Args:
        steps: callables without arguments (see :func:`make_step`).
        device: where they run (CUDA is synchronized around each block).
        warmup: untimed calls of each step first.
        repeats: rounds of alternating blocks.
        min_block_s: target duration of one block of the slowest step.
    """
    device = torch.device(device)
    for step in steps:
        for _ in range(warmup):
            step()
    _sync(device)
    slowest = 0.0
    for step in steps:
        t0 = time.perf_counter()
        step()
        _sync(device)
        slowest = max(slowest, time.perf_counter() - t0)
    number = max(1, int(min_block_s / max(slowest, 1e-9)))
    best = [float("inf")] * len(steps)
    for rnd in range(repeats):
        order = range(len(steps)) if rnd % 2 == 0 else reversed(range(len(steps)))
        for i in order:
            step = steps[i]
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(number):
                step()
            _sync(device)
            best[i] = min(best[i], (time.perf_counter() - t0) / number)
    return best


# ---------------------------------------------------------------------- saved bytes
def saved_bytes(fn: Callable, inputs: Sequence, include_inputs: bool = False) -> int:
    """Bytes of the distinct storages autograd saves for backward in ``fn(*inputs)``.

    Counted with ``torch.autograd.graph.saved_tensors_hooks``, which also sees
    what a custom ``autograd.Function`` stores with ``ctx.save_for_backward``
    (not tensors it keeps as plain ``ctx`` attributes). A storage saved twice
    counts once.

    Args:
        fn: a module or function.
        inputs: its positional arguments.
        include_inputs: also count saved inputs and parameters (which exist
            anyway); by default only what the graph keeps alive beyond them.
    """
    alive = set() if include_inputs else {
        t.untyped_storage().data_ptr() for t in list(inputs) + parameters_of(fn) if isinstance(t, Tensor)}
    seen: dict[int, int] = {}

    def pack(t: Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in alive and ptr != 0:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    del out
    return sum(seen.values())


# ----------------------------------------------------------------------- peak memory
class PeakMemory(TorchDispatchMode):
    """Live bytes, and their maximum, of the tensors that ATen ops create while the mode is active (CPU or CUDA).

    PyTorch keeps no allocator statistics on CPU, so this dispatch mode counts
    for itself: every ATen operation passes through ``__torch_dispatch__``;
    each storage an operation *returns* that is new (not one of its inputs'
    storages, as for an in-place or ``out=`` op, and not seen before, as for a
    view) adds its ``nbytes`` to :attr:`live`, and a ``weakref.finalize`` on the
    storage subtracts them when the storage is freed. :attr:`peak` is the
    largest value :attr:`live` reached. Used around forward and backward, it
    also sees the backward's ops (autograd runs them through the dispatcher in
    the same thread) and the gradients stored into ``.grad``. The counts are
    bytes, so on a given torch version they are exactly repeatable.

    What it cannot see: scratch memory a kernel allocates internally and frees
    before returning (the tiles of a fused attention kernel, oneDNN
    workspaces), allocator caching and fragmentation, tensors that existed
    before the mode was entered (the numbers are above that baseline), and
    Python objects. For a fused built-in kernel its peak is therefore a lower
    bound; for code made of ordinary torch ops it is the real tensor peak.

    Attributes:
        live: bytes of the counted storages alive now.
        peak: the maximum of ``live`` since the mode was created.

    Examples:
        >>> x = torch.randn(256, 256, requires_grad=True)
        >>> with PeakMemory() as memory:
        ...     torch.exp(x).sum().backward()
        >>> memory.peak >= 2 * 256 * 256 * 4     # exp's output (saved) and the input gradient
        True
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}                       # id(storage) -> bytes, while it is alive

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, Tensor):
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key in self._sizes or key in inputs:
                continue                                       # a view or an in-place result: no new memory
            self._sizes[key] = storage.nbytes()
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)


def peak_bytes(fn: Callable, inputs: Sequence, generator: torch.Generator | None = None) -> int:
    """Peak bytes of the tensors created during ``fn(*inputs)`` and its backward, measured with :class:`PeakMemory`.

    Differentiable inputs are replaced by fresh leaves (no ``.grad`` from earlier
    runs); the upstream gradient is created before the measurement starts.
    """
    leaves = [t.detach().requires_grad_(t.requires_grad) if isinstance(t, Tensor) else t for t in inputs]
    step = make_step(fn, leaves, generator)
    for p in parameters_of(fn):
        p.grad = None
    with PeakMemory() as memory:
        step()
    for t in leaves:
        if isinstance(t, Tensor):
            t.grad = None
    for p in parameters_of(fn):
        p.grad = None
    return memory.peak


def cuda_peak_bytes(step: Callable[[], None], device: torch.device | str = "cuda") -> int:
    """Peak bytes allocated by the CUDA caching allocator during ``step()``, above what was allocated before."""
    device = torch.device(device)
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    _sync(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


# ------------------------------------------------------------------------ operations
class OpCounter(TorchDispatchMode):
    """Counts the ATen operations run while active (forward, and backward: autograd dispatches it too).

    Args:
        min_numel: record only operations that read or write a tensor of at
            least this many elements (0: every operation).
        skip_views: do not record view operations (``view``, ``transpose``,
            ``expand``, ...), which move no memory.

    Attributes:
        count: number of operations recorded.
        names: their names (``"mm"``, ``"sum"``, ...), in order.
        ops: one ``(name, reads, writes)`` per recorded operation: how many of its
            tensor arguments (``reads``) and results (``writes``) have at least
            ``min_numel`` elements (a tensor passed twice counts twice). With
            ``min_numel`` the size of the input, this bounds the passes over
            full-size memory from above: every tensor argument counts as a read,
            also the destination of an in-place or ``out=`` op and the template
            of ``empty_like``, which are not read.
        largest: the most elements of any tensor an operation returned.

    Examples:
        >>> x = torch.randn(8, 4, requires_grad=True)
        >>> with OpCounter() as ops:
        ...     (x * 2).sum().backward()
        >>> ops.count > 0 and "mul" in ops.names
        True
        >>> with OpCounter(min_numel=x.numel()) as big:
        ...     y = x * x
        >>> big.ops
        [('mul', 2, 1)]
    """

    def __init__(self, min_numel: int = 0, skip_views: bool = False) -> None:
        super().__init__()
        self.min_numel, self.skip_views = min_numel, skip_views
        self.count = 0
        self.names: list[str] = []
        self.ops: list[tuple[str, int, int]] = []
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = [t for t in tree_leaves(out) if isinstance(t, Tensor)]
        self.largest = max([self.largest] + [t.numel() for t in outs])
        if self.skip_views:
            returns = func._schema.returns
            alias = returns[0].alias_info if returns else None
            if alias is not None and not alias.is_write:
                return out
        ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        reads = sum(t.numel() >= self.min_numel for t in ins)
        writes = sum(t.numel() >= self.min_numel for t in outs)
        if self.min_numel and not (reads or writes):
            return out
        name = func.overloadpacket.__name__
        self.count += 1
        self.names.append(name)
        self.ops.append((name, reads, writes))
        return out


@contextlib.contextmanager
def stderr_silenced() -> Iterator[None]:
    """Sends the process's standard error to ``/dev/null`` while active, at the file-descriptor level.

    ``torch.profiler`` and the C++ compiler behind ``torch.compile`` write to file
    descriptor 2 directly, which ``sys.stderr`` (and ``contextlib.redirect_stderr``) never
    sees; in a notebook those lines would land on the page.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profile_table(fn: Callable, inputs: Sequence, steps: int = 5, row_limit: int = 12) -> str:
    """``torch.profiler`` table (self CPU time per ATen op) of ``steps`` forward + backward calls of ``fn``.

    The profiler's own start/stop lines on standard error are silenced (:func:`stderr_silenced`).
    """
    step = make_step(fn, [t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, Tensor) else t
                          for t in inputs])
    step()
    with stderr_silenced(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit)


# ----------------------------------------------------------------------------- what the compiler sees
@dataclass
class CompileReport:
    """What ``torch.compile`` and ``torch.export`` see of one callable, and its time each way (:func:`compile_report`)."""

    form: str                    # a name for the callable
    graph_breaks: int            # torch._dynamo.explain
    graphs: int
    graph_ops: list[str]         # call_function targets in the graph(s) Dynamo captured
    fake_output: str             # what it returns on a FakeTensor (shape, dtype)
    export_ops: list[str]        # call_function targets in the torch.export graph
    compile_s: float             # first call of torch.compile(fn, fullgraph=True), forward + backward
    eager_ms: float              # forward + backward, eager (time_step: minimum of alternating blocks)
    compiled_ms: float           # forward + backward, compiled (the same blocks)


class _AsModule(torch.nn.Module):
    """``fn`` as a module, for ``torch.export.export``."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def _targets(graph: torch.fx.Graph) -> list[str]:
    """The functions and methods a graph calls, by name (``layers.reference_gelu.default``, ``mul``, ``erf_``)."""
    return [str(n.target) if isinstance(n.target, torch._ops.OpOverload) else getattr(n.target, "__name__", str(n.target))
            for n in graph.nodes if n.op in ("call_function", "call_method")]


def compile_report(form: str, fn: Callable[[Tensor], Tensor], x: Tensor, *, backend: str = "inductor") -> CompileReport:
    """Run ``fn(x)`` through ``torch._dynamo.explain``, a ``FakeTensorMode``, ``torch.export`` and
    ``torch.compile(fullgraph=True, backend=backend)``, and time its forward + backward eager and compiled.

    Dynamo's caches are reset first (``torch._dynamo.reset()``: every compiled function of the
    process, not only ``fn``'s), so an earlier compilation is not reused. The graphs are those of
    a call on ``x`` as given; the timed steps differentiate with respect to a leaf copy of ``x``.

    Args:
        form: a name for ``fn`` in the report (e.g. ``"autograd.Function"``).
        fn: one tensor in, one tensor out.
        x: the input (any shape ``fn`` takes).
        backend: the torch.compile backend (``"inductor"`` generates fused code;
            ``"aot_eager"`` traces forward and backward but generates none, so it compiles fast).
    """
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(x)
    ops = [t for g in explained.graphs for t in _targets(g.graph)]
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = fn(mode.from_tensor(x))
        fake_output = f"FakeTensor{tuple(fake.shape)} {str(fake.dtype).replace('torch.', '')}"
    exported = torch.export.export(_AsModule(fn), (x.detach(),))
    leaf = x.detach().requires_grad_()

    def eager_step():
        fn(leaf).sum().backward()

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=backend)

    def compiled_step():
        compiled(leaf).sum().backward()

    start = time.perf_counter()
    compiled_step()
    compile_s = time.perf_counter() - start
    eager_s, compiled_s = time_step([eager_step, compiled_step], x.device, repeats=5, min_block_s=0.02)
    return CompileReport(form, explained.graph_break_count, explained.graph_count, ops, fake_output,
                         _targets(exported.graph), compile_s, eager_s * 1e3, compiled_s * 1e3)


def format_compile_reports(reports: Sequence[CompileReport]) -> str:
    """The reports as a small text table (five lines per report)."""
    lines = []
    for r in reports:
        lines += [f"{r.form}:",
                  f"  graph breaks {r.graph_breaks}, graphs {r.graphs}; ops in the dynamo graph: {', '.join(r.graph_ops)}",
                  f"  on a fake tensor: {r.fake_output}",
                  f"  torch.export graph: {', '.join(r.export_ops)}",
                  f"  compile (first call) {r.compile_s:.2f} s; forward + backward eager {r.eager_ms:.3f} ms, "
                  f"compiled {r.compiled_ms:.3f} ms"]
    return "\n".join(lines)
