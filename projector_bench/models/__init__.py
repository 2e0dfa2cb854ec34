"""What is measured: the design registry, the projectors, the encoders, the LM shapes."""
from . import projectors  # noqa: F401  every shipped design registers itself, with its int8 twin and its config
