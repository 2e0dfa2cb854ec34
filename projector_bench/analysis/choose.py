"""From the results table to a decision: end-to-end estimates on a device, Pareto fronts, a budget's pick
(docs/devices.md).

    df = load_results("results")
    df = add_estimates(df, device)  # est_encoder/projector/prefill/ttft_ms, est_decode_tok_s (+ _bound, est_basis)
    pick = recommend(df, Budget(latency_ms=200), device.name)
    print(pick.reason)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from ..core.budget import LATENCY_WORDS, Budget, duration, missing, si, times
from ..core.settings import DEFAULT_THREADS, config_dir, group_choices, host_cache
from ..costs.roofline import Device, device_from_config, estimate_row
from ..models.lm import LanguageModel


def finite(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with ±inf in its number columns as NaN: the table stores a non-finite value as null, and one that
    comes back (a hand-edited 1e999) counts as missing in every decision and every printed value too."""
    cols = [c for c in df.columns if pd.api.types.is_float_dtype(df[c])]
    bad = [c for c in cols if np.isinf(df[c].to_numpy()).any()]
    return df.assign(**{c: df[c].where(np.isfinite(df[c])) for c in bad}) if bad else df


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


@dataclass
class Recommendation:
    """The design to use within the budget (`recommend`), or the closest one when none fits; `reason` says why in
    a sentence, `tradeoff` in a few words; `most_accurate` and `fastest_within` are the alternatives a person
    weighs against the pick ({design, latency_ms, accuracy}; None when the pick is that design, and the fastest
    within the tolerance None too when it is the most accurate)."""

    budget: str
    device: str
    design: str | None
    feasible: bool
    reason: str
    values: dict[str, float] = field(default_factory=dict)
    limits: dict[str, float] = field(default_factory=dict)
    basis: str = ""  # what the estimates on `device` are (`roofline.estimate_row`'s est_basis)
    tradeoff: str = ""
    most_accurate: dict[str, Any] | None = None
    fastest_within: dict[str, Any] | None = None
    tolerance: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "device": self.device, "design": self.design, "feasible": self.feasible,
                "reason": self.reason, "limits": self.limits, "basis": self.basis, "tradeoff": self.tradeoff,
                "most_accurate": self.most_accurate, "fastest_within": self.fastest_within,
                "tolerance": self.tolerance, **self.values}


def design_label(df: pd.DataFrame) -> pd.Series:
    """`projector`, or `encoder+projector` when the rows use more than one encoder; `@tokens_out` on labels
    that would otherwise repeat (one design at several output budgets); `#trial` for search rows."""
    label = df["projector"].astype(str)
    if "encoder" in df and df["encoder"].nunique() > 1:
        label = df["encoder"].astype(str) + "+" + label
    if "tokens_out" in df:
        again = label.duplicated(keep=False) & df["tokens_out"].notna()
        label = label.where(~again, label + "@" + df["tokens_out"].map(lambda t: "" if pd.isna(t) else str(int(t))))
    if "trial" in df:
        label = label + df["trial"].map(lambda t: "" if pd.isna(t) else f"#{int(t)}")
    return label


def equivalent(best: pd.Series, other: pd.Series, tolerance: float) -> bool:
    """Whether `other` is as good as `best` (the most accurate) for the choice: within `tolerance` points of it,
    or statistically tied with it (`tie`)."""
    if best["accuracy"] - other["accuracy"] <= tolerance + 1e-9:
        return True
    t = tie(best, other)
    return t is not None and t[0]


def recommend(df: pd.DataFrame, budget: Budget, device: str) -> Recommendation:
    """Pick from rows with estimates (`add_estimates`), among those within `budget`: of the designs `equivalent`
    to the most accurate (within `budget.accuracy_tolerance` points or statistically tied), the cheapest on the
    budget's latency, then memory, then parameters; the fastest if no row has accuracy. If none fits, say so and
    name the design that misses the budget by the smallest factor."""
    cols, lat, tol = budget.columns(), budget.latency_col, budget.accuracy_tolerance
    df = finite(df)
    rows = df[(df.get("status") == "ok") & df[lat].notna()].copy() if lat in df else df.iloc[:0]
    rows["label"] = design_label(rows) if len(rows) else []
    limits = budget.limits()
    basis = "; ".join(dict.fromkeys(rows["est_basis"].dropna().astype(str))) if "est_basis" in rows else ""
    base = {"budget": budget.describe(), "device": device, "limits": limits, "basis": basis, "tolerance": tol}
    if not len(rows):
        return Recommendation(**base, design=None, feasible=False,
                              reason="no measured design has estimates on this device: run a sweep first")
    over = pd.DataFrame({k: rows[cols[k]] / v for k, v in limits.items()}, index=rows.index)
    over = over.fillna(math.inf)  # a cost that is unknown is not within its limit
    worst = over.max(axis=1) if limits else pd.Series(0.0, index=rows.index)
    has_acc = "accuracy" in rows and rows["accuracy"].notna().any()
    runs = rows.apply(budget.deploys, axis=1).astype(bool) if budget.deployable else pd.Series(True, index=rows.index)
    fits = rows[(worst <= 1) & runs]
    scored = fits[fits["accuracy"].notna()] if has_acc else fits.iloc[:0]  # "the most accurate" of those measured
    words = LATENCY_WORDS[budget.latency]

    def values(r: pd.Series) -> dict[str, float]:
        return {"latency_ms": float(r[lat]), "params": float(r["design_params"]),
                "memory_mb": float(r["design_mem_mb"]), "accuracy": float(r["accuracy"]) if has_acc else math.nan}

    def brief(r: pd.Series) -> dict[str, Any]:
        return {"design": r.label, "latency_ms": float(r[lat]), "accuracy": float(r["accuracy"])}

    def cost(r: pd.Series) -> str:
        return f"{duration(r[lat])} {words} on {device}, {si(r['design_params'])} params"

    within = f" ({len(fits)} of {len(rows)} designs within {budget.describe()})" if limits or budget.deployable else ""
    if len(scored):
        ranked = scored.sort_values(["accuracy", lat], ascending=[False, True])
        top = ranked.iloc[0]
        same = ranked[[equivalent(top, r, tol) for _, r in ranked.iterrows()]]
        cheapest = same.sort_values([lat, "design_mem_mb", "design_params"], na_position="last")
        pick = cheapest.iloc[0]
        close = cheapest[top["accuracy"] - cheapest["accuracy"] <= tol + 1e-9]
        fastest = close.iloc[0] if len(close) else None
        reason = f"{pick.label}: {duration(pick[lat])} {words} on {device}, {pick.accuracy:.1f}%"
        if pick.label == top.label:
            tradeoff = "the most accurate" + ("" if len(same) > 1 else f"; no other design within {tol:g} points")
            if len(ranked) > 1:
                nxt = ranked.iloc[1]
                t = tie(top, nxt)
                how = (f", outside the 95% interval of the difference (±{t[1]:.1f})"
                       if t is not None and not t[0] else "")
                reason += (f", the most accurate; the next, {nxt.label}, is {top.accuracy - nxt.accuracy:.1f} points "
                           f"below{how} at {times(nxt[lat] / pick[lat])} the time")
        else:
            gap, ratio = top.accuracy - pick.accuracy, top[lat] / pick[lat]
            t = tie(top, pick)
            why = (f"within the {tol:g}-point tolerance" if gap <= tol + 1e-9
                   else f"statistically tied: the 95% interval of the difference is ±{t[1]:.1f}" if t else "")
            tradeoff = f"{top.label} is {gap:.1f} points more accurate at {times(ratio)} the time"
            reason += f"; {tradeoff} ({why})"
        reason += within
        if (n := len(fits) - len(scored)):
            reason += f"; {n} without an accuracy {'is' if n == 1 else 'are'} left out"
        warned = pick.get("accuracy_warning")
        if isinstance(warned, str) and warned:  # a pick on too few questions, or at another cut, says so
            reason += f"; {pick.label}'s accuracy warns: {warned.split(': ')[0]}"
        other = fastest is not None and fastest.label not in (pick.label, top.label)
        return Recommendation(**base, design=pick.label, feasible=True, reason=reason, values=values(pick),
                              tradeoff=tradeoff, most_accurate=None if top.label == pick.label else brief(top),
                              fastest_within=brief(fastest) if other else None)
    if len(fits):
        best = fits.sort_values(lat).iloc[0]
        why = "none of them has an accuracy" if has_acc else "no accuracy was measured (task=none)"
        reason = f"{best.label} is the fastest: {cost(best)}; {why}{within}"
        return Recommendation(**base, design=best.label, feasible=True, reason=reason, values=values(best),
                              tradeoff="the fastest; " + why)
    if not runs.any():
        return Recommendation(**base, design=None, feasible=False,
                              reason=f"no measured design has `exports` ok on {budget.deployable}: run the sweep with "
                                     f"deploy.runtime={budget.deployable} (after python -m "
                                     f"projector_bench.costs.deploy install), or drop budget.deployable")
    i = worst[runs].idxmin()
    best = rows.loc[i]
    k = over.loc[i].idxmax()
    closest = f"the closest that runs on {budget.deployable}" if budget.deployable else "the closest"
    by = f"{times(over.loc[i, k])} over the {k} limit" if math.isfinite(over.loc[i, k]) else f"its {k} unknown"
    reason = f"no design fits {budget.describe()} on {device}; {closest} is {best.label}, {by} ({cost(best)})"
    return Recommendation(**base, design=best.label, feasible=False, reason=reason, values=values(best),
                          tradeoff=f"none fits; {best.label} is {by}")


def tie(best: pd.Series, other: pd.Series) -> tuple[bool, float] | None:
    """Whether `other` (the less accurate) is tied with `best`, and the half-width of their difference's 95%
    interval: the two rows' intervals taken as independent estimates (best's lower and other's upper half-widths
    added in quadrature). Tied when the gap is within it. Designs scored on the same test questions are
    positively correlated, so this errs towards a tie. None when either interval is missing."""
    vals = [best.get("accuracy"), best.get("accuracy_ci_low"), other.get("accuracy"), other.get("accuracy_ci_high")]
    if any(missing(v) for v in vals):
        return None
    a, lo, b, hi = map(float, vals)
    half = math.hypot(a - lo, hi - b)
    return a - b <= half, half


def token_budgets(df: pd.DataFrame, latency_col: str = "est_ttft_ms") -> list[dict[str, Any]]:
    """Per output budget of the `conf/at_budget/` rows (their `token_budget`; other rows are left out): the
    designs by accuracy, which keeps the most, and which are tied with it (`tie`: the gap within the
    95% interval of the difference). Empty when no row has a budget (any sweep but `+sweep=token_budget`)."""
    need = {"token_budget", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "projector"}
    if not need <= set(df.columns):
        return []
    df = finite(df)
    ok = df[df["token_budget"].notna() & df["accuracy"].notna()
            & ((df["status"] == "ok") if "status" in df else True)].copy()
    if not len(ok):
        return []
    ok["label"] = design_label(ok)
    out = []
    for tokens, g in sorted(ok.groupby("token_budget"), key=lambda kv: -kv[0]):
        g = g.sort_values("accuracy", ascending=False)
        best = g.iloc[0]
        rows = [{"design": r["label"], "accuracy": r["accuracy"], "ci": (r["accuracy_ci_low"], r["accuracy_ci_high"]),
                 "acc_tokens": r.get("acc_tokens_out"), "latency_ms": r.get(latency_col)} for _, r in g.iterrows()]
        if len(g) < 2:
            verdict = f"{int(tokens)} tokens: only {best.label} ({best.accuracy:.1f}%)"
        else:
            ties = [r["label"] for _, r in g.iloc[1:].iterrows() if (t := tie(best, r)) is not None and t[0]]
            lo, hi = best.accuracy_ci_low, best.accuracy_ci_high
            ci = "" if missing(lo) or missing(hi) else f" [{lo:.1f}, {hi:.1f}]"
            verdict = (f"{int(tokens)} tokens: {best.label} keeps the most, {best.accuracy:.1f}%{ci}; "
                       + (f"tied with it: {', '.join(ties)}" if ties else "every other design is below it"))
        out.append({"tokens": int(tokens), "rows": rows, "verdict": verdict})
    return out


@dataclass
class Analysis:
    """What a report shows, decided: the rows with estimates on `device` and their Pareto marks, the
    recommendation on that device and on every other shipped target, the estimator's check against measured
    host latency, the provenance, and per output budget which design keeps the most (`token_budgets`)."""

    df: pd.DataFrame
    device: str
    latency_col: str
    recommendations: list[Recommendation]
    validation: dict[str, Any] | None
    provenance: dict[str, Any]
    budgets: list[dict[str, Any]]


def _device_configs() -> dict[str, dict]:
    return {name: OmegaConf.to_container(OmegaConf.load(config_dir() / "device" / f"{name}.yaml"))
            for name in group_choices("device")}


def estimator_check(df: pd.DataFrame) -> dict[str, Any] | None:
    """The roofline's error against measured latency, over the ok rows that have both (host estimates)."""
    if not {"est_projector_ms", "status", "latency_ms"} <= set(df.columns):
        return None
    v = df[(df["status"] == "ok") & df["est_projector_ms"].notna() & df["latency_ms"].notna()]
    if not len(v):
        return None
    err = (v["est_projector_ms"] - v["latency_ms"]).abs() / v["latency_ms"]
    return {"median_abs_error": float(err.median()), "per_design": {
        label: {"measured_ms": m, "estimated_ms": e}
        for label, m, e in zip(design_label(v), v["latency_ms"], v["est_projector_ms"])}}


def analyse(df: pd.DataFrame, cfg: Any, provenance: dict[str, Any]) -> Analysis:
    """Estimate every row on `cfg.device`, mark the Pareto fronts, recommend a design for `cfg.budget` on that
    device and on every other shipped target profile, check the estimator against measured host latency."""
    threads = cfg.device.threads or DEFAULT_THREADS
    device = device_from_config(cfg.device, threads, host_cache())
    budget = Budget.from_config(cfg.budget)
    df = add_estimates(finite(df.reset_index(drop=True)), device)
    ok = (df["status"] == "ok") if "status" in df else pd.Series(False, index=df.index)
    for col, cost in (("pareto_latency", budget.latency_col), ("pareto_macs", "macs")):
        df[col] = (pareto_mask(df[ok], cost).reindex(df.index, fill_value=False)
                   if cost in df and "accuracy" in df else False)
    recs = [recommend(df, budget, device.name)]
    for name, dcfg in _device_configs().items():
        if name != device.name and dcfg.get("kind") == "target":
            recs.append(recommend(add_estimates(df, device_from_config(dcfg, threads)), budget, name))
    validation = estimator_check(df) if device.kind == "host" else None
    own = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # hydra's node holds per-job interpolations
    provenance = provenance | {"report config": OmegaConf.to_yaml(own, resolve=True), "device roofs": device.as_row()}
    for col in ("env_git_commit", "env_torch", "env_timm", "env_cpu", "sweep_id"):
        if col in df:
            provenance[col] = ", ".join(sorted(map(str, df[col].dropna().unique())))
    if "config" in df and len(df):
        provenance["first row's config"] = df["config"].iloc[0]
    return Analysis(df, device.name, budget.latency_col, recs, validation, provenance,
                    token_budgets(df, budget.latency_col))
