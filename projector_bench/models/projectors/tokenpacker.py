"""`tokenpacker`: TokenPacker's point-to-region cross-attention, then a 2-layer MLP.

Source: CircleRadon/TokenPacker, `llava/model/multimodal_projector/builder.py`, `TokenPacker`: point queries
are the feature grid downsampled bilinearly by `scale_factor` per side (`F.interpolate`), projected
(`q_proj_1`, bias-free) and normalised (`ln_q_1`); keys and values are the full-resolution features through
Linear–GELU–Linear (`k_proj_1`, `v_proj_1`) and a LayerNorm each (`ln_k_1`, `ln_v_1`); each query attends,
with `nn.MultiheadAttention` (`clip_attn`), only to the `scale_factor`² keys of its own region; then `mlp`
(Linear–GELU–Linear) to `out_dim`. Module names follow the reference.

Single-level features here: the reference's keys and values come from four CLIP layers concatenated (its
`k_proj_1` takes 4 × 1024 channels); this design takes one level (the encoder's output), so `k_proj_1` and
`v_proj_1` take `in_dim`. At 1024 → 2048 with the reference's 1024-wide embedding and 8 heads: 15,747,072
parameters (the reference's own, with 4096-wide key and value inputs, has 3 × 1024 × 1024 × 2 more). Output
tokens: (h/s)·(w/s) for `scale_factor` s (2: 576 → 144; 3: 576 → 64).
"""
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from ...core.errors import ConfigError
from .._registry import register_projector
from .base import Grid, Projector, check_divisible


def _gelu_mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class TokenPacker(Projector):
    needs_grid = True

    def __init__(self, in_dim: int, out_dim: int, scale_factor: int = 2, embed_dim: int | None = None,
                 num_heads: int | None = None) -> None:
        super().__init__(in_dim, out_dim)
        if isinstance(scale_factor, bool) or not isinstance(scale_factor, int) or scale_factor < 1:
            raise ConfigError(f"tokenpacker scale_factor must be a positive integer (2, 3, 4), got {scale_factor!r}")
        embed = embed_dim or in_dim
        heads = num_heads or max(1, embed // 128)  # the reference: 1024 // 128 = 8 heads
        if embed % heads:
            raise ConfigError(f"tokenpacker embed_dim={embed} is not a multiple of num_heads={heads}")
        self.s = scale_factor
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.q_proj_1 = nn.Linear(in_dim, embed, bias=False)
        self.k_proj_1, self.v_proj_1 = _gelu_mlp(in_dim, embed), _gelu_mlp(in_dim, embed)
        self.ln_q_1, self.ln_k_1, self.ln_v_1 = norm(embed), norm(embed), norm(embed)
        self.clip_attn = nn.MultiheadAttention(embed, heads)
        self.mlp = _gelu_mlp(embed, out_dim)

    def _check(self, grid: Grid) -> None:
        check_divisible(grid, self.s, f"tokenpacker scale_factor {self.s}", "use another scale_factor or image size")

    def num_tokens_out(self, grid: Grid) -> int:
        self._check(grid)
        return (grid[0] // self.s) * (grid[1] // self.s)

    def _regions(self, t: Tensor, grid: Grid) -> Tensor:
        """(B, h·w, C) → (s², B·(h/s)·(w/s), C): each region's s×s tokens along the sequence axis."""
        b, _, c = t.shape
        h, w, s = *grid, self.s
        t = t.reshape(b, h // s, s, w // s, s, c).permute(2, 4, 0, 1, 3, 5)
        return t.reshape(s * s, b * (h // s) * (w // s), c)

    def project(self, x: Tensor, grid: Grid | None) -> Tensor:
        self._check(grid)
        b, _, c = x.shape
        h, w = grid
        q = F.interpolate(x.transpose(1, 2).reshape(b, c, h, w), size=(h // self.s, w // self.s), mode="bilinear")
        q = self.ln_q_1(self.q_proj_1(q.flatten(2).transpose(1, 2)))        # (B, M, E)
        k = self._regions(self.ln_k_1(self.k_proj_1(x)), grid)
        v = self._regions(self.ln_v_1(self.v_proj_1(x)), grid)
        out = self.clip_attn(q.reshape(1, -1, q.shape[-1]), k, v, need_weights=False)[0]  # one query per region
        return self.mlp(out.reshape(b, -1, out.shape[-1]))


@register_projector
def tokenpacker(in_dim: int, out_dim: int, scale_factor: int = 2, embed_dim: int | None = None,
                num_heads: int | None = None) -> TokenPacker:
    """TokenPacker: bilinear point queries attend to their own s×s region, then a 2-layer MLP."""
    return TokenPacker(in_dim, out_dim, scale_factor, embed_dim, num_heads)
