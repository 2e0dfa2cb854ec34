"""`pool`: mlp2x_gelu, then average pooling of the token grid to `pool` = (h, w) tokens.

With the default (1, 1) every image becomes a single token: the cheapest projector for the language
model, and the one that shows what compression loses (where things are).
"""
import torch.nn.functional as F
from torch import Tensor

from .._registry import register_projector
from .base import Grid, Projector, positive_pair
from .mlp import mlp_gelu


class PoolProjector(Projector):
    needs_grid = True

    def __init__(self, in_dim: int, out_dim: int, pool: tuple[int, int] = (1, 1)) -> None:
        super().__init__(in_dim, out_dim)
        self.pool = positive_pair(pool, "pool")
        self.mlp = mlp_gelu(in_dim, out_dim, depth=2)

    def num_tokens_out(self, grid: Grid) -> int:
        return self.pool[0] * self.pool[1]

    def project(self, x: Tensor, grid: Grid | None) -> Tensor:
        x = self.mlp(x).transpose(1, 2).reshape(x.shape[0], -1, *grid)
        return F.adaptive_avg_pool2d(x, self.pool).flatten(2).transpose(1, 2)


@register_projector
def pool(in_dim: int, out_dim: int, pool: tuple[int, int] = (1, 1)) -> PoolProjector:
    """mlp2x_gelu, then average-pool the grid to `pool` tokens (one by default)."""
    return PoolProjector(in_dim, out_dim, tuple(pool))
