"""What makes a custom Function a good PyTorch citizen: autocast, torch.compile, torch.func.

Taught in the chapter "A good PyTorch citizen" (``book/citizen.ipynb``). Every layer's
functional form uses these helpers around its ``autograd.Function``:

- :func:`autocast_apply` applies torch's autocast policy for the op (autocast never sees
  inside a custom Function);
- :func:`compilable_apply` applies a Function that has a ``jvp`` so that torch.compile can
  trace it;
- :func:`values_checkable` says whether a check that reads tensor values may run (eager
  mode, real tensors), so validation costs no graph break and no host sync.

Autocast
--------
``torch.autocast`` rewrites calls to ATen operators one by one: inside a custom
``autograd.Function`` it casts each op of ``forward`` by that op's own rule (a matmul to
bfloat16, the next op not), it does not know the Function as one operation, and it is
off while autograd runs ``backward``, whose dtypes then need not match. So each layer's
functional form decides, before calling its Function, what autocast would have done to
the equivalent torch op:

``"lower"``
    matmul-like ops (linear, conv, attention's products, prelu on CPU): the floating
    inputs are cast to the autocast dtype (``torch.get_autocast_dtype``), and the op
    runs and returns in that dtype.
``"float32"``
    ops that lose accuracy in low precision (norms, softmax / log-softmax, losses):
    the floating inputs are cast to float32, and the op runs and returns in float32.

As in torch, float64 tensors are never cast. Inside, autocast is switched off, so the
Function's own matmuls are not cast again; the Function then sees inputs of one dtype,
as in eager float32 code.

Outside autocast :func:`autocast_apply` only calls the Function: no cast, no copy.

torch.compile and jvp
---------------------
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

Values
------
Checks that read tensor values (a class index in range, a positive scale) run only
where :func:`values_checkable` says so: in eager mode, on real tensors. Shape, dtype
and device checks run everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["autocast_apply", "autocast_dtype", "compilable_apply", "values_checkable"]


_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu", "xla", "mtia")


def autocast_dtype(device_type: str, policy: str) -> torch.dtype | None:
    """The dtype autocast would run an op of ``policy`` in, or ``None`` if autocast is off."""
    if policy not in ("lower", "float32"):
        raise ValueError(f"autocast policy must be 'lower' or 'float32', got {policy!r}")
    if device_type not in _AUTOCAST_DEVICES or not torch.is_autocast_enabled(device_type):
        return None                                  # off, or a device with no autocast (meta)
    return torch.get_autocast_dtype(device_type) if policy == "lower" else torch.float32


def _eligible(a) -> bool:
    """What autocast casts: floating-point tensors other than float64 (autocast leaves float64 alone)."""
    return isinstance(a, Tensor) and a.is_floating_point() and a.dtype != torch.float64


def autocast_apply(fn: Callable, policy: str, *args):
    """Call ``fn(*args)`` as autocast would call a torch op of the given policy.

    Args:
        fn: usually ``SomeFunction.apply``.
        policy: ``"lower"`` or ``"float32"`` (see the module docstring).
        *args: the arguments; floating-point tensors among them are cast, except
            float64 ones, which autocast never casts.

    Returns:
        Whatever ``fn`` returns.
    """
    device = next((a.device for a in args if isinstance(a, Tensor)), None)
    dtype = None if device is None else autocast_dtype(device.type, policy)
    if dtype is None:
        return fn(*args)
    args = tuple(a.to(dtype) if _eligible(a) else a for a in args)
    with torch.autocast(device.type, enabled=False):
        return fn(*args)


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
