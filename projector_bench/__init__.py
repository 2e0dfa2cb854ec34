"""projector_bench: choose a vision-language projector and vision backbone for a device budget."""
from . import projectors  # noqa: F401  (registers the designs)
from ._registry import create_projector, list_projectors, register_projector
from .errors import ConfigError
from .projectors import Projector

__all__ = ["ConfigError", "Projector", "create_projector", "list_projectors", "register_projector"]
__version__ = "0.1.0"
