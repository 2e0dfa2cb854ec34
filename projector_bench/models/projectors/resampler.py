"""`resampler`: Flamingo's Perceiver Resampler — learned latents that cross-attend to the image tokens.

Source: mlfoundations/open_flamingo, `open_flamingo/src/helpers.py`, `PerceiverResampler` (after
lucidrains/flamingo-pytorch): `num_latents` learned latents; `depth` blocks of [`PerceiverAttention`:
LayerNorm on the media and on the latents, queries from the latents, keys and values from the media and the
latents concatenated, bias-free `to_q`/`to_kv`/`to_out`; a feed-forward LayerNorm–Linear–GELU–Linear without
biases, `ff_mult`× wide], each added back to the latents; a final LayerNorm. One image: no media-time or frame
embeddings. The attention is `F.scaled_dot_product_attention` (the reference's explicit softmax of the
scaled scores, computed fused). Module names follow the reference under `resampler` (`latents`,
`layers.<i>.0.to_q`, `layers.<i>.1.<j>`, `norm`), so an OpenFlamingo `perceiver` state dict loads into it;
then a Linear from the resampler's width (`in_dim`) to `out_dim`, as a VLM feeds its LM.

Output tokens: `num_latents`, whatever the grid (no place is kept unless the latents learn one). At in_dim
1024 with the reference's defaults (depth 6, 8 heads × 64, 64 latents, ff_mult 4) the resampler part has
exactly 63,019,008 parameters. Qwen-VL's one-layer adapter with 2-D sin-cos position embeddings is a
second design, `qwen_vl_adapter` (its structure differs: no feed-forward, keys from the image only).
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...core.errors import ConfigError
from .._registry import register_projector
from .base import Grid, Projector


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.heads, inner = heads, dim_head * heads
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor, latents: Tensor) -> Tensor:
        x, latents = self.norm_media(x), self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # (B, heads, n, d)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    inner = int(dim * mult)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(),
                         nn.Linear(inner, dim, bias=False))


class PerceiverResampler(nn.Module):
    def __init__(self, dim: int, depth: int, dim_head: int, heads: int, num_latents: int, ff_mult: int) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList(nn.ModuleList([PerceiverAttention(dim, dim_head, heads),
                                                   feed_forward(dim, ff_mult)])
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        latents = self.latents.repeat(x.shape[0], 1, 1)  # a copy, not a view: under inference_mode a view of a
        # parameter keeps requires_grad without a grad_fn, which torch's FlopCounterMode module tracker cannot hook
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)


class Resampler(Projector):
    def __init__(self, in_dim: int, out_dim: int, depth: int = 6, heads: int = 8, dim_head: int = 64,
                 num_latents: int = 64, ff_mult: int = 4) -> None:
        super().__init__(in_dim, out_dim)
        for k, v in (("depth", depth), ("heads", heads), ("dim_head", dim_head), ("num_latents", num_latents),
                     ("ff_mult", ff_mult)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"resampler {k} must be a positive integer, got {v!r}")
        self.num_latents = num_latents
        self.resampler = PerceiverResampler(in_dim, depth, dim_head, heads, num_latents, ff_mult)
        self.proj = nn.Linear(in_dim, out_dim)

    def num_tokens_out(self, grid: Grid) -> int:
        return self.num_latents

    def project(self, x: Tensor, grid: Grid | None) -> Tensor:
        return self.proj(self.resampler(x))


@register_projector
def resampler(in_dim: int, out_dim: int, depth: int = 6, heads: int = 8, dim_head: int = 64, num_latents: int = 64,
              ff_mult: int = 4) -> Resampler:
    """Flamingo Perceiver Resampler (`num_latents` output tokens), then a Linear to `out_dim`."""
    return Resampler(in_dim, out_dim, depth, heads, dim_head, num_latents, ff_mult)
