"""Projector designs, one module per family: every module here is imported, which registers its designs.

A new design is one file in this folder (calling `@register_projector`) plus `conf/projector/<name>.yaml`; its
int8 twin `<name>_int8` (design and config) follows when it has a Linear layer.
"""
from importlib import import_module
from pkgutil import iter_modules

from .base import Grid, Projector, token_grid
from .int8 import register_int8_twins

for _m in iter_modules(__path__):
    if _m.name != "base":
        import_module(f"{__name__}.{_m.name}")
register_int8_twins()  # `<design>_int8` for every design with a Linear layer

__all__ = ["Grid", "Projector", "token_grid"]
