r"""Batch normalization and layer normalization with hand-written backward passes.

Taught in the chapter "Convolutions and normalization" (``book/convolutions.ipynb``).

Both normalize with statistics :math:`\mu, \sigma^2` over some dimensions,
:math:`\hat x = (x - \mu) / \sqrt{\sigma^2 + \epsilon}`, then scale and shift,
:math:`y = \gamma \hat x + \beta`. :class:`BatchNorm2d` takes the statistics per
channel over the batch and the spatial positions ``(N, H, W)``; :class:`LayerNorm`
takes them per sample over the last dimensions.

The backward is the compact closed form (derived in the chapter). With
:math:`M` values per statistic, :math:`g = \partial L/\partial y` and
:math:`\tilde g = \gamma g`:

.. math::

    \frac{\partial L}{\partial x} = \frac{1}{M \sqrt{\sigma^2 + \epsilon}}
        \Big( M \tilde g - \textstyle\sum \tilde g - \hat x \sum \tilde g \hat x \Big), \qquad
    \frac{\partial L}{\partial \gamma} = \textstyle\sum g \hat x, \qquad
    \frac{\partial L}{\partial \beta} = \textstyle\sum g,

so backward needs only ``x``, :math:`\gamma` and two small per-statistic
tensors (mean and :math:`1/\sqrt{\sigma^2+\epsilon}`), not the intermediate
tensors autograd would save for the formula written out op by op.

Speed: on a CPU these layers are limited by memory traffic, and a fresh
full-size tensor costs more than an in-place pass over one (the memory has to
be obtained and touched). So the forward writes the output into one new tensor
in place, and the usual backward (no ``create_graph``) regroups the formula as
:math:`\partial x = k\,(\gamma g + a x + c)` with small per-statistic
:math:`k, a, c`, computed from per-statistic sums (``sum`` or a matrix-vector
product), into one new tensor. The same formula with plain differentiable ops
(``_norm_backward``) is used when a graph of the backward is built.

Double backward: the backward is written with differentiable torch ops; when
autograd differentiates it (``create_graph=True``) it rebuilds the statistics
from ``x`` so that their dependence on ``x`` is part of the graph, and
``gradgradcheck`` passes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._validation import check_same_device, check_same_dtype, check_tensor

__all__ = [
    "BatchNormFunction", "BatchNormEvalFunction", "LayerNormFunction",
    "batch_norm", "layer_norm", "BatchNorm2d", "LayerNorm",
]


def _norm_backward(grad_out: Tensor, xhat: Tensor, invstd: Tensor, weight: Tensor | None,
                   dims: tuple[int, ...], need_x: bool) -> Tensor | None:
    """The closed-form input gradient; ``invstd`` and ``weight`` broadcast against ``xhat``."""
    if not need_x:
        return None
    g = grad_out if weight is None else grad_out * weight          # g~ = gamma * g
    mean_g = g.mean(dims, keepdim=True)                            # sum(g~) / M
    mean_gx = (g * xhat).mean(dims, keepdim=True)                  # sum(g~ xhat) / M
    return invstd * (g - mean_g - xhat * mean_gx)                  # same shape as x


# -------------------------------------------------------------------------- BatchNorm
def _channel(t: Tensor) -> Tensor:
    """``(C,) -> (1, C, 1, 1)`` so it broadcasts over ``(N, C, H, W)``."""
    return t.reshape(1, -1, 1, 1)


class BatchNormFunction(torch.autograd.Function):
    r"""Training-mode batch norm over ``(N, H, W)`` per channel, with a manual backward.

    Returns ``(y, mean, var)``: the output, and the batch mean and biased
    variance per channel (not differentiable; for the running estimates).

    Backward, with :math:`M = N H W`, :math:`\tilde g = \gamma g` and sums over
    ``(N, H, W)``:

    .. math::

        \partial x = \frac{1}{\sqrt{\sigma^2+\epsilon}} \Big( \tilde g
            - \tfrac{1}{M}\textstyle\sum \tilde g
            - \hat x \, \tfrac{1}{M} \sum \tilde g \hat x \Big), \quad
        \partial\gamma = \textstyle\sum g \hat x, \quad
        \partial\beta = \textstyle\sum g.

    Saves ``x``, ``weight`` and the per-channel ``mean`` and
    :math:`1/\sqrt{\sigma^2+\epsilon}`.
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
        count = x.shape[0] * x.shape[2] * x.shape[3]                     # M = N H W
        mean = x.mean((0, 2, 3))                                         # (C,)
        y = x - _channel(mean)                                           # new tensor, (N, C, H, W)
        # Biased variance sum((x - mean)^2) / M without another full-size temporary:
        # a norm per (n, c) map, then a sum over n (torch.var is slow on CPU).
        maps = y.reshape(x.shape[0], x.shape[1], -1)                     # (N, C, H*W), a view
        var = torch.linalg.vector_norm(maps, dim=2).square_().sum(0).div_(count)   # (C,)
        scale = (var + eps).rsqrt()                                      # 1/sqrt(var + eps), (C,)
        if weight is not None:
            scale = scale * weight                                       # gamma / sqrt(var + eps)
        if bias is not None:
            torch.addcmul(_channel(bias), y, _channel(scale), out=y)     # y = beta + y scale, one pass
        else:
            y.mul_(_channel(scale))                                      # in place: y is ours
        return y, mean, var

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, eps = inputs
        _, mean, var = output
        ctx.mark_non_differentiable(mean, var)
        ctx.save_for_backward(x, weight, mean, (var + eps).rsqrt())      # x and three (C,) vectors
        ctx.has_bias, ctx.eps = bias is not None, eps

    @staticmethod
    def backward(ctx, grad_out: Tensor, _grad_mean, _grad_var):
        x, weight, mean, invstd = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1]
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        if torch.is_grad_enabled():                # double backward: the plain, differentiable formula
            return BatchNormFunction._backward_differentiable(ctx, grad_out, x, weight, need_x, need_w, need_b)
        dims, count = (0, 2, 3), x.shape[0] * x.shape[2] * x.shape[3]
        dx = dw = db = None
        sum_g = grad_out.sum(dims) if (need_b or need_x) else None       # sum g, (C,): db, and used by dx
        if need_b:
            db = sum_g
        if need_x or need_w:
            buf = torch.sub(x, _channel(mean)).mul_(grad_out)            # g (x - mean), (N, C, H, W)
            sum_gxc = buf.sum(dims)                                      # sum g (x - mean), (C,)
            if need_w:
                dw = sum_gxc * invstd                                     # sum g xhat, (C,)
            if need_x:
                # dx = k (g - sum g / M - xhat sum g xhat / M) with k = gamma invstd
                #    = k (g + a x + c),  a = -invstd^2 sum g (x - mean) / M,  c = -sum g / M - a mean.
                k = invstd if weight is None else invstd * weight        # (C,)
                a = invstd * invstd * sum_gxc / -count                   # (C,)
                c = sum_g / -count - a * mean                            # (C,)
                dx = torch.addcmul(_channel(c * k), x, _channel(a * k), out=buf)   # reuses buf
                dx.addcmul_(grad_out, _channel(k))                        # (N, C, H, W)
        return dx, dw, db, None

    @staticmethod
    def _backward_differentiable(ctx, grad_out, x, weight, need_x, need_w, need_b):
        """The closed form with plain ops, statistics rebuilt from ``x``, so autograd can differentiate it."""
        dims = (0, 2, 3)
        var, mean = torch.var_mean(x, dim=dims, unbiased=False)          # (C,), (C,) as functions of x
        invstd = (var + ctx.eps).rsqrt()
        dx = dw = db = None
        if need_x or need_w:
            xhat = (x - _channel(mean)) * _channel(invstd)                # (N, C, H, W)
            w = None if weight is None else _channel(weight)
            dx = _norm_backward(grad_out, xhat, _channel(invstd), w, dims, need_x)
            if need_w:
                dw = (grad_out * xhat).sum(dims)                          # (C,)
        if need_b:
            db = grad_out.sum(dims)                                       # (C,)
        return dx, dw, db, None


class BatchNormEvalFunction(torch.autograd.Function):
    r"""Eval-mode batch norm: a fixed per-channel affine map with the running statistics.

    :math:`y = \gamma (x - \mu_{run}) / \sqrt{\sigma^2_{run} + \epsilon} + \beta`.
    Backward: :math:`\partial x = \gamma g / \sqrt{\sigma^2_{run}+\epsilon}`,
    :math:`\partial\gamma = \sum g \hat x`, :math:`\partial\beta = \sum g`; the
    running statistics are constants (buffers) and get no gradient.
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                running_mean: Tensor, running_var: Tensor, eps: float) -> Tensor:
        y = (x - _channel(running_mean)) * _channel((running_var + eps).rsqrt())
        if weight is not None:
            y = y * _channel(weight)
        if bias is not None:
            y = y + _channel(bias)
        return y

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, running_mean, running_var, eps = inputs
        ctx.save_for_backward(x, weight, running_mean, (running_var + eps).rsqrt())
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight, mean, invstd = ctx.saved_tensors
        dims = (0, 2, 3)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            scale = invstd if weight is None else invstd * weight
            dx = grad_out * _channel(scale)                              # (N, C, H, W)
        if weight is not None and ctx.needs_input_grad[1]:
            dw = (grad_out * ((x - _channel(mean)) * _channel(invstd))).sum(dims)   # (C,)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad_out.sum(dims)                                       # (C,)
        return dx, dw, db, None, None, None


def batch_norm(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    r"""Batch normalization of ``(N, C, H, W)`` over ``(N, H, W)``, as :func:`torch.nn.functional.batch_norm`.

    .. math:: y = \gamma \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

    In training (or when there are no running statistics) :math:`\mu,\sigma^2`
    are the batch mean and biased variance per channel, and the running
    statistics, if given, are updated in place:
    :math:`\hat\mu \leftarrow (1 - m)\hat\mu + m\mu` and
    :math:`\hat\sigma^2 \leftarrow (1 - m)\hat\sigma^2 + m \frac{M}{M - 1}\sigma^2`
    (the *unbiased* variance, :math:`M = NHW`). Otherwise the running statistics
    are used. Computed by :class:`BatchNormFunction` or :class:`BatchNormEvalFunction`.

    Args:
        x: ``(N, C, H, W)``.
        running_mean: ``(C,)`` buffer or ``None``.
        running_var: ``(C,)`` buffer or ``None``.
        weight: :math:`\gamma`, ``(C,)`` or ``None``.
        bias: :math:`\beta`, ``(C,)`` or ``None``.
        training: use batch statistics and update the running ones.
        momentum: :math:`m`, weight of the new batch in the running statistics.
        eps: added to the variance for stability.

    Shape:
        - Input: :math:`(N, C, H, W)`; output the same.

    Raises:
        ValueError: input not 4-D, wrong number of channels, or only one value
            per channel in training (as :class:`torch.nn.BatchNorm2d`).

    Examples:
        >>> x = torch.randn(8, 3, 4, 4)
        >>> y = batch_norm(x, None, None, training=True)
        >>> round(abs(y.mean().item()), 4), round(y.var(unbiased=False).item(), 3)
        (0.0, 1.0)
    """
    return _batch_norm("batch_norm", x, running_mean, running_var, weight, bias, training, momentum, eps)


def _batch_norm(where, x, running_mean, running_var, weight, bias, training, momentum, eps) -> Tensor:
    check_tensor(x, where, ndim=4)
    channels = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t is not None:
            check_tensor(t, where, name, ndim=1, size={0: channels})
            check_same_dtype(where, x, t, name="input")
            check_same_device(where, x, t)
    use_batch_stats = training or running_mean is None or running_var is None
    if not use_batch_stats:
        return BatchNormEvalFunction.apply(x, weight, bias, running_mean, running_var, eps)
    per_channel = x.shape[0] * x.shape[2] * x.shape[3]
    if per_channel == 1:
        raise ValueError(
            f"{where}: expected more than 1 value per channel when training, got input of shape "
            f"{tuple(x.shape)} (a batch of one 1x1 map); use eval mode or a larger batch"
        )
    if per_channel == 0:                         # empty batch: nothing to normalize, stats untouched
        y = x * 1.0 if weight is None else x * _channel(weight)
        return y if bias is None else y + _channel(bias)
    y, mean, var = BatchNormFunction.apply(x, weight, bias, eps)
    if training and running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            unbiased = var * (per_channel / (per_channel - 1))             # Bessel's correction
            running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
    return y


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
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"BatchNorm2d: expected num_features >= 1, got {num_features}")
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            self.bias = nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
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
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        check_tensor(x, "BatchNorm2d", ndim=4, size={1: self.num_features})
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:                                  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        running = not self.training or self.track_running_stats
        return _batch_norm("BatchNorm2d", x, self.running_mean if running else None,
                           self.running_var if running else None, self.weight, self.bias,
                           self.training or not self.track_running_stats, factor, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


# -------------------------------------------------------------------------- LayerNorm
class LayerNormFunction(torch.autograd.Function):
    r"""Layer norm over the last ``D`` dimensions, with a manual backward.

    Returns ``(y, mean, invstd)``; the statistics have shape ``(*, 1, ..., 1)``
    and are not differentiable. Backward is the closed form of the module
    docstring with sums over the normalized dimensions and :math:`M` their size;
    :math:`\partial\gamma, \partial\beta` sum over the leading dimensions.
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, ndim: int, eps: float):
        dims = tuple(range(x.dim() - ndim, x.dim()))                       # normalized dims
        count = x.shape[x.dim() - ndim:].numel()                           # M
        mean = x.mean(dims, keepdim=True)                                  # (*, 1, ..., 1)
        y = x - mean                                                       # new tensor, same shape as x
        # Biased variance sum((x - mean)^2) / M as a squared norm: one reduction,
        # no full-size temporary (torch.var is slow on CPU).
        var = torch.linalg.vector_norm(y, dim=dims, keepdim=True).square_().div_(count)
        invstd = (var + eps).rsqrt_()                                      # (*, 1, ..., 1)
        y.mul_(invstd)                                                     # xhat, in place: y is ours
        if weight is not None and bias is not None:
            torch.addcmul(bias, y, weight, out=y)                          # y = beta + xhat gamma, one pass
        elif weight is not None:
            y.mul_(weight)                                                 # broadcasts on the last dims
        elif bias is not None:
            y.add_(bias)
        return y, mean, invstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, ndim, eps = inputs
        _, mean, invstd = output
        ctx.mark_non_differentiable(mean, invstd)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.has_bias, ctx.ndim, ctx.eps = bias is not None, ndim, eps

    @staticmethod
    def backward(ctx, grad_out: Tensor, _grad_mean, _grad_invstd):
        x, weight, mean, invstd = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1]
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        if torch.is_grad_enabled():                # double backward: the plain, differentiable formula
            return LayerNormFunction._backward_differentiable(ctx, grad_out, x, weight, need_x, need_w, need_b)
        # Work on 2-D views: R rows (the leading dims) of M values (the normalized dims).
        count = x.shape[x.dim() - ctx.ndim:].numel()                        # M
        x2 = x.reshape(-1, count)                                          # (R, M)
        g2 = grad_out.reshape(-1, count)                                   # (R, M)
        mean2, invstd2 = mean.reshape(-1, 1), invstd.reshape(-1, 1)        # (R, 1)
        w = None if weight is None else weight.reshape(count)              # (M,)
        dx = dw = db = None
        if need_b:
            db = g2.sum(0).reshape(x.shape[x.dim() - ctx.ndim:])            # sum over rows, normalized_shape
        if need_x or need_w:
            buf = torch.sub(x2, mean2).mul_(g2)                            # g (x - mean), (R, M)
            if need_w:
                dw = (invstd2.reshape(1, -1) @ buf).reshape(weight.shape)  # sum_r g xhat: (1, R) @ (R, M)
            if need_x:
                # Per row, with g~ = gamma g: sum g~ and sum g~ (x - mean), as matrix-vector products.
                sum_g = (g2 @ w if w is not None else g2.sum(1)).unsqueeze(1)            # (R, 1)
                sum_gx = (buf @ w if w is not None else buf.sum(1)).unsqueeze(1)         # (R, 1)
                # dx = invstd (g~ - sum g~ / M - xhat sum g~ xhat / M) = invstd (g~ + a x + c)
                # with a = -invstd^2 sum g~ (x - mean) / M and c = -sum g~ / M - a mean.
                a = invstd2 * invstd2 * sum_gx / -count                    # (R, 1)
                c = sum_g / -count - a * mean2                             # (R, 1)
                dx = torch.mul(x2, a, out=buf)                             # a x, reuses buf
                if w is not None:
                    dx.addcmul_(g2, w)                                     # + gamma g
                else:
                    dx.add_(g2)
                dx.mul_(invstd2).add_(c * invstd2)                         # (g~ + a x + c) invstd
                dx = dx.reshape(x.shape)                                   # same shape as x
        return dx, dw, db, None, None

    @staticmethod
    def _backward_differentiable(ctx, grad_out, x, weight, need_x, need_w, need_b):
        """The closed form with plain ops, statistics rebuilt from ``x``, so autograd can differentiate it."""
        dims = tuple(range(x.dim() - ctx.ndim, x.dim()))                   # normalized dims
        lead = tuple(range(x.dim() - ctx.ndim))                            # summed for gamma, beta
        mean = x.mean(dims, keepdim=True)                                  # as functions of x
        invstd = ((x - mean).pow(2).mean(dims, keepdim=True) + ctx.eps).rsqrt()
        dx = dw = db = None
        if need_x or need_w:
            xhat = (x - mean) * invstd                                     # same shape as x
            dx = _norm_backward(grad_out, xhat, invstd, weight, dims, need_x)
            if need_w:
                dw = (grad_out * xhat).sum(lead) if lead else grad_out * xhat   # normalized_shape
        if need_b:
            db = grad_out.sum(lead) if lead else grad_out.clone()          # normalized_shape
        return dx, dw, db, None, None


def layer_norm(x: Tensor, normalized_shape: int | tuple[int, ...], weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    r"""Layer normalization over the last dimensions, as :func:`torch.nn.functional.layer_norm`.

    .. math:: y = \gamma \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

    with :math:`\mu, \sigma^2` the mean and biased variance of each sample over
    the last ``len(normalized_shape)`` dimensions. Computed by :class:`LayerNormFunction`.

    Args:
        x: ``(*, *normalized_shape)``.
        normalized_shape: the trailing shape to normalize over.
        weight: :math:`\gamma` of shape ``normalized_shape``, or ``None``.
        bias: :math:`\beta` of shape ``normalized_shape``, or ``None``.
        eps: added to the variance.

    Shape:
        - Input: :math:`(*, \text{normalized\_shape})`; output the same.

    Examples:
        >>> y = layer_norm(torch.randn(2, 5), 5)
        >>> y.mean(-1).abs().max() < 1e-6
        tensor(True)
    """
    return _layer_norm("layer_norm", x, normalized_shape, weight, bias, eps)


def _layer_norm(where, x, normalized_shape, weight, bias, eps) -> Tensor:
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    check_tensor(x, where, min_ndim=len(shape))
    if tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise ValueError(
            f"{where}: expected input whose last dimensions are {shape}, got shape {tuple(x.shape)}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            if tuple(t.shape) != shape:
                raise ValueError(f"{where}: expected {name} of shape {shape}, got {tuple(t.shape)}")
            check_same_dtype(where, x, t)
            check_same_device(where, x, t)
    y, _, _ = LayerNormFunction.apply(x, weight, bias, len(shape), eps)
    return y


class LayerNorm(nn.Module):
    r"""Layer normalization over the trailing ``normalized_shape``; see :func:`layer_norm`.

    A drop-in replacement for :class:`torch.nn.LayerNorm` (same parameters and
    ``state_dict``).

    Args:
        normalized_shape: int or tuple, the trailing shape to normalize over.
        eps: added to the variance. Default: ``1e-5``.
        elementwise_affine: learn :math:`\gamma` and :math:`\beta`. Default: ``True``.

    Shape:
        - Input: :math:`(*, \text{normalized\_shape})`; output the same.

    Attributes:
        weight: :math:`\gamma`, shape ``normalized_shape``, initialized to ones.
        bias: :math:`\beta`, shape ``normalized_shape``, initialized to zeros.

    Examples:
        >>> ln = LayerNorm(8)
        >>> ln(torch.randn(3, 8)).shape
        torch.Size([3, 8])
    """

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5,
                 elementwise_affine: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape = shape
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        factory = {"device": device, "dtype": dtype}
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(shape, **factory))
            self.bias = nn.Parameter(torch.empty(shape, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """:math:`\\gamma` to ones and :math:`\\beta` to zeros, as PyTorch does."""
        if self.elementwise_affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return _layer_norm("LayerNorm", x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
