"""From the results table to a decision: end-to-end estimates on a device, Pareto fronts, a budget's pick.

    df = load_results("results")
    df = add_estimates(df, device)                       # est_encoder/projector/prefill/ttft_ms, est_decode_tok_s
    pick = recommend(df, Budget(latency_ms=200), device.name)
    print(pick.reason)
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError
from .lm import LanguageModel
from .roofline import Device

LATENCY_COLUMNS = {"ttft": "est_ttft_ms", "vision": "est_vision_ms", "projector": "est_projector_ms"}


def _ops(value: Any) -> list | None:
    return value if isinstance(value, list) and value else None


def estimate_row(row: Mapping[str, Any], device: Device, lm: LanguageModel) -> dict[str, float]:
    """End-to-end estimates of one results row on `device`: the encoder, the projector, the LM's prefill of the
    projector's tokens plus the prompt (their sum is the time to first token), and the decode speed."""
    enc, proj = _ops(row.get("encoder_ops")), _ops(row.get("ops"))
    if proj is None:
        return {}
    out = {"est_encoder_ms": device.latency_ms(enc) if enc else math.nan, "est_projector_ms": device.latency_ms(proj),
           "est_prefill_ms": device.latency_ms(lm.prefill_ops(int(row["tokens_out"])))}
    out["est_vision_ms"] = np.nansum([out["est_encoder_ms"], out["est_projector_ms"]])
    out["est_ttft_ms"] = out["est_vision_ms"] + out["est_prefill_ms"]
    out["est_decode_tok_s"] = 1e3 / device.latency_ms(lm.decode_ops(int(row["tokens_out"]) + lm.prompt_tokens))
    # what `budget.params` and `budget.memory_mb` bound: the projector, plus the encoder when one was measured
    out["design_params"] = row.get("params", math.nan) + _or0(row.get("encoder_params"))
    out["design_mem_mb"] = row.get("peak_mem_mb", math.nan) + _or0(row.get("encoder_peak_mem_mb"))
    return out


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _or0(x: Any) -> float:
    return 0.0 if _missing(x) else x


def add_estimates(df: pd.DataFrame, device: Device) -> pd.DataFrame:
    """`df` with `estimate_row`'s columns for `device`, each row priced with its own LM (`config.lm`) and ops."""
    est = [estimate_row(r, device, LanguageModel.from_config(r["config"]["lm"]))
           if isinstance(r.get("config"), dict) and "lm" in r["config"] else {} for r in df.to_dict("records")]
    est_df = pd.DataFrame(est, index=range(len(df)))
    out = df.drop(columns=[c for c in est_df.columns if c in df.columns]).reset_index(drop=True)
    out = pd.concat([out, est_df], axis=1)
    out["device"] = device.name
    return out


def pareto_mask(df: pd.DataFrame, cost: str, gain: str = "accuracy") -> pd.Series:
    """True for rows no other row beats: lower or equal `cost` and higher or equal `gain`, one of them strictly."""
    c, g = df[cost].to_numpy(float), df[gain].to_numpy(float)
    ok = np.isfinite(c) & np.isfinite(g)
    front = np.zeros(len(df), dtype=bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (c <= c[i]) & (g >= g[i]) & ((c < c[i]) | (g > g[i]))
        front[i] = not dominated.any()
    return pd.Series(front, index=df.index)


@dataclass(frozen=True)
class Budget:
    """Limits on a device (None = no limit): latency of `latency` (ttft | vision | projector), the design's
    parameters (projector, plus the encoder when it is part of the design) and its peak memory."""

    latency_ms: float | None = None
    params: float | None = None
    memory_mb: float | None = None
    latency: str = "ttft"

    def __post_init__(self) -> None:
        if self.latency not in LATENCY_COLUMNS:
            raise ConfigError(f"budget.latency={self.latency!r} is not one of: {', '.join(LATENCY_COLUMNS)}")
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
        return ", ".join(words[k](v) for k, v in self.limits().items()) or "no budget"


def si(x: Any) -> str:
    """12_300_000 -> '12.3M'; '' for a missing value."""
    if _missing(x):
        return ""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


@dataclass
class Recommendation:
    """The most accurate design within the budget, or the closest one when none fits; `reason` says why."""

    budget: str
    device: str
    design: str | None
    feasible: bool
    reason: str
    values: dict[str, float] = field(default_factory=dict)
    limits: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "device": self.device, "design": self.design, "feasible": self.feasible,
                "reason": self.reason, "limits": self.limits, **self.values}


def design_label(df: pd.DataFrame) -> pd.Series:
    """`projector`, or `encoder+projector` when the rows use more than one encoder; `#trial` for search rows."""
    label = df["projector"].astype(str)
    if "encoder" in df and df["encoder"].nunique() > 1:
        label = df["encoder"].astype(str) + "+" + label
    if "trial" in df:
        label = label + df["trial"].map(lambda t: "" if pd.isna(t) else f"#{int(t)}")
    return label


def recommend(df: pd.DataFrame, budget: Budget, device: str) -> Recommendation:
    """Pick from rows with estimates (`add_estimates`): the most accurate within `budget` (the fastest if no row
    has accuracy); if none fits, say so and name the design that misses the budget by the smallest factor."""
    cols = budget.columns()
    rows = df[(df.get("status") == "ok") & df[budget.latency_col].notna()].copy() if budget.latency_col in df else df.iloc[:0]
    rows["label"] = design_label(rows) if len(rows) else []
    limits = budget.limits()
    base = {"budget": budget.describe(), "device": device, "limits": limits}
    if not len(rows):
        return Recommendation(**base, design=None, feasible=False,
                              reason="no measured design has estimates on this device: run a sweep first")
    over = pd.DataFrame({k: rows[cols[k]] / v for k, v in limits.items()}, index=rows.index)
    worst = over.max(axis=1) if limits else pd.Series(0.0, index=rows.index)
    has_acc = "accuracy" in rows and rows["accuracy"].notna().any()
    fits = rows[worst <= 1]

    def values(r: pd.Series) -> dict[str, float]:
        return {"latency_ms": float(r[budget.latency_col]), "params": float(r["design_params"]),
                "memory_mb": float(r["design_mem_mb"]), "accuracy": float(r["accuracy"]) if has_acc else math.nan}

    def cost(r: pd.Series) -> str:
        return f"{budget.latency} {r[budget.latency_col]:.4g} ms on {device}, {si(r['design_params'])} params"

    if len(fits):
        if has_acc:
            ranked = fits.sort_values(["accuracy", budget.latency_col], ascending=[False, True])
            best = ranked.iloc[0]
            reason = (f"{best.label} is the most accurate of the {len(fits)} designs within {budget.describe()}: "
                      f"{best.accuracy:.1f}% ({cost(best)})")
            if len(ranked) > 1:
                nxt, low = ranked.iloc[1], best.get("accuracy_ci_low")
                ci = "" if _missing(low) else f" ({'within' if nxt.accuracy >= low else 'outside'} {best.label}'s 95% interval)"
                reason += f"; the next, {nxt.label}, scores {nxt.accuracy:.1f}%{ci} at {cost(nxt)}"
        else:
            best = fits.sort_values(budget.latency_col).iloc[0]
            reason = f"{best.label} is the fastest of the {len(fits)} designs within {budget.describe()} ({cost(best)}); no accuracy was measured (task=none)"
        return Recommendation(**base, design=best.label, feasible=True, reason=reason, values=values(best))
    i = worst.idxmin()
    best, k = rows.loc[i], over.loc[i].idxmax()
    reason = (f"no design fits {budget.describe()} on {device}; the closest is {best.label}, "
              f"{over.loc[i, k]:.2f}× over the {k} limit ({cost(best)})")
    return Recommendation(**base, design=best.label, feasible=False, reason=reason, values=values(best))
