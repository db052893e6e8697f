"""Autocast for custom Functions: one helper that applies torch's policy for an op.

``torch.autocast`` rewrites calls to ATen operators; it never sees inside a custom
``autograd.Function``. So each layer's functional form decides, before calling its
Function, what autocast would have done to the equivalent torch op:

``"lower"``
    matmul-like ops (linear, conv, attention's products, prelu on CPU): the floating
    inputs are cast to the autocast dtype (``torch.get_autocast_dtype``), and the op
    runs and returns in that dtype.
``"float32"``
    ops that lose accuracy in low precision (norms, softmax / log-softmax, losses):
    the floating inputs are cast to float32, and the op runs and returns in float32.

As in torch, float64 tensors are never cast. Inside, autocast is switched off, so the Function's own matmuls are not cast again;
the Function then sees inputs of one dtype, as in eager float32 code.

Outside autocast :func:`autocast_apply` only calls the Function: no cast, no copy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["autocast_apply", "autocast_dtype"]

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
