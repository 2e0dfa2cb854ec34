"""`ldp_seed`: the LDP as the seed package `mobilevlm` (0.0.3) describes it in its README.

pointwise → GELU → depthwise s1 → skip → pointwise → LayerNorm over channels → GELU → depthwise s2
→ skip from the block's input, downsampled → pointwise → LayerNorm. The published package reuses its
first pointwise conv (so it crashes whenever in_channels ≠ out_channels) and never calls its LayerNorm;
here every layer is its own and is used, and the skip is projected when the channel counts differ.
`LDP(in_channels, out_channels)` keeps the seed's call on NCHW maps; as a projector it takes tokens.
"""
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from .._registry import register_projector
from .base import Grid, Projector


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, groups=channels)


class LDP(Projector):
    needs_grid = True

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels)
        self.pointwise1 = nn.Conv2d(in_channels, out_channels, 1)
        self.depthwise1 = _depthwise(out_channels, 1)
        self.pointwise2 = nn.Conv2d(out_channels, out_channels, 1)
        self.norm1 = LayerNorm2d(out_channels)
        self.depthwise2 = _depthwise(out_channels, 2)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        self.pointwise3 = nn.Conv2d(out_channels, out_channels, 1)
        self.norm2 = LayerNorm2d(out_channels)

    def num_tokens_out(self, grid: Grid) -> int:
        return -(-grid[0] // 2) * -(-grid[1] // 2)

    def forward(self, x: Tensor, grid: Grid | None = None) -> Tensor:
        if x.ndim == 4:  # the seed's own call: (B, C, H, W) → (B, C_out, H/2, W/2)
            return self.block(x)
        return super().forward(x, grid)

    def block(self, x: Tensor) -> Tensor:
        """The LDP on an NCHW feature map."""
        y = F.gelu(self.pointwise1(x))
        y = self.depthwise1(y) + y
        y = F.gelu(self.norm1(self.pointwise2(y)))
        y = self.depthwise2(y)
        # the seed resizes the block's input bilinearly to the downsampled size before adding it
        y = y + self.skip(F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=False))
        return self.norm2(self.pointwise3(y))

    def project(self, x: Tensor, grid: Grid | None) -> Tensor:
        b = x.shape[0]
        y = self.block(x.transpose(1, 2).reshape(b, -1, *grid))
        return y.flatten(2).transpose(1, 2)


@register_projector
def ldp_seed(in_dim: int, out_dim: int) -> LDP:
    """The seed package's LDP, repaired: 4× fewer tokens."""
    return LDP(in_dim, out_dim)
