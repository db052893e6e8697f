"""The numerical checks of :func:`~layers.testing.check_layer`, and gradient checking from scratch.

Taught in the chapter "Writing a backward pass" (``book/backward_pass.ipynb``).

The checks, each a function of a :class:`~layers.testing.CheckSetup`: inputs
unmodified, the reference comparison, ``gradcheck`` and ``gradgradcheck``,
non-contiguous inputs, an empty batch and ``needs_input_grad``.
:func:`numerical_gradient` and :func:`relative_error` are the central-difference
tools (as in CS231n). Every public name is importable from :mod:`layers.testing`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..measuring import OpCounter
from ._case import (CheckResult, CheckSetup, _Case, _check, _compare, _errors, _float_outputs, _leaf_function)


# ------------------------------------------------------- gradient checking from scratch
def relative_error(a: Tensor, b: Tensor) -> float:
    r"""CS231n's relative error, :math:`\max_i |a_i - b_i| / \max(10^{-8}, |a_i| + |b_i|)`.

    Around 1e-7 or below for a correct float64 gradient; 1e-2 or above means a bug.
    """
    a, b = a.detach().double(), b.detach().double()
    if a.numel() == 0:
        return 0.0
    return ((a - b).abs() / (a.abs() + b.abs()).clamp_min(1e-8)).max().item()


def numerical_gradient(
    f: Callable[[Tensor], Tensor], x: Tensor, grad_out: Tensor | None = None, h: float = 1e-5
) -> Tensor:
    r"""Gradient of ``sum(f(x) * grad_out)`` with respect to ``x`` by central differences.

    For each element :math:`x_i`:

    .. math:: \frac{\partial L}{\partial x_i} \approx
        \frac{\sum (f(x + h e_i) - f(x - h e_i)) \odot g}{2h}

    This is CS231n's ``eval_numerical_gradient_array``: two forward passes per
    element, so only for small tensors. Use float64: in float32 the rounding
    error of ``f`` divided by ``2h`` swamps the answer.

    Args:
        f: function of one tensor returning a tensor.
        x: the point, any shape; it is not modified.
        grad_out: upstream gradient :math:`g`, shape of ``f(x)``; ones if ``None``.
        h: step size.

    Returns:
        Tensor with the shape of ``x``.
    """
    x = x.detach().clone()
    grad = torch.zeros_like(x)
    flat_x, flat_grad = x.view(-1), grad.view(-1)
    with torch.no_grad():
        for i in range(flat_x.numel()):
            old = flat_x[i].item()
            flat_x[i] = old + h
            pos = f(x).clone()
            flat_x[i] = old - h
            neg = f(x).clone()
            flat_x[i] = old
            g = torch.ones_like(pos) if grad_out is None else grad_out
            flat_grad[i] = ((pos - neg) * g).sum() / (2 * h)
    return grad


def _noncontiguous(t: Tensor) -> Tensor:
    """The same values as ``t`` in a non-contiguous layout that ``.view(-1)`` cannot flatten.

    2-D and up: the last two dimensions are stored transposed (column-major);
    1-D: every other element of a buffer twice as long.
    """
    if t.dim() >= 2 and t.shape[-1] > 1 and t.shape[-2] > 1:
        return t.mT.contiguous().mT
    if t.numel() <= 1:
        return t.clone()
    buf = torch.zeros(*t.shape, 2, dtype=t.dtype, device=t.device)
    buf[..., 0] = t
    return buf[..., 0]


def _state_snapshot(case: _Case) -> list[tuple[str, Tensor, int]]:
    snap = [(f"input {i}", v.detach().clone(), v._version)
            for i, v in enumerate(case.inputs) if isinstance(v, Tensor)]
    if isinstance(case.layer, nn.Module):
        snap += [(n, p.detach().clone(), p._version) for n, p in case.layer.named_parameters()]
    return snap


def _batched(setup: CheckSetup, inputs: Sequence) -> set[int]:
    """Indices of the inputs that carry the batch in dimension 0."""
    if setup.batch_inputs is not None:
        return set(setup.batch_inputs)
    tensors = [i for i, v in enumerate(inputs) if isinstance(v, Tensor) and v.dim() > 0]
    return {i for i in tensors if inputs[i].shape[0] == inputs[tensors[0]].shape[0]} if tensors else set()


def _drop_leaf(case: _Case, name: str) -> None:
    """Make one input or parameter of ``case`` not require a gradient."""
    if name.startswith("input "):
        i = int(name.split()[1])
        case.inputs[i] = case.inputs[i].detach()
        case.diff[i] = False
    else:
        case.layer.get_parameter(name).requires_grad_(False)


def _count_backward(case: _Case, grad_outs: Sequence[Tensor]) -> int:
    """Number of ATen ops run by ``torch.autograd.grad`` (backward only) for ``case``."""
    out = _float_outputs(case.layer(*case.inputs))
    leaves = list(case.leaves().values())
    pairs = [(o, g) for o, g in zip(out, grad_outs) if o.requires_grad]
    with OpCounter() as counter:
        torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs], allow_unused=True)
    return counter.count


# --------------------------------------------------------------------------- checks
@_check("inputs unmodified")
def check_unmodified(setup: CheckSetup) -> CheckResult:
    """Forward and backward leave every input and parameter untouched (values and version counters)."""
    case = setup.build(setup.layer)
    before = _state_snapshot(case)
    case.run(None, setup.seed)
    current = {f"input {i}": v for i, v in enumerate(case.inputs) if isinstance(v, Tensor)}
    if isinstance(case.layer, nn.Module):
        current.update(dict(case.layer.named_parameters()))
    for name, old, version in before:
        now = current[name]
        if now._version != version or not torch.equal(now.detach(), old):
            max_abs = (now.detach().double() - old.double()).abs().max().item() if now.numel() else 0.0
            return CheckResult("inputs unmodified", "FAILED", max_abs, math.inf,
                               f"{name} was written in place (version {version} -> {now._version})")
    return CheckResult("inputs unmodified", max_abs=0.0, max_rel=0.0, detail="values and version counters unchanged")


def check_reference(setup: CheckSetup, device: str | torch.device | None = None,
                    label: str = "reference") -> CheckResult:
    """Forward output and every gradient against the reference, in the inputs' dtype (on ``device``)."""
    @_check(label)
    def run(setup: CheckSetup) -> CheckResult:
        if setup.reference is None:
            return CheckResult(label, "skipped", detail="no reference")
        out, grads, grad_outs = setup.build(setup.layer, device=device).run(None, setup.seed)
        ref_out, ref_grads, _ = setup.build(setup.reference, device=device).run(grad_outs)
        return _compare(label, (out, grads), (ref_out, ref_grads), setup.atol, setup.rtol,
                        f"{setup.dtype}".replace("torch.", ""))
    return run(setup)


def _gradient_check(setup: CheckSetup, kind: str) -> CheckResult:
    case = setup.build(setup.layer, dtype=torch.float64)
    f, leaves = _leaf_function(case)
    if not leaves:
        return CheckResult(kind, "skipped", detail="nothing to differentiate")
    check = torch.autograd.gradcheck if kind == "gradcheck" else torch.autograd.gradgradcheck
    check(f, leaves, raise_exception=True)
    return CheckResult(kind, detail=f"float64, {len(leaves)} differentiable tensors")


@_check("gradcheck")
def check_gradcheck(setup: CheckSetup) -> CheckResult:
    """:func:`torch.autograd.gradcheck` in float64 over the differentiable inputs and the parameters."""
    return _gradient_check(setup, "gradcheck")


@_check("gradgradcheck")
def check_gradgradcheck(setup: CheckSetup) -> CheckResult:
    """:func:`torch.autograd.gradgradcheck` in float64 (the backward is itself differentiable)."""
    return _gradient_check(setup, "gradgradcheck")


@_check("non-contiguous")
def check_noncontiguous(setup: CheckSetup) -> CheckResult:
    """Non-contiguous inputs and upstream gradients give the same outputs and gradients."""
    out, grads, grad_outs = setup.build(setup.layer).run(None, setup.seed)
    strided = setup.build(setup.layer, make=_noncontiguous)
    n_out, n_grads, _ = strided.run([_noncontiguous(g) for g in grad_outs])
    return _compare("non-contiguous", (n_out, n_grads), (out, grads), setup.atol, setup.rtol)


@_check("empty batch")
def check_empty_batch(setup: CheckSetup) -> CheckResult:
    """A batch of size 0 (dimension 0 of the batched inputs) runs forward and backward, as the reference does."""
    batched = _batched(setup, setup.inputs)
    empty_inputs = [v[:0] if i in batched else v for i, v in enumerate(setup.inputs)]
    ours = setup.build(setup.layer, inputs=empty_inputs)
    out, grads, grad_outs = ours.run(None, setup.seed)
    for i, (v, d) in enumerate(zip(ours.inputs, setup.diff)):
        if d and grads[f"input {i}"].shape != v.shape:
            return CheckResult("empty batch", "FAILED", math.inf, math.inf,
                               f"grad input {i} has shape {tuple(grads[f'input {i}'].shape)}, expected {tuple(v.shape)}")
    if setup.reference is None:
        return CheckResult("empty batch", detail="ran forward and backward (no reference)")
    ref_out, ref_grads, _ = setup.build(setup.reference, inputs=empty_inputs).run(grad_outs)
    return _compare("empty batch", (out, grads), (ref_out, ref_grads), setup.atol, setup.rtol)


@_check("needs_input_grad")
def check_needs_input_grad(setup: CheckSetup) -> CheckResult:
    """Leaving one input or parameter out of the gradient skips work (fewer ATen ops) and changes no other gradient."""
    full = setup.build(setup.layer)
    names = list(full.leaves())
    if len(names) < 2:
        return CheckResult("needs_input_grad", "skipped", detail="fewer than two differentiable tensors")
    out, grads, grad_outs = full.run(None, setup.seed)
    baseline = _count_backward(setup.build(setup.layer), grad_outs)
    for left_out in names:
        case = setup.build(setup.layer)
        _drop_leaf(case, left_out)
        ops = _count_backward(case, grad_outs)
        if ops > baseline or (ops == baseline and left_out not in setup.shared_work):
            return CheckResult("needs_input_grad", "FAILED", detail=(
                f"backward ran {ops} ops without '{left_out}' vs {baseline} with every gradient: "
                "the skipped gradient was still computed"))
        _, sub_grads, _ = case.run(grad_outs)
        for k, g in sub_grads.items():
            max_abs, max_rel, ok = _errors(g, grads[k], setup.atol, setup.rtol)
            if not ok:
                return CheckResult("needs_input_grad", "FAILED", max_abs, max_rel,
                                   f"grad {k} changed when '{left_out}' needed no gradient")
    return CheckResult("needs_input_grad", detail=f"each of {len(names)} gradients skipped saves work")


