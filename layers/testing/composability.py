"""The composability checks of :func:`~layers.testing.check_layer`: transforms, low precision and CUDA.

Taught in the chapter "Writing a backward pass" (``book/backward_pass.ipynb``).

Each is a function of a :class:`~layers.testing.CheckSetup`: ``vmap`` against a
loop, forward-mode AD against reverse mode, ``torch.compile`` against eager mode,
float16, bfloat16 and autocast against a float64 truth, and the reference
comparison on CUDA. The transform checks are skipped where the reference fails
the same way. Every public name is importable from :mod:`layers.testing`.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ._case import (CheckResult, CheckSetup, _Case, _call_with, _check, _compare, _first_line, _is_float_tensor,
                    _leaf_function)
from .numerics import check_reference


def _reference_fails(setup: CheckSetup, attempt: Callable[[_Case], object], **kw) -> str | None:
    """Run ``attempt`` on the reference: ``None`` if it works, else why it fails (for a 'skipped' result)."""
    if setup.reference is None:
        return None
    try:
        attempt(setup.build(setup.reference, **kw))
    except Exception as exc:                                   # the built-in cannot do it either
        return _first_line(exc)
    return None


# ----------------------------------------------------------------- transform checks
_VMAP_SCALES = (1.0, 0.5, 1.5)                                 # the stacked samples: the inputs, scaled


def _vmap_run(case: _Case, grad_seed: int):
    """(vmap outputs, loop outputs, vmap per-sample grads, loop per-sample grads) of ``case``."""
    float_idx = [i for i, v in enumerate(case.inputs) if _is_float_tensor(v)]
    stack_idx = [i for i in float_idx if case.diff[i]] or float_idx
    params = {n: p.detach() for n, p in case.params().items()}
    samples = [[v.detach() * s if i in stack_idx else v for i, v in enumerate(case.inputs)] for s in _VMAP_SCALES]
    stacked = [torch.stack([smp[i] for smp in samples]) if i in stack_idx else v
               for i, v in enumerate(case.inputs)]
    in_dims = tuple(0 if i in stack_idx else None for i in range(len(stacked)))

    vm_out = torch.func.vmap(lambda *args: _call_with(case, args, params), in_dims=in_dims)(*stacked)
    loop_out = [_call_with(case, smp, params) for smp in samples]
    loop_out = tuple(torch.stack([o[k] for o in loop_out]) for k in range(len(vm_out)))

    grad_idx = [i for i in stack_idx if case.diff[i]]
    if not grad_idx and not params:
        return vm_out, loop_out, (), ()
    gen = torch.Generator().manual_seed(grad_seed)
    g = [torch.randn(o.shape[1:], generator=gen, dtype=torch.float64).to(o) for o in vm_out]

    def loss(p, xs, *args):
        args = list(args)
        for i, x in zip(grad_idx, xs):
            args[i] = x
        return sum((o * gk).sum() for o, gk in zip(_call_with(case, args, p), g))

    per_sample = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)), in_dims=(None, 0, *in_dims))
    vm_grads = per_sample(params, tuple(stacked[i] for i in grad_idx), *stacked)
    vm_flat = [vm_grads[0][n] for n in params] + list(vm_grads[1])
    loop = []
    for smp in samples:
        p = {n: t.clone().requires_grad_(True) for n, t in params.items()}
        xs = tuple(smp[i].clone().requires_grad_(True) for i in grad_idx)
        loop.append(torch.autograd.grad(loss(p, xs, *smp), list(p.values()) + list(xs), allow_unused=True,
                                        materialize_grads=True))
    loop_flat = [torch.stack([lg[k] for lg in loop]) for k in range(len(vm_flat))]
    return vm_out, loop_out, vm_flat, loop_flat


@_check("vmap")
def check_vmap(setup: CheckSetup) -> CheckResult:
    """:func:`torch.func.vmap` over a stack of inputs equals a Python loop, for outputs and per-sample gradients.

    The stack holds the example inputs scaled by 1, 0.5 and 1.5 (the differentiable
    inputs, or every floating-point one if none is); parameters are shared.
    Per-sample gradients are ``vmap(grad(loss))`` with ``loss = sum(out * g)``.
    Skipped where the reference fails under ``vmap`` too.
    """
    try:
        vm_out, loop_out, vm_grads, loop_grads = _vmap_run(setup.build(setup.layer), setup.seed)
    except Exception as exc:                                   # compare with what the built-in does
        why = _reference_fails(setup, lambda case: _vmap_run(case, setup.seed))
        if why is not None:
            return CheckResult("vmap", "skipped", detail=f"the reference fails under vmap too ({why})")
        raise exc
    result = _compare("vmap", (list(vm_out), {f"grad {i}": g for i, g in enumerate(vm_grads)}),
                      (list(loop_out), {f"grad {i}": g for i, g in enumerate(loop_grads)}), setup.atol, setup.rtol)
    if result.passed:
        result.detail = f"{len(_VMAP_SCALES)} samples; outputs and {len(vm_grads)} per-sample gradients"
    return result


def _dot_test(case: _Case, seed: int) -> tuple[float, float, int]:
    """``(u . (J v) by jvp, (u^T J) . v by backward, number of leaves)`` for random ``u``, ``v``."""
    f, leaves = _leaf_function(case)
    gen = torch.Generator().manual_seed(seed)
    tangents = tuple(torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t) for t in leaves)
    primals = tuple(t.detach() for t in leaves)
    out, jv = torch.func.jvp(f, primals, tangents)
    u = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in out]
    forward = sum((uk * jk).sum() for uk, jk in zip(u, jv)).item()
    outs = f(*leaves)
    vjp = torch.autograd.grad(outs, leaves, u, allow_unused=True, materialize_grads=True)
    backward = sum((g * t).sum() for g, t in zip(vjp, tangents)).item()
    return forward, backward, len(leaves)


@_check("forward_ad")
def check_forward_ad(setup: CheckSetup) -> CheckResult:
    """Forward-mode AD agrees with reverse mode: :math:`u^\\top (J v) = (u^\\top J) v` in float64.

    ``J v`` comes from :func:`torch.func.jvp` (a ``Function``'s ``jvp``
    staticmethod), ``u^T J`` from backward, which :func:`check_reference` checks
    against the reference; ``u`` and ``v`` are random over every output, input and
    parameter. Turn off (``forward_ad=False``) for a layer that declares no
    ``jvp``. Skipped where the reference has no forward AD either.
    """
    case = setup.build(setup.layer, dtype=torch.float64)
    if not _leaf_function(case)[1]:
        return CheckResult("forward_ad", "skipped", detail="nothing to differentiate")
    try:
        forward, backward, n = _dot_test(case, setup.seed)
    except Exception as exc:                                   # compare with what the built-in does
        why = _reference_fails(setup, lambda c: _dot_test(c, setup.seed), dtype=torch.float64)
        if why is not None:
            return CheckResult("forward_ad", "skipped", detail=f"the reference has no forward AD either ({why})")
        raise exc
    err = abs(forward - backward)
    rel = err / max(abs(backward), 1e-12)
    if err > 1e-9 + 1e-7 * abs(backward):
        return CheckResult("forward_ad", "FAILED", err, rel,
                           f"u.(Jv) by jvp = {forward:.6g} but (u^T J).v by backward = {backward:.6g}")
    return CheckResult("forward_ad", max_abs=err, max_rel=rel, detail=f"float64, jvp over {n} tensors")


@_check("compile")
def check_compile(setup: CheckSetup) -> CheckResult:
    """``torch.compile(fullgraph=True, backend="aot_eager")`` forward and backward equal eager mode.

    ``fullgraph=True`` turns any graph break (``.item()``, data-dependent Python
    control flow, an unsupported call) into an error. Dynamo's caches are reset
    before and after, so one layer's compilation never affects another's.
    """
    eager = setup.build(setup.layer)
    out, grads, grad_outs = eager.run(None, setup.seed)
    compiled = setup.build(setup.layer)
    torch._dynamo.reset()
    try:
        compiled.call = torch.compile(compiled.layer, fullgraph=True, backend="aot_eager", dynamic=False)
        c_out, c_grads, _ = compiled.run(grad_outs)
    finally:
        torch._dynamo.reset()
    result = _compare("compile", (c_out, c_grads), (out, grads), setup.atol, setup.rtol)
    if result.passed:
        result.detail = "fullgraph, aot_eager: forward and backward equal eager"
    return result


def _max_abs(a: Tensor, b: Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return 0.0 if a.numel() == 0 else (a - b).abs().nan_to_num(math.inf).max().item()


def _rounded_truth(setup: CheckSetup, inputs: Sequence, dtype: torch.dtype) -> _Case:
    """The reference in float64 on ``inputs`` and on its parameters rounded to ``dtype`` first."""
    truth = setup.build(setup.reference, inputs=inputs, dtype=torch.float64)
    if isinstance(truth.layer, nn.Module):
        with torch.no_grad():
            for t in list(truth.layer.parameters()) + list(truth.layer.buffers()):
                if t.is_floating_point():
                    t.copy_(t.to(dtype))
    return truth


def _precision_errors(setup: CheckSetup, dtype: torch.dtype, autocast: bool):
    """Worst (our error, reference error, floor, quantity) against float64, or a reason the reference cannot run."""
    run_dtype = torch.float32 if autocast else dtype
    context = (functools.partial(torch.autocast, "cpu", dtype=dtype) if autocast else contextlib.nullcontext)
    ours = setup.build(setup.layer, dtype=run_dtype)
    ref = setup.build(setup.reference, dtype=run_dtype)
    rounded = [v.detach().double() if _is_float_tensor(v) else v for v in ours.inputs]
    truth = _rounded_truth(setup, rounded, run_dtype)
    try:
        ref_out, ref_grads, grad_outs = ref.run(None, setup.seed, context)
    except Exception as exc:                                   # e.g. no float16 kernel for this op on CPU
        return f"the reference fails in {dtype}: {_first_line(exc)}".replace("torch.", "")
    out, grads, _ = ours.run(grad_outs, setup.seed, context)
    true_out, true_grads, _ = truth.run([g.double() for g in grad_outs])
    if autocast:
        dtypes, ref_dtypes = [o.dtype for o in out], [o.dtype for o in ref_out]
        if dtypes != ref_dtypes:
            return ("dtype", str(dtypes), str(ref_dtypes))
    eps = torch.finfo(dtype).eps
    worst = None
    quantities = [(f"output {i}", out[i], ref_out[i], true_out[i]) for i in range(len(true_out))]
    quantities += [(f"grad {k}", grads[k], ref_grads[k], true_grads[k]) for k in true_grads]
    for what, a, r, t in quantities:
        err, ref_err = _max_abs(a, t), _max_abs(r, t)
        floor = 2 * eps * max(1.0, t.abs().max().item() if t.numel() else 0.0)
        excess = err - (1.5 * ref_err + floor)
        if worst is None or excess > worst[4]:
            worst = (err, ref_err, floor, what, excess)
    return worst


@_check("low_precision")
def check_low_precision(setup: CheckSetup, dtypes: Sequence[torch.dtype] = (torch.float16, torch.bfloat16),
                        autocast: bool = True) -> CheckResult:
    """In each low-precision dtype and under CPU autocast, no worse than 1.5x the reference's own error.

    For float16 and bfloat16 the inputs and parameters are cast to the dtype;
    under ``torch.autocast("cpu", dtype=torch.bfloat16)`` they stay float32. The
    ground truth is the reference in float64 on the same (rounded) values. For the
    output and every gradient, our largest error must be at most 1.5 times the
    reference's plus a floor of ``2 eps max(1, |truth|)`` (so that ops exact up
    to rounding are not flaky). Under autocast the output dtypes must equal the
    reference's. A dtype the reference cannot run in is left out.
    """
    if setup.reference is None:
        return CheckResult("low_precision", "skipped", detail="no reference")
    parts, worst_err, worst_rel = [], 0.0, 0.0
    runs = [(d, False) for d in dtypes] + ([(torch.bfloat16, True)] if autocast else [])
    for dtype, under_autocast in runs:
        label = ("autocast " if under_autocast else "") + str(dtype).replace("torch.", "")
        try:
            got = _precision_errors(setup, dtype, under_autocast)
        except Exception as exc:                               # our layer crashed where the reference ran
            return CheckResult("low_precision", "FAILED", math.inf, math.inf, f"{label}: raised {_first_line(exc)}")
        if isinstance(got, str):
            parts.append(f"{label} left out ({got})")
            continue
        if got[0] == "dtype":
            return CheckResult("low_precision", "FAILED", detail=(
                f"under autocast({dtype}) the output dtypes are {got[1]}, the reference's {got[2]}")
                .replace("torch.", ""))
        err, ref_err, floor, what, excess = got
        worst_err, worst_rel = max(worst_err, err), max(worst_rel, err / max(ref_err, floor))
        if excess > 0:
            return CheckResult("low_precision", "FAILED", err, err / max(ref_err, floor), (
                f"{label}: {what} error {err:.3g} > 1.5 x reference's {ref_err:.3g} + floor {floor:.2g}"))
        parts.append(f"{label} {err / max(ref_err, floor):.2f}x")
    if not any(p.endswith("x") for p in parts):
        return CheckResult("low_precision", "skipped", detail="; ".join(parts))
    return CheckResult("low_precision", max_abs=worst_err, max_rel=worst_rel,
                       detail="error / max(reference's, floor): " + ", ".join(parts))


def check_cuda(setup: CheckSetup, enabled: bool | None = None) -> CheckResult:
    """:func:`check_reference` on a CUDA device; skipped without one (``enabled=None``: when available)."""
    use = torch.cuda.is_available() if enabled is None else enabled
    if setup.reference is None:
        return CheckResult("cuda", "skipped", detail="no reference")
    if not use:
        return CheckResult("cuda", "skipped", detail="no CUDA device")
    return check_reference(setup, device="cuda", label="cuda")

