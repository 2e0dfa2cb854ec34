"""projector_bench: choose a vision-language projector and vision backbone for a device budget.

The names below load on first use: importing the package itself is light, so that a training worker process,
which imports it before anything else, starts watching its parent at once (`_worker`)."""
from importlib import import_module
from typing import Any

__all__ = ["ConfigError", "Projector", "create_projector", "list_projectors", "register_projector"]
__version__ = "0.1.0"
_HOME = {"ConfigError": ".core.errors", "Projector": ".models.projectors", "create_projector": ".models._registry",
         "list_projectors": ".models._registry", "register_projector": ".models._registry"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(import_module(_HOME[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
