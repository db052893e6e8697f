"""PyTorch's own test samples run through the counterparts in ``layers``, with torch as the oracle.

PyTorch ships the inputs its own tests use: ``module_db`` (``ModuleInfo``: constructor and forward
arguments per sample) and ``op_db`` (``OpInfo``: ``SampleInput`` with ``input``, ``args``,
``kwargs``). For each pair (a torch module or op and ours), every sample is

1. run through torch: the module is built from the sample's constructor arguments, converted to
   the dtype (as torch's own ``test_modules`` does), and called; gradients of all floating inputs
   that require grad and of all parameters are taken for one fixed random cotangent;
2. bound to torch's parameter names (``inspect.signature`` of the torch callable, or the signature
   documented by torch for the built-ins that have none), so a positional or keyword call in the
   sample means the same;
3. run through ours called with keywords of torch's names: ours is built from the same
   constructor arguments and gets the torch module's ``state_dict`` (strict), then the same
   forward arguments and the same cotangent.

Where ours has no parameter of torch's name but one at the same position under another name
(``x`` for ``input``), the value goes there and the sample, if it matches, is ``unsupported`` with
the reason (a keyword call written for torch would fail). An argument ours does not accept is
dropped when the sample passes torch's default (the same reason is recorded), and passed anyway
otherwise, so that ours refuses it.

Each sample gets one status:

``matched``      outputs, gradients and buffers (running statistics, arguments changed in place)
                 equal torch's within the dtype's tolerance, and the call used torch's names;
``unsupported``  ours raised ValueError/TypeError/NotImplementedError whose message names an
                 argument of the sample (or the sample matched only through a renamed/dropped
                 argument, or the state_dict did not load); counts against coverage;
``refused``      an unsupported sample whose argument is one of the refusals the API documents
                 (``Pair.refusals``); not counted in coverage;
``mismatch``     a value, gradient or buffer differs, or the outputs differ in structure;
``crash``        any other exception in ours (or one whose message names no argument);
``torch_raises`` torch rejects the sample and ours does not: not counted;
``both_raise``   torch and ours both reject the sample: not counted.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from collections import Counter
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree

import layers
import layers.linear

# rtol, and atol relative to the largest magnitude of torch's value (at least 1): a different but
# correct order of summation (blocked softmax, fused statistics) stays inside; 1e-3 added to
# the output of a float32 linear layer on torch's samples (|y| up to ~40) does not.
TOLERANCES = {torch.float64: dict(rtol=1e-7, atol=1e-7), torch.float32: dict(rtol=1e-5, atol=1e-5)}
COUNTED = ("matched", "unsupported", "mismatch", "crash")     # the statuses coverage is taken over
STATUSES = COUNTED + ("refused", "torch_raises", "both_raise")


# ----------------------------------------------------------------- torch's documented signatures
# Built-ins have no inspect.signature; these stubs carry the signatures of torch's documentation.
def _linear(input, weight, bias=None): ...
def _conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1): ...
def _prelu(input, weight): ...
def _gelu(input, *, approximate="none"): ...
def _unary(input): ...
def _sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, *,
          enable_gqa=False): ...


@dataclasses.dataclass(frozen=True)
class Pair:
    """A torch module (``module_db`` name) or op (``op_db`` name) and our counterpart.

    ``ours`` is a module class (for modules) or a function (for ops); ``torch_fn`` and
    ``torch_sig`` are the torch op and its signature (ops only). ``refusals`` maps an argument
    name to a predicate on its value that is True where ours documents refusing it.
    """
    name: str
    db_name: str
    ours: Callable
    ours_name: str
    torch_fn: Callable | None = None
    torch_sig: inspect.Signature | None = None
    refusals: tuple[tuple[str, Callable[[Any], bool]], ...] = ()

    @property
    def is_module(self) -> bool:
        return self.torch_fn is None


def _positive(v) -> bool:
    return float(v) > 0


def _true(v) -> bool:
    return bool(v)


def _op(db_name, torch_fn, ours, ours_name, stub=None, refusals=()):
    sig = inspect.signature(stub if stub is not None else torch_fn)
    if db_name.startswith("nn.functional."):
        name = "F." + db_name.removeprefix("nn.functional.")
    else:
        name = "torch." + db_name
    return Pair(name, db_name, ours, ours_name, torch_fn, sig, refusals)


MHA_REFUSALS = (("add_bias_kv", _true), ("add_zero_attn", _true), ("dropout", _positive))

MODULE_PAIRS = [
    Pair("nn.Linear", "nn.Linear", layers.Linear, "layers.Linear"),
    Pair("nn.Conv2d", "nn.Conv2d", layers.Conv2d, "layers.Conv2d"),
    Pair("nn.BatchNorm2d", "nn.BatchNorm2d", layers.BatchNorm2d, "layers.BatchNorm2d"),
    Pair("nn.LayerNorm", "nn.LayerNorm", layers.LayerNorm, "layers.LayerNorm"),
    Pair("nn.PReLU", "nn.PReLU", layers.PReLU, "layers.PReLU"),
    Pair("nn.ReLU", "nn.ReLU", layers.ReLU, "layers.ReLU"),
    Pair("nn.GELU", "nn.GELU", layers.GELU, "layers.GELU"),
    Pair("nn.Sigmoid", "nn.Sigmoid", layers.Sigmoid, "layers.Sigmoid"),
    Pair("nn.Tanh", "nn.Tanh", layers.Tanh, "layers.Tanh"),
    Pair("nn.MultiheadAttention", "nn.MultiheadAttention", layers.MultiHeadAttention,
         "layers.MultiHeadAttention", refusals=MHA_REFUSALS),
    Pair("nn.CrossEntropyLoss", "nn.CrossEntropyLoss", layers.CrossEntropyLoss,
         "layers.CrossEntropyLoss"),
    Pair("nn.MSELoss", "nn.MSELoss", layers.MSELoss, "layers.MSELoss"),
]

OP_PAIRS = [
    _op("nn.functional.linear", F.linear, layers.linear.linear, "layers.linear.linear", _linear),
    _op("nn.functional.conv2d", F.conv2d, layers.conv2d, "layers.conv2d", _conv2d),
    _op("nn.functional.batch_norm", F.batch_norm, layers.batch_norm, "layers.batch_norm"),
    _op("nn.functional.layer_norm", F.layer_norm, layers.layer_norm, "layers.layer_norm"),
    _op("nn.functional.prelu", F.prelu, layers.prelu, "layers.prelu", _prelu),
    _op("nn.functional.relu", F.relu, layers.relu, "layers.relu"),
    _op("nn.functional.gelu", F.gelu, layers.gelu, "layers.gelu", _gelu),
    _op("sigmoid", torch.sigmoid, layers.sigmoid, "layers.sigmoid", _unary),
    _op("tanh", torch.tanh, layers.tanh, "layers.tanh", _unary),
    _op("nn.functional.cross_entropy", F.cross_entropy, layers.cross_entropy,
        "layers.cross_entropy"),
    _op("nn.functional.mse_loss", F.mse_loss, layers.mse_loss, "layers.mse_loss"),
    _op("nn.functional.scaled_dot_product_attention", F.scaled_dot_product_attention,
        layers.scaled_dot_product_attention, "layers.scaled_dot_product_attention", _sdpa,
        refusals=(("dropout_p", _positive),)),
    _op("nn.functional.binary_cross_entropy_with_logits", F.binary_cross_entropy_with_logits,
        functools.partial(layers.focal_loss, gamma=0.0, alpha=-1.0, reduction="mean"),   # torch's default
        "layers.focal_loss(gamma=0, alpha=-1, reduction=\"mean\")"),
]

PAIRS = MODULE_PAIRS + OP_PAIRS


# ---------------------------------------------------------------------------------- outcomes
@dataclasses.dataclass
class Outcome:
    status: str
    sample: str
    reasons: tuple[str, ...] = ()
    detail: str = ""
    values_match: bool = False     # unsupported only by its keywords: the values matched torch's


class _Refusal(Exception):
    """Ours rejected the sample: carries the exception and the harness step it came from."""

    def __init__(self, step: str, exc: BaseException):
        super().__init__(f"{step}: {type(exc).__name__}: {exc}")
        self.step, self.exc = step, exc


# ------------------------------------------------------------------------------- description
def _describe(v) -> str:
    if isinstance(v, torch.Tensor):
        kind = "" if v.is_floating_point() else str(v.dtype).removeprefix("torch.")
        return f"T{list(v.shape)}{kind}"
    if isinstance(v, (list, tuple)):
        inner = ", ".join(_describe(x) for x in v)
        return f"[{inner}]" if isinstance(v, list) else f"({inner})"
    return repr(v)


def _describe_args(arguments: dict) -> str:
    return ", ".join(f"{k}={_describe(v)}" for k, v in arguments.items())


# ----------------------------------------------------------------------------------- binding
def _bind(sig: inspect.Signature, args, kwargs) -> dict:
    """Torch's parameter name -> value for each argument the sample passes."""
    return dict(sig.bind(*args, **kwargs).arguments)


def _call_with(sig: inspect.Signature, arguments: dict):
    """(args, kwargs) that call a function of signature ``sig`` with ``arguments``."""
    bound = inspect.BoundArguments(sig, dict(arguments))
    return bound.args, bound.kwargs


def _is_default(value, default) -> bool:
    if default is inspect.Parameter.empty:
        return False
    if isinstance(value, torch.Tensor) or isinstance(default, torch.Tensor):
        return value is default
    try:
        return type(value) is type(default) and bool(value == default) or value is default
    except (TypeError, ValueError, RuntimeError):
        return False


def plan_call(torch_sig: inspect.Signature, arguments: dict, ours_sig: inspect.Signature):
    """Keyword arguments for ours from torch's named ``arguments``.

    Returns ``(kwargs, notes, aliases)``: ``notes`` are the reasons a keyword call written for
    torch would fail on ours (a renamed or missing parameter, dropped because its value is
    torch's default); ``aliases`` maps our parameter names to torch's.
    """
    P = inspect.Parameter
    torch_names = list(torch_sig.parameters)
    ours_params = ours_sig.parameters
    var_keyword = any(p.kind is P.VAR_KEYWORD for p in ours_params.values())
    ours_positional = [p.name for p in ours_params.values()
                       if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    kwargs, notes, aliases = {}, [], {}
    for name, value in arguments.items():
        p = ours_params.get(name)
        if p is not None and p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY):
            kwargs[name] = value
            continue
        i = torch_names.index(name)
        positional = torch_sig.parameters[name].kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)
        if (positional and i < len(ours_positional) and ours_positional[i] not in torch_names
                and ours_positional[i] not in kwargs):
            kwargs[ours_positional[i]] = value
            aliases[ours_positional[i]] = name
            notes.append(f"`{name}` is named `{ours_positional[i]}`")
            continue
        if not var_keyword and _is_default(value, torch_sig.parameters[name].default):
            notes.append(f"`{name}` not accepted")
            continue
        kwargs[name] = value          # not accepted and not torch's default: ours must refuse it
    return kwargs, notes, aliases


# ---------------------------------------------------------------------------------- tensors
def _clone(tree):
    def one(t):
        if not isinstance(t, torch.Tensor):
            return t
        c = t.detach().clone()
        return c.requires_grad_(t.requires_grad) if c.is_floating_point() or c.is_complex() else c
    return pytree.tree_map(one, tree)


def _leaves(arguments: dict) -> list[tuple[str, torch.Tensor]]:
    """(label, tensor) for every tensor in the arguments, in a fixed order."""
    out = []
    for name, value in arguments.items():
        leaves = pytree.tree_leaves(value)
        for j, t in enumerate(leaves):
            if isinstance(t, torch.Tensor):
                out.append((name if len(leaves) == 1 else f"{name}[{j}]", t))
    return out


def _cotangents(outputs: list) -> list:
    gen = torch.Generator().manual_seed(1234)
    return [torch.randn(o.shape, generator=gen, dtype=o.dtype)
            if isinstance(o, torch.Tensor) and o.is_floating_point() and o.requires_grad else None
            for o in outputs]


def _grads(outputs: list, cotangents: list, wrt: list) -> list:
    """Gradients (or None) of sum(output * cotangent) for each tensor in ``wrt``."""
    pairs = [(o, g) for o, g in zip(outputs, cotangents)
             if g is not None and isinstance(o, torch.Tensor) and o.requires_grad]
    need = [i for i, t in enumerate(wrt) if t is not None and t.requires_grad]
    result = [None] * len(wrt)
    if pairs and need:
        got = torch.autograd.grad([o for o, _ in pairs], [wrt[i] for i in need],
                                  [g for _, g in pairs], allow_unused=True)
        for i, g in zip(need, got):
            result[i] = g
    return result


def _seeded(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` from the same random state each time: sampling (dropout) that
    both sides do the same way gives the same values."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return fn(*args, **kwargs)


def _differ(label: str, expected, actual, dtype) -> str | None:
    """Why ``actual`` is not ``expected`` (None, tensor or other value), or None if equal."""
    if expected is None and actual is None:
        return None
    if expected is None or actual is None:
        present = expected if actual is None else actual
        if isinstance(present, torch.Tensor) and not bool((present == 0).all()):
            who = "torch" if actual is None else "ours"
            return f"{label}: only {who} gives a value"
        return None                                   # None and zeros say the same
    if isinstance(expected, torch.Tensor) != isinstance(actual, torch.Tensor):
        return f"{label}: torch gives {_describe(expected)}, ours {_describe(actual)}"
    if not isinstance(expected, torch.Tensor):
        return None if expected == actual else f"{label}: torch {expected!r}, ours {actual!r}"
    tol = {}
    if expected.is_floating_point() and dtype in TOLERANCES:
        finite = expected.detach()[expected.detach().isfinite()]
        scale = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
        tol = dict(rtol=TOLERANCES[dtype]["rtol"], atol=TOLERANCES[dtype]["atol"] * scale)
    try:
        torch.testing.assert_close(actual.detach(), expected.detach(), equal_nan=True, **tol)
    except AssertionError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        return f"{label}: " + "; ".join(lines[:3])
    return None


def _compare(named_expected: list, named_actual: list, dtype) -> list[str]:
    return [d for (label, e), (_, a) in zip(named_expected, named_actual)
            if (d := _differ(label, e, a, dtype)) is not None]


# ------------------------------------------------------------------------------- classifying
def _named_argument(message: str, names) -> str | None:
    for n in names:
        if re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", message):
            return n
    return None


def _short(message: str) -> str:
    """The first line of an error message without the sizes, so that reasons group."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    first = re.sub(r"\s*\(shape \([\d, ]*\)\)", "", first)
    first = re.sub(r"torch\.Size\(\[[\d, ]*\]\)|\([\d, ]+\)", "(...)", first)
    first = re.sub(r"torch\.(b?float)(16|32|64)", r"torch.\1*", first)
    return first[:110]


def _classify_refusal(pair: Pair, refusal: _Refusal, arguments: dict, aliases: dict,
                      sample: str) -> Outcome:
    exc = refusal.exc
    message = str(exc)
    if refusal.step == "state_dict":
        keys = re.findall(r'"([^"]+)"', message)
        return Outcome("unsupported", sample,
                       (f"state_dict does not load (keys or shapes differ: {', '.join(keys)})",))
    if isinstance(exc, (ValueError, TypeError, NotImplementedError)):
        for arg, allowed in pair.refusals:
            if arg in arguments and allowed(arguments[arg]) and _named_argument(message, [arg]):
                return Outcome("refused", sample, (f"`{arg}={arguments[arg]!r}`",))
        # prefer arguments with a value other than torch's plain data ("input" is in most messages)
        names = sorted(arguments, key=lambda n: n in ("input", "query", "key", "value", "target"))
        named = _named_argument(message, list(names) + list(aliases))
        if named is not None:
            arg = aliases.get(named, named)
            return Outcome("unsupported", sample,
                           (f"`{arg}`: {type(exc).__name__}: {_short(message)}",))
    return Outcome("crash", sample, (), f"{refusal.step}: {type(exc).__name__}: {message[:300]}")


# ---------------------------------------------------------------------------------- running
def _run_module_sample(pair: Pair, cls: type, ctor_args, ctor_kwargs, fwd_args, fwd_kwargs,
                       training: bool, dtype, desc: str) -> Outcome:
    ctor_sig = inspect.signature(cls)
    fwd_sig = inspect.signature(cls.forward)
    fwd_sig = fwd_sig.replace(parameters=list(fwd_sig.parameters.values())[1:])   # drop self
    ctor = fwd = torch_error = None
    try:
        ctor = _bind(ctor_sig, ctor_args, ctor_kwargs)
        fwd = _bind(fwd_sig, fwd_args, fwd_kwargs)
    except TypeError as e:          # torch's own signature rejects the sample
        ctor = fwd = None
        torch_error = e
    sample = (f"{'train' if training else 'eval'} {pair.db_name.removeprefix('nn.')}"
              f"({_describe_args(ctor) if ctor is not None else '?'})"
              f"({_describe_args(fwd) if fwd is not None else '?'})" + (f" [{desc}]" if desc else ""))

    # torch
    if ctor is not None:
        try:
            a, k = _call_with(ctor_sig, _clone(ctor))
            tm = cls(*a, **k).to(dtype).train(training)
            state = {n: t.detach().clone() for n, t in tm.state_dict().items()}
            t_in = _clone(fwd)
            a, k = _call_with(fwd_sig, t_in)
            t_out = pytree.tree_leaves(_seeded(tm, *a, **k), is_leaf=lambda x: x is None)
            params = list(tm.named_parameters())
            cot = _cotangents(t_out)
            t_leaves = _leaves(t_in)
            t_grads = _grads(t_out, cot, [t for _, t in t_leaves] + [p for _, p in params])
            t_after = dict(tm.state_dict())
        except Exception as e:      # noqa: BLE001 -- torch's rejection of a sample is recorded
            torch_error = e

    # ours
    aliases: dict = {}
    try:
        if ctor is None:
            raise _Refusal("bind", torch_error)
        ours_ctor, notes, aliases = plan_call(ctor_sig, _clone(ctor), inspect.signature(pair.ours))
        try:
            om = pair.ours(**ours_ctor)
        except Exception as e:      # noqa: BLE001 -- classified below
            raise _Refusal("constructor", e) from e
        om = om.to(dtype).train(training)
        if torch_error is None:
            try:
                om.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise _Refusal("state_dict", e) from e
        o_in = _clone(fwd)
        ours_fwd, fnotes, faliases = plan_call(fwd_sig, o_in, inspect.signature(om.forward))
        notes += fnotes
        aliases.update(faliases)
        try:
            o_out = pytree.tree_leaves(_seeded(om, **ours_fwd), is_leaf=lambda x: x is None)
        except Exception as e:      # noqa: BLE001 -- classified below
            raise _Refusal("forward", e) from e
    except _Refusal as r:
        if torch_error is not None:
            return Outcome("both_raise", sample)
        return _classify_refusal(pair, r, {**(ctor or {}), **(fwd or {})}, aliases, sample)
    if torch_error is not None:
        return Outcome("torch_raises", sample, (f"{type(torch_error).__name__}: {torch_error}",))

    try:
        o_params = dict(om.named_parameters())
        o_leaves = _leaves(o_in)
        o_grads = _grads(o_out, cot, [t for _, t in o_leaves] + [o_params.get(n) for n, _ in params])
    except Exception as e:          # noqa: BLE001 -- an error in our backward is a crash
        return Outcome("crash", sample, (), f"backward: {type(e).__name__}: {e}")
    o_after = dict(om.state_dict())
    return _verdict(sample, dtype, notes, t_out, o_out,
                    [f"grad of {n}" for n, _ in t_leaves] + [f"grad of {n}" for n, _ in params],
                    t_grads, o_grads,
                    [(f"state {n}", t) for n, t in t_after.items()],
                    [(f"state {n}", o_after.get(n)) for n in t_after])


def _verdict(sample, dtype, notes, t_out, o_out, grad_labels, t_grads, o_grads, t_state, o_state):
    problems = []
    if len(t_out) != len(o_out):
        problems.append(f"output: torch gives {len(t_out)} values, ours {len(o_out)}")
    else:
        problems += _compare([(f"output[{i}]", t) for i, t in enumerate(t_out)],
                             [(f"output[{i}]", o) for i, o in enumerate(o_out)], dtype)
        problems += _compare(list(zip(grad_labels, t_grads)), list(zip(grad_labels, o_grads)), dtype)
    problems += _compare(t_state, o_state, dtype)
    if problems:
        return Outcome("mismatch", sample, (), " | ".join(problems))
    if notes:
        return Outcome("unsupported", sample, tuple(notes), values_match=True)
    return Outcome("matched", sample)


def _run_op_sample(pair: Pair, s, dtype) -> Outcome:
    sig = pair.torch_sig
    try:
        arguments = _bind(sig, (s.input, *s.args), s.kwargs)
    except TypeError as e:
        return Outcome("torch_raises", f"{pair.name}(?)", (f"TypeError: {e}",))
    sample = f"{pair.name}({_describe_args(arguments)})"
    process = s.output_process_fn_grad or (lambda x: x)

    torch_error = None
    try:
        t_in = _clone(arguments)
        a, k = _call_with(sig, t_in)
        t_out = pytree.tree_leaves(process(_seeded(pair.torch_fn, *a, **k)), is_leaf=lambda x: x is None)
        cot = _cotangents(t_out)
        t_leaves = _leaves(t_in)
        t_grads = _grads(t_out, cot, [t for _, t in t_leaves])
    except Exception as e:          # noqa: BLE001 -- torch's rejection of a sample is recorded
        torch_error = e

    o_in = _clone(arguments)
    ours_kwargs, notes, aliases = plan_call(sig, o_in, inspect.signature(pair.ours))
    try:
        try:
            o_out = pytree.tree_leaves(process(_seeded(pair.ours, **ours_kwargs)), is_leaf=lambda x: x is None)
        except Exception as e:      # noqa: BLE001 -- classified below
            raise _Refusal("call", e) from e
    except _Refusal as r:
        if torch_error is not None:
            return Outcome("both_raise", sample)
        return _classify_refusal(pair, r, arguments, aliases, sample)
    if torch_error is not None:
        return Outcome("torch_raises", sample, (f"{type(torch_error).__name__}: {torch_error}",))
    try:
        o_leaves = _leaves(o_in)
        o_grads = _grads(o_out, cot, [t for _, t in o_leaves])
    except Exception as e:          # noqa: BLE001 -- an error in our backward is a crash
        return Outcome("crash", sample, (), f"backward: {type(e).__name__}: {e}")
    # arguments changed in place (running statistics) must change the same way
    t_state = [(f"{n} after the call", t) for n, t in t_leaves if not t.requires_grad]
    o_state = [(f"{n} after the call", t) for n, t in o_leaves if not t.requires_grad]
    return _verdict(sample, dtype, notes, t_out, o_out, [f"grad of {n}" for n, _ in t_leaves],
                    t_grads, o_grads, t_state, o_state)


@functools.cache
def _databases():
    from torch.testing._internal.common_methods_invocations import op_db
    from torch.testing._internal.common_modules import module_db
    return ({m.name: m for m in module_db},
            {o.name: o for o in op_db if o.variant_test_name == ""})   # other variants: CUDA only


def run_pair(pair: Pair, dtype: torch.dtype) -> list[Outcome]:
    """Every sample of ``pair`` in ``dtype``: one :class:`Outcome` each."""
    modules, ops = _databases()
    outcomes = []
    if pair.is_module:
        info = modules[pair.db_name]
        for training in ((True, False) if info.train_and_eval_differ else (True,)):
            for s in info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True,
                                             training=training):
                outcomes.append(_run_module_sample(
                    pair, info.module_cls, s.constructor_input.args, s.constructor_input.kwargs,
                    s.forward_input.args, s.forward_input.kwargs, training, dtype,
                    getattr(s, "desc", "")))
    else:
        for s in ops[pair.db_name].sample_inputs("cpu", dtype, requires_grad=True):
            outcomes.append(_run_op_sample(pair, s, dtype))
    return outcomes


# ---------------------------------------------------------------------------------- summary
def counts(outcomes: list[Outcome]) -> Counter:
    return Counter(o.status for o in outcomes)


def reasons(outcomes: list[Outcome], statuses=("unsupported", "refused")) -> Counter:
    return Counter(r for o in outcomes if o.status in statuses for r in o.reasons)


def coverage(outcomes: list[Outcome]) -> tuple[int, int]:
    """(matched, counted): counted excludes documented refusals and samples torch rejects."""
    c = counts(outcomes)
    return c["matched"], sum(c[s] for s in COUNTED)


def line(name: str, outcomes: list[Outcome]) -> str:
    c = counts(outcomes)
    extra = "".join(f", {s} {c[s]}" for s in ("refused", "mismatch", "crash", "torch_raises",
                                                 "both_raise") if c[s])
    why = "; ".join(f"{r} (x{n})" for r, n in reasons(outcomes).most_common())
    by_names = sum(o.values_match for o in outcomes)
    more = f" (+{by_names} with torch's keywords)" if by_names else ""
    return (f"{name}: samples {len(outcomes)}, matched {c['matched']}{more}, "
            f"unsupported {c['unsupported']}{extra}" + (f" -- {why}" if why else ""))


def _argument(reason: str) -> str:
    """The argument a reason is about (its first backticked name), or the reason itself."""
    m = re.match(r"`([^`=]+)", reason)
    return m.group(1) if m else reason.split(" (")[0]


def markdown(results: dict[str, list[Outcome]]) -> str:
    """Per layer (float64 and float32 samples together): samples matched and the arguments
    refused, for the API pages; the full reasons follow the table."""
    by_name = {p.name: p for p in PAIRS}
    rows = ["| torch | ours | samples | matched | refused as documented | not yet supported "
            "| mismatch, crash |",
            "|---|---|---:|---:|---|---|---:|"]
    details = []
    total_matched = total_counted = 0
    for name, outcomes in results.items():
        c = counts(outcomes)
        m, n = coverage(outcomes)
        total_matched, total_counted = total_matched + m, total_counted + n

        def names(status):
            got = Counter()
            for r, k in reasons(outcomes, (status,)).items():
                got[_argument(r)] += k
            return ", ".join(f"`{a}` ({k})" for a, k in got.most_common())
        rows.append(f"| `{name}` | `{by_name[name].ours_name}` | {len(outcomes)} "
                    f"| {c['matched']} of {n} | {names('refused')} | {names('unsupported')} "
                    f"| {c['mismatch'] + c['crash']} |")
        why = reasons(outcomes, ("unsupported",)).most_common()
        if why:
            details += [f"- `{name}`:"] + [f"  - {r} ({k})" for r, k in why]
    pct = 100 * total_matched / max(total_counted, 1)
    return "\n".join([
        "# Support of torch's arguments",
        "",
        "PyTorch's own test samples (`module_db`, `op_db`) run through each counterpart in float64",
        "and float32, called with torch's argument names and compared with torch (outputs, all",
        "gradients, buffers). Generated by `python tests/test_torch_samples.py --markdown PATH`.",
        f"In all, {total_matched} of {total_counted} samples match ({pct:.1f}%). \"matched\" counts",
        "the samples torch accepts, less the documented refusals; a number after an argument is",
        "the samples it affects.",
        "",
        *rows,
        "",
        "## Why samples are not yet supported",
        "",
        *details,
        "",
    ])
