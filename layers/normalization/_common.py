"""What both norms share: the statistics and :math:`\\hat x` (``_normalize``), the dtype they
accumulate in, and the parameter checks.

Part of :mod:`layers.normalization`, taught in the chapter "Convolutions and normalization"
(``book/convolutions.ipynb``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_same_device, check_tensor


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16/bfloat16 (and float32), float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def _check_param(where: str, x: Tensor, t: Tensor, name: str, shape: tuple[int, ...]) -> None:
    """Shape, device and dtype of a parameter or buffer: its own dtype, or float32 for a
    float16/bfloat16 input (mixed precision, as PyTorch accepts)."""
    check_tensor(t, where, name)
    if tuple(t.shape) != shape:
        raise ValueError(f"{where}: expected {name} of shape {shape}, got {tuple(t.shape)}")
    check_same_device(where, x, t)
    if t.dtype != x.dtype and not (x.dtype in _LOW_PRECISION and t.dtype == torch.float32):
        raise TypeError(f"{where}: expected input of dtype {t.dtype} (the {name}'s dtype), got {x.dtype}")


def _normalize(x: Tensor, dims: tuple[int, ...], eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r""":math:`\hat x = (x - \mu) / \sqrt{\sigma^2 + \epsilon}` over ``dims``, in the accumulation dtype.

    Returns ``xhat`` (shape of ``x``) and, with ``dims`` kept as size 1,
    ``rstd`` :math:`= 1/\sqrt{\sigma^2 + \epsilon}`, the mean :math:`\mu` and the biased
    variance :math:`\sigma^2`. Three full-size tensors are made: ``x - mu``, its
    square and ``xhat`` (the means are reductions).
    """
    xf = x.to(_accumulation_dtype(x.dtype))                    # float32 for float16/bfloat16
    mean = xf.mean(dims, keepdim=True)                         # mu
    xc = xf - mean                                             # x - mu
    var = (xc * xc).mean(dims, keepdim=True)                   # biased variance sigma^2
    rstd = (var + eps).rsqrt()                                 # 1 / sigma
    return xc * rstd, rstd, mean, var                          # xhat, (1/sigma, mu, sigma^2)
