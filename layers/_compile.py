"""torch.compile, torch.func and the layers' Functions: two small helpers.

:func:`values_checkable` tells a layer whether it may run a check that reads tensor
values (a class index in range, a positive scale): only in eager mode, on real tensors.

:func:`without_jvp` and :func:`traceable` apply a Function so that Dynamo can trace it.

Dynamo (torch 2.13) refuses to trace an ``autograd.Function`` that defines its own
``jvp`` staticmethod ("Unsupported custom jvp", a graph break), although forward
mode is never used inside a compiled training step. So while compiling, a layer
applies a twin of its Function without the ``jvp``: a subclass that only resets
``jvp`` to the base class's, with the same ``forward``, ``setup_context``,
``backward`` and vmap rule, so there is one implementation and no second code path.
In eager mode the Function itself is applied, ``jvp`` included.

Dynamo looks classes up as constants only by module-level name (not through a
dict or a class attribute), so each module keeps its twin in a global::

    _LinearTraced = without_jvp(LinearFunction)
    ...
    out = traceable(LinearFunction, _LinearTraced).apply(input, weight, bias)
"""

from __future__ import annotations

import torch

__all__ = ["without_jvp", "traceable", "values_checkable"]


def without_jvp(function: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """A subclass of ``function`` whose only change is that it has no custom ``jvp``."""
    return type(function.__name__, (function,), {
        "jvp": torch.autograd.Function.jvp,
        "__doc__": f"{function.__name__} without its jvp, for torch.compile (see layers._compile).",
        "__module__": function.__module__,
        "__qualname__": function.__qualname__,
    })


def traceable(function: type[torch.autograd.Function],
              twin: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """``function`` in eager mode; ``twin`` (its :func:`without_jvp`) while torch.compile traces."""
    return twin if torch.compiler.is_compiling() else function


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
