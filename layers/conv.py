"""2-D convolution with a hand-written backward (im2col and matrix products).

Taught in the chapter "Convolutions and normalization" (``book/convolutions.ipynb``).

Holds :class:`Conv2dFunction` (the ``autograd.Function``), the functional
:func:`conv2d` (same arguments and semantics as :func:`torch.nn.functional.conv2d`),
the :class:`Conv2d` module (a drop-in for :class:`torch.nn.Conv2d`) and
:class:`DepthwiseSeparableConv2d`, with :func:`conv2d_cost` to count parameters
and multiply-adds.

How it works:

* **im2col.** Every output pixel is a dot product between the kernel and one
  patch of the (padded) input. :func:`im2col` lays the patches out as the
  columns of a matrix without a Python loop: a strided *view* of the input
  (:func:`torch.as_strided`) with one entry per (channel, kernel row, kernel
  column, output row, output column), copied once by ``reshape``. The
  convolution is then one matrix product per group.
* **Backward.** The weight gradient is the backward of that matrix product,
  :math:`\\partial W = g \\, \\text{cols}^\\top`. The input gradient is the
  backward of the product, :math:`\\partial\\,\\text{cols} = W^\\top g`, *folded
  back*: every input pixel sums the gradients of the patch entries it was
  copied into. That sum is also a convolution (a stride-1 correlation of the
  zero-dilated, padded output gradient with the flipped kernel, a "transposed
  convolution"), but computing it that way needs an im2col copy of the output
  gradient. We fold directly instead: one matrix product gives the column
  gradient, then a loop over the ``kh * kw`` kernel taps (not over data) adds
  one strided slice of it to the input gradient per tap.
* **Speed.** The forward adds the bias in place into the fresh matmul output.
  On a CPU, creating and filling large temporaries (the columns) is where the
  time goes beyond the matrix products themselves.

The backward uses only differentiable torch ops, so :func:`conv2d` is twice
differentiable (``gradgradcheck`` passes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validation import check_same_device, check_same_dtype, check_tensor

__all__ = [
    "Conv2dFunction", "conv2d", "im2col", "conv_output_size", "conv2d_cost",
    "Conv2d", "DepthwiseSeparableConv2d",
]

def _pair(value: int | tuple[int, int], name: str, where: str, minimum: int) -> tuple[int, int]:
    """``3 -> (3, 3)``, ``(3, 2) -> (3, 2)``; checks that both are integers ``>= minimum``."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{where}: expected {name} to be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{where}: expected {name} >= {minimum}, got {value!r}")
    return pair  # type: ignore[return-value]


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    r"""Output length of a convolution along one axis.

    :math:`\lfloor (\text{size} + 2p - d(k - 1) - 1) / s \rfloor + 1`, as in
    :class:`torch.nn.Conv2d`.
    """
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


# ----------------------------------------------------------------------------- im2col
def im2col(x: Tensor, kernel_size: tuple[int, int], stride: tuple[int, int] = (1, 1),
           padding: tuple[int, int] = (0, 0), dilation: tuple[int, int] = (1, 1),
           groups: int = 1) -> Tensor:
    r"""Patches of ``x`` as columns: ``(N, C, H, W) -> (N, G, C/G * kh * kw, H_out * W_out)``.

    Column :math:`l = i W_{out} + j` of group :math:`g` holds the
    :math:`C/G \times k_h \times k_w` input values that output pixel :math:`(i, j)`
    of that group's channels sees, in the order of the weight's ``(C/G, kh, kw)``
    dimensions. Same content as :func:`torch.nn.functional.unfold` (for
    ``groups=1``), built as one strided view and a single copy.

    Args:
        x: ``(N, C, H, W)``.
        kernel_size, stride, padding, dilation: pairs ``(rows, columns)``.
        groups: number of channel groups.

    Returns:
        ``(N, G, C/G * kh * kw, H_out * W_out)``, contiguous.
    """
    n, c = x.shape[:2]
    kh, kw = kernel_size
    patches = _patches(x, kernel_size, stride, padding, dilation)      # (N, C, kh, kw, H_out, W_out)
    ho, wo = patches.shape[-2:]
    return patches.reshape(n, groups, (c // groups) * kh * kw, ho * wo)   # copy: (N, G, K, L)


def _patches(x: Tensor, kernel_size: tuple[int, int], stride: tuple[int, int],
             padding: tuple[int, int], dilation: tuple[int, int]) -> Tensor:
    """Strided view ``(N, C, kh, kw, H_out, W_out)`` of the padded input; nothing is copied."""
    n, c = x.shape[:2]
    kh, kw = kernel_size
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))                         # (N, C, H + 2ph, W + 2pw)
    x = x.contiguous()
    hp, wp = x.shape[-2:]
    ho = (hp - dh * (kh - 1) - 1) // sh + 1
    wo = (wp - dw * (kw - 1) - 1) // sw + 1
    s_n, s_c, s_h, s_w = x.stride()
    return x.as_strided((n, c, kh, kw, ho, wo), (s_n, s_c, dh * s_h, dw * s_w, sh * s_h, sw * s_w))


def _conv2d_im2col(x: Tensor, weight: Tensor, stride: tuple[int, int], padding: tuple[int, int],
                   dilation: tuple[int, int], groups: int) -> Tensor:
    """Convolution without bias as im2col + one batched matmul; plain torch ops only."""
    n = x.shape[0]
    out_ch, _, kh, kw = weight.shape
    ho = conv_output_size(x.shape[2], kh, stride[0], padding[0], dilation[0])
    wo = conv_output_size(x.shape[3], kw, stride[1], padding[1], dilation[1])
    cols = im2col(x, (kh, kw), stride, padding, dilation, groups)        # (N, G, K, L)
    w = weight.reshape(groups, out_ch // groups, cols.shape[2])          # (G, O/G, K)
    out = torch.matmul(w, cols)                                          # (N, G, O/G, L)
    return out.reshape(n, out_ch, ho, wo)                                # (N, O, H_out, W_out)


def _conv2d_input_grad(grad_out: Tensor, weight: Tensor, input_hw: tuple[int, int],
                       stride: tuple[int, int], padding: tuple[int, int],
                       dilation: tuple[int, int], groups: int) -> Tensor:
    """Input gradient of a convolution: the column gradient :math:`W^\\top g`, folded back (col2im).

    ``cols_grad[n, c, u, v, i, j]`` is the gradient of the copy of input pixel
    ``(s_h i + d_h u, s_w j + d_w v)`` (padded coordinates) that im2col made for
    kernel tap ``(u, v)``. Folding adds, for each of the ``kh * kw`` taps, one
    strided slice of the padded input gradient: a loop over kernel taps, not over data.
    """
    n, out_ch, ho, wo = grad_out.shape
    _, cg, kh, kw = weight.shape
    h, w = input_hw
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    w_t = weight.reshape(groups, out_ch // groups, cg * kh * kw).transpose(1, 2)   # (G, K, O/G)
    g = grad_out.reshape(n, groups, out_ch // groups, ho * wo)                     # (N, G, O/G, L)
    cols_grad = torch.matmul(w_t, g).reshape(n, groups * cg, kh, kw, ho, wo)      # (N, C, kh, kw, H_out, W_out)
    dx = grad_out.new_zeros(n, groups * cg, h + 2 * ph, w + 2 * pw)                # padded input gradient
    for u in range(kh):
        for v in range(kw):                    # tap (u, v) touched rows dh*u + sh*i, columns dw*v + sw*j
            dx[:, :, dh * u: dh * u + sh * (ho - 1) + 1: sh,
               dw * v: dw * v + sw * (wo - 1) + 1: sw] += cols_grad[:, :, u, v]
    return dx[:, :, ph: ph + h, pw: pw + w]                                        # drop the padding: (N, C, H, W)


# --------------------------------------------------------------------------- Function
class Conv2dFunction(torch.autograd.Function):
    r"""2-D convolution :math:`y = W \star x + b` by im2col, with a manual backward.

    Forward, per group: :math:`Y = W_{2d}\, \text{cols}(x)` with
    :math:`W_{2d}` of shape ``(O/G, C/G*kh*kw)`` and ``cols(x)`` of shape
    ``(C/G*kh*kw, H_out*W_out)`` (see :func:`im2col`).

    Backward, for an upstream gradient :math:`g` of shape ``(N, O, H_out, W_out)``:

    .. math::

        \partial W = \sum_n g_n \, \text{cols}(x_n)^\top, \qquad
        \partial b = \sum_{n, i, j} g_{n, :, i, j}, \qquad
        \partial x = \text{fold}(W_{2d}^\top g)
                   = \text{conv}_{\text{stride }1}\big(\text{dilate}_s(g),\ \text{flip}(W)^\top\big).

    ``fold`` (col2im) is computed directly: the column gradient
    :math:`W_{2d}^\top g` is one matrix product, and each of the ``kh*kw``
    kernel taps adds one strided slice of it to the (padded) input gradient.

    Saves ``x`` and ``weight`` (not the columns, which are ``kh*kw`` times larger
    than ``x``; backward rebuilds them). The backward is written with
    differentiable torch ops, so double backward works through it.

    Arguments of ``forward``: ``x, weight, bias, stride, padding, dilation, groups``
    with ``stride``, ``padding``, ``dilation`` as pairs of ints.
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
                padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> Tensor:
        out = _conv2d_im2col(x, weight, stride, padding, dilation, groups)   # (N, O, H_out, W_out)
        if bias is not None:
            out.add_(bias.reshape(1, -1, 1, 1))                              # in place: out is ours
        return out

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(x, weight)                       # only what backward reads
        ctx.has_bias = bias is not None
        ctx.conf = (stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _conv2d_input_grad(grad_out, weight, tuple(x.shape[-2:]),
                                    stride, padding, dilation, groups)       # (N, C, H, W)
        if ctx.needs_input_grad[1]:
            n = x.shape[0]
            out_ch, cg, kh, kw = weight.shape
            patches = _patches(x, (kh, kw), stride, padding, dilation)      # (N, C, kh, kw, H_out, W_out)
            ho, wo = patches.shape[-2:]
            # sum_n g_n cols_n^T as one product: lay the columns out as (G, K, N*L), one copy.
            cols = (patches.reshape(n, groups, cg, kh, kw, ho, wo)          # (N, G, C/G, kh, kw, H_out, W_out)
                    .permute(1, 2, 3, 4, 0, 5, 6)                           # (G, C/G, kh, kw, N, H_out, W_out)
                    .reshape(groups, cg * kh * kw, n * ho * wo))            # copy: (G, K, N*L)
            g = (grad_out.reshape(n, groups, out_ch // groups, ho * wo)    # (N, G, O/G, L)
                 .permute(1, 2, 0, 3)                                       # (G, O/G, N, L)
                 .reshape(groups, out_ch // groups, n * ho * wo))           # (G, O/G, N*L)
            cols = cols.transpose(1, 2)                                     # view: (G, N*L, K)
            dw = torch.matmul(g, cols).reshape(weight.shape)                # (G, O/G, K) -> (O, C/G, kh, kw)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad_out.sum((0, 2, 3))                                     # (O,)
        return dx, dw, db, None, None, None, None


# ------------------------------------------------------------------------- functional
def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int | tuple[int, int] = 1,
           padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1, groups: int = 1) -> Tensor:
    r"""2-D convolution (cross-correlation) with a hand-written backward.

    .. math::

        y_{n, o, i, j} = b_o + \sum_{c \in \text{group}(o)} \sum_{u, v}
            W_{o, c, u, v} \; x^{\text{pad}}_{n, c,\; s_h i + d_h u,\; s_w j + d_w v}

    Same arguments and results as :func:`torch.nn.functional.conv2d` (zero
    padding given as numbers; ``"same"``/``"valid"`` strings are not supported).
    Computed by :class:`Conv2dFunction`.

    Args:
        x: input ``(N, C_in, H, W)``.
        weight: ``(C_out, C_in / groups, kh, kw)``.
        bias: ``(C_out,)`` or ``None``.
        stride: step between windows, an int or ``(rows, columns)``.
        padding: zeros added on each side, an int or a pair.
        dilation: spacing between kernel taps, an int or a pair.
        groups: split the channels into this many independent convolutions
            (``groups = C_in`` is a depthwise convolution).

    Shape:
        - Input: :math:`(N, C_{in}, H_{in}, W_{in})`.
        - Output: :math:`(N, C_{out}, H_{out}, W_{out})` with
          :math:`H_{out} = \lfloor (H_{in} + 2p_h - d_h(k_h - 1) - 1)/s_h \rfloor + 1`,
          and the same for :math:`W_{out}`.

    Raises:
        ValueError: input not 4-D, wrong channel count, kernel larger than the
            padded input, bad ``groups``.
        TypeError: non-floating input, dtype mismatch with the weight.

    Examples:
        >>> x = torch.randn(2, 3, 8, 8)
        >>> w = torch.randn(4, 3, 3, 3)
        >>> conv2d(x, w, padding=1).shape
        torch.Size([2, 4, 8, 8])
    """
    where = "conv2d"
    stride = _pair(stride, "stride", where, 1)
    padding = _pair(padding, "padding", where, 0)
    dilation = _pair(dilation, "dilation", where, 1)
    _check_conv_input(where, x, weight, bias, padding, dilation, groups)
    return Conv2dFunction.apply(x, weight, bias, stride, padding, dilation, groups)


def _check_conv_input(where: str, x: Tensor, weight: Tensor, bias: Tensor | None,
                      padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> None:
    check_tensor(x, where, ndim=4)
    check_tensor(weight, where, "weight", ndim=4)
    check_same_dtype(where, x, weight)
    check_same_device(where, x, weight)
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{where}: expected groups to be a positive int, got {groups!r}")
    out_ch, cg, kh, kw = weight.shape
    if out_ch % groups:
        raise ValueError(f"{where}: expected weight.shape[0]={out_ch} to be divisible by groups={groups}")
    if x.shape[1] != cg * groups:
        raise ValueError(
            f"{where}: expected input with {cg * groups} channels in dimension 1 "
            f"(weight {tuple(weight.shape)}, groups={groups}), got {x.shape[1]} (shape {tuple(x.shape)})"
        )
    if bias is not None:
        check_tensor(bias, where, "bias", ndim=1, size={0: out_ch})
        check_same_dtype(where, bias, weight, "bias")
    for axis, size, k, p, d in (("height", x.shape[2], kh, padding[0], dilation[0]),
                                ("width", x.shape[3], kw, padding[1], dilation[1])):
        if d * (k - 1) + 1 > size + 2 * p:
            raise ValueError(
                f"{where}: kernel {axis} {k} (dilation {d}: spans {d * (k - 1) + 1}) is larger than "
                f"the padded input {axis} {size} + 2*{p} = {size + 2 * p}"
            )


# ---------------------------------------------------------------------------- modules
class Conv2d(nn.Module):
    r"""2-D convolution layer with a hand-written backward; see :func:`conv2d`.

    A drop-in replacement for :class:`torch.nn.Conv2d` (zero padding): same
    parameter names, shapes and default initialization, so ``load_state_dict``
    works in both directions. Subclasses may override ``forward`` and call
    :func:`conv2d` with a transformed weight (as a quantized convolution does).

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        kernel_size: int or ``(kh, kw)``.
        stride: int or pair. Default: 1.
        padding: zeros added on each side, int or pair. Default: 0.
        dilation: spacing between kernel taps, int or pair. Default: 1.
        groups: channel groups; ``in_channels`` and ``out_channels`` must both be
            divisible by it. Default: 1.
        bias: if ``False``, no additive bias. Default: ``True``.

    Shape:
        - Input: :math:`(N, C_{in}, H_{in}, W_{in})`.
        - Output: :math:`(N, C_{out}, H_{out}, W_{out})` (see :func:`conv_output_size`).

    Attributes:
        weight: learnable ``(out_channels, in_channels / groups, kh, kw)`` tensor,
            initialized from :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})` with
            :math:`k = \text{groups} / (C_{in} k_h k_w)` (``kaiming_uniform_`` with
            ``a=sqrt(5)``, as PyTorch does).
        bias: learnable ``(out_channels,)`` tensor from the same distribution, or ``None``.

    Examples:
        >>> conv = Conv2d(3, 8, 3, padding=1)
        >>> conv(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 8, 16, 16])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
                 groups: int = 1, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        where = type(self).__name__
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"{where}: expected groups to be a positive int, got {groups!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{where}: expected in_channels={in_channels} and out_channels={out_channels} "
                f"to be divisible by groups={groups}"
            )
        factory = {"device": device, "dtype": dtype}
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size", where, 1)
        self.stride = _pair(stride, "stride", where, 1)
        self.padding = _pair(padding, "padding", where, 0)
        self.dilation = _pair(dilation, "dilation", where, 1)
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialize ``weight`` and ``bias`` exactly as :class:`torch.nn.Conv2d` does."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))   # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


# ------------------------------------------------------------------ cost and separable
def conv2d_cost(in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], height: int, width: int,
                stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
                groups: int = 1, bias: bool = True) -> dict[str, int]:
    r"""Parameters and multiply-adds of one :class:`Conv2d` on a ``height x width`` input.

    Each output value costs :math:`C_{in}/G \cdot k_h k_w` multiply-adds, so
    :math:`\text{mult\_adds} = C_{out} H_{out} W_{out} \cdot C_{in}/G \cdot k_h k_w`
    (the bias additions are not counted).

    Returns:
        ``{"params": ..., "mult_adds": ...}``.

    Examples:
        >>> conv2d_cost(8, 16, 3, 5, 5, padding=1, bias=False)
        {'params': 1152, 'mult_adds': 28800}
    """
    kh, kw = _pair(kernel_size, "kernel_size", "conv2d_cost", 1)
    sh, sw = _pair(stride, "stride", "conv2d_cost", 1)
    ph, pw = _pair(padding, "padding", "conv2d_cost", 0)
    dh, dw = _pair(dilation, "dilation", "conv2d_cost", 1)
    per_output = (in_channels // groups) * kh * kw
    outputs = out_channels * conv_output_size(height, kh, sh, ph, dh) * conv_output_size(width, kw, sw, pw, dw)
    return {"params": out_channels * per_output + (out_channels if bias else 0),
            "mult_adds": outputs * per_output}


class DepthwiseSeparableConv2d(nn.Module):
    r"""Depthwise ``k x k`` conv → BatchNorm2d → ReLU → pointwise ``1 x 1`` conv → BatchNorm2d → ReLU.

    The MobileNet block: a standard convolution mixes space and channels at once
    (:math:`C_{out} C_{in} k^2` weights); this one filters each channel on its
    own (``groups = in_channels``, :math:`C_{in} k^2` weights) and then mixes
    channels with a ``1 x 1`` convolution (:math:`C_{in} C_{out}` weights).
    Built from :class:`Conv2d`, :class:`~layers.normalization.BatchNorm2d` and
    :class:`~layers.activations.ReLU`; the convolutions have no bias (the batch
    norms that follow them have one).

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        kernel_size: depthwise kernel size. Default: 3.
        stride: stride of the depthwise conv. Default: 1.
        padding: padding of the depthwise conv. Default: 1.

    Shape:
        - Input: :math:`(N, C_{in}, H, W)`.
        - Output: :math:`(N, C_{out}, H_{out}, W_{out})`, sizes as for the depthwise conv.

    Attributes:
        depthwise: the :class:`Conv2d` with ``groups=in_channels``.
        bn1: :class:`~layers.normalization.BatchNorm2d` after it.
        pointwise: the ``1 x 1`` :class:`Conv2d`.
        bn2: :class:`~layers.normalization.BatchNorm2d` after it.

    Examples:
        >>> block = DepthwiseSeparableConv2d(8, 16)
        >>> block(torch.randn(2, 8, 6, 6)).shape
        torch.Size([2, 16, 6, 6])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = 3,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 1) -> None:
        super().__init__()
        from .activations import ReLU
        from .normalization import BatchNorm2d

        self.depthwise = Conv2d(in_channels, in_channels, kernel_size, stride, padding,
                                groups=in_channels, bias=False)
        self.bn1 = BatchNorm2d(in_channels)
        self.pointwise = Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = BatchNorm2d(out_channels)
        self.relu = ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.depthwise(x)))             # (N, C_in, H_out, W_out)
        return self.relu(self.bn2(self.pointwise(x)))          # (N, C_out, H_out, W_out)

    def cost(self, height: int, width: int) -> dict[str, int]:
        """Parameters and multiply-adds of the two convolutions (see :func:`conv2d_cost`)."""
        d, p = self.depthwise, self.pointwise
        dw = conv2d_cost(d.in_channels, d.out_channels, d.kernel_size, height, width, d.stride,
                         d.padding, d.dilation, d.groups, bias=False)
        ho = conv_output_size(height, d.kernel_size[0], d.stride[0], d.padding[0], d.dilation[0])
        wo = conv_output_size(width, d.kernel_size[1], d.stride[1], d.padding[1], d.dilation[1])
        pw = conv2d_cost(p.in_channels, p.out_channels, 1, ho, wo, bias=False)
        return {k: dw[k] + pw[k] for k in dw}
