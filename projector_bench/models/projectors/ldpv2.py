"""`ldpv2`: MobileVLM V2's projector (`ldpnetv2`).

Source: Meituan-AutoML/MobileVLM, `mobilevlm/model/vision_projector.py` (`LDPNetV2Projector`):
Linear–GELU–Linear (`FeatureIRLayer`), `AdaptiveAvgPool2d((12, 12))` (`TokenDownLayer`), then a
positional-encoding generator from Twins' `gvt.py` (`PosInjectLayer`: 3×3 depthwise conv with bias,
added back). Attribute names follow the official modules (`mlp.mlp`, `peg.peg`; the pool has no weights).
The official pool size is fixed at 12×12 because CLIP-336 gives 24×24; `pool=None` keeps that 2× per
side reduction on any grid (24×24 → 12×12 exactly as the official, 8×8 → 4×4), `reduce=k` makes it k× per
side (the same token ratio on any grid, which a search can vary), and `pool=(h, w)` fixes the output grid.
`peg` is for ablating the PEG: `default` (PyTorch's initialisation, as the official), `zero` (weights and bias
zero: the block starts as MLP-then-pool and learns what position it adds) or `none` (no PEG at all).
"""
import torch.nn.functional as F
from torch import Tensor, nn

from .._registry import register_projector
from .base import Grid, PoolsGrid, positive_pair
from .mlp import mlp_gelu


class _Wrap(nn.Module):
    """Holds one Sequential under a given attribute name, as the official sub-layers do."""

    def __init__(self, attr: str, *layers: nn.Module) -> None:
        super().__init__()
        self.attr = attr
        setattr(self, attr, nn.Sequential(*layers))

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self, self.attr)(x)


PEGS = ("default", "zero", "none")


class LDPv2(PoolsGrid):

    def __init__(self, in_dim: int, out_dim: int, pool: tuple[int, int] | None = None, reduce: int = 2,
                 peg: str = "default") -> None:
        super().__init__(in_dim, out_dim)
        if peg not in PEGS:
            raise ValueError(f"ldpv2 peg={peg!r} is not one of: {', '.join(PEGS)}")
        self.pool = None if pool is None else positive_pair(pool, "ldpv2 pool")
        self.reduce = positive_pair((reduce, reduce), "ldpv2 reduce")[0]
        self.mlp = _Wrap("mlp", *mlp_gelu(in_dim, out_dim, depth=2))
        conv = nn.Conv2d(out_dim, out_dim, 3, 1, 1, bias=True, groups=out_dim)
        self.peg = None if peg == "none" else _Wrap("peg", conv)
        if peg == "zero":
            nn.init.zeros_(self.peg.peg[0].weight)
            nn.init.zeros_(self.peg.peg[0].bias)

    def project(self, x: Tensor, grid: Grid | None) -> Tensor:
        b = x.shape[0]
        x = self.mlp(x)
        x = F.adaptive_avg_pool2d(x.transpose(1, 2).reshape(b, -1, *grid), self.pooled_grid(grid))
        if self.peg is not None:
            x = self.peg(x) + x
        return x.flatten(2).transpose(1, 2)


@register_projector
def ldpv2(in_dim: int, out_dim: int, pool: tuple[int, int] | None = None, reduce: int = 2,
          peg: str = "default") -> LDPv2:
    """MobileVLM V2 LDPv2: pool 2× per side (24×24 → 12×12 = 144 tokens; `reduce` sets the factor), then a PEG
    (`peg`: default | zero | none, for ablations)."""
    return LDPv2(in_dim, out_dim, None if pool is None else tuple(pool), reduce, peg)
