"""`ldp`: MobileVLM v1's Lightweight Downsample Projector (`ldpnet`), as in the official code.

Source: Meituan-AutoML/MobileVLM, `mobilevlm/model/vision_projector.py` (`LDPBlock`). Linear–GELU–Linear,
then two MobileNetV3 inverted residuals (torchvision's `InvertedResidual`, expand ratio 1, 3×3 depthwise,
SE with a Hardsigmoid gate, Hardswish, timm's `LayerNormAct2d` without activation as the norm):
stride 1 with a residual, then stride 2 without one. 24×24 tokens → 12×12. Module names match the
official block, so its `mlp`/`mb_block` state dict loads unchanged.
"""
from functools import partial

from timm.layers import LayerNormAct2d
from torch import Tensor, nn
from torchvision.models.mobilenetv3 import InvertedResidual, InvertedResidualConfig
from torchvision.ops.misc import SqueezeExcitation

from ...core.errors import ConfigError
from .._registry import register_projector
from .base import Grid, Projector
from .mlp import mlp_gelu


def mobilenetv3_block(channels: int, stride: int, kernel: int = 3) -> InvertedResidual:
    """MobileNetV3 inverted residual with expand ratio 1, SE and Hardswish, LayerNorm as in MobileVLM."""
    cfg = InvertedResidualConfig(channels, kernel, channels, channels, True, "HS", stride, 1, 1)
    # the config rounds channels up to a multiple of 8 (MobileNet's width rule), which breaks any other
    # width; LLM widths are multiples of 8, so this only lets e.g. out_dim=12 work and changes nothing else
    cfg.input_channels = cfg.expanded_channels = cfg.out_channels = channels
    norm = partial(LayerNormAct2d, act_layer=None)
    se = partial(SqueezeExcitation, scale_activation=nn.Hardsigmoid)
    return InvertedResidual(cfg, norm, se)


class LDP(Projector):
    needs_grid = True

    def __init__(self, in_dim: int, out_dim: int, kernel: int = 3) -> None:
        super().__init__(in_dim, out_dim)
        if kernel < 1 or kernel % 2 == 0:
            raise ConfigError(f"ldp kernel must be odd and positive (the stride-1 block adds its input back), "
                              f"got {kernel}; use 3")
        self.mlp = nn.Sequential(nn.Identity(), *mlp_gelu(in_dim, out_dim, depth=2))
        self.mb_block = nn.Sequential(
            nn.Identity(), mobilenetv3_block(out_dim, 1, kernel), mobilenetv3_block(out_dim, 2, kernel)
        )

    def num_tokens_out(self, grid: Grid) -> int:
        # stride-2 3×3 depthwise conv with padding 1: ceil(n / 2) per side
        return -(-grid[0] // 2) * -(-grid[1] // 2)

    def project(self, x: Tensor, grid: Grid | None) -> Tensor:
        b = x.shape[0]
        x = self.mlp(x)
        x = x.permute(0, 2, 1).reshape(b, -1, *grid)
        x = self.mb_block(x)
        return x.flatten(2).permute(0, 2, 1)


@register_projector
def ldp(in_dim: int, out_dim: int, kernel: int = 3) -> LDP:
    """MobileVLM v1 LDP: 4× fewer tokens (24×24 → 12×12)."""
    return LDP(in_dim, out_dim, kernel)
