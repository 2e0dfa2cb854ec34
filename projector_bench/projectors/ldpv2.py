"""`ldpv2`: MobileVLM V2's projector (`ldpnetv2`).

Source: Meituan-AutoML/MobileVLM, `mobilevlm/model/vision_projector.py` (`LDPNetV2Projector`):
Linear–GELU–Linear (`FeatureIRLayer`), `AdaptiveAvgPool2d((12, 12))` (`TokenDownLayer`), then a
positional-encoding generator from Twins' `gvt.py` (`PosInjectLayer`: 3×3 depthwise conv with bias,
added back). Attribute names follow the official modules (`mlp.mlp`, `dwn.dwn`, `peg.peg`).
"""
from torch import Tensor, nn

from .._registry import register_projector
from .base import Grid, Projector
from .mlp import mlp_gelu


class _Wrap(nn.Module):
    """Holds one Sequential under a given attribute name, as the official sub-layers do."""

    def __init__(self, attr: str, *layers: nn.Module) -> None:
        super().__init__()
        self.attr = attr
        setattr(self, attr, nn.Sequential(*layers))

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self, self.attr)(x)


class LDPv2(Projector):
    needs_grid = True

    def __init__(self, in_dim: int, out_dim: int, pool: tuple[int, int] = (12, 12)) -> None:
        super().__init__(in_dim, out_dim)
        self.pool = (int(pool[0]), int(pool[1]))
        self.mlp = _Wrap("mlp", *mlp_gelu(in_dim, out_dim, depth=2))
        self.dwn = _Wrap("dwn", nn.AdaptiveAvgPool2d(self.pool))
        self.peg = _Wrap("peg", nn.Conv2d(out_dim, out_dim, 3, 1, 1, bias=True, groups=out_dim))

    def num_tokens_out(self, grid: Grid) -> int:
        return self.pool[0] * self.pool[1]

    def project(self, x: Tensor, grid: Grid | None) -> Tensor:
        b = x.shape[0]
        x = self.mlp(x)
        x = self.dwn(x.transpose(1, 2).reshape(b, -1, *grid))
        x = self.peg(x) + x
        return x.flatten(2).transpose(1, 2)


@register_projector
def ldpv2(in_dim: int, out_dim: int, pool: tuple[int, int] = (12, 12)) -> LDPv2:
    """MobileVLM V2 LDPv2: pool to 12×12 = 144 tokens, then a PEG."""
    return LDPv2(in_dim, out_dim, tuple(pool))
