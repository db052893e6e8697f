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
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .measuring import OpCounter

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
default_tolerances: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-8, 1e-7),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1.6e-2),
}


# --------------------------------------------------------------------------- report
@dataclass
class CheckResult:
    """The outcome of one check: name, status, worst errors and a short detail."""

    name: str
    status: str = "ok"          # "ok", "FAILED" or "skipped"
    max_abs: float | None = None     # None where the check measures no error (gradcheck, skipped)
    max_rel: float | None = None
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status != "FAILED"

    def __str__(self) -> str:
        errors = "" if self.max_abs is None else f"max abs {self.max_abs:.2e}  max rel {self.max_rel:.2e}"
        return f"  {self.status:<7} {self.name:<20} {errors:<34} {self.detail}".rstrip()


@dataclass
class LayerReport:
    """All :class:`CheckResult` of one :func:`check_layer` call."""

    layer: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def __getitem__(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def __str__(self) -> str:
        verdict = "passed" if self.passed else f"FAILED {len(self.failed)} of {len(self.results)} checks"
        lines = [f"check_layer({self.layer}): {verdict}"]
        lines += [str(r) for r in self.results]
        return "\n".join(lines)


class LayerCheckError(AssertionError):
    """Raised by :func:`check_layer` when a check fails; the message is the full report."""

    def __init__(self, report: LayerReport) -> None:
        super().__init__(str(report))
        self.report = report


# -------------------------------------------------------------------------- helpers
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


def _errors(actual: Tensor, expected: Tensor, atol: float, rtol: float) -> tuple[float, float, bool]:
    """(max abs error, max rel error, within ``atol + rtol * |expected|`` everywhere). NaNs must match."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    if actual.shape != expected.shape:
        return math.inf, math.inf, False
    if actual.numel() == 0:
        return 0.0, 0.0, True
    nan_a, nan_e = actual.isnan(), expected.isnan()
    if not torch.equal(nan_a, nan_e):
        return math.inf, math.inf, False
    a, e = actual[~nan_a], expected[~nan_e]
    if a.numel() == 0:
        return 0.0, 0.0, True
    same = a == e                                             # also handles matching infinities
    diff = torch.where(same, torch.zeros_like(a), (a - e).abs())
    max_abs = diff.max().item()
    max_rel = (diff / e.abs().clamp_min(1e-12)).max().item()
    ok = bool((diff <= atol + rtol * e.abs()).all())
    return max_abs, max_rel, ok


def _is_float_tensor(v) -> bool:
    return isinstance(v, Tensor) and v.is_floating_point()


def _float_outputs(out) -> list[Tensor]:
    """The floating-point tensors in a layer's output (a tensor or a tuple/list of them)."""
    if isinstance(out, Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _float_outputs(o)]
    return []


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


class _Case:
    """One layer (module or function) with its inputs, ready to run forward + backward."""

    def __init__(self, layer, inputs: Sequence, diff: Sequence[bool], dtype=None, device=None,
                 make: Callable[[Tensor], Tensor] = lambda t: t) -> None:
        self.layer = layer
        if isinstance(layer, nn.Module):
            self.layer = copy.deepcopy(layer)
            if dtype is not None or device is not None:
                self.layer = self.layer.to(device=device, dtype=dtype)
        self.inputs = []
        for v, d in zip(inputs, diff):
            if isinstance(v, Tensor):
                v = v.detach().to(device=device, dtype=dtype if v.is_floating_point() and dtype else v.dtype)
                v = make(v.clone())
                if d:
                    v.requires_grad_(True)
            self.inputs.append(v)
        self.diff = list(diff)
        self.call: Callable = self.layer                       # what runs forward (a compiled wrapper, say)

    def params(self) -> dict[str, Tensor]:
        if not isinstance(self.layer, nn.Module):
            return {}
        return {n: p for n, p in self.layer.named_parameters() if p.requires_grad}

    def leaves(self) -> dict[str, Tensor]:
        named = {f"input {i}": v for i, (v, d) in enumerate(zip(self.inputs, self.diff)) if d}
        named.update(self.params())
        return named

    def run(self, grad_outs: Sequence[Tensor] | None, seed: int = 0, context=contextlib.nullcontext):
        """Forward (inside ``context()``) and backward; returns (float outputs, grads by leaf name, grad_outs used)."""
        with context():
            out = _float_outputs(self.call(*self.inputs))
        leaves = self.leaves()
        if grad_outs is None:
            gen = torch.Generator().manual_seed(seed)
            grad_outs = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in out]
        grad_outs = [g.to(device=o.device, dtype=o.dtype) for g, o in zip(grad_outs, out)]
        pairs = [(o, g) for o, g in zip(out, grad_outs) if o.requires_grad]
        grads: dict[str, Tensor] = {}
        if leaves and pairs:
            got = torch.autograd.grad([o for o, _ in pairs], list(leaves.values()),
                                      [g for _, g in pairs], allow_unused=True)
            for (name, leaf), g in zip(leaves.items(), got):
                grads[name] = torch.zeros_like(leaf) if g is None else g
        return [o.detach() for o in out], grads, grad_outs


def _compare(name: str, ours, ref, atol: float, rtol: float, detail: str = "") -> CheckResult:
    """Compare (outputs, grads) of two runs into one CheckResult naming the worst quantity."""
    out_a, grads_a = ours
    out_b, grads_b = ref
    result = CheckResult(name, max_abs=0.0, max_rel=0.0, detail=detail)
    worst = ""
    pairs = [(f"output {i}", a, b) for i, (a, b) in enumerate(zip(out_a, out_b))]
    if len(out_a) != len(out_b):
        return CheckResult(name, "FAILED", math.inf, math.inf, f"{len(out_a)} outputs vs {len(out_b)}")
    missing = sorted(set(grads_a) ^ set(grads_b))
    if missing:
        return CheckResult(name, "FAILED", math.inf, math.inf, f"gradients missing on one side: {missing}")
    pairs += [(f"grad {k}", grads_a[k], grads_b[k]) for k in grads_a]
    for what, a, b in pairs:
        max_abs, max_rel, ok = _errors(a, b, atol, rtol)
        if max_abs > result.max_abs:
            worst = what
        result.max_abs, result.max_rel = max(result.max_abs, max_abs), max(result.max_rel, max_rel)
        if not ok:
            result.status = "FAILED"
            shape_note = "" if a.shape == b.shape else f" (shape {tuple(a.shape)} vs {tuple(b.shape)})"
            result.detail = f"{what} differs{shape_note}; tolerance atol={atol:g} rtol={rtol:g}"
            return result
    if not result.detail:
        result.detail = f"worst: {worst}" if worst else ""
    return result




# --------------------------------------------------------------------------- setup
class CheckSetup:
    """What every check needs: the layer, its reference, the example inputs and the options.

    Args:
        layer: the layer under test (``nn.Module`` or function); deep-copied by each check, never modified.
        reference: the PyTorch equivalent, or ``None``.
        inputs: positional arguments for both; floating-point tensors with
            ``requires_grad=True`` are differentiated.
        tolerances: ``{dtype: (atol, rtol)}`` overriding :data:`default_tolerances`.
        seed: seed of the random upstream gradients, tangents and perturbations.
        sync_state: load the layer's ``state_dict`` into a reference module.
        batch_inputs: indices of the inputs that carry the batch in dimension 0
            (see :func:`check_layer`).
        shared_work: leaves whose gradient is a by-product of another's (see :func:`check_layer`).

    Examples:
        >>> import layers
        >>> setup = CheckSetup(layers.Linear(4, 2), torch.nn.Linear(4, 2), (torch.randn(3, 4, requires_grad=True),))
        >>> check_vmap(setup).passed
        True
    """

    def __init__(self, layer, reference, inputs: Sequence, *, tolerances=None, seed: int = 0,
                 sync_state: bool = True, batch_inputs: Sequence[int] | None = None,
                 shared_work: Sequence[str] = ()) -> None:
        self.layer, self.reference = layer, reference
        self.inputs = list(inputs)
        self.diff = [_is_float_tensor(v) and v.requires_grad for v in self.inputs]
        float_inputs = [v for v in self.inputs if _is_float_tensor(v)]
        self.dtype = float_inputs[0].dtype if float_inputs else torch.get_default_dtype()
        self.tolerances = {**default_tolerances, **(tolerances or {})}
        self.atol, self.rtol = self.tolerances[self.dtype]
        self.seed, self.sync_state = seed, sync_state
        self.batch_inputs, self.shared_work = batch_inputs, tuple(shared_work)
        self.name = (layer.__class__.__name__ if isinstance(layer, nn.Module)
                     else getattr(layer, "__name__", repr(layer)))

    def build(self, obj, inputs: Sequence | None = None, **kw) -> "_Case":
        """A ``_Case`` of ``obj`` (the layer or the reference); the reference gets the layer's state."""
        case = _Case(obj, self.inputs if inputs is None else inputs, self.diff, **kw)
        if (obj is self.reference and self.sync_state and isinstance(obj, nn.Module)
                and isinstance(self.layer, nn.Module)):
            source = _Case(self.layer, [], [], **{k: v for k, v in kw.items() if k in ("dtype", "device")})
            case.layer.load_state_dict(source.layer.state_dict())
        return case

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)


def _check(name: str):
    """Make a check function report a crash as a failed check, with the exception's first line."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(setup: CheckSetup, *args, **kwargs) -> CheckResult:
            try:
                return fn(setup, *args, **kwargs)
            except Exception as exc:                           # a crash is a failed check, with its reason
                return CheckResult(name, "FAILED", math.inf, math.inf, f"raised {_first_line(exc)}")
        return run
    return wrap


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _reference_fails(setup: CheckSetup, attempt: Callable[[_Case], object], **kw) -> str | None:
    """Run ``attempt`` on the reference: ``None`` if it works, else why it fails (for a 'skipped' result)."""
    if setup.reference is None:
        return None
    try:
        attempt(setup.build(setup.reference, **kw))
    except Exception as exc:                                   # the built-in cannot do it either
        return _first_line(exc)
    return None


def _call_with(case: _Case, args: Sequence, params: dict[str, Tensor] | None = None) -> tuple[Tensor, ...]:
    """The float outputs of ``case``'s layer on ``args``, with ``params`` swapped in (``functional_call``)."""
    if params and isinstance(case.layer, nn.Module):
        out = torch.func.functional_call(case.layer, params, tuple(args))
    else:
        out = case.call(*args)
    return tuple(_float_outputs(out))


def _leaf_function(case: _Case):
    """``(f, leaves)``: ``f(*leaves)`` runs the layer with the differentiable inputs then the parameters replaced."""
    params = case.params()
    diff_idx = [i for i, d in enumerate(case.diff) if d]

    def f(*leaves):
        args = list(case.inputs)
        for i, leaf in zip(diff_idx, leaves):
            args[i] = leaf
        return _call_with(case, args, dict(zip(params, leaves[len(diff_idx):])))

    leaves = tuple(case.inputs[i] for i in diff_idx) + tuple(
        p.detach().clone().requires_grad_(True) for p in params.values())
    return f, leaves


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
