"""`avgpool_mlp`: 2-D pooling of the grid to h×w, then LLaVA's MLP (DeCo; LLaVA-NeXT's 2-D pooling).

Sources: DeCo ("Decoupling Token Compression from Semantic Abstraction", Yao et al. 2024) compresses with
2-D adaptive average pooling before the MLP projector; LLaVA-NeXT / LLaVA-OneVision pool the grid
bilinearly or by average (`get_2dPool`). Here: adaptive average pooling (`mode: avg`) or bilinear
interpolation (`mode: bilinear`) of the token grid to `pool` = [h, w] (null: `reduce`× per side, 24×24 → 12×12
by default and the same 4× on the accuracy proxy's 8×8 grid), then Linear–GELU–Linear (`mlp.0` / `mlp.2`, as in
`mlp`).
No parameters besides the MLP's: at 1024 → 2048, 6,295,552, as `mlp`.
"""
import torch.nn.functional as F
from torch import Tensor

from ...core.errors import ConfigError
from .._registry import register_projector
from .base import Grid, PoolsGrid, positive_pair
from .mlp import mlp_gelu


class AvgPoolMLP(PoolsGrid):

    def __init__(self, in_dim: int, out_dim: int, pool: tuple[int, int] | None = None, mode: str = "avg",
                 reduce: int = 2) -> None:
        super().__init__(in_dim, out_dim)
        if mode not in ("avg", "bilinear"):
            raise ConfigError(f"avgpool_mlp mode must be avg or bilinear, got {mode!r}")
        self.pool, self.mode = None if pool is None else positive_pair(pool, "avgpool_mlp pool"), mode
        self.reduce = positive_pair((reduce, reduce), "avgpool_mlp reduce")[0]
        self.mlp = mlp_gelu(in_dim, out_dim, depth=2)

    def project(self, x: Tensor, grid: Grid | None) -> Tensor:
        b, _, c = x.shape
        maps = x.transpose(1, 2).reshape(b, c, *grid)
        size = self.pooled_grid(grid)
        maps = (F.adaptive_avg_pool2d(maps, size) if self.mode == "avg"
                else F.interpolate(maps, size=size, mode="bilinear", align_corners=False))
        return self.mlp(maps.flatten(2).transpose(1, 2))


@register_projector
def avgpool_mlp(in_dim: int, out_dim: int, pool: tuple[int, int] | None = None, mode: str = "avg",
                reduce: int = 2) -> AvgPoolMLP:
    """Pool the grid to `pool` (null: `reduce`× per side), by average or bilinearly, then mlp2x_gelu."""
    return AvgPoolMLP(in_dim, out_dim, None if pool is None else tuple(pool), mode, reduce)
