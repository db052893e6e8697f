"""Plain-torch reference implementations: what our layers are compared with where torch has no built-in.

Written once here and used by the tests, the benchmarks and the chapters:

* :func:`sigmoid_focal_loss`: torchvision's ``sigmoid_focal_loss`` formula
  (torchvision is not a dependency), the oracle of :func:`layers.losses.focal_loss`.
* :func:`softmax_focal_loss`: the multi-class focal loss written with
  ``log_softmax``, the oracle of :func:`layers.losses.softmax_focal_loss`.
* :func:`naive_attention`: :math:`\\operatorname{softmax}(QK^\\top/\\sqrt{E})\\,V` with
  autograd keeping the :math:`L \\times S` probability matrix, the baseline of the
  attention memory comparisons.
* :class:`TorchResidualBlock`: :class:`layers.blocks.ResidualBlock` built from
  ``torch.nn`` with the same parameter names, so the state dicts load into each other.

Nothing here imports the layers it is a reference for.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["TorchResidualBlock", "naive_attention", "sigmoid_focal_loss", "softmax_focal_loss"]


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"expected reduction 'none', 'mean' or 'sum', got {reduction!r}")


def sigmoid_focal_loss(inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "none") -> Tensor:
    r"""torchvision's ``sigmoid_focal_loss``, line by line in torch ops.

    :math:`\ell = \alpha_t (1 - p_t)^\gamma \operatorname{BCE}(x, t)` with
    :math:`p = \sigma(x)`, :math:`p_t = p t + (1 - p)(1 - t)` and
    :math:`\alpha_t = \alpha t + (1 - \alpha)(1 - t)`; a negative ``alpha`` means no weighting.

    Args:
        inputs: logits, any shape.
        targets: the same shape, values in [0, 1].
        alpha: weight of the positive class, or ``< 0`` for none.
        gamma: focusing exponent.
        reduction: ``"none"`` (torchvision's default), ``"mean"`` or ``"sum"``.
    """
    p = torch.sigmoid(inputs)
    ce_loss = nn.functional.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return _reduce(loss, reduction)


def softmax_focal_loss(logits: Tensor, target: Tensor, alpha: Tensor | None = None, gamma: float = 2.0,
                       reduction: str = "mean") -> Tensor:
    r"""Multi-class focal loss :math:`-\alpha_y (1 - p_y)^\gamma \log p_y` from ``log_softmax``.

    Args:
        logits: ``(N, C)``.
        target: ``(N,)`` class indices.
        alpha: optional ``(C,)`` class weights.
        gamma: focusing exponent (0 gives cross-entropy).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
    """
    logp_y = torch.log_softmax(logits, dim=-1).gather(1, target.unsqueeze(1)).squeeze(1)   # (N,)
    loss = -(1 - logp_y.exp()) ** gamma * logp_y                                           # (N,)
    if alpha is not None:
        loss = alpha[target] * loss
    return _reduce(loss, reduction)


def naive_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                    is_causal: bool = False, scale: float | None = None) -> Tensor:
    r"""Attention :math:`\operatorname{softmax}(s\, q k^\top + B)\, v` from plain torch ops.

    The masks mean what they mean in
    :func:`torch.nn.functional.scaled_dot_product_attention`: a boolean
    ``attn_mask`` is ``True`` where a query may attend, a float mask is added to
    the scores, ``is_causal`` keeps the lower triangle. Autograd keeps the
    ``(..., L, S)`` probability matrix for backward.

    Args:
        query: ``(..., L, E)``.
        key: ``(..., S, E)``.
        value: ``(..., S, Ev)``.
        attn_mask: boolean or float, broadcastable to ``(..., L, S)``.
        is_causal: mask out keys after each query's position.
        scale: :math:`s`; ``1 / sqrt(E)`` if ``None``.

    Returns:
        ``(..., L, Ev)``.
    """
    s = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = query @ key.transpose(-2, -1) * s                 # (..., L, S)
    L, S = scores.shape[-2:]
    if is_causal:
        causal = torch.ones(L, S, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    return torch.softmax(scores, dim=-1) @ value               # (..., L, Ev)


class TorchResidualBlock(nn.Module):
    """:class:`layers.blocks.ResidualBlock` from ``torch.nn`` modules, with the same parameter names.

    ``conv1 -> bn1 -> relu -> conv2 -> bn2 (+ shortcut) -> relu``; the shortcut is
    the identity, or a strided 1x1 convolution and batch norm (``projection``)
    when the shape changes.

    Args:
        channels: input channels.
        out_channels: output channels (``channels`` if ``None``).
        stride: of the first convolution and of the projection.
        shortcut: add the shortcut.

    Shape:
        - Input: ``(N, channels, H, W)``.
        - Output: ``(N, out_channels, H', W')``, ``H' = ceil(H / stride)``.
    """

    def __init__(self, channels: int, out_channels: int | None = None, stride: int = 1,
                 shortcut: bool = True) -> None:
        super().__init__()
        o = channels if out_channels is None else out_channels
        self.channels, self.out_channels, self.stride, self.shortcut = channels, o, stride, shortcut
        self.conv1 = nn.Conv2d(channels, o, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(o)
        self.conv2 = nn.Conv2d(o, o, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(o)
        self.projection = None
        if shortcut and (stride != 1 or o != channels):
            self.projection = nn.Sequential(nn.Conv2d(channels, o, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(o))

    @classmethod
    def like(cls, block: nn.Module) -> TorchResidualBlock:
        """A block with ``block``'s configuration and a copy of its state (parameters and running statistics)."""
        ref = cls(block.channels, block.out_channels, block.stride, block.shortcut)
        ref.load_state_dict(block.state_dict())
        return ref.to(next(block.parameters()).device)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))              # (N, C_out, H', W')
        out = self.bn2(self.conv2(out))                        # (N, C_out, H', W')
        if self.shortcut:
            out = out + (x if self.projection is None else self.projection(x))
        return torch.relu(out)

    def extra_repr(self) -> str:
        return f"{self.channels}, {self.out_channels}, stride={self.stride}, shortcut={self.shortcut}"
