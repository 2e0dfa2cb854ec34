"""`linear`: LLaVA-1's projector, one Linear applied to every token."""
from torch import Tensor, nn

from .._registry import register_projector
from .base import Grid, Projector


class LinearProjector(Projector):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(in_dim, out_dim)
        self.proj = nn.Linear(in_dim, out_dim)

    def project(self, x: Tensor, grid: Grid | None) -> Tensor:
        return self.proj(x)


@register_projector
def linear(in_dim: int, out_dim: int) -> LinearProjector:
    """One Linear layer, all tokens kept."""
    return LinearProjector(in_dim, out_dim)
