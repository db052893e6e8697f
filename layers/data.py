"""The data every chapter trains on: scikit-learn's digits, shipped with the package.

1797 grey-scale 8x8 images of the digits 0-9 (no download: the data set is part
of scikit-learn). :func:`load_digits` returns tensors with a fixed, stratified
train/test split, so every chapter and test sees the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Digits", "load_digits", "batches"]


@dataclass(frozen=True)
class Digits:
    """A train/test split of the digits, with an optional validation split of the training part.

    Attributes:
        x_train: ``(1347, 64)`` float32 pixels in [0, 1] (or ``(1347, 1, 8, 8)`` as images);
            fewer rows when a validation split is taken out of it.
        y_train: ``(1347,)`` int64 labels 0-9.
        x_test: ``(450, 64)`` (or ``(450, 1, 8, 8)``).
        y_test: ``(450,)``.
        x_val: the validation inputs, or ``None`` (``load_digits(val_size=0)``).
        y_val: the validation labels, or ``None``.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    x_val: Tensor | None = None
    y_val: Tensor | None = None

    @property
    def num_classes(self) -> int:
        return 10


def load_digits(images: bool = False, test_size: float = 0.25, seed: int = 0, val_size: float = 0.0) -> Digits:
    """Load the digits as float32 tensors, pixels scaled from 0-16 to [0, 1].

    Args:
        images: if ``True``, inputs have shape ``(N, 1, 8, 8)``; else ``(N, 64)``.
        test_size: fraction held out for testing (stratified by class).
        seed: seed of the split. The default split is the one the book uses.
        val_size: fraction of the *training* part held out for validation (stratified,
            same seed), for choosing learning rates, epochs and the like without
            looking at the test set. ``0`` (default) keeps the whole training part.

    Returns:
        :class:`Digits` with ``x_train, y_train, x_test, y_test`` (and ``x_val, y_val``
        when ``val_size > 0``). The test split does not depend on ``val_size``.

    Raises:
        ValueError: ``val_size`` is not in ``[0, 1)``.
    """
    if not 0.0 <= val_size < 1.0:
        raise ValueError(f"load_digits: expected val_size in [0, 1), got {val_size}")
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0           # (1797, 64) in [0, 1]
    y = torch.tensor(bunch.target, dtype=torch.int64)                  # (1797,)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_size, random_state=seed, stratify=y.numpy()
    )
    idx_train, idx_test = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    idx_val = None
    if val_size > 0:
        idx_train, idx_val = train_test_split(
            idx_train.numpy(), test_size=val_size, random_state=seed, stratify=y[idx_train].numpy()
        )
        idx_train, idx_val = torch.as_tensor(idx_train), torch.as_tensor(idx_val)
    if images:
        x = x.reshape(-1, 1, 8, 8)                                     # (N, C=1, H=8, W=8)
    val = (None, None) if idx_val is None else (x[idx_val], y[idx_val])
    return Digits(x[idx_train], y[idx_train], x[idx_test], y[idx_test], *val)


def batches(x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator | None = None):
    """Yield ``(x_batch, y_batch)`` pairs in a random order (``generator`` fixes it).

    The last batch may be smaller. With ``generator=None`` the order is unshuffled.
    """
    if batch_size < 1:
        raise ValueError(f"batches: expected batch_size >= 1, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"batches: x has {len(x)} rows but y has {len(y)}")
    order = torch.randperm(len(x), generator=generator) if generator is not None else torch.arange(len(x))
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]
