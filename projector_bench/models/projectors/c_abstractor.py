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
144 as Honeybee's default, and the same 4× on the accuracy proxy's 8×8 grid (4×4), as `ldpv2` does. The position
embedding is learned for `pos_grid` (the reference's: CLIP-336's 24×24); on another grid it is resampled bicubically,
as timm resamples a ViT's (`resample_abs_pos_embed`); under torch.export, whose core opset lacks antialiased bicubic
resampling, the same resampling is exported as the matrix it is (`resample_matrix`), so the design lowers to XNNPACK
on any grid.
"""
import math
from functools import cache, partial

import numpy as np
import torch
from timm.layers import LayerNorm2d, resample_abs_pos_embed
from timm.models.regnet import RegStage
from torch import Tensor, nn

from ...core.errors import ConfigError
from .._registry import register_projector
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


def _cubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    return ((a + 2) * x - (a + 3)) * x * x + 1 if x < 1 else ((((x - 5) * x + 8) * x - 4) * a if x < 2 else 0.0)


def _aa_bicubic_1d(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of torch's antialiased bicubic resampling (PIL's filter, a = -0.5) along one axis."""
    scale = n_in / n_out
    support, inv = (2.0 * scale, 1 / scale) if scale >= 1 else (2.0, 1.0)
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = scale * (i + 0.5)
        js = range(max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in))
        ws = np.array([_cubic((j - center + 0.5) * inv) for j in js])
        w[i, js.start:js.stop] = ws / ws.sum()
    return w


@cache
def resample_matrix(src: Grid, dst: Grid) -> np.ndarray:
    """(dst cells, src cells) float32 matrix `R` with `R @ table` equal to timm's `resample_abs_pos_embed(table,
    dst, src)` (antialiased bicubic, separable). Built in numpy: no op of it enters a traced graph."""
    return np.kron(_aa_bicubic_1d(src[0], dst[0]), _aa_bicubic_1d(src[1], dst[1])).astype(np.float32)


class CAbstractor(PoolsGrid):

    def __init__(self, in_dim: int, out_dim: int, num_queries: int | None = None, hidden: int | None = None,
                 depth: int = 3, mlp_depth: int = 2, pos_emb: bool = True, pos_grid: tuple[int, int] = (24, 24),
                 reduce: int = 2) -> None:
        super().__init__(in_dim, out_dim)
        side = 0
        if num_queries is not None:
            side = math.isqrt(num_queries) if isinstance(num_queries, int) and num_queries > 0 else 0
            if side * side != num_queries:
                raise ConfigError(f"c_abstractor num_queries must be a square number (144, 64, ...), "
                                  f"got {num_queries!r}")
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

    def position(self, grid: Grid) -> Tensor:
        """The position table on `grid`, resampled from `pos_grid` when they differ: by timm in eager mode, by the
        same resampling's matrix under torch.export (whose core opset has no antialiased bicubic)."""
        assert self.pos_emb is not None
        if grid == self.pos_grid:
            return self.pos_emb
        if torch.compiler.is_exporting():
            return torch.from_numpy(resample_matrix(self.pos_grid, grid)).to(self.pos_emb) @ self.pos_emb
        return resample_abs_pos_embed(self.pos_emb, list(grid), list(self.pos_grid), num_prefix_tokens=0)

    def project(self, x: Tensor, grid: Grid | None) -> Tensor:
        if self.pos_emb is not None:
            x = x + self.position(grid)
        b, n, c = x.shape
        self._pool.size = self.pooled_grid(grid)
        x = self.net(x.transpose(1, 2).reshape(b, c, *grid))
        return self.readout(x.flatten(2).transpose(1, 2))


@register_projector
def c_abstractor(in_dim: int, out_dim: int, num_queries: int | None = None, hidden: int | None = None, depth: int = 3,
                 mlp_depth: int = 2, pos_emb: bool = True, pos_grid: tuple[int, int] = (24, 24),
                 reduce: int = 2) -> CAbstractor:
    """Honeybee C-Abstractor: RegStage, pool to `num_queries` (a square; null: `reduce`× per side), RegStage,
    SiLU MLP."""
    return CAbstractor(in_dim, out_dim, num_queries, hidden, depth, mlp_depth, pos_emb, tuple(pos_grid), reduce)
