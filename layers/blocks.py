"""Residual blocks built from the package's own layers.

Taught in the chapter "Convolutions and normalization" (``book/convolutions.ipynb``).

:class:`ResidualBlock` is the ResNet "basic block": two 3x3 convolutions with
batch norm, plus a shortcut that adds the input back. No new backward is needed:
the block is a composite of :class:`~layers.conv.Conv2d`,
:class:`~layers.normalization.BatchNorm2d` and :class:`~layers.activations.ReLU`,
and autograd chains their hand-written backwards (the addition simply copies
the upstream gradient into both branches).
"""

from __future__ import annotations

from torch import Tensor, nn

from .activations import ReLU
from .conv import Conv2d
from .normalization import BatchNorm2d

__all__ = ["ResidualBlock"]


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

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))               # (N, C_out, H', W')
        out = self.bn2(self.conv2(out))                        # (N, C_out, H', W')
        if self.shortcut:
            out = out + (x if self.projection is None else self.projection(x))
        return self.relu(out)

    def extra_repr(self) -> str:
        return (f"{self.channels}, {self.out_channels}, stride={self.stride}, shortcut={self.shortcut}")
