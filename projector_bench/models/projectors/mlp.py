"""`mlp`: LLaVA-1.5's `mlp{depth}x_gelu` projector (MobileVLM keeps the same builder).

Layout follows `build_vision_projector`: Linear(in, out), then (depth - 1) × [GELU, Linear(out, out)],
as one `nn.Sequential`, so an official `mm_projector` state dict loads into `.mlp` unchanged.
"""
from torch import Tensor, nn

from ...core.errors import ConfigError
from .._registry import register_projector
from .base import Grid, Projector


def mlp_gelu(in_dim: int, out_dim: int, depth: int = 2) -> nn.Sequential:
    """LLaVA's `mlp{depth}x_gelu` as a Sequential (shared by LDP and LDPv2)."""
    if depth < 1:
        raise ConfigError(f"mlp depth must be >= 1, got {depth}; set projector.depth=2 for LLaVA's mlp2x_gelu")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


class MLPProjector(Projector):
    def __init__(self, in_dim: int, out_dim: int, depth: int = 2) -> None:
        super().__init__(in_dim, out_dim)
        self.mlp = mlp_gelu(in_dim, out_dim, depth)

    def project(self, x: Tensor, grid: Grid | None) -> Tensor:
        return self.mlp(x)


@register_projector
def mlp(in_dim: int, out_dim: int, depth: int = 2) -> MLPProjector:
    """LLaVA's mlp2x_gelu (depth 2 by default), all tokens kept."""
    return MLPProjector(in_dim, out_dim, depth)
