"""The residual-in-residual dense block (RRDB) of ESRGAN, used by the CFW fusion layers (``sr.models.cfw``).

Parameter names, shapes and initialisation are those of basicsr's ``RRDB`` (``rdb{1,2,3}.conv{1..5}``), so CFW
weights trained or converted with basicsr's block load unchanged, and a block built under a given seed draws the same
random numbers (``tests/test_rrdb.py`` checks both against basicsr). Defined here so that the inference pipeline
does not need basicsr, which is a training and evaluation dependency.
"""

import torch
from torch import nn

RESIDUAL_SCALE = 0.2   # ESRGAN scales each residual branch by 0.2 before adding it back
INIT_SCALE = 0.1       # ...and starts from Kaiming-normal weights scaled by 0.1, biases at 0


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convolutions, each fed the block input concatenated with every earlier output (dense connections):

        x_k = lrelu(conv_k(cat[x, x_1, ..., x_{k-1}]))  for k = 1..4,   x_5 = conv_5(cat[x, x_1, ..., x_4])
        out = x + 0.2 x_5

    ``growth_channels`` channels per inner convolution; LeakyReLU slope 0.2.
    """

    def __init__(self, channels: int, growth_channels: int = 32):
        super().__init__()
        for index in range(1, 6):
            width_in = channels + (index - 1) * growth_channels
            width_out = channels if index == 5 else growth_channels
            setattr(self, f"conv{index}", nn.Conv2d(width_in, width_out, 3, 1, 1))
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        for conv in self.convolutions():
            nn.init.kaiming_normal_(conv.weight)
            conv.weight.data *= INIT_SCALE
            conv.bias.data.zero_()

    def convolutions(self) -> list[nn.Conv2d]:
        return [getattr(self, f"conv{index}") for index in range(1, 6)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        *inner, last = self.convolutions()
        for conv in inner:
            features.append(self.lrelu(conv(torch.cat(features, dim=1))))
        return last(torch.cat(features, dim=1)) * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Three residual dense blocks in a chain, wrapped in one more scaled residual: ``x + 0.2 rdb3(rdb2(rdb1(x)))``."""

    def __init__(self, channels: int, growth_channels: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(channels, growth_channels)
        self.rdb2 = ResidualDenseBlock(channels, growth_channels)
        self.rdb3 = ResidualDenseBlock(channels, growth_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * RESIDUAL_SCALE + x
