"""`bottleneck_transformer`: Linear in → bottleneck width → transformer encoder layers → Linear out.

The layers are timm's ViT `Block` (pre-norm, fused scaled-dot-product attention, timm `Mlp`), so the
attention runs through `F.scaled_dot_product_attention` like current ViTs do. All tokens are kept.
`width` defaults to `out_dim // 8` (at least 32): 256 for a 2048-wide language model.
"""
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from ...core.errors import ConfigError
from .._registry import register_projector
from .base import Grid, Projector


class BottleneckTransformer(Projector):
    def __init__(self, in_dim: int, out_dim: int, width: int | None = None, depth: int = 2,
                 num_heads: int = 4, mlp_ratio: float = 4.0) -> None:
        super().__init__(in_dim, out_dim)
        width = width or max(32, out_dim // 8)
        if width <= 0 or depth < 0 or num_heads <= 0 or width % num_heads:
            raise ConfigError(
                f"bottleneck_transformer needs width > 0 divisible by num_heads > 0 and depth >= 0, "
                f"got width={width} num_heads={num_heads} depth={depth}; fix projector.width/num_heads/depth"
            )
        self.proj_in = nn.Linear(in_dim, width)
        self.blocks = nn.Sequential(*[Block(width, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.proj_out = nn.Linear(width, out_dim)

    def project(self, x: Tensor, grid: Grid | None) -> Tensor:
        return self.proj_out(self.blocks(self.proj_in(x)))


@register_projector
def bottleneck_transformer(in_dim: int, out_dim: int, width: int | None = None, depth: int = 2,
                           num_heads: int = 4, mlp_ratio: float = 4.0) -> BottleneckTransformer:
    """Linear → `depth` transformer layers at `width` → Linear; all tokens kept."""
    return BottleneckTransformer(in_dim, out_dim, width, depth, num_heads, mlp_ratio)
