"""Projector designs, one module per family: every module here is imported, which registers its designs.

A new design is one file in this folder (calling `@register_projector`) plus `conf/projector/<name>.yaml`.
"""
from importlib import import_module
from pkgutil import iter_modules

from .base import Grid, Projector, token_grid

for _m in iter_modules(__path__):
    if _m.name != "base":
        import_module(f"{__name__}.{_m.name}")

__all__ = ["Grid", "Projector", "token_grid"]
