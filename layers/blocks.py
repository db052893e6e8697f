"""Blocks built from the package's own layers: the ResNet block and the MobileNet block.

Taught in the chapter "Convolutions and normalization" (``book/convolutions.ipynb``).

:class:`ResidualBlock` is the ResNet "basic block": two 3x3 convolutions with
batch norm, plus a shortcut that adds the input back. :class:`DepthwiseSeparableConv2d`
is the MobileNet block: a depthwise and a pointwise convolution, each followed by
batch norm and ReLU. No new backward is needed: each block is a composite of :class:`~layers.conv.Conv2d`,
:class:`~layers.normalization.BatchNorm2d` and :class:`~layers.activations.ReLU`,
and autograd chains their hand-written backwards (the addition simply copies
the upstream gradient into both branches).
"""

from __future__ import annotations

from torch import Tensor, nn

from .activations import ReLU
from .conv import Conv2d, conv2d_cost, conv_output_size
from .normalization import BatchNorm2d

__all__ = ["ResidualBlock", "DepthwiseSeparableConv2d"]


class ResidualBlock(nn.Module):
    r"""ResNet basic block: :math:`y = \mathrm{ReLU}(F(x) + S(x))`.

    :math:`F` is conv3x3 → BatchNorm2d → ReLU → conv3x3 → BatchNorm2d. The
    shortcut :math:`S` is the identity when the shape does not change, or a
    1x1 projection (conv with the block's stride, then BatchNorm2d) when
    ``out_channels != channels`` or ``stride != 1``. With ``shortcut=False`` the
    block is a plain two-layer stack, :math:`y = \mathrm{ReLU}(F(x))` (the
    chapter compares the two).

    Why it helps: :math:`\partial y / \partial x = \partial F/\partial x + I`
    (through the ReLU), so the gradient reaching early layers of a deep stack
    always has a direct path and does not shrink layer after layer.

    Args:
        channels: input channels.
        out_channels: output channels; ``None`` means ``channels``.
        stride: stride of the first convolution (and the projection). Default: 1.
        shortcut: add the shortcut branch. Default: ``True``.

    Shape:
        - Input: :math:`(N, C, H, W)`.
        - Output: :math:`(N, C_{out}, \lceil H/s \rceil, \lceil W/s \rceil)`.

    Attributes:
        conv1, bn1, conv2, bn2: the residual branch :math:`F`.
        projection: ``nn.Sequential(Conv2d 1x1, BatchNorm2d)`` or ``None`` (identity shortcut).

    Examples:
        >>> block = ResidualBlock(8)
        >>> block(torch.randn(2, 8, 6, 6)).shape
        torch.Size([2, 8, 6, 6])
        >>> ResidualBlock(8, 16, stride=2)(torch.randn(2, 8, 6, 6)).shape
        torch.Size([2, 16, 3, 3])
    """

    def __init__(self, channels: int, out_channels: int | None = None, stride: int = 1,
                 shortcut: bool = True) -> None:
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        self.channels, self.out_channels, self.stride, self.shortcut = channels, out_channels, stride, shortcut
        self.conv1 = Conv2d(channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(out_channels)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(out_channels)
        self.relu = ReLU()
        if shortcut and (stride != 1 or out_channels != channels):
            self.projection = nn.Sequential(Conv2d(channels, out_channels, 1, stride=stride, bias=False),
                                            BatchNorm2d(out_channels))
        else:
            self.projection = None

    def forward(self, input: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(input)))           # (N, C_out, H', W')
        out = self.bn2(self.conv2(out))                        # (N, C_out, H', W')
        if self.shortcut:
            out = out + (input if self.projection is None else self.projection(input))
        return self.relu(out)

    def extra_repr(self) -> str:
        return (f"{self.channels}, {self.out_channels}, stride={self.stride}, shortcut={self.shortcut}")


class DepthwiseSeparableConv2d(nn.Module):
    r"""Depthwise ``k x k`` conv → BatchNorm2d → ReLU → pointwise ``1 x 1`` conv → BatchNorm2d → ReLU.

    The MobileNet block: a standard convolution mixes space and channels at once
    (:math:`C_{out} C_{in} k^2` weights); this one filters each channel on its
    own (``groups = in_channels``, :math:`C_{in} k^2` weights) and then mixes
    channels with a ``1 x 1`` convolution (:math:`C_{in} C_{out}` weights).
    Built from :class:`~layers.conv.Conv2d`, :class:`~layers.normalization.BatchNorm2d` and
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
        depthwise: the :class:`~layers.conv.Conv2d` with ``groups=in_channels``.
        bn1: :class:`~layers.normalization.BatchNorm2d` after it.
        pointwise: the ``1 x 1`` :class:`~layers.conv.Conv2d`.
        bn2: :class:`~layers.normalization.BatchNorm2d` after it.

    Examples:
        >>> block = DepthwiseSeparableConv2d(8, 16)
        >>> block(torch.randn(2, 8, 6, 6)).shape
        torch.Size([2, 16, 6, 6])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = 3,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 1) -> None:
        super().__init__()
        self.depthwise = Conv2d(in_channels, in_channels, kernel_size, stride, padding,
                                groups=in_channels, bias=False)
        self.bn1 = BatchNorm2d(in_channels)
        self.pointwise = Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = BatchNorm2d(out_channels)
        self.relu = ReLU()

    def forward(self, input: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.depthwise(input)))         # (N, C_in, H_out, W_out)
        return self.relu(self.bn2(self.pointwise(x)))          # (N, C_out, H_out, W_out)

    def cost(self, height: int, width: int) -> dict[str, int]:
        """Parameters and multiply-adds of the two convolutions (see :func:`layers.conv.conv2d_cost`)."""
        d, p = self.depthwise, self.pointwise
        dw = conv2d_cost(d.in_channels, d.out_channels, d.kernel_size, height, width, d.stride,
                         d.padding, d.dilation, d.groups, bias=False)
        ho = conv_output_size(height, d.kernel_size[0], d.stride[0], d.padding[0], d.dilation[0])
        wo = conv_output_size(width, d.kernel_size[1], d.stride[1], d.padding[1], d.dilation[1])
        pw = conv2d_cost(p.in_channels, p.out_channels, 1, ho, wo, bias=False)
        return {k: dw[k] + pw[k] for k in dw}
