"""Projector designs: one module per family; importing this package registers them all."""
from . import bottleneck_transformer, int8, ldp, ldp_seed, ldpv2, linear, mlp  # noqa: F401
from .base import Grid, Projector, token_grid

__all__ = ["Grid", "Projector", "token_grid"]
