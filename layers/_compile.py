"""torch.compile, torch.func and the layers' Functions: two small helpers.

:func:`values_checkable` tells a layer whether it may run a check that reads tensor
values (a class index in range, a positive scale): only in eager mode, on real tensors.

:func:`compilable_apply` applies a Function so that Dynamo can trace it.

Dynamo (torch 2.13) refuses to trace an ``autograd.Function`` that defines its own
``jvp`` staticmethod ("Unsupported custom jvp", a graph break), although forward
mode is never used inside a compiled training step. So while compiling, a layer
applies a twin of its Function without the ``jvp``: a subclass that only resets
``jvp`` to the base class's, with the same ``forward``, ``setup_context``,
``backward`` and vmap rule, so there is one implementation and no second code path.
In eager mode the Function itself is applied, ``jvp`` included.

Dynamo does not follow a class looked up through a dict or a class attribute, but
it does follow one held in a closure, so :func:`compilable_apply` returns a small
function that picks the Function or its twin::

    _linear_apply = compilable_apply(LinearFunction)
    ...
    out = _linear_apply(input, weight, bias)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["compilable_apply", "values_checkable"]


def compilable_apply(function: type[torch.autograd.Function]) -> Callable:
    """``function.apply``, made traceable by torch.compile for a Function that has a ``jvp``.

    In eager mode the returned callable is ``function.apply``, ``jvp`` included; while
    Dynamo traces, it applies the twin: a subclass with the same name, ``forward``,
    ``setup_context``, ``backward`` and vmap rule, and ``jvp`` reset to ``Function.jvp``.
    Make it once per Function at module level::

        _linear_apply = compilable_apply(LinearFunction)
    """
    twin = type(function.__name__, (function,), {
        "jvp": staticmethod(torch.autograd.Function.jvp), "__module__": function.__module__,
        "__qualname__": function.__qualname__,
        "__doc__": f"{function.__name__} without its jvp, applied while torch.compile traces."})

    def apply(*args):
        return (twin if torch.compiler.is_compiling() else function).apply(*args)

    apply.__name__ = apply.__qualname__ = f"{function.__name__}.apply"
    return apply


def values_checkable(*tensors) -> bool:
    """Whether a check that reads tensor *values* may run on ``tensors``.

    Not while torch.compile / torch.export traces (a graph break and a host sync), not
    on tensors wrapped by torch.func transforms (vmap cannot branch on values), and
    not on the meta device (no values). Shape, dtype and device checks need none of this.
    """
    if torch.compiler.is_compiling():
        return False
    return not any(isinstance(t, torch.Tensor) and (t.is_meta or torch._C._functorch.is_functorch_wrapped_tensor(t))
                   for t in tensors)
