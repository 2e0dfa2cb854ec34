"""`qwen_vl_adapter`: Qwen-VL's one-layer cross-attention resampler with 2-D sin-cos position embeddings.

Source: Qwen/Qwen-VL (QwenLM/Qwen-VL), `visual.py`: `Resampler` (the `attn_pool`) then `ln_post` and `proj`
of `VisionTransformer`. `grid_size`² learned queries (256 in Qwen-VL), LayerNorm'd (`ln_q`), plus a fixed 2-D
sin-cos embedding of the query grid, attend once, through `nn.MultiheadAttention`, to the image tokens:
projected to the LM width by a bias-free `kv_proj` and LayerNorm'd (`ln_kv`); the keys (not the values) get
the same sin-cos table resampled bicubically to the image grid (`get_abs_pos`). Then LayerNorm (`ln_post`) and
a bias-free square matrix (`proj`, applied as `x @ proj`). No feed-forward and a single layer: Flamingo's
`resampler` is the deep variant. LayerNorms use eps 1e-6, as the reference. Module names follow the
reference (`attn_pool.query`, `attn_pool.kv_proj`, `attn_pool.attn`, `attn_pool.ln_q`, `attn_pool.ln_kv`,
`attn_pool.pos_embed`, `ln_post`, `proj`), so the adapter part of a Qwen-VL visual state dict loads.

Output tokens: `grid_size`², whatever the input grid. At Qwen-VL's shape (1664 → 4096, 16×16 queries, 32
heads of 128) it has exactly 91,791,360 learned parameters; the sin-cos table (a frozen parameter in the
reference, 1,048,576 values) is a buffer here, so it is in the state dict but not counted. No int8 twin: dynamic
quantization would reach only `kv_proj` (`nn.MultiheadAttention` keeps its projections in float), so it would
be a float design under an int8 name.
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...core.errors import ConfigError
from .._registry import register_projector
from .base import Grid, Projector


class AttnPool(nn.Module):
    def __init__(self, grid_size: int, embed_dim: int, num_heads: int, kv_dim: int) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.register_buffer("pos_embed", sincos_2d(grid_size, embed_dim))
        self.query = nn.Parameter(torch.zeros(grid_size * grid_size, embed_dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False) if kv_dim != embed_dim else nn.Identity()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.ln_q, self.ln_kv = nn.LayerNorm(embed_dim, eps=1e-6), nn.LayerNorm(embed_dim, eps=1e-6)
        for m in self.modules():  # the reference's _init_weights: every Linear (out_proj included) at std 0.02
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        pos = self.pos_embed
        if tuple(grid) != (self.grid_size, self.grid_size):  # get_abs_pos: the query grid's table, resampled
            side, dim = self.grid_size, pos.shape[-1]
            pos = F.interpolate(pos.reshape(1, side, side, dim).permute(0, 3, 1, 2), size=tuple(grid), mode="bicubic",
                                align_corners=False).permute(0, 2, 3, 1).reshape(-1, dim)
        x = self.ln_kv(self.kv_proj(x))
        # a copy of the parameter into ln_q: under inference_mode torch's FlopCounterMode cannot hook a parameter itself
        q = (self.ln_q(self.query.repeat(1, 1)) + self.pos_embed).expand(x.shape[0], -1, -1)
        return self.attn(q, x + pos, x, need_weights=False)[0]


def sincos_2d(side: int, dim: int) -> Tensor:
    """The reference's `get_2d_sincos_pos_embed(dim, side)`: half the channels encode the row, half the column."""
    if dim % 4:
        raise ConfigError(f"qwen_vl_adapter needs out_dim divisible by 4 for its 2-D sin-cos table, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    row, col = torch.meshgrid(torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64),
                              indexing="ij")

    def encode(p: Tensor) -> Tensor:
        out = p.reshape(-1, 1) * omega
        return torch.cat([out.sin(), out.cos()], 1)

    return torch.cat([encode(col), encode(row)], 1).float()  # the reference's meshgrid puts the column first


class QwenVLAdapter(Projector):
    needs_grid = True

    def __init__(self, in_dim: int, out_dim: int, grid_size: int = 16, num_heads: int | None = None) -> None:
        super().__init__(in_dim, out_dim)
        heads = num_heads if num_heads is not None else max(1, out_dim // 128)
        for k, v in (("grid_size", grid_size), ("num_heads", heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"qwen_vl_adapter {k} must be a positive integer, got {v!r}")
        if out_dim % heads:
            raise ConfigError(f"qwen_vl_adapter out_dim {out_dim} is not divisible by num_heads {heads}; "
                              "pick a divisor")
        self.grid_size = grid_size
        self.attn_pool = AttnPool(grid_size, out_dim, heads, in_dim)
        self.ln_post = nn.LayerNorm(out_dim, eps=1e-6)
        self.proj = nn.Parameter(out_dim**-0.5 * torch.randn(out_dim, out_dim))

    def num_tokens_out(self, grid: Grid) -> int:
        return self.grid_size * self.grid_size

    def project(self, x: Tensor, grid: Grid | None) -> Tensor:
        return self.ln_post(self.attn_pool(x, grid)) @ self.proj


@register_projector
def qwen_vl_adapter(in_dim: int, out_dim: int, grid_size: int = 16, num_heads: int | None = None) -> QwenVLAdapter:
    """Qwen-VL's adapter: `grid_size`² learned queries, one cross-attention with 2-D sin-cos positions."""
    return QwenVLAdapter(in_dim, out_dim, grid_size, num_heads)

