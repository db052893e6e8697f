"""Exercise feedback for the chapters: :func:`check_exercise` says whether a reader's answer is right.

Every chapter ends its exercises with a check cell that calls it; it prints one
line (``Correct: ...`` or ``Not yet: ...``) and returns whether the answer matched.
"""

from __future__ import annotations

import torch

__all__ = ["check_exercise"]


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
