"""A device budget (`budget.*` in the config): limits on latency, parameters and memory. A leaf: it imports
only the package's errors, so the config check and every layer above can use it."""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

DEPLOY_RUNTIMES = ("executorch",)  # `budget.deployable` and `deploy.runtime` (projector_bench.deploy)
LATENCY_COLUMNS = {"ttft": "est_ttft_ms", "vision": "est_vision_ms", "projector": "est_projector_ms"}


def missing(x: Any) -> bool:
    """None, NaN or ±inf (a Python or NumPy float): a value that is not finite is never shown or compared."""
    return x is None or (isinstance(x, numbers.Real) and not isinstance(x, numbers.Integral) and not math.isfinite(x))


@dataclass(frozen=True)
class Budget:
    """Limits on a device (None = no limit): latency of `latency` (ttft | vision | projector), the design's
    parameters (projector, plus the encoder when it is part of the design) and its peak memory; `deployable`:
    a runtime the design (and its encoder) must have been lowered to and run on (its row's `exports`)."""

    latency_ms: float | None = None
    params: float | None = None
    memory_mb: float | None = None
    latency: str = "ttft"
    deployable: str | None = None

    def __post_init__(self) -> None:
        if self.latency not in LATENCY_COLUMNS:
            raise ConfigError(f"budget.latency={self.latency!r} is not one of: {', '.join(LATENCY_COLUMNS)}")
        if self.deployable is not None and self.deployable not in DEPLOY_RUNTIMES:
            raise ConfigError(f"budget.deployable={self.deployable!r} is not one of: {', '.join(DEPLOY_RUNTIMES)} (or null)")
        for k, v in self.limits().items():
            if not v > 0:
                raise ConfigError(f"budget.{k} must be positive or null, got {v!r}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Budget:
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})

    @property
    def latency_col(self) -> str:
        return LATENCY_COLUMNS[self.latency]

    def limits(self) -> dict[str, float]:
        return {k: v for k, v in (("latency_ms", self.latency_ms), ("params", self.params), ("memory_mb", self.memory_mb))
                if v is not None}

    def columns(self) -> dict[str, str]:
        return {"latency_ms": self.latency_col, "params": "design_params", "memory_mb": "design_mem_mb"}

    def describe(self) -> str:
        words = {"latency_ms": lambda v: f"{self.latency} ≤ {v:g} ms", "params": lambda v: f"params ≤ {si(v)}",
                 "memory_mb": lambda v: f"memory ≤ {v:g} MB"}
        parts = [words[k](v) for k, v in self.limits().items()] + ([f"deployable on {self.deployable}"] if self.deployable else [])
        return ", ".join(parts) or "no budget"

    def deploys(self, row: Mapping[str, Any]) -> bool:
        """True when the budget asks no runtime, or the row's design (and its encoder, if measured) ran on it."""
        if self.deployable is None:
            return True
        enc = row.get("encoder_exports")  # an encoder's verdict counts where the row measured one
        return all(isinstance(e, Mapping) and e.get(self.deployable) == "ok"
                   for e in [row.get("exports")] + ([enc] if isinstance(enc, Mapping) else []))


def si(x: Any) -> str:
    """12_300_000 -> '12.3M'; '' for a missing value."""
    if missing(x):
        return ""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"
