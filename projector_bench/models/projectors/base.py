"""The contract every projector follows: `(B, N, in_dim)` tokens from an h×w grid → `(B, M, out_dim)`."""
from __future__ import annotations

import math

from torch import Tensor, nn

from ...core.errors import ConfigError

Grid = tuple[int, int]


def token_grid(num_tokens: int, grid: Grid | None, design: str) -> Grid:
    """The (h, w) grid of `num_tokens` tokens: `grid` if given, else the square one."""
    if grid is not None:
        h, w = positive_pair(grid, "grid")
        if h * w != num_tokens:
            raise ConfigError(f"{design}: grid {h}x{w} holds {h * w} tokens but the input has {num_tokens}; "
                              "give the grid of the tokens")
        return h, w
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ConfigError(
            f"{design} needs a square token grid but got {num_tokens} tokens; "
            f"use a square count such as {side * side} or {(side + 1) ** 2}, "
            "or give the grid (grid=(h, w); shape.grid=[h,w])"
        )
    return side, side


def positive_pair(value: object, what: str) -> Grid:
    """`value` as an (h, w) pair of positive ints, or a one-line error naming `what`."""
    try:
        h, w = (int(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a pair [h, w], got {value!r}") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"{what} must be positive, got [{h}, {w}]")
    return h, w


class Projector(nn.Module):
    """Base class: subclasses set `needs_grid` and implement `project` and `num_tokens_out`."""

    needs_grid: bool = False

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim

    def num_tokens_out(self, grid: Grid) -> int:
        """Output tokens for an input grid; token-wise designs keep every token."""
        return grid[0] * grid[1]

    def forward(self, x: Tensor, grid: Grid | None = None) -> Tensor:
        if x.ndim != 3 or x.shape[-1] != self.in_dim:
            raise ConfigError(
                f"{type(self).__name__} expects tokens of shape (B, N, {self.in_dim}), got {tuple(x.shape)}; "
                "set projector.in_dim to the encoder's channel count"
            )
        hw = token_grid(x.shape[1], grid, type(self).__name__) if self.needs_grid else None
        return self.project(x, hw)

    def project(self, x: Tensor, grid: Grid | None) -> Tensor:
        raise NotImplementedError


def check_divisible(grid: Grid, factor: int, what: str, fix: str) -> None:
    """Refuse, in one line, a grid whose sides `factor` does not divide (`what`: the design and its setting)."""
    if grid[0] % factor or grid[1] % factor:
        raise ConfigError(f"{what} needs grid sides divisible by {factor}, got {grid[0]}x{grid[1]}; {fix}")


class PoolsGrid(Projector):
    """A design whose output grid is `self.pool` (h, w), or else its input grid cut `self.reduce`× per side
    (rounded up): the same token ratio on any grid (24×24 → 12×12 and 8×8 → 4×4 at `reduce` 2)."""

    needs_grid = True
    pool: Grid | None = None
    reduce: int = 1

    def pooled_grid(self, grid: Grid) -> Grid:
        """The output grid for an input `grid`."""
        return self.pool or (-(-grid[0] // self.reduce), -(-grid[1] // self.reduce))

    def num_tokens_out(self, grid: Grid) -> int:
        h, w = self.pooled_grid(grid)
        return h * w
