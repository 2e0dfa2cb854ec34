"""A device budget (`budget.*` in the config): limits on latency, parameters and memory. A leaf: it imports
only the package's errors, so the config check and every layer above can use it."""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

DEPLOY_RUNTIMES = ("executorch",)  # `budget.deployable` and `deploy.runtime` (projector_bench.costs.deploy)
LATENCY_COLUMNS = {"ttft": "est_ttft_ms", "vision": "est_vision_ms", "projector": "est_projector_ms"}
LATENCY_WORDS = {"ttft": "to the first token", "vision": "for the encoder and projector",
                 "projector": "in the projector"}


def missing(x: Any) -> bool:
    """None, NaN or ±inf (a Python or NumPy float): a value that is not finite is never shown or compared."""
    return x is None or (isinstance(x, numbers.Real) and not isinstance(x, numbers.Integral) and not math.isfinite(x))


@dataclass(frozen=True)
class Budget:
    """Limits on a device (None = no limit): latency of `latency` (ttft | vision | projector), the design's
    parameters (projector, plus the encoder when it is part of the design) and its peak memory; `deployable`:
    a runtime the design (and its encoder) must have been lowered to and run on (its row's `exports`).
    `accuracy_tolerance` (points): a design this close to the most accurate is as good as it for the choice
    (`choose.equivalent`), so the cheaper one is picked."""

    latency_ms: float | None = None
    params: float | None = None
    memory_mb: float | None = None
    latency: str = "ttft"
    deployable: str | None = None
    accuracy_tolerance: float = 0.5

    def __post_init__(self) -> None:
        tol = self.accuracy_tolerance
        if not (isinstance(tol, numbers.Real) and not isinstance(tol, bool) and math.isfinite(tol) and 0 <= tol < 100):
            raise ConfigError(f"budget.accuracy_tolerance must be a number of accuracy points from 0 to 100 (0: only "
                              f"statistical ties count as equal), got {tol!r}")
        if self.latency not in LATENCY_COLUMNS:
            raise ConfigError(f"budget.latency={self.latency!r} is not one of: {', '.join(LATENCY_COLUMNS)}")
        if self.deployable is not None and self.deployable not in DEPLOY_RUNTIMES:
            raise ConfigError(f"budget.deployable={self.deployable!r} is not one of: "
                              f"{', '.join(DEPLOY_RUNTIMES)} (or null)")
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
        return {k: v for k, v in (("latency_ms", self.latency_ms), ("params", self.params),
                                  ("memory_mb", self.memory_mb))
                if v is not None}

    def columns(self) -> dict[str, str]:
        return {"latency_ms": self.latency_col, "params": "design_params", "memory_mb": "design_mem_mb"}

    def describe(self) -> str:
        words = {"latency_ms": lambda v: f"{self.latency} ≤ {v:g} ms", "params": lambda v: f"params ≤ {si(v)}",
                 "memory_mb": lambda v: f"memory ≤ {v:g} MB"}
        parts = ([words[k](v) for k, v in self.limits().items()]
                 + ([f"deployable on {self.deployable}"] if self.deployable else []))
        return ", ".join(parts) or "no budget"

    def deploys(self, row: Mapping[str, Any]) -> bool:
        """True when the budget asks no runtime, or the row's design (and its encoder, if measured) ran on it."""
        if self.deployable is None:
            return True
        enc = row.get("encoder_exports")  # an encoder's verdict counts where the row measured one
        return all(isinstance(e, Mapping) and e.get(self.deployable) == "ok"
                   for e in [row.get("exports")] + ([enc] if isinstance(enc, Mapping) else []))


def si(x: Any) -> str:
    """12_300_000 -> '12.3M', 999_700 -> '1M'; '' for a missing value. Never scientific notation."""
    if missing(x):
        return ""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")):
        if abs(x) >= div * 0.9995:  # what rounds up to 1000 of a unit is 1 of the next
            return f"{x / div:.3g}{suffix}"
    return plain(x)


def plain(x: Any, digits: int = 3) -> str:
    """A number as a person reads it: `digits` significant digits, thousands separated, never scientific
    notation ('' for a missing value; a value too small to show at 3 decimals is '0')."""
    if missing(x):
        return ""
    if isinstance(x, numbers.Integral):
        return f"{x:,}"
    if x == 0 or abs(x) < 5e-4:
        return "0"
    decimals = max(0, min(3, digits - 1 - math.floor(math.log10(abs(x)))))
    text = f"{x:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def duration(ms: Any) -> str:
    """Milliseconds as a person reads them: '812 ms', '8.0 s', '106.8 s', '4.2 min'; '' for a missing value."""
    if missing(ms):
        return ""
    if abs(ms) >= 599_950:
        return f"{ms / 60_000:,.1f} min"
    if abs(ms) >= 999.5:
        return f"{ms / 1000:.1f} s"
    return f"{plain(ms)} ms"


def times(ratio: float) -> str:
    """A ratio as '2.3×' ('12×' from ten on)."""
    return f"{ratio:.1f}×" if ratio < 9.95 else f"{ratio:,.0f}×"
