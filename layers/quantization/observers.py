"""Observers: pick a quantization range from the tensors they watch.

Part of :mod:`layers.quantization`, taught in the chapter "Quantization-aware training".

:class:`MinMaxObserver` (the range seen so far), :class:`MovingAverageMinMaxObserver`
(an exponential moving average of each batch's range) and :class:`MSEObserver`, which uses
:func:`mse_clip_search` to find the clipping range that minimizes the quantization error.

The observers update their buffers in place, with tensor operations only (no Python branch
on a value), so a model that observes can be compiled and exported in training mode.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..composable import values_checkable
from .._validation import check_tensor
from .fake import check_bits, check_finite, fake_quantize, qparams_from_range, quant_range

__all__ = ["Observer", "MinMaxObserver", "MovingAverageMinMaxObserver", "MSEObserver", "mse_clip_search"]


class Observer(nn.Module):
    """Base class of the observers: watches tensors in ``forward`` (returns them unchanged) and
    turns what it saw into ``(scale, zero_point)`` with :meth:`Observer.calculate_qparams`.

    Args:
        bits: bit width, 2 to 16.
        symmetric: symmetric signed range instead of asymmetric unsigned.
        ch_axis: channel dimension for per-channel ranges, or ``None``.
        channels: number of channels along ``ch_axis``.
        device, dtype: of the ``min_val``/``max_val`` buffers (default: float32 on the default device).
    """

    def __init__(self, bits: int = 8, symmetric: bool = False, ch_axis: int | None = None,
                 channels: int = 1, *, device=None, dtype=None) -> None:
        super().__init__()
        self.bits = check_bits(type(self).__name__, bits)
        self.symmetric = symmetric
        self.ch_axis = ch_axis
        self.quant_min, self.quant_max = quant_range(bits, symmetric)
        shape = () if ch_axis is None else (channels,)                 # sized up front: state_dict loads
        kw = dict(device=device, dtype=dtype or torch.float32)
        self.register_buffer("min_val", torch.full(shape, float("inf"), **kw))
        self.register_buffer("max_val", torch.full(shape, float("-inf"), **kw))

    def _batch_range(self, x: Tensor) -> tuple[Tensor, Tensor]:
        where = type(self).__name__
        check_tensor(x, where)
        if x.numel() == 0:
            raise ValueError(f"{where}: expected a non-empty tensor to observe, got shape {tuple(x.shape)}")
        check_finite(where, x)
        x = x.detach().float()
        if self.ch_axis is None:
            return x.min(), x.max()
        flat = x.transpose(0, self.ch_axis).reshape(x.shape[self.ch_axis], -1)   # (C, rest)
        return flat.min(1).values, flat.max(1).values                  # (C,), (C,)

    @torch.no_grad()
    def _store(self, lo: Tensor, hi: Tensor) -> None:
        """Write the new range into the buffers (in place; a new shape replaces them)."""
        if self.min_val.shape != lo.shape:
            self.min_val = lo.to(self.min_val.dtype).clone()
            self.max_val = hi.to(self.max_val.dtype).clone()
        else:
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)

    @property
    def observed(self) -> bool:
        """Whether any tensor has been observed yet. Reads the buffers, so eager mode only."""
        return bool(torch.isfinite(self.min_val).all())

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        """``(scale, zero_point)`` for the range observed so far (see :func:`qparams_from_range`)."""
        if values_checkable(self.min_val) and not self.observed:
            raise RuntimeError(f"{type(self).__name__}: no tensor observed yet; run data through it first")
        return qparams_from_range(self.min_val, self.max_val, self.quant_min, self.quant_max, self.symmetric)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, symmetric={self.symmetric}, ch_axis={self.ch_axis}"


class MinMaxObserver(Observer):
    r"""Records the smallest and largest value ever seen (per tensor, or per channel along
    ``ch_axis``); the range is :math:`[\min x, \max x]`.

    Args:
        bits: bit width, 2 to 16.
        symmetric: symmetric signed range (weights) instead of asymmetric unsigned (activations).
        ch_axis: channel dimension for per-channel ranges, or ``None``.
        channels: number of channels along ``ch_axis`` (sizes the buffers, so that a saved
            ``state_dict`` loads into a fresh observer).
        device, dtype: of the buffers.

    Attributes:
        min_val: smallest value seen (``inf`` before the first call).
        max_val: largest value seen.

    Examples:
        >>> obs = MinMaxObserver(bits=8)
        >>> _ = obs(torch.tensor([-1.0, 0.0, 3.0]))
        >>> [round(v.item(), 4) for v in obs.calculate_qparams()]
        [0.0157, 64]
    """

    def forward(self, x: Tensor) -> Tensor:
        lo, hi = self._batch_range(x)
        if self.min_val.shape != lo.shape:
            self._store(lo, hi)
        else:                                                          # min(inf, lo) = lo on the first call
            self._store(torch.minimum(self.min_val, lo), torch.maximum(self.max_val, hi))
        return x


class MovingAverageMinMaxObserver(Observer):
    r"""Exponential moving average of each batch's min and max:
    :math:`m \leftarrow m + c\,(\min x - m)` (and the same for the max), starting from the first batch.

    ``averaging_constant=1`` tracks only the latest tensor (right for weights, which change
    every step). Args as :class:`MinMaxObserver`, plus ``averaging_constant`` :math:`c \in (0, 1]`.
    """

    def __init__(self, bits: int = 8, symmetric: bool = False, ch_axis: int | None = None,
                 averaging_constant: float = 0.01, channels: int = 1, *, device=None, dtype=None) -> None:
        super().__init__(bits, symmetric, ch_axis, channels, device=device, dtype=dtype)
        if not 0 < averaging_constant <= 1:
            raise ValueError(f"{type(self).__name__}: expected averaging_constant in (0, 1], "
                             f"got {averaging_constant}")
        self.averaging_constant = averaging_constant

    def _new_range(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The range this call observes in ``x`` (before averaging)."""
        return self._batch_range(x)

    def forward(self, x: Tensor) -> Tensor:
        lo, hi = self._new_range(x)
        if self.min_val.shape != lo.shape:
            self._store(lo, hi)
            return x
        c = self.averaging_constant
        seen = torch.isfinite(self.min_val)                            # False before the first call
        self._store(torch.where(seen, self.min_val + c * (lo - self.min_val), lo),
                    torch.where(seen, self.max_val + c * (hi - self.max_val), hi))
        return x


def mse_clip_search(x: Tensor, bits: int, symmetric: bool = False, ch_axis: int | None = None,
                    num_candidates: int = 100) -> tuple[Tensor, Tensor]:
    r"""The clipping range :math:`[c \min x, c \max x]`, :math:`c \in (0, 1]`, whose fake
    quantization has the least mean squared error :math:`\operatorname{mean}(x - \hat x)^2`.

    Tries ``num_candidates`` evenly spaced ratios :math:`c` (grid search; per channel, each
    channel picks its own). At low bit widths the min-max range (:math:`c = 1`) wastes levels on
    rare outliers, and a smaller :math:`c` trades a little clipping error for a smaller step.

    Args:
        x: values to quantize (finite, non-empty).
        bits: bit width, 2 to 16.
        symmetric: symmetric signed range.
        ch_axis: channel dimension for a per-channel search, or ``None``.
        num_candidates: number of ratios tried.

    Returns:
        ``(min_val, max_val)``: the best range, scalars or ``(C,)``.
    """
    where = "mse_clip_search"
    check_tensor(x, where)
    check_bits(where, bits)
    if x.numel() == 0:
        raise ValueError(f"{where}: expected a non-empty tensor, got shape {tuple(x.shape)}")
    check_finite(where, x)
    quant_min, quant_max = quant_range(bits, symmetric)
    x = x.detach().float()
    flat = x.reshape(1, -1) if ch_axis is None else x.transpose(0, ch_axis).reshape(x.shape[ch_axis], -1)  # (C, rest)
    lo, hi = flat.min(1).values.clamp(max=0), flat.max(1).values.clamp(min=0)                              # (C,)
    ratios = torch.arange(1, num_candidates + 1, dtype=torch.float32, device=x.device) / num_candidates  # (K,)
    errs = []
    for chunk in ratios.split(16):                                     # 16 candidates at a time
        k = chunk.numel()
        scale, zp = qparams_from_range(chunk[:, None] * lo, chunk[:, None] * hi, quant_min, quant_max, symmetric)
        many = flat.expand(k, *flat.shape).reshape(k * flat.shape[0], -1)                   # (k*C, rest)
        xq = fake_quantize(many, scale.reshape(-1), zp.reshape(-1), quant_min, quant_max, axis=0)
        errs.append((xq - many).pow(2).mean(1).reshape(k, -1))                              # (k, C)
    best = torch.cat(errs).argmin(0)                                   # (C,): first (smallest) best ratio
    best_lo, best_hi = ratios[best] * lo, ratios[best] * hi
    if ch_axis is None:
        return best_lo[0], best_hi[0]
    return best_lo, best_hi


class MSEObserver(MovingAverageMinMaxObserver):
    r"""Picks the range by :func:`mse_clip_search` on each observed tensor, averaged over calls
    like :class:`MovingAverageMinMaxObserver` (the first call sets it).

    Args:
        bits: bit width, 2 to 16.
        symmetric: symmetric signed range.
        ch_axis: channel dimension, or ``None``.
        averaging_constant: weight of the newest range, in (0, 1].
        num_candidates: ratios tried by the search.
        channels: number of channels along ``ch_axis``.
        device, dtype: of the buffers.
    """

    def __init__(self, bits: int = 8, symmetric: bool = False, ch_axis: int | None = None,
                 averaging_constant: float = 1.0, num_candidates: int = 100, channels: int = 1, *,
                 device=None, dtype=None) -> None:
        super().__init__(bits, symmetric, ch_axis, averaging_constant, channels, device=device, dtype=dtype)
        self.num_candidates = num_candidates

    def _new_range(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._batch_range(x)                                           # validation only
        return mse_clip_search(x, self.bits, self.symmetric, self.ch_axis, self.num_candidates)


_OBSERVERS = {"minmax": MinMaxObserver, "moving_average": MovingAverageMinMaxObserver, "mse": MSEObserver}


def make_observer(kind: str, bits: int, symmetric: bool, ch_axis: int | None, averaging_constant: float,
                  channels: int, *, device=None, dtype=None) -> Observer:
    """The observer named ``kind`` (``"minmax"``, ``"moving_average"`` or ``"mse"``)."""
    if kind not in _OBSERVERS:
        raise ValueError(f"FakeQuantize: expected observer in {sorted(_OBSERVERS)}, got {kind!r}")
    if kind == "minmax":
        return MinMaxObserver(bits, symmetric, ch_axis, channels=channels, device=device, dtype=dtype)
    return _OBSERVERS[kind](bits, symmetric, ch_axis, averaging_constant, channels=channels,
                            device=device, dtype=dtype)
