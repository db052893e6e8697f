"""The harness's shared parts: :class:`CheckSetup`, the report classes and the private helpers every check uses.

``_Case`` is one run of a layer (or of its reference) on its inputs, forward and
backward; ``_compare`` turns two runs into a :class:`CheckResult`; ``_check``
makes a check report a crash as a failure. The checks themselves live in
:mod:`layers.testing.numerics` and :mod:`layers.testing.composability`; every
public name is importable from :mod:`layers.testing`.
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
