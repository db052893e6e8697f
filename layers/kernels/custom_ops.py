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

What each gives (:func:`layers.measuring.compile_report` measures it): ``torch.compile`` traces *into* an
``autograd.Function`` and inlines its forward and backward ops, so inductor can fuse them with
their neighbours; a custom op stays one opaque node that the compiler calls as it is (nothing to
fuse across, but nothing to trace either: any code, even a C++ or Triton kernel, can sit behind
it). ``torch.export`` likewise shows the Function as the ATen ops of its forward and the custom
op as the single node ``layers.reference_gelu.default``. Both compile with no graph break.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import activations

__all__ = ["reference_gelu", "function_gelu"]


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
