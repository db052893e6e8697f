"""Input validation shared by every layer: one helper, one message style.

Every public layer calls :func:`check_tensor` first, so a bad input fails
early with a message that names the layer, the argument, what was expected
and what was given, instead of failing deep inside a matrix product.

Message style::

    Linear: expected input with 4 features in its last dimension, got 5
    PReLU: expected input to be a floating-point tensor, got torch.int64
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_tensor", "check_same_device", "check_same_dtype"]


def check_tensor(
    x: object,
    where: str,
    name: str = "input",
    *,
    ndim: int | None = None,
    min_ndim: int | None = None,
    size: dict[int, int] | None = None,
    floating: bool = True,
) -> Tensor:
    """Check one tensor argument and return it unchanged.

    Args:
        x: the value to check.
        where: the layer or function name used as the message prefix.
        name: the argument name used in the message.
        ndim: exact number of dimensions required, if given.
        min_ndim: minimum number of dimensions required, if given.
        size: ``{dim: expected_size}`` pairs, e.g. ``{-1: in_features}``.
        floating: require a floating-point dtype.

    Raises:
        TypeError: ``x`` is not a tensor, or not floating point when required.
        ValueError: wrong number of dimensions or a wrong size.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{where}: expected {name} to be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{where}: expected {name} to be a floating-point tensor, got {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(
            f"{where}: expected {name} with {ndim} dimensions, got {x.dim()} (shape {tuple(x.shape)})"
        )
    if min_ndim is not None and x.dim() < min_ndim:
        raise ValueError(
            f"{where}: expected {name} with at least {min_ndim} dimensions, "
            f"got {x.dim()} (shape {tuple(x.shape)})"
        )
    for dim, expected in (size or {}).items():
        actual = x.shape[dim]
        if actual != expected:
            raise ValueError(
                f"{where}: expected {name} of size {expected} in dimension {dim}, "
                f"got {actual} (shape {tuple(x.shape)})"
            )
    return x


def check_same_device(where: str, x: Tensor, parameter: Tensor, name: str = "input") -> None:
    """Raise ``ValueError`` if ``x`` and ``parameter`` live on different devices."""
    if x.device != parameter.device:
        raise ValueError(
            f"{where}: expected {name} on {parameter.device} (where the parameters are), got {x.device}"
        )


def check_same_dtype(where: str, x: Tensor, parameter: Tensor, name: str = "input") -> None:
    """Raise ``TypeError`` if ``x`` and ``parameter`` have different dtypes."""
    if x.dtype != parameter.dtype:
        raise TypeError(
            f"{where}: expected {name} of dtype {parameter.dtype} (the parameters' dtype), got {x.dtype}"
        )
