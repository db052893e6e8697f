"""Testing tools: the :func:`check_layer` harness and gradient checking from scratch.

Taught in the chapter "Writing a backward pass" (``book/backward_pass.ipynb``).

:func:`check_layer` is the one harness every layer's tests use. Given a layer
(an ``nn.Module`` or a plain function), a PyTorch reference and example inputs,
it runs these checks and reports each one with its worst absolute and relative
error:

``reference``
    forward output and every gradient (inputs and parameters) against the
    reference, in the dtype of the inputs, with tolerances per dtype.
``gradcheck`` / ``gradgradcheck``
    :func:`torch.autograd.gradcheck` and :func:`torch.autograd.gradgradcheck` in
    float64, over the inputs and the parameters together.
``non-contiguous``
    the same results when every input and the upstream gradient are
    non-contiguous views.
``empty batch``
    a batch of size 0 runs forward and backward (and matches the reference).
``needs_input_grad``
    backward does strictly less work (counted in ATen operations) when one
    input or parameter does not need a gradient, and the other gradients stay
    the same.
``inputs unmodified``
    forward and backward leave the inputs and parameters untouched (values and
    version counters): no hidden in-place writes.
``cuda``
    the reference comparison again on a CUDA device, when one is available.

A failed check raises :class:`LayerCheckError` whose message is the whole
report, so a test failure says which check failed and by how much.

:func:`numerical_gradient` and :func:`relative_error` are the central-difference
tools (as in CS231n) that the chapter uses before reaching for ``gradcheck``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "CheckResult",
    "LayerReport",
    "LayerCheckError",
    "check_layer",
    "default_tolerances",
    "numerical_gradient",
    "relative_error",
    "check_exercise",
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


def check_exercise(answer, expected, *, atol: float = 1e-6, rtol: float = 1e-5, what: str = "answer") -> bool:
    """Tell the reader whether an exercise answer is right; returns ``True`` when it is.

    ``answer`` may be ``None`` (not attempted yet), a number, or a tensor.
    Prints one line: ``Correct: ...`` or ``Not yet: ...``.
    """
    if answer is None:
        print(f"Not yet: no {what} given (replace the None above).")
        return False
    got = torch.as_tensor(answer, dtype=torch.float64)
    want = torch.as_tensor(expected, dtype=torch.float64)
    if got.shape != want.shape:
        print(f"Not yet: {what} has shape {tuple(got.shape)}, expected {tuple(want.shape)}.")
        return False
    if torch.allclose(got, want, atol=atol, rtol=rtol):
        print(f"Correct: the {what} matches.")
        return True
    err = (got - want).abs().max().item()
    print(f"Not yet: the {what} differs from the expected one by up to {err:.3g}.")
    return False


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


class _OpCounter(TorchDispatchMode):
    """Counts ATen operations run while active (used to see how much work backward does)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


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

    def params(self) -> dict[str, Tensor]:
        if not isinstance(self.layer, nn.Module):
            return {}
        return {n: p for n, p in self.layer.named_parameters() if p.requires_grad}

    def leaves(self) -> dict[str, Tensor]:
        named = {f"input {i}": v for i, (v, d) in enumerate(zip(self.inputs, self.diff)) if d}
        named.update(self.params())
        return named

    def run(self, grad_outs: Sequence[Tensor] | None, seed: int = 0):
        """Forward and backward; returns (float outputs, grads by leaf name, grad_outs used)."""
        out = _float_outputs(self.layer(*self.inputs))
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


def _state_snapshot(case: _Case) -> list[tuple[str, Tensor, int]]:
    snap = [(f"input {i}", v.detach().clone(), v._version)
            for i, v in enumerate(case.inputs) if isinstance(v, Tensor)]
    if isinstance(case.layer, nn.Module):
        snap += [(n, p.detach().clone(), p._version) for n, p in case.layer.named_parameters()]
    return snap


def _unmodified(case: _Case, before) -> CheckResult:
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
    cuda: bool | None = None,
    sync_state: bool = True,
    tolerances: dict[torch.dtype, tuple[float, float]] | None = None,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> LayerReport:
    """Run every standard check on a custom layer and report each one.

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
        cuda: also compare on CUDA; ``None`` means "when available".
        sync_state: load the layer's state into the reference module.
        tolerances: ``{dtype: (atol, rtol)}`` overriding :data:`default_tolerances`.
        seed: seed of the random upstream gradients.
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
    tol = {**default_tolerances, **(tolerances or {})}
    inputs = list(inputs)
    diff = [_is_float_tensor(v) and v.requires_grad for v in inputs]
    float_inputs = [v for v in inputs if _is_float_tensor(v)]
    dtype = float_inputs[0].dtype if float_inputs else torch.get_default_dtype()
    atol, rtol = tol[dtype]
    name = layer.__class__.__name__ if isinstance(layer, nn.Module) else getattr(layer, "__name__", repr(layer))
    report = LayerReport(name)

    def build(obj, **kw):
        case = _Case(obj, inputs, diff, **kw)
        if obj is reference and sync_state and isinstance(reference, nn.Module) and isinstance(layer, nn.Module):
            source = _Case(layer, [], [], **{k: v for k, v in kw.items() if k in ("dtype", "device")})
            case.layer.load_state_dict(source.layer.state_dict())
        return case

    def guarded(check_name: str, fn: Callable[[], CheckResult]) -> None:
        try:
            report.results.append(fn())
        except Exception as exc:                               # a crash is a failed check, with its reason
            report.results.append(CheckResult(check_name, "FAILED", math.inf, math.inf,
                                              f"raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))

    # 1. forward + every gradient against the reference, and no in-place writes
    def reference_check(device=None, label="reference") -> CheckResult:
        ours = build(layer, device=device)
        before = _state_snapshot(ours)
        out, grads, grad_outs = ours.run(None, seed)
        if unmodified and label == "reference":
            report.results.append(_unmodified(ours, before))
        ref = build(reference, device=device)
        ref_out, ref_grads, _ = ref.run(grad_outs)
        return _compare(label, (out, grads), (ref_out, ref_grads), atol, rtol, f"{dtype}".replace("torch.", ""))

    if reference is not None:
        guarded("reference", reference_check)
    elif unmodified:
        def unmodified_only() -> CheckResult:
            case = build(layer)
            before = _state_snapshot(case)
            case.run(None, seed)
            return _unmodified(case, before)
        guarded("inputs unmodified", unmodified_only)

    # 2. gradcheck / gradgradcheck in float64 over inputs and parameters
    def gradient_check(kind: str) -> CheckResult:
        case = build(layer, dtype=torch.float64)
        params = case.params()
        diff_idx = [i for i, d in enumerate(diff) if d]
        if not diff_idx and not params:
            return CheckResult(kind, "skipped", detail="nothing to differentiate")

        def f(*leaves):
            args = list(case.inputs)
            for i, leaf in zip(diff_idx, leaves):
                args[i] = leaf
            p = dict(zip(params, leaves[len(diff_idx):]))
            if isinstance(case.layer, nn.Module):
                out = torch.func.functional_call(case.layer, p, tuple(args))
            else:
                out = case.layer(*args)
            return tuple(_float_outputs(out))

        leaves = tuple(case.inputs[i] for i in diff_idx) + tuple(
            p.detach().clone().requires_grad_(True) for p in params.values())
        check = torch.autograd.gradcheck if kind == "gradcheck" else torch.autograd.gradgradcheck
        check(f, leaves, raise_exception=True)
        return CheckResult(kind, detail=f"float64, {len(leaves)} differentiable tensors")

    if gradcheck:
        guarded("gradcheck", lambda: gradient_check("gradcheck"))
    if gradgradcheck:
        guarded("gradgradcheck", lambda: gradient_check("gradgradcheck"))

    # 3. non-contiguous inputs and upstream gradients give the same results
    def noncontiguous_check() -> CheckResult:
        plain = build(layer)
        out, grads, grad_outs = plain.run(None, seed)
        strided = build(layer, make=_noncontiguous)
        n_out, n_grads, _ = strided.run([_noncontiguous(g) for g in grad_outs])
        return _compare("non-contiguous", (n_out, n_grads), (out, grads), atol, rtol)

    if noncontiguous:
        guarded("non-contiguous", noncontiguous_check)

    # 4. an empty batch runs forward and backward
    def empty_check() -> CheckResult:
        tensors = [i for i, v in enumerate(inputs) if isinstance(v, Tensor) and v.dim() > 0]
        if batch_inputs is not None:
            batched = set(batch_inputs)
        else:
            batched = {i for i in tensors if inputs[i].shape[0] == inputs[tensors[0]].shape[0]} if tensors else set()
        empty_inputs = [v[:0] if i in batched else v for i, v in enumerate(inputs)]
        ours = _Case(layer, empty_inputs, diff)
        out, grads, grad_outs = ours.run(None, seed)
        for i, (v, d) in enumerate(zip(ours.inputs, diff)):
            if d and grads[f"input {i}"].shape != v.shape:
                return CheckResult("empty batch", "FAILED", math.inf, math.inf,
                                   f"grad input {i} has shape {tuple(grads[f'input {i}'].shape)}, expected {tuple(v.shape)}")
        if reference is None:
            return CheckResult("empty batch", detail="ran forward and backward (no reference)")
        ref = _Case(reference, empty_inputs, diff)
        if sync_state and isinstance(reference, nn.Module) and isinstance(layer, nn.Module):
            ref.layer.load_state_dict(layer.state_dict())
        ref_out, ref_grads, _ = ref.run(grad_outs)
        return _compare("empty batch", (out, grads), (ref_out, ref_grads), atol, rtol)

    if empty_batch:
        guarded("empty batch", empty_check)

    # 5. needs_input_grad: leaving one leaf out must skip work and change nothing else
    def needs_grad_check() -> CheckResult:
        full = build(layer)
        names = list(full.leaves())
        if len(names) < 2:
            return CheckResult("needs_input_grad", "skipped", detail="fewer than two differentiable tensors")
        out, grads, grad_outs = full.run(None, seed)
        baseline = _count_backward(build(layer), grad_outs)
        for left_out in names:
            case = build(layer)
            _drop_leaf(case, left_out)
            ops = _count_backward(case, grad_outs)
            if ops > baseline or (ops == baseline and left_out not in shared_work):
                return CheckResult("needs_input_grad", "FAILED", detail=(
                    f"backward ran {ops} ops without '{left_out}' vs {baseline} with every gradient: "
                    "the skipped gradient was still computed"))
            _, sub_grads, _ = case.run(grad_outs)
            for k, g in sub_grads.items():
                max_abs, max_rel, ok = _errors(g, grads[k], atol, rtol)
                if not ok:
                    return CheckResult("needs_input_grad", "FAILED", max_abs, max_rel,
                                       f"grad {k} changed when '{left_out}' needed no gradient")
        return CheckResult("needs_input_grad", detail=f"each of {len(names)} gradients skipped saves work")

    if needs_input_grad:
        guarded("needs_input_grad", needs_grad_check)

    # 6. CUDA, when there is one
    use_cuda = torch.cuda.is_available() if cuda is None else cuda
    if reference is not None:
        if use_cuda:
            guarded("cuda", lambda: reference_check(device="cuda", label="cuda"))
        else:
            report.results.append(CheckResult("cuda", "skipped", detail="no CUDA device"))

    if raise_on_failure and not report.passed:
        raise LayerCheckError(report)
    return report


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
    with _OpCounter() as counter:
        torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs], allow_unused=True)
    return counter.count
