"""Testing tools: the :func:`check_layer` harness, its checks, and gradient checking from scratch.

Taught in the chapter "Writing a backward pass" (``book/backward_pass.ipynb``).

:func:`check_layer` is the one harness every layer's tests use. Given a layer
(an ``nn.Module`` or a plain function), a PyTorch reference and example inputs,
it runs these checks, in this order, and reports each one with its worst
absolute and relative error. Each is a function of a :class:`CheckSetup`, which
can also be called alone:

``inputs unmodified`` (:func:`check_unmodified`)
    forward and backward leave the inputs and parameters untouched (values and
    version counters): no hidden in-place writes.
``reference`` (:func:`check_reference`)
    forward output and every gradient (inputs and parameters) against the
    reference, in the dtype of the inputs, with tolerances per dtype.
``gradcheck`` / ``gradgradcheck`` (:func:`check_gradcheck`, :func:`check_gradgradcheck`)
    :func:`torch.autograd.gradcheck` and :func:`torch.autograd.gradgradcheck` in
    float64, over the inputs and the parameters together.
``non-contiguous`` (:func:`check_noncontiguous`)
    the same results when every input and the upstream gradient are
    non-contiguous views.
``empty batch`` (:func:`check_empty_batch`)
    a batch of size 0 runs forward and backward (and matches the reference).
``needs_input_grad`` (:func:`check_needs_input_grad`)
    backward does strictly less work (counted in ATen operations with
    :class:`layers.measuring.OpCounter`) when one input or parameter does not
    need a gradient, and the other gradients stay the same.
``vmap`` (:func:`check_vmap`)
    :func:`torch.func.vmap` over a stack of inputs equals a loop over it, for the
    outputs and for the per-sample gradients (``vmap(grad(...))``).
``forward_ad`` (:func:`check_forward_ad`)
    forward-mode AD (:func:`torch.func.jvp`) agrees with reverse mode:
    :math:`u^\top (J v) = (u^\top J) v` for random :math:`u, v`, in float64.
``compile`` (:func:`check_compile`)
    ``torch.compile(fullgraph=True, backend="aot_eager")`` forward and backward
    equal eager mode (no graph break).
``low_precision`` (:func:`check_low_precision`)
    in float16, in bfloat16 and under ``torch.autocast("cpu", dtype=torch.bfloat16)``,
    the error against a float64 ground truth is at most 1.5 times the
    reference's own error (plus a floor of two units in the last place), and
    under autocast the output dtype is the reference's.
``cuda`` (:func:`check_cuda`)
    the reference comparison again on a CUDA device, when one is available.

The transform checks (``vmap``, ``forward_ad``, ``compile``, ``low_precision``)
are skipped, with the reason, where the reference itself fails the same way
(``torch.nn.BatchNorm2d`` in training mode under ``vmap``): a layer must work
wherever its torch counterpart works.

A failed check raises :class:`LayerCheckError` whose message is the whole
report, so a test failure says which check failed and by how much.

:func:`numerical_gradient` and :func:`relative_error` are the central-difference
tools (as in CS231n) that the chapter uses before reaching for ``gradcheck``.

The package, by topic (every name is importable from ``layers.testing``):

* ``layers.testing._case``: :class:`CheckSetup`, the report classes
  (:class:`CheckResult`, :class:`LayerReport`, :class:`LayerCheckError`) and the
  private run-and-compare helpers every check shares;
* ``layers.testing.numerics``: the checks from ``inputs unmodified`` to
  ``needs_input_grad``, :func:`numerical_gradient` and :func:`relative_error`;
* ``layers.testing.composability``: ``vmap``, ``forward_ad``, ``compile``,
  ``low_precision`` and ``cuda``;
* this ``__init__``: :func:`check_layer`, which runs them all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from . import _case
from ._case import CheckResult, CheckSetup, LayerCheckError, LayerReport
from .composability import check_compile, check_cuda, check_forward_ad, check_low_precision, check_vmap
from .numerics import (check_empty_batch, check_gradcheck, check_gradgradcheck, check_needs_input_grad,
                       check_noncontiguous, check_reference, check_unmodified, numerical_gradient,
                       relative_error)

__all__ = [
    "CheckResult",
    "CheckSetup",
    "LayerReport",
    "LayerCheckError",
    "check_layer",
    "check_unmodified",
    "check_reference",
    "check_gradcheck",
    "check_gradgradcheck",
    "check_noncontiguous",
    "check_empty_batch",
    "check_needs_input_grad",
    "check_vmap",
    "check_forward_ad",
    "check_compile",
    "check_low_precision",
    "check_cuda",
    "default_tolerances",
    "numerical_gradient",
    "relative_error",
]

#: ``(atol, rtol)`` used by :func:`check_layer` for each dtype when comparing with a reference.
default_tolerances: dict[torch.dtype, tuple[float, float]] = _case.default_tolerances   # the dict CheckSetup reads


# --------------------------------------------------------------------------- harness
def check_layer(
    layer: nn.Module | Callable,
    reference: nn.Module | Callable | None,
    inputs: Sequence,
    *,
    gradcheck: bool = True,
    gradgradcheck: bool = True,
    noncontiguous: bool = True,
    empty_batch: bool = True,
    batch_inputs: Sequence[int] | None = None,
    needs_input_grad: bool = True,
    shared_work: Sequence[str] = (),
    unmodified: bool = True,
    vmap: bool = True,
    forward_ad: bool = True,
    compile: bool = True,
    low_precision: bool = True,
    cuda: bool | None = None,
    sync_state: bool = True,
    tolerances: dict[torch.dtype, tuple[float, float]] | None = None,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> LayerReport:
    """Run every standard check on a custom layer and report each one.

    The checks run in the order of the module docstring; each is a function
    (``check_reference``, ``check_vmap``, ...) of a :class:`CheckSetup` that
    can also be called alone.

    Args:
        layer: the layer under test: an ``nn.Module`` or a function of ``inputs``.
            It is deep-copied, never modified.
        reference: the PyTorch equivalent (module or function), or ``None`` to
            skip the comparisons that need one. If both are modules and
            ``sync_state`` is true, the reference gets the layer's ``state_dict``
            first, so their parameter names must match (as for ``Linear`` and
            ``torch.nn.Linear``).
        inputs: positional arguments for both. Floating-point tensors created
            with ``requires_grad=True`` are differentiated; other values (integer
            targets, flags) are passed as they are. Keep them small: gradcheck
            perturbs every element.
        gradcheck: run :func:`torch.autograd.gradcheck` in float64.
        gradgradcheck: run :func:`torch.autograd.gradgradcheck` in float64 (turn
            off for layers that are not twice differentiable).
        noncontiguous: check non-contiguous inputs and upstream gradients.
        empty_batch: check a batch of size 0 (dimension 0 of the batched inputs).
        batch_inputs: indices of the inputs that carry the batch in dimension 0;
            if ``None``, the tensor inputs whose first size equals the first
            input's (so a weight passed as an input is not sliced).
        needs_input_grad: check that skipping a gradient skips work.
        shared_work: names of parameters (or ``"input i"``) whose gradient is a
            by-product of work another gradient needs anyway (batch norm's
            ``sum g`` is both the bias gradient and a term of the input
            gradient): leaving one out must not cost more, but need not save work.
        unmodified: check that inputs and parameters are not written in place.
        vmap: check :func:`torch.func.vmap` (outputs and per-sample gradients) against a loop.
        forward_ad: check forward-mode AD (:func:`torch.func.jvp`) against
            reverse mode; turn off for a layer that declares no ``jvp``.
        compile: check ``torch.compile(fullgraph=True, backend="aot_eager")``
            forward and backward against eager mode.
        low_precision: check the float16, bfloat16 and CPU-autocast error
            against float64 (at most 1.5x the reference's) and the autocast output dtype.
        cuda: also compare on CUDA; ``None`` means "when available".
        sync_state: load the layer's state into the reference module.
        tolerances: ``{dtype: (atol, rtol)}`` overriding :data:`default_tolerances`.
        seed: seed of the random upstream gradients, tangents and perturbations.
        raise_on_failure: raise :class:`LayerCheckError` if any check fails.

    Returns:
        The :class:`LayerReport`; print it to see every check.

    Example:
        >>> import layers
        >>> x = torch.randn(3, 4, requires_grad=True)
        >>> report = check_layer(layers.Linear(4, 2), torch.nn.Linear(4, 2), (x,))
        >>> report.passed
        True
    """
    setup = CheckSetup(layer, reference, inputs, tolerances=tolerances, seed=seed, sync_state=sync_state,
                       batch_inputs=batch_inputs, shared_work=shared_work)
    report = LayerReport(setup.name)
    plan: list[tuple[bool, Callable[[CheckSetup], CheckResult]]] = [
        (unmodified, check_unmodified),
        (reference is not None, check_reference),
        (gradcheck, check_gradcheck),
        (gradgradcheck, check_gradgradcheck),
        (noncontiguous, check_noncontiguous),
        (empty_batch, check_empty_batch),
        (needs_input_grad, check_needs_input_grad),
        (vmap, check_vmap),
        (forward_ad, check_forward_ad),
        (compile, check_compile),
        (low_precision, check_low_precision),
        (reference is not None, functools.partial(check_cuda, enabled=cuda)),
    ]
    for enabled, check in plan:
        if enabled:
            report.results.append(check(setup))
    if raise_on_failure and not report.passed:
        raise LayerCheckError(report)
    return report


# Public names report the package as their module (as torch does for torch.nn): the API page,
# cross-references such as ``layers.testing.check_layer`` and pickles all use ``layers.testing.<name>``.
for _name in __all__:
    if callable(globals()[_name]):                                # default_tolerances is a dict
        globals()[_name].__module__ = __name__
del _name
