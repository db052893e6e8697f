"""2-D convolution with a hand-written backward (im2col and matrix products).

Taught in the chapter "Convolutions and normalization" (``book/convolutions.ipynb``).

Holds :class:`Conv2dFunction` (the ``autograd.Function``), the functional
:func:`conv2d` (same arguments and semantics as :func:`torch.nn.functional.conv2d`)
and the :class:`Conv2d` module (a drop-in for :class:`torch.nn.Conv2d`), with
:func:`conv2d_cost` to count parameters and multiply-adds. The MobileNet block
built from these, :class:`~layers.blocks.DepthwiseSeparableConv2d`, is in :mod:`layers.blocks`.

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
  back* (col2im, :func:`torch.nn.functional.fold`): every input pixel sums the
  gradients of the patch entries it was copied into. That sum is also a
  convolution (a stride-1 correlation of the zero-dilated, padded output
  gradient with the flipped kernel, a "transposed convolution"), but computing
  it that way needs an im2col copy of the output gradient.

The backward uses only differentiable, out-of-place torch ops, so :func:`conv2d`
is twice differentiable (``gradgradcheck`` passes).

Composability: ``Conv2dFunction`` has ``generate_vmap_rule = True`` and a
``jvp`` (the convolution is bilinear: :math:`\\dot y = \\dot W \\star x + W \\star
\\dot x + \\dot b`). Dynamo cannot trace a Function that defines ``jvp``, so under
``torch.compile`` :func:`conv2d` applies a copy without it. Under ``torch.autocast``
the convolution runs in the autocast dtype, as ``torch.nn.functional.conv2d``
does (:func:`layers.composable.autocast_apply`, policy ``"lower"``); the bias gradient
is summed in float32 for float16/bfloat16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .composable import autocast_apply, autocast_dtype, compilable_apply
from ._validation import check_same_device, check_same_dtype, check_tensor

__all__ = ["Conv2dFunction", "conv2d", "im2col", "conv_output_size", "conv2d_cost", "Conv2d"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

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

    Column ``l`` of the column gradient holds, for each (channel, kernel tap), the
    gradient of the copy of one input pixel that im2col made; ``fold`` adds every
    copy's gradient back onto its pixel (and drops the padding).
    """
    n, out_ch, ho, wo = grad_out.shape
    _, cg, kh, kw = weight.shape
    w_t = weight.reshape(groups, out_ch // groups, cg * kh * kw).transpose(1, 2)   # (G, K, O/G)
    g = grad_out.reshape(n, groups, out_ch // groups, ho * wo)                     # (N, G, O/G, L)
    cols_grad = torch.matmul(w_t, g).reshape(n, groups * cg * kh * kw, ho * wo)    # (N, C*kh*kw, L)
    acc = torch.promote_types(grad_out.dtype, torch.float32)                      # float16/bfloat16: sum in float32
    dx = F.fold(cols_grad.to(acc), input_hw, (kh, kw), dilation, padding, stride)  # (N, C, H, W)
    return dx.to(grad_out.dtype)


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

    ``fold`` (col2im) adds the column gradient :math:`W_{2d}^\top g` (one matrix
    product) back onto the input pixels each column entry was copied from.

    Saves ``x`` and ``weight`` (not the columns, which are ``kh*kw`` times larger
    than ``x``; backward rebuilds them). The backward is written with
    differentiable torch ops, so double backward works through it.

    Arguments of ``forward``: ``input, weight, bias, stride, padding, dilation, groups``
    with ``stride``, ``padding``, ``dilation`` as pairs of ints (zero padding).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
                padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> Tensor:
        out = _conv2d_im2col(input, weight, stride, padding, dilation, groups)   # (N, O, H_out, W_out)
        return out if bias is None else out + bias.reshape(1, -1, 1, 1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(x, weight)                       # only what backward reads
        ctx.save_for_forward(x, weight)
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
            cols = im2col(x, (kh, kw), stride, padding, dilation, groups)   # (N, G, K, L), rebuilt
            g = grad_out.reshape(n, groups, out_ch // groups, cols.shape[3])  # (N, G, O/G, L)
            dw_n = torch.matmul(g, cols.transpose(2, 3))                     # g_n cols_n^T: (N, G, O/G, K)
            dw = dw_n.sum(0).reshape(weight.shape)                           # sum over n -> (O, C/G, kh, kw)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            acc = torch.promote_types(grad_out.dtype, torch.float32)        # float32 sums for float16/bfloat16
            db = grad_out.sum((0, 2, 3), dtype=acc).to(grad_out.dtype)       # (O,)
        return dx, dw, db, None, None, None, None

    @staticmethod
    def jvp(ctx, dx_t, dw_t, db_t, *_):
        r"""Bilinear: :math:`\dot y = W \star \dot x + \dot W \star x + \dot b`."""
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        ho = conv_output_size(x.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
        wo = conv_output_size(x.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
        dy = x.new_zeros(x.shape[0], weight.shape[0], ho, wo)                        # (N, O, H_out, W_out)
        if dx_t is not None:
            dy = dy + _conv2d_im2col(dx_t, weight, stride, padding, dilation, groups)  # W * dx
        if dw_t is not None:
            dy = dy + _conv2d_im2col(x, dw_t, stride, padding, dilation, groups)       # dW * x
        if db_t is not None:
            dy = dy + db_t.reshape(1, -1, 1, 1)                                        # db
        return dy


# Under torch.compile, the same Function without its jvp (see layers.composable.compilable_apply).
_conv2d_apply = compilable_apply(Conv2dFunction)


# ------------------------------------------------------------------------- functional
def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int | tuple[int, int] = 1,
           padding: int | tuple[int, int] | str = 0, dilation: int | tuple[int, int] = 1,
           groups: int = 1) -> Tensor:
    r"""2-D convolution (cross-correlation) with a hand-written backward.

    .. math::

        y_{n, o, i, j} = b_o + \sum_{c \in \text{group}(o)} \sum_{u, v}
            W_{o, c, u, v} \; x^{\text{pad}}_{n, c,\; s_h i + d_h u,\; s_w j + d_w v}

    Same arguments, defaults and results as :func:`torch.nn.functional.conv2d`,
    including ``padding="same"``/``"valid"`` and unbatched ``(C, H, W)`` input.
    Computed by :class:`Conv2dFunction`; under ``torch.autocast`` in the autocast dtype.

    Args:
        input: ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``.
        weight: ``(C_out, C_in / groups, kh, kw)``.
        bias: ``(C_out,)`` or ``None``. Default: ``None``.
        stride: step between windows, an int or ``(rows, columns)``. Default: 1.
        padding: zeros added on each side, an int or a pair, or ``"valid"`` (none)
            or ``"same"`` (output as large as the input; stride 1 only; the extra
            zero of an even kernel span goes at the bottom/right, as in PyTorch). Default: 0.
        dilation: spacing between kernel taps, an int or a pair. Default: 1.
        groups: split the channels into this many independent convolutions
            (``groups = C_in`` is a depthwise convolution). Default: 1.

    Shape:
        - Input: :math:`(N, C_{in}, H_{in}, W_{in})` or :math:`(C_{in}, H_{in}, W_{in})`.
        - Output: :math:`(N, C_{out}, H_{out}, W_{out})` or :math:`(C_{out}, H_{out}, W_{out})` with
          :math:`H_{out} = \lfloor (H_{in} + 2p_h - d_h(k_h - 1) - 1)/s_h \rfloor + 1`,
          and the same for :math:`W_{out}`.

    Raises:
        ValueError: input not 3-D or 4-D, wrong channel count, kernel larger than
            the padded input, bad ``groups``, unknown padding string, ``"same"``
            with a stride.
        TypeError: non-floating input, dtype mismatch with the weight.

    Examples:
        >>> x = torch.randn(2, 3, 8, 8)
        >>> w = torch.randn(4, 3, 3, 3)
        >>> conv2d(x, w, padding=1).shape
        torch.Size([2, 4, 8, 8])
        >>> conv2d(x, w, padding="same").shape
        torch.Size([2, 4, 8, 8])
    """
    where = "conv2d"
    stride = _pair(stride, "stride", where, 1)
    dilation = _pair(dilation, "dilation", where, 1)
    check_tensor(input, where)
    if input.dim() not in (3, 4):
        raise ValueError(f"{where}: expected input with 3 (unbatched) or 4 (batched) dimensions, "
                         f"got {input.dim()} (shape {tuple(input.shape)})")
    check_tensor(weight, where, "weight", ndim=4)
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input                          # (N, C, H, W)
    if isinstance(padding, str):
        before, after = _string_padding(padding, weight.shape[2:], stride, dilation, where)
        if before != after:                    # "same" with an even span: the extra zero after
            x = F.pad(x, (0, after[1] - before[1], 0, after[0] - before[0]))
        padding = before
    padding = _pair(padding, "padding", where, 0)
    _check_conv_input(where, x, weight, bias, padding, dilation, groups)
    out = autocast_apply(_conv2d_apply, "lower", x, weight, bias, stride, padding, dilation, groups)
    return out.squeeze(0) if unbatched else out


def _string_padding(padding: str, kernel_size, stride: tuple[int, int], dilation: tuple[int, int],
                    where: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """``"valid"`` or ``"same"`` as (padding before, padding after) per spatial axis."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding != "same":
        raise ValueError(f"{where}: expected padding to be an int, a pair, 'valid' or 'same', got {padding!r}")
    if stride != (1, 1):
        raise ValueError(f"{where}: padding='same' is not supported for strided convolutions (stride={stride})")
    total = [d * (k - 1) for d, k in zip(dilation, kernel_size)]            # zeros needed per axis
    before = tuple(t // 2 for t in total)
    return before, tuple(t - b for t, b in zip(total, before))  # type: ignore[return-value]


def _check_conv_input(where: str, x: Tensor, weight: Tensor, bias: Tensor | None,
                      padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> None:
    check_tensor(x, where, ndim=4)
    check_tensor(weight, where, "weight", ndim=4)
    autocast = autocast_dtype(x.device.type, "lower") is not None       # autocast casts both to one dtype
    if not autocast:
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
        if not autocast:
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

    A drop-in replacement for :class:`torch.nn.Conv2d`: same arguments and
    defaults, parameter names, shapes and default initialization, so
    ``load_state_dict`` works in both directions. Subclasses may override ``forward`` and call
    :func:`conv2d` with a transformed weight (as a quantized convolution does).

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        kernel_size: int or ``(kh, kw)``.
        stride: int or pair. Default: 1.
        padding: added on each side, int or pair, or ``"valid"``/``"same"``
            (see :func:`conv2d`). Default: 0.
        dilation: spacing between kernel taps, int or pair. Default: 1.
        groups: channel groups; ``in_channels`` and ``out_channels`` must both be
            divisible by it. Default: 1.
        bias: if ``False``, no additive bias. Default: ``True``.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``
            (the others pad with :func:`torch.nn.functional.pad` first, as PyTorch
            does). Default: ``"zeros"``.
        device, dtype: where and in which dtype to create the parameters.

    Shape:
        - Input: :math:`(N, C_{in}, H_{in}, W_{in})` or :math:`(C_{in}, H_{in}, W_{in})`.
        - Output: :math:`(N, C_{out}, H_{out}, W_{out})` or :math:`(C_{out}, H_{out}, W_{out})`
          (see :func:`conv_output_size`).

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
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device=None, dtype=None) -> None:
        super().__init__()
        where = type(self).__name__
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"{where}: expected groups to be a positive int, got {groups!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{where}: expected in_channels={in_channels} and out_channels={out_channels} "
                f"to be divisible by groups={groups}"
            )
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"{where}: expected padding_mode to be one of {_PADDING_MODES}, got {padding_mode!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size", where, 1)
        self.stride = _pair(stride, "stride", where, 1)
        self.dilation = _pair(dilation, "dilation", where, 1)
        if isinstance(padding, str):
            before, after = _string_padding(padding, self.kernel_size, self.stride, self.dilation, where)
            self._pad_before_after = before, after                 # for padding_mode != "zeros"
        else:
            padding = _pair(padding, "padding", where, 0)
            self._pad_before_after = padding, padding
        self.padding = padding
        self.padding_mode = padding_mode
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

    def forward(self, input: Tensor) -> Tensor:
        if self.padding_mode == "zeros":
            return conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        (top, left), (bottom, right) = self._pad_before_after
        padded = F.pad(input, (left, right, top, bottom), mode=self.padding_mode)   # as torch.nn.Conv2d does
        return conv2d(padded, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

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
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s


# ------------------------------------------------------------------------------ cost
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
