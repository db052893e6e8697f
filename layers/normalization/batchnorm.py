"""Batch normalization: :class:`BatchNormFunction`, :class:`BatchNormEvalFunction`, :func:`batch_norm`
and :class:`BatchNorm2d`.

Part of :mod:`layers.normalization`, taught in the chapter "Convolutions and normalization"
(``book/convolutions.ipynb``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..composable import compilable_apply
from .._validation import check_tensor
from ._common import _accumulation_dtype, _check_param, _normalize

__all__ = ["BatchNormFunction", "BatchNormEvalFunction", "batch_norm", "BatchNorm2d"]


def _channel_shape(x: Tensor) -> tuple[int, ...]:
    """``(1, C, 1, ..., 1)``: a per-channel ``(C,)`` tensor reshaped to broadcast over ``x``."""
    return (1, x.shape[1]) + (1,) * (x.dim() - 2)


def _batch_dims(x: Tensor) -> tuple[int, ...]:
    """Every dimension but the channel dimension 1: ``(0, 2, 3)`` for ``(N, C, H, W)``."""
    return (0, *range(2, x.dim()))


class BatchNormFunction(torch.autograd.Function):
    r"""Training-mode batch norm: statistics per channel over every other dimension.

    Forward, with :math:`M` values per channel (:math:`N H W` for images):
    :math:`\mu = \frac{1}{M}\sum x`, :math:`\sigma^2 = \frac{1}{M}\sum (x - \mu)^2`,
    :math:`\hat x = (x - \mu)/\sqrt{\sigma^2 + \epsilon}`, :math:`y = \gamma \hat x + \beta`.
    If running statistics are given they are updated in place (see :func:`batch_norm`);
    they are buffers, not inputs of the differentiated computation.

    Backward, with sums over the :math:`M` values of each channel and bars for
    their means (:math:`\gamma` is constant over them, so it comes out of the sums):

    .. math::

        \partial\beta = \textstyle\sum g, \quad
        \partial\gamma = \textstyle\sum g \hat x, \quad
        \partial x = \frac{\gamma}{\sqrt{\sigma^2+\epsilon}} \big( g
            - \bar g - \hat x\, \overline{g \hat x} \big)
            \ \text{ with } \bar g = \tfrac{1}{M}\partial\beta,\ \overline{g \hat x} = \tfrac{1}{M}\partial\gamma.

    Saves ``x`` and ``weight``; backward recomputes :math:`\mu, \sigma^2, \hat x`
    from ``x`` in differentiable ops, so it is twice differentiable.

    Arguments of ``forward``: ``input, weight, bias, running_mean, running_var, momentum, eps``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
                running_var: Tensor | None, momentum: float | Tensor, eps: float) -> Tensor:
        dims, shape = _batch_dims(input), _channel_shape(input)
        count = input.numel() // input.shape[1]                          # M
        xhat, _, mean, var = _normalize(input, dims, eps)                # (N, C, ...); mu, sigma^2 (1, C, 1, ...)
        y = xhat if weight is None else xhat * weight.reshape(shape)     # gamma xhat
        y = y if bias is None else y + bias.reshape(shape)               # + beta
        if running_mean is not None and running_var is not None:         # buffers, updated as torch's kernel does
            unbiased = var.reshape(-1) * (count / (count - 1))           # Bessel's correction, (C,)
            running_mean.mul_(1 - momentum).add_(momentum * mean.reshape(-1).to(running_mean.dtype))
            running_var.mul_(1 - momentum).add_(momentum * unbiased.to(running_var.dtype))
        return y.to(input.dtype)                                         # (N, C, ...)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, _, _, _, eps = inputs
        ctx.save_for_backward(x, weight)                                 # statistics are recomputed
        ctx.save_for_forward(x, weight)
        ctx.eps = eps
        ctx.bias_dtype = None if bias is None else bias.dtype

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dims, shape = _batch_dims(x), _channel_shape(x)
        count = x.numel() // x.shape[1]                                  # M
        g = grad_out.to(_accumulation_dtype(x.dtype))                    # (N, C, ...)
        dx = dw = db = None
        if need_x or need_b:
            sum_g = g.sum(dims, keepdim=True)                            # sum g, (1, C, 1, ...)
        if need_x or need_w:
            xhat, rstd, _, _ = _normalize(x, dims, ctx.eps)              # (N, C, ...); 1/sigma (1, C, 1, ...)
            sum_gxhat = (g * xhat).sum(dims, keepdim=True)               # sum g xhat, (1, C, 1, ...)
        if need_x:
            k = rstd if weight is None else weight.reshape(shape) * rstd                     # gamma / sigma, (1, C, 1, ...)
            dx = (k * (g - sum_g / count - xhat * (sum_gxhat / count))).to(x.dtype)          # (N, C, ...)
        if need_w:
            dw = sum_gxhat.reshape(-1).to(weight.dtype)                  # (C,)
        if need_b:
            db = sum_g.reshape(-1).to(ctx.bias_dtype)                    # (C,)
        return dx, dw, db, None, None, None, None

    @staticmethod
    def jvp(ctx, dx_t, dw_t, db_t, *_):
        r""":math:`\dot y = \gamma \dot{\hat x} + \dot\gamma \hat x + \dot\beta` with
        :math:`\dot{\hat x} = \frac{1}{\sqrt{\sigma^2+\epsilon}}(\dot x - \overline{\dot x} - \hat x\, \overline{\dot x \hat x})`
        (bars: means over each channel's :math:`M` values)."""
        x, weight = ctx.saved_tensors
        dims, shape = _batch_dims(x), _channel_shape(x)
        xhat, rstd, _, _ = _normalize(x, dims, ctx.eps)                  # (N, C, ...)
        dy = torch.zeros_like(xhat)
        if dx_t is not None:
            t = dx_t.to(xhat.dtype)
            dxhat = rstd * (t - t.mean(dims, keepdim=True) - xhat * (t * xhat).mean(dims, keepdim=True))
            dy = dy + (dxhat if weight is None else dxhat * weight.reshape(shape))
        if dw_t is not None:
            dy = dy + xhat * dw_t.reshape(shape)
        if db_t is not None:
            dy = dy + db_t.reshape(shape)
        return dy.to(x.dtype)


class BatchNormEvalFunction(torch.autograd.Function):
    r"""Eval-mode batch norm: a fixed per-channel affine map with the running statistics.

    :math:`\hat x = (x - \mu_{run}) / \sqrt{\sigma^2_{run} + \epsilon}`, :math:`y = \gamma \hat x + \beta`.
    Backward: :math:`\partial x = \gamma g / \sqrt{\sigma^2_{run}+\epsilon}`,
    :math:`\partial\gamma = \sum g \hat x`, :math:`\partial\beta = \sum g`; the
    running statistics are constants (buffers) and get no gradient.

    Arguments of ``forward``: ``input, weight, bias, running_mean, running_var, eps``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, weight: Tensor | None, bias: Tensor | None,
                running_mean: Tensor, running_var: Tensor, eps: float) -> Tensor:
        xhat = BatchNormEvalFunction._xhat(input, running_mean, running_var, eps)   # (N, C, ...)
        shape = _channel_shape(input)
        y = xhat if weight is None else xhat * weight.reshape(shape)     # gamma xhat
        y = y if bias is None else y + bias.reshape(shape)               # + beta
        return y.to(input.dtype)

    @staticmethod
    def _xhat(x: Tensor, running_mean: Tensor, running_var: Tensor, eps: float) -> Tensor:
        shape, acc = _channel_shape(x), _accumulation_dtype(x.dtype)
        invstd = (running_var.to(acc) + eps).rsqrt().reshape(shape)      # (1, C, 1, ...)
        return (x.to(acc) - running_mean.to(acc).reshape(shape)) * invstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, running_mean, running_var, eps = inputs
        ctx.save_for_backward(x, weight, running_mean, running_var)
        ctx.save_for_forward(x, weight, running_mean, running_var)
        ctx.eps = eps
        ctx.bias_dtype = None if bias is None else bias.dtype

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight, running_mean, running_var = ctx.saved_tensors
        dims, shape, acc = _batch_dims(x), _channel_shape(x), _accumulation_dtype(x.dtype)
        g = grad_out.to(acc)                                             # (N, C, ...)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            invstd = (running_var.to(acc) + ctx.eps).rsqrt().reshape(shape)             # (1, C, 1, ...)
            k = invstd if weight is None else invstd * weight.reshape(shape)            # gamma / sigma_run
            dx = (g * k).to(x.dtype)                                                     # (N, C, ...)
        if ctx.needs_input_grad[1]:
            xhat = BatchNormEvalFunction._xhat(x, running_mean, running_var, ctx.eps)   # (N, C, ...)
            dw = (g * xhat).sum(dims).to(weight.dtype)                                  # (C,)
        if ctx.needs_input_grad[2]:
            db = g.sum(dims).to(ctx.bias_dtype)                                          # (C,)
        return dx, dw, db, None, None, None

    @staticmethod
    def jvp(ctx, dx_t, dw_t, db_t, *_):
        r""":math:`\dot y = \gamma \dot x / \sqrt{\sigma^2_{run}+\epsilon} + \dot\gamma \hat x + \dot\beta`."""
        x, weight, running_mean, running_var = ctx.saved_tensors
        shape = _channel_shape(x)
        xhat = BatchNormEvalFunction._xhat(x, running_mean, running_var, ctx.eps)
        dy = torch.zeros_like(xhat)
        if dx_t is not None:
            invstd = (running_var.to(xhat.dtype) + ctx.eps).rsqrt().reshape(shape)
            k = invstd if weight is None else invstd * weight.reshape(shape)
            dy = dy + dx_t.to(xhat.dtype) * k
        if dw_t is not None:
            dy = dy + xhat * dw_t.reshape(shape)
        if db_t is not None:
            dy = dy + db_t.reshape(shape)
        return dy.to(x.dtype)


_batch_norm_apply = compilable_apply(BatchNormFunction)
_batch_norm_eval_apply = compilable_apply(BatchNormEvalFunction)


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    r"""Batch normalization of ``(N, C, *)`` per channel, as :func:`torch.nn.functional.batch_norm`.

    .. math:: y = \gamma \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

    In training (or when there are no running statistics) :math:`\mu,\sigma^2`
    are the batch mean and biased variance per channel over every dimension but
    dimension 1, and the running statistics, if given, are updated in place:
    :math:`\hat\mu \leftarrow (1 - m)\hat\mu + m\mu` and
    :math:`\hat\sigma^2 \leftarrow (1 - m)\hat\sigma^2 + m \frac{M}{M - 1}\sigma^2`
    (the *unbiased* variance, :math:`M` values per channel). Otherwise the running
    statistics are used. Computed by :class:`BatchNormFunction` or
    :class:`BatchNormEvalFunction`; float16/bfloat16 inputs are reduced in float32.

    Args:
        input: ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)``, ...
        running_mean: ``(C,)`` buffer or ``None``.
        running_var: ``(C,)`` buffer or ``None``.
        weight: :math:`\gamma`, ``(C,)`` or ``None``.
        bias: :math:`\beta`, ``(C,)`` or ``None``.
        training: use batch statistics and update the running ones. Default: ``False``.
        momentum: :math:`m`, weight of the new batch in the running statistics
            (a float or a 0-dim tensor). Default: 0.1.
        eps: added to the variance for stability. Default: ``1e-5``.

    Shape:
        - Input: :math:`(N, C, *)`; output the same.

    Raises:
        ValueError: fewer than 2 dimensions, parameters not of shape ``(C,)``, or
            only one value per channel in training (as PyTorch).
        TypeError: non-floating input, or a dtype mismatch with the parameters.

    Examples:
        >>> x = torch.randn(8, 3, 4, 4)
        >>> y = batch_norm(x, None, None, training=True)
        >>> round(abs(y.mean().item()), 4), round(y.var(unbiased=False).item(), 3)
        (0.0, 1.0)
    """
    return _batch_norm("batch_norm", input, running_mean, running_var, weight, bias, training, momentum, eps)


def _batch_norm(where, input, running_mean, running_var, weight, bias, training, momentum, eps) -> Tensor:
    if isinstance(input, Tensor) and input.dim() == 1 and input.numel() == 0:
        check_tensor(input, where)
        return input.clone()                    # as torch: an empty 1-D input has no channels
    check_tensor(input, where, min_ndim=2)
    channels = input.shape[1]
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t is not None:
            _check_param(where, input, t, name, (channels,))
    use_batch_stats = training or running_mean is None or running_var is None
    if not use_batch_stats:
        return _batch_norm_eval_apply(
                      input, weight, bias, running_mean, running_var, eps)
    per_channel = input.numel() // channels if channels else 0
    if per_channel == 1:
        raise ValueError(
            f"{where}: expected more than 1 value per channel when training, got input of shape "
            f"{tuple(input.shape)}; use eval mode or a larger batch"
        )
    if input.numel() == 0:                      # empty batch: nothing to normalize, stats untouched
        shape = _channel_shape(input)
        y = input * 1.0 if weight is None else input * weight.reshape(shape)
        return y if bias is None else y + bias.reshape(shape)
    update = training and running_mean is not None and running_var is not None
    return _batch_norm_apply(input, weight, bias,
                  running_mean if update else None, running_var if update else None, momentum, eps)


class BatchNorm2d(nn.Module):
    r"""Batch normalization over ``(N, H, W)`` per channel; see :func:`batch_norm`.

    A drop-in replacement for :class:`torch.nn.BatchNorm2d`: same arguments,
    parameters, buffers (``running_mean``, ``running_var``,
    ``num_batches_tracked``) and ``state_dict`` keys; the running statistics
    are updated exactly as PyTorch does.

    Args:
        num_features: channels :math:`C`.
        eps: added to the variance. Default: ``1e-5``.
        momentum: weight of each new batch in the running statistics; ``None``
            means a cumulative average, :math:`m = 1/\text{num\_batches\_tracked}`.
            Default: 0.1.
        affine: learn :math:`\gamma` (``weight``) and :math:`\beta` (``bias``). Default: ``True``.
        track_running_stats: keep running statistics and use them in eval mode;
            if ``False`` batch statistics are used in both modes. Default: ``True``.
        device, dtype: where and in which dtype to create the parameters and buffers.
        bias: with ``affine``, also learn :math:`\beta`; ``False`` keeps only :math:`\gamma`
            (keyword-only, as in torch). Default: ``True``.

    Shape:
        - Input: :math:`(N, C, H, W)`; output the same.

    Attributes:
        weight: :math:`\gamma`, ``(C,)``, initialized to ones (``None`` if not affine).
        bias: :math:`\beta`, ``(C,)``, initialized to zeros (``None`` if not affine).
        running_mean: ``(C,)`` buffer, starts at zeros.
        running_var: ``(C,)`` buffer of unbiased variances, starts at ones.
        num_batches_tracked: number of training batches seen.

    Examples:
        >>> bn = BatchNorm2d(3)
        >>> bn(torch.randn(4, 3, 5, 5)).shape
        torch.Size([4, 3, 5, 5])
        >>> int(bn.num_batches_tracked)
        1
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None, *,
                 bias: bool = True) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"BatchNorm2d: expected num_features >= 1, got {num_features}")
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.weight = nn.Parameter(torch.empty(num_features, **factory)) if affine else None
        self.bias = nn.Parameter(torch.empty(num_features, **factory)) if affine and bias else None
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Running mean to zeros, running variance to ones, batch count to zero."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics, :math:`\\gamma` to ones and :math:`\\beta` to zeros."""
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        check_tensor(input, "BatchNorm2d", ndim=4, size={1: self.num_features})
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:                                  # cumulative moving average
                factor = 1.0 / self.num_batches_tracked                # 0-dim tensor, no host sync
        running = not self.training or self.track_running_stats
        return _batch_norm("BatchNorm2d", input, self.running_mean if running else None,
                           self.running_var if running else None, self.weight, self.bias,
                           self.training or not self.track_running_stats, factor, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")
