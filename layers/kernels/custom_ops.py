"""One layer registered two ways: as an ``autograd.Function`` and as a ``torch.library.custom_op``.

The reference GELU of :mod:`layers.activations` (:class:`~layers.activations.GELUFunction`) is
already an ``autograd.Function``. ``reference_gelu`` registers the same forward and the same
derivative as a custom operator ``torch.ops.layers.reference_gelu``:

* ``torch.library.custom_op`` declares the operator (its schema is read from the type hints) and
  its CPU/CUDA implementation, which runs below autograd;
* ``register_fake`` says what the output looks like (shape, dtype, device) without computing it,
  which is all that ``torch.compile`` and ``torch.export`` need while tracing;
* ``register_autograd`` gives its backward (here with differentiable torch ops, so double
  backward still works).

What each gives (:func:`compare_registrations` measures it): ``torch.compile`` traces *into* an
``autograd.Function`` and inlines its forward and backward ops, so inductor can fuse them with
their neighbours; a custom op stays one opaque node that the compiler calls as it is (nothing to
fuse across, but nothing to trace either: any code, even a C++ or Triton kernel, can sit behind
it). ``torch.export`` likewise shows the Function as the ATen ops of its forward and the custom
op as the single node ``layers.reference_gelu.default``. Both compile with no graph break.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import activations

__all__ = ["reference_gelu", "function_gelu", "RegistrationReport", "compare_registrations",
           "format_comparison"]


@torch.library.custom_op("layers::reference_gelu", mutates_args=())
def reference_gelu(input: Tensor) -> Tensor:
    r"""Exact GELU :math:`x\,\Phi(x)` as the custom operator ``torch.ops.layers.reference_gelu``.

    The forward of :class:`~layers.activations.GELUFunction`, registered with
    ``torch.library.custom_op``; backward :math:`g\,(\Phi(x) + x\,\varphi(x))` with
    ``register_autograd``; output shapes with ``register_fake``.

    Args:
        input: any shape, floating point.
    """
    return activations.GELUFunction.forward(input, "none")


@reference_gelu.register_fake
def _(input: Tensor) -> Tensor:
    return torch.empty_like(input)                      # shape, dtype, device: no computation


def _setup_context(ctx, inputs, output) -> None:
    (x,) = inputs
    ctx.save_for_backward(x)


def _backward(ctx, grad_out: Tensor) -> Tensor:
    (x,) = ctx.saved_tensors
    return grad_out * activations._gelu_derivative(x, "none")     # dx = g y'(x), differentiable ops


reference_gelu.register_autograd(_backward, setup_context=_setup_context)


def function_gelu(input: Tensor) -> Tensor:
    """The same GELU through the ``autograd.Function`` (:func:`layers.activations.gelu`)."""
    return activations.gelu(input)


@dataclass
class RegistrationReport:
    """What one registration gives under torch.compile and torch.export."""

    form: str
    graph_breaks: int            # torch._dynamo.explain
    graphs: int
    graph_ops: list[str]         # call_function targets in the graph(s) dynamo captured
    fake_output: str             # what the op returns on a FakeTensor (shape, dtype), or the error
    export_ops: list[str]        # call_function targets in the torch.export graph
    compile_s: float             # first call of torch.compile(fn, fullgraph=True), forward + backward
    eager_ms: float              # forward + backward, eager
    compiled_ms: float           # forward + backward, compiled


class _Wrap(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def _targets(graph: torch.fx.Graph) -> list[str]:
    """The functions and methods a graph calls, by name (``layers.reference_gelu.default``, ``mul``, ``erf_``)."""
    return [str(n.target) if isinstance(n.target, torch._ops.OpOverload) else getattr(n.target, "__name__", str(n.target))
            for n in graph.nodes if n.op in ("call_function", "call_method")]


def _ms(step, repeats: int = 20) -> float:
    step()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def _report(form: str, fn, x: Tensor, backend: str) -> RegistrationReport:
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(x)
    ops = [t for g in explained.graphs for t in _targets(g.graph)]
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = fn(mode.from_tensor(x))
        fake_output = f"FakeTensor{tuple(fake.shape)} {str(fake.dtype).replace('torch.', '')}"
    exported = torch.export.export(_Wrap(fn), (x.detach(),))
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
    return RegistrationReport(form, explained.graph_break_count, explained.graph_count, ops, fake_output,
                              _targets(exported.graph), compile_s, _ms(eager_step), _ms(compiled_step))


def compare_registrations(x: Tensor | None = None, *, backend: str = "inductor") -> list[RegistrationReport]:
    """Run the GELU as an ``autograd.Function`` and as a custom op through dynamo, fake tensors,
    ``torch.export`` and ``torch.compile(fullgraph=True, backend=backend)``.

    Args:
        x: the input (default ``torch.randn(256, 256)``).
        backend: the torch.compile backend (``"inductor"`` fuses; ``"aot_eager"`` compiles fast).

    Returns:
        One :class:`RegistrationReport` per form: ``"autograd.Function"`` and ``"custom_op"``.
    """
    x = torch.randn(256, 256) if x is None else x
    return [_report("autograd.Function", function_gelu, x, backend),
            _report("custom_op", reference_gelu, x, backend)]


def format_comparison(reports: list[RegistrationReport]) -> str:
    """The reports as a small text table."""
    lines = []
    for r in reports:
        lines += [f"{r.form}:",
                  f"  graph breaks {r.graph_breaks}, graphs {r.graphs}; ops in the dynamo graph: {', '.join(r.graph_ops)}",
                  f"  on a fake tensor: {r.fake_output}",
                  f"  torch.export graph: {', '.join(r.export_ops)}",
                  f"  compile (first call) {r.compile_s:.2f} s; forward + backward eager {r.eager_ms:.3f} ms, "
                  f"compiled {r.compiled_ms:.3f} ms"]
    return "\n".join(lines)
