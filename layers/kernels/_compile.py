"""``backend="compile"``: the reference Functions of ``layers`` under :func:`torch.compile`.

Each reference functional form is compiled once per process (the compiled callable is
cached here; torch.compile caches the generated code per input shape and dtype). Inductor
fuses the elementwise steps of forward and of backward into C++ loops; the hand-written
``autograd.Function`` stays the single source of the math.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import activations, losses, normalization, quantization

__all__ = ["compiled"]

_REFERENCES: dict[str, Callable] = {
    "layer_norm": normalization.layer_norm,
    "cross_entropy": losses.cross_entropy,
    "gelu": activations.gelu,
    "prelu": activations.prelu,
    "fake_quantize": quantization.fake_quantize,
}


_COMPILED: dict[str, Callable] = {}


def compiled(name: str) -> Callable:
    """The reference functional form ``name`` under ``torch.compile`` (built once, then reused).

    A plain dict rather than ``functools.cache``: when this is itself called under
    ``torch.compile``, Dynamo traces the lookup instead of warning about a cache wrapper.
    """
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(_REFERENCES[name])
    return _COMPILED[name]
