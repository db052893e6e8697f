"""Exercise feedback for the chapters.

- :func:`check_exercise` says whether a reader's answer (a number, a tensor) is right;
- :func:`check_layer_exercise` runs a reader's own ``autograd.Function`` (or a
  function or module built on one) through :func:`layers.testing.check_layer`
  against PyTorch's op, and says which check fails, or "Not done yet" while the
  exercise's stub still raises ``NotImplementedError``.

Every chapter ends its exercises with a check cell that calls one of them; it
prints one line (``Correct: ...``, ``Not yet: ...`` or ``Not done yet: ...``)
and returns whether the answer passed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .testing import check_layer

__all__ = ["check_exercise", "check_layer_exercise"]


def check_exercise(answer, expected, *, atol: float = 1e-6, rtol: float = 1e-5, what: str = "answer") -> bool:
    """Tell the reader whether an exercise answer is right; returns ``True`` when it is.

    Args:
        answer: the reader's answer: ``None`` (not attempted yet), a number, a
            sequence or a tensor.
        expected: the right answer, of the same shape.
        atol: absolute tolerance.
        rtol: relative tolerance.
        what: what the answer is, for the printed line ("gradient dS/dA").

    Prints one line: ``Correct: ...`` or ``Not yet: ...`` (with the shape
    mismatch or the largest difference).
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


def _forward_backward(layer, inputs: Sequence) -> None:
    """One forward and backward of ``layer(*inputs)`` (sum of the outputs), on copies of the inputs."""
    copies = [v.detach().clone().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v
              for v in inputs]
    out = layer(*copies)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    total = sum(o.float().sum() for o in outs if isinstance(o, torch.Tensor) and o.requires_grad)
    if isinstance(total, torch.Tensor):
        total.backward()


def check_layer_exercise(
    layer: nn.Module | Callable,
    reference: nn.Module | Callable,
    inputs: Sequence,
    *,
    what: str = "your Function",
    composable: bool = False,
    **checks,
) -> bool:
    """Check a reader's layer against PyTorch's and print one line of feedback.

    Args:
        layer: the reader's function or module (usually ``MyFunction.apply``).
        reference: the PyTorch equivalent.
        inputs: example inputs, as for :func:`layers.testing.check_layer` (float64
            tensors that require grad, so ``gradcheck`` runs).
        what: how to name the answer in the printed line.
        composable: also run the vmap, forward-AD, compile and low-precision
            checks (off by default: an exercise is about the backward). A
            Function with its own ``jvp`` passes the compile check only when
            applied through :func:`layers.composable.compilable_apply`.
        **checks: further keyword switches for :func:`~layers.testing.check_layer`.

    Returns:
        ``True`` when every check passed. Prints ``Not done yet: ...`` if the
        layer still raises ``NotImplementedError`` (the stub is not filled in),
        ``Not yet: ...`` naming each failed check and its detail, or
        ``Correct: ...`` listing the checks that passed.
    """
    try:
        _forward_backward(layer, inputs)
    except NotImplementedError:
        print(f"Not done yet: {what} still raises NotImplementedError (fill in the stub above).")
        return False
    if not composable:
        checks = {"vmap": False, "forward_ad": False, "compile": False, "low_precision": False, **checks}
    report = check_layer(layer, reference, inputs, raise_on_failure=False, **checks)
    if report.passed:
        ran = [r.name for r in report.results if r.status == "ok"]
        print(f"Correct: {what} passes " + ", ".join(ran) + ".")
        return True
    failed = "; ".join(f"{r.name} ({r.detail})" if r.detail else r.name for r in report.failed)
    print(f"Not yet: {what} fails {failed}.")
    return False
