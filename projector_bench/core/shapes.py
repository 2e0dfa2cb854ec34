"""MobileVLM's projector shape, the one every fixed probe of the package is sized by: CLIP ViT-L/14 at 336 px
gives a 24×24 grid of 1024-wide tokens (CLS dropped), and MobileLLaMA 1.4B takes 2048-wide embeddings."""
from __future__ import annotations

from typing import NamedTuple


class Shape(NamedTuple):
    """A projector's input grid (`grid`×`grid` tokens of `vision_dim`) and the language model's width."""

    grid: int
    vision_dim: int
    lm_dim: int

    @property
    def tokens(self) -> int:
        return self.grid * self.grid


MOBILEVLM = Shape(grid=24, vision_dim=1024, lm_dim=2048)
