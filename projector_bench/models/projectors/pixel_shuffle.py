"""`pixel_shuffle`: space-to-depth then an MLP, as InternVL, Idefics3 and SmolVLM connect their encoders.

Source: OpenGVLab/InternVL, `internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py`:
`pixel_shuffle(x, scale_factor=0.5)` folds each 2×2 neighbourhood into one token of 4× the channels (4× fewer
tokens), then `mlp1` = LayerNorm → Linear → GELU → Linear. `scale` 0.5 folds 2×2 (4×), 1/3 folds 3×3 (9×),
0.25 folds 4×4 (16×); the grid's sides must divide by 1/scale. The channel order of a folded token is
InternVL's (its `ps_version: v2`), so its `mlp1` weights load into `mlp` as they are. `norm: false, depth: 1,
bias: false` is Idefics3's / SmolVLM's connector (one bias-free Linear, `modality_projection.proj`); its
neighbours are concatenated in another order, so its weights would need their input rows permuted.

At 1024 → 2048 with scale 0.5 (InternVL's mlp1): exactly 12,595,200 parameters.
"""
from torch import Tensor, nn

from ...core.errors import ConfigError
from .._registry import register_projector
from .base import Grid, Projector, check_divisible


def pixel_shuffle(x: Tensor, grid: Grid, r: int) -> Tensor:
    """(B, h·w, C) tokens → (B, h/r · w/r, r²·C): each r×r neighbourhood in one token, InternVL's order."""
    b, _, c = x.shape
    h, w = grid
    x = x.reshape(b, h, w // r, c * r).permute(0, 2, 1, 3)           # r neighbouring columns into the channels
    x = x.reshape(b, w // r, h // r, c * r * r).permute(0, 2, 1, 3)  # then r rows; v2's permute: row-major again
    return x.reshape(b, (h // r) * (w // r), c * r * r)


class PixelShuffle(Projector):
    needs_grid = True

    def __init__(self, in_dim: int, out_dim: int, scale: float = 0.5, norm: bool = True, depth: int = 2,
                 bias: bool = True) -> None:
        super().__init__(in_dim, out_dim)
        r = round(1 / scale) if isinstance(scale, (int, float)) and 0 < scale <= 1 else 0
        if r < 1 or abs(1 / scale - r) > 1e-3:
            raise ConfigError(f"pixel_shuffle scale must be 1/r for an integer r (0.5, 0.3333, 0.25), got {scale!r}")
        if depth not in (1, 2):
            raise ConfigError(f"pixel_shuffle depth must be 1 (one Linear) or 2 (Linear, GELU, Linear), got {depth!r}")
        self.r = r
        wide = in_dim * r * r
        layers: list[nn.Module] = [nn.LayerNorm(wide)] if norm else []
        layers.append(nn.Linear(wide, out_dim, bias=bias))
        if depth == 2:
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim, bias=bias)]
        self.mlp = nn.Sequential(*layers)

    def _check(self, grid: Grid) -> None:
        check_divisible(grid, self.r, f"pixel_shuffle with scale 1/{self.r}", "use another scale or image size")

    def num_tokens_out(self, grid: Grid) -> int:
        self._check(grid)
        return (grid[0] // self.r) * (grid[1] // self.r)

    def project(self, x: Tensor, grid: Grid | None) -> Tensor:
        self._check(grid)
        return self.mlp(pixel_shuffle(x, grid, self.r))


@register_projector(name="pixel_shuffle")
def pixel_shuffle_mlp(in_dim: int, out_dim: int, scale: float = 0.5, norm: bool = True, depth: int = 2,
                      bias: bool = True) -> PixelShuffle:
    """InternVL pixel shuffle (1/scale² fewer tokens, 1/scale² wider) and its LayerNorm–Linear–GELU–Linear."""
    return PixelShuffle(in_dim, out_dim, scale, norm, depth, bias)
