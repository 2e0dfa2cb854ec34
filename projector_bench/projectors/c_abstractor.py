"""`c_abstractor`: Honeybee's C-Abstractor, a convolutional token compressor that keeps locality.

Source: kakaobrain/honeybee (mirrored as khanrc/honeybee), `honeybee/projectors/projectors.py`, `CAbstractor`:
a learned position embedding added to the input tokens, timm's `RegStage` (`depth` RegNet bottleneck blocks
with squeeze-excitation, SiLU, `LayerNorm2d`) from `in_dim` to `hidden`, adaptive average pooling to the
h×w = `num_queries` output grid, a second `RegStage` at `hidden`, then an MLP readout (`mlp_depth` Linear
layers with SiLU between them) to `out_dim`. Built from timm's `RegStage` as the reference builds it, with
its module names (`pos_emb`, `net.0` / `net.1` / `net.2`, `readout`), so a Honeybee abstractor state dict
(`abstractor.*` without that prefix) loads as it is.

At 576 tokens (24×24) of 1024 → 2048 with hidden 1024, depth 3, mlp_depth 2 and the position embedding:
exactly 22,713,856 parameters, for 144 or 64 queries alike (the pool has none). `num_queries` fixes the
output (Honeybee's `num_query_tokens`); null (the default) pools `reduce`× per side instead — 24×24 → 12×12 =
144 as Honeybee's default, and the same 4× on the accuracy proxy's 8×8 grid (4×4), as `ldpv2` does. The position embedding is
learned for `pos_grid` (the reference's: CLIP-336's 24×24); on another grid it is resampled bicubically, as
timm resamples a ViT's (`resample_abs_pos_embed`), applied as the linear map that resampling is (a matrix per
grid, built eagerly once), so the exported graph holds a matmul instead of antialiased bicubic upsampling, which
torch.export's core opset and XNNPACK lack.
"""
import math
from functools import partial

import torch
from timm.layers import LayerNorm2d, resample_abs_pos_embed
from timm.models.regnet import RegStage
from torch import Tensor, nn

from .._registry import register_projector
from ..errors import ConfigError
from .base import Grid, PoolsGrid, positive_pair


def silu_mlp(in_dim: int, out_dim: int, depth: int) -> nn.Sequential:
    """Honeybee's `build_mlp`: Linear, then (SiLU, Linear) `depth - 1` times."""
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.SiLU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


class _GridPool(nn.Module):
    """The reference's `AdaptiveAvgPool2d`, its output size set per input grid by the projector (`size`, plain
    ints: no shape arithmetic in a traced graph). Weightless, so state dicts are unchanged."""

    size: Grid = (1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.adaptive_avg_pool2d(x, self.size)


def resample_matrix(src: Grid, dst: Grid) -> Tensor:
    """(dst cells, src cells) matrix `R` with `R @ table` equal to timm's `resample_abs_pos_embed(table, dst, src)`:
    the resampling applied to each one-hot table."""
    n = src[0] * src[1]
    with torch.no_grad():
        basis = torch.eye(n).reshape(1, n, n)  # column j: the table that is 1 in cell j
        return resample_abs_pos_embed(basis, list(dst), list(src), num_prefix_tokens=0)[0]


class CAbstractor(PoolsGrid):

    def __init__(self, in_dim: int, out_dim: int, num_queries: int | None = None, hidden: int | None = None, depth: int = 3,
                 mlp_depth: int = 2, pos_emb: bool = True, pos_grid: tuple[int, int] = (24, 24), reduce: int = 2) -> None:
        super().__init__(in_dim, out_dim)
        side = 0
        if num_queries is not None:
            side = math.isqrt(num_queries) if isinstance(num_queries, int) and num_queries > 0 else 0
            if side * side != num_queries:
                raise ConfigError(f"c_abstractor num_queries must be a square number (144, 64, ...), got {num_queries!r}")
        self.reduce = positive_pair((reduce, reduce), "c_abstractor reduce")[0]
        if depth < 0 or mlp_depth < 1:
            raise ConfigError(f"c_abstractor needs depth >= 0 and mlp_depth >= 1, got {depth}, {mlp_depth}")
        hidden = hidden or in_dim
        self.pool = (side, side) if side else None
        self.pos_grid = positive_pair(pos_grid, "c_abstractor pos_grid")
        self.pos_emb = nn.Parameter(torch.zeros(1, self.pos_grid[0] * self.pos_grid[1], in_dim)) if pos_emb else None
        if self.pos_emb is not None:
            nn.init.trunc_normal_(self.pos_emb, std=0.02)
        stage = partial(RegStage, stride=1, dilation=1, act_layer=nn.SiLU, norm_layer=LayerNorm2d)
        pool = self._pool = _GridPool()
        self.net = nn.Sequential(stage(depth, in_dim, hidden), pool, stage(depth, hidden, hidden)) if depth else pool
        self.readout = silu_mlp(hidden if depth else in_dim, out_dim, mlp_depth)
        self._resample: dict[Grid, Tensor] = {}  # per grid; depends on the grids only, so never stale, not in state

    def position(self, grid: Grid) -> Tensor:
        """The position table on `grid` (resampled from `pos_grid` when they differ)."""
        assert self.pos_emb is not None
        if grid == self.pos_grid:
            return self.pos_emb
        m = self._resample.get(grid)
        if m is None:
            if torch.compiler.is_exporting():  # tracing: no eager call built it; export what timm does
                return resample_abs_pos_embed(self.pos_emb, list(grid), list(self.pos_grid), num_prefix_tokens=0)
            m = self._resample[grid] = resample_matrix(self.pos_grid, grid)
        return m.to(self.pos_emb) @ self.pos_emb

    def project(self, x: Tensor, grid: Grid | None) -> Tensor:
        if self.pos_emb is not None:
            x = x + self.position(grid)
        b, n, c = x.shape
        self._pool.size = self.pooled_grid(grid)
        x = self.net(x.transpose(1, 2).reshape(b, c, *grid))
        return self.readout(x.flatten(2).transpose(1, 2))


@register_projector
def c_abstractor(in_dim: int, out_dim: int, num_queries: int | None = None, hidden: int | None = None, depth: int = 3,
                 mlp_depth: int = 2, pos_emb: bool = True, pos_grid: tuple[int, int] = (24, 24), reduce: int = 2) -> CAbstractor:
    """Honeybee C-Abstractor: RegStage, pool to `num_queries` (a square; null: `reduce`× per side), RegStage, SiLU MLP."""
    return CAbstractor(in_dim, out_dim, num_queries, hidden, depth, mlp_depth, pos_emb, tuple(pos_grid), reduce)
