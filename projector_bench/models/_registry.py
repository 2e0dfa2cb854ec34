"""Name → constructor registry for projector designs (shaped like timm's `_registry.py`)."""
from __future__ import annotations

import fnmatch
from collections.abc import Callable
from importlib import import_module
from typing import Any

from torch import nn

from ..core.errors import ConfigError

_PROJECTORS: dict[str, Callable[..., nn.Module]] = {}


def register_projector(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Register `fn(in_dim, out_dim, **kwargs)` under `name` (default: the function's name).

    Usable as `@register_projector` or `register_projector(fn, name="mlp_int8")`.
    """

    def add(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _PROJECTORS:
            raise ValueError(f"projector {key!r} is registered twice; pick another name")
        _PROJECTORS[key] = f
        return f

    return add(fn) if fn is not None else add


def _designs() -> dict[str, Callable[..., nn.Module]]:
    """The registry, once the shipped designs have registered themselves (importing `projectors` registers them)."""
    import_module(f"{__package__}.projectors")
    return _PROJECTORS


def list_projectors(pattern: str = "*") -> list[str]:
    """Sorted names of registered projectors matching a shell-style `pattern`."""
    _designs()
    return sorted(n for n in _PROJECTORS if fnmatch.fnmatchcase(n, pattern))


def create_projector(name: str, in_dim: int, out_dim: int, **kwargs: Any) -> nn.Module:
    """Build the projector registered as `name`; `None` kwargs mean "the design's default"."""
    if name not in _designs():
        raise ConfigError(
            f"unknown projector {name!r}; choose one of: {', '.join(list_projectors())}"
        )
    for dim_name, dim in (("in_dim", in_dim), ("out_dim", out_dim)):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ConfigError(f"{dim_name} must be a positive integer, got {dim!r}; set projector.{dim_name} to one")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return _PROJECTORS[name](in_dim=in_dim, out_dim=out_dim, **kwargs)
