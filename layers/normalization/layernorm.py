"""Layer normalization: :class:`LayerNormFunction`, :func:`layer_norm` and :class:`LayerNorm`.

Part of :mod:`layers.normalization`, taught in the chapter "Convolutions and normalization"
(``book/convolutions.ipynb``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..composable import autocast_apply, compilable_apply
from .._validation import check_tensor
from ._common import _accumulation_dtype, _check_param, _normalize

__all__ = ["LayerNormFunction", "layer_norm", "LayerNorm"]


def _sum_leading(t: Tensor, n: int) -> Tensor:
    """Sum over the first ``n`` dimensions (none if ``n == 0``)."""
    return t.sum(tuple(range(n))) if n else t


class LayerNormFunction(torch.autograd.Function):
    r"""Layer norm over the last ``ndim`` dimensions, with a manual backward.

    Forward, per sample with :math:`M` values in the normalized dimensions:
    :math:`\hat x = (x - \mu)/\sqrt{\sigma^2 + \epsilon}`, :math:`y = \gamma \hat x + \beta`.

    Backward, with :math:`\tilde g = \gamma g` and bars for means over the normalized
    dimensions (:math:`\gamma` varies over them, so it stays inside the means);
    :math:`\partial\gamma, \partial\beta` sum over the leading dimensions:

    .. math::

        \partial x = \frac{1}{\sqrt{\sigma^2+\epsilon}} \big( \tilde g
            - \bar{\tilde g} - \hat x\, \overline{\tilde g \hat x} \big), \quad
        \partial\gamma = \textstyle\sum g \hat x, \quad
        \partial\beta = \textstyle\sum g.

    Saves ``x`` and ``weight``; backward recomputes the statistics in
    differentiable ops, so it is twice differentiable.

    Arguments of ``forward``: ``input, weight, bias, ndim, eps``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, weight: Tensor | None, bias: Tensor | None, ndim: int, eps: float) -> Tensor:
        dims = tuple(range(input.dim() - ndim, input.dim()))             # normalized dims
        xhat, _, _, _ = _normalize(input, dims, eps)                     # (*, S)
        y = xhat if weight is None else xhat * weight                    # gamma xhat, broadcasts over *
        y = y if bias is None else y + bias                              # + beta
        return y.to(input.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, ndim, eps = inputs
        ctx.save_for_backward(x, weight)                                 # statistics are recomputed
        ctx.save_for_forward(x, weight)
        ctx.ndim, ctx.eps = ndim, eps
        ctx.bias_dtype = None if bias is None else bias.dtype

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        lead = x.dim() - ctx.ndim                                        # leading (batch) dims
        dims = tuple(range(lead, x.dim()))                               # normalized dims
        g = grad_out.to(_accumulation_dtype(x.dtype))                    # (*, S)
        dx = dw = db = None
        if need_x or need_w:
            xhat, rstd, _, _ = _normalize(x, dims, ctx.eps)              # (*, S); 1/sigma (*, 1, ..., 1)
        if need_x:
            gt = g if weight is None else g * weight                     # g~ = gamma g, (*, S)
            mean_gt = gt.mean(dims, keepdim=True)                        # mean g~, (*, 1, ..., 1)
            mean_gtxhat = (gt * xhat).mean(dims, keepdim=True)           # mean g~ xhat, (*, 1, ..., 1)
            dx = (rstd * (gt - mean_gt - xhat * mean_gtxhat)).to(x.dtype)                   # (*, S)
        if need_w:
            dw = _sum_leading(g * xhat, lead).to(weight.dtype)           # S
        if need_b:
            db = _sum_leading(g, lead).to(ctx.bias_dtype)                # S
        return dx, dw, db, None, None

    @staticmethod
    def jvp(ctx, dx_t, dw_t, db_t, *_):
        r""":math:`\dot y = \gamma \dot{\hat x} + \dot\gamma \hat x + \dot\beta` with
        :math:`\dot{\hat x} = \frac{1}{\sqrt{\sigma^2+\epsilon}}(\dot x - \overline{\dot x} - \hat x\, \overline{\dot x \hat x})`
        (bars: means over the normalized dimensions)."""
        x, weight = ctx.saved_tensors
        dims = tuple(range(x.dim() - ctx.ndim, x.dim()))
        xhat, rstd, _, _ = _normalize(x, dims, ctx.eps)                  # (*, S)
        dy = torch.zeros_like(xhat)
        if dx_t is not None:
            t = dx_t.to(xhat.dtype)
            dxhat = rstd * (t - t.mean(dims, keepdim=True) - xhat * (t * xhat).mean(dims, keepdim=True))
            dy = dy + (dxhat if weight is None else dxhat * weight)
        if dw_t is not None:
            dy = dy + xhat * dw_t
        if db_t is not None:
            dy = dy + db_t
        return dy.to(x.dtype)


_layer_norm_apply = compilable_apply(LayerNormFunction)


def layer_norm(input: Tensor, normalized_shape: int | tuple[int, ...], weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    r"""Layer normalization over the last dimensions, as :func:`torch.nn.functional.layer_norm`.

    .. math:: y = \gamma \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

    with :math:`\mu, \sigma^2` the mean and biased variance of each sample over
    the last ``len(normalized_shape)`` dimensions. Computed by :class:`LayerNormFunction`;
    float16/bfloat16 inputs are reduced in float32.

    Args:
        input: ``(*, *normalized_shape)``.
        normalized_shape: the trailing shape to normalize over (int, tuple, list or ``torch.Size``).
        weight: :math:`\gamma` of shape ``normalized_shape``, or ``None``.
        bias: :math:`\beta` of shape ``normalized_shape``, or ``None``.
        eps: added to the variance. Default: ``1e-5``.

    Shape:
        - Input: :math:`(*, \text{normalized\_shape})`; output the same.

    Raises:
        ValueError: the input's last dimensions are not ``normalized_shape``, or
            a parameter has another shape.
        TypeError: non-floating input, or a dtype mismatch with the parameters.

    Examples:
        >>> y = layer_norm(torch.randn(2, 5), 5)
        >>> y.mean(-1).abs().max() < 1e-6
        tensor(True)
    """
    return _layer_norm("layer_norm", input, normalized_shape, weight, bias, eps)


def _layer_norm(where, input, normalized_shape, weight, bias, eps) -> Tensor:
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    check_tensor(input, where, min_ndim=len(shape))
    if tuple(input.shape[input.dim() - len(shape):]) != shape:
        raise ValueError(
            f"{where}: expected input whose last dimensions are {shape}, got shape {tuple(input.shape)}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            _check_param(where, input, t, name, shape)
    if input.device.type == "cuda":
        # CUDA autocast runs layer_norm in float32 (CPU autocast keeps the input's dtype)
        return autocast_apply(_layer_norm_apply, "float32", input, weight, bias, len(shape), eps)
    return _layer_norm_apply(input, weight, bias, len(shape), eps)


class LayerNorm(nn.Module):
    r"""Layer normalization over the trailing ``normalized_shape``; see :func:`layer_norm`.

    A drop-in replacement for :class:`torch.nn.LayerNorm` (same parameters and
    ``state_dict``).

    Args:
        normalized_shape: int or tuple, the trailing shape to normalize over.
        eps: added to the variance. Default: ``1e-5``.
        elementwise_affine: learn :math:`\gamma` (and :math:`\beta`, see ``bias``). Default: ``True``.
        bias: learn :math:`\beta` too (with ``elementwise_affine``). Default: ``True``.
        device, dtype: where and in which dtype to create the parameters.

    Shape:
        - Input: :math:`(*, \text{normalized\_shape})`; output the same.

    Attributes:
        weight: :math:`\gamma`, shape ``normalized_shape``, initialized to ones (``None``
            without ``elementwise_affine``).
        bias: :math:`\beta`, shape ``normalized_shape``, initialized to zeros (``None``
            without ``elementwise_affine`` or with ``bias=False``).

    Examples:
        >>> ln = LayerNorm(8)
        >>> ln(torch.randn(3, 8)).shape
        torch.Size([3, 8])
    """

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape = shape
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        factory = {"device": device, "dtype": dtype}
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(shape, **factory))
        else:
            self.register_parameter("weight", None)
        if elementwise_affine and bias:
            self.bias = nn.Parameter(torch.empty(shape, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """:math:`\\gamma` to ones and :math:`\\beta` to zeros, as PyTorch does."""
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        return _layer_norm("LayerNorm", input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
