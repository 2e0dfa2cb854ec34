"""One self-contained HTML report of a sweep: recommendation, results table, plots, provenance (rendering
only: `choose.analyse` decides what it shows; docs/devices.md).

`write_report(df, out_dir, ...)` writes `out_dir/report-<YYYYmmdd-HHMMSS>.html`. Plots are embedded as
base64 PNGs and nothing is loaded from the network. Every string (design names, errors, configs) goes
through jinja2's autoescaping.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import math
import numbers
from collections.abc import Mapping
from dataclasses import MISSING, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from jinja2 import Environment
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from matplotlib.transforms import Bbox

from ..core.budget import LATENCY_COLUMNS, LATENCY_WORDS, duration, missing, plain, si
from ..core.errors import ConfigError, OutputError, first_line
from ..core.studies import load_studies
from ..core.util import atomic_write
from ..models.lm import LanguageModel
from .agreement import agreements, as_records
from .choose import analyse, design_label
from .tables import picks

log = logging.getLogger(__name__)

TEMPLATE = (Path(__file__).parent / "report.html.j2").read_text()  # Jinja2, autoescaped


def _fmt(x: Any, digits: int = 1, scale: float = 1.0) -> str:
    if missing(x):
        return ""
    if isinstance(x, numbers.Number) and not isinstance(x, bool):
        return f"{x / scale:,.{digits}f}"
    return str(x)


def _png(fig) -> str | None:
    if fig is None:
        return None
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _words(latency_col: str) -> str:
    """'to the first token' for est_ttft_ms: what a latency column times."""
    return next((w for k, w in LATENCY_WORDS.items() if LATENCY_COLUMNS[k] == latency_col), f"({latency_col})")


def _legend_outside(ax) -> None:
    """The legend right of the axes, where it covers no data (the saved figure grows to hold it)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8, frameon=False)


def _log_axis(axis, fmt) -> None:
    """A log axis ticked at 1, 2 and 5 of each decade, labelled by `fmt` ('500 ms', '8.0 s', not 1e+04)."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
    axis.set_minor_formatter(NullFormatter())


def _clusters(xy: list[tuple[float, float]], within: float) -> list[list[int]]:
    """Indices of points closer than `within` display pixels to one another, chained (single linkage)."""
    group = list(range(len(xy)))

    def root(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i

    for i in range(len(xy)):
        for j in range(i):
            if math.dist(xy[i], xy[j]) < within:
                group[root(i)] = root(j)
    out: dict[int, list[int]] = {}
    for i in range(len(xy)):
        out.setdefault(root(i), []).append(i)
    return list(out.values())


def place_labels(ax, x: list[float], y: list[float], names: list[str], alphas: list[float] | None = None) -> list:
    """Label points so that no label overlaps another label, a marker, or leaves the axes: points whose markers
    touch share one label (their names listed), and each label takes the first free place around its point
    from near to far (a thin line to it when far). A greedy search rather than a force layout such as
    adjustText's: it either finds a free place or keeps the least crowded one, and a test can check the result.
    Call it after the axes' scales and limits are final; returns the labels."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    pts = ax.transData.transform(list(zip(x, y)))
    inside = ax.get_window_extent(renderer)
    marker = 5 * fig.dpi / 72
    obstacles = [Bbox.from_extents(px - marker, py - marker, px + marker, py + marker)
                 for px, py in pts]
    placed: list = []
    alphas = alphas or [1.0] * len(x)
    groups = sorted(_clusters([tuple(p) for p in pts], 2 * marker), key=lambda g: -max(pts[i][1] for i in g))
    angles = (45, -45, 135, -135, 0, 180, 90, -90, 20, -20, 160, -160, 70, -70, 110, -110)
    for g in groups:
        members = sorted(g, key=lambda i: names[i])
        words = [names[i] for i in members]
        text = "\n".join(", ".join(words[k:k + 3]) for k in range(0, len(words), 3))
        anchor = (float(sum(x[i] for i in g) / len(g)), float(sum(y[i] for i in g) / len(g)))
        best, best_cost = None, math.inf
        for r in (5, 12, 22, 34, 50, 70, 95):
            for deg in angles:
                dx, dy = r * math.cos(math.radians(deg)), r * math.sin(math.radians(deg))
                t = ax.annotate(text, anchor, xytext=(dx, dy), textcoords="offset points", fontsize=8,
                                ha="left" if dx > 1 else "right" if dx < -1 else "center",
                                va="bottom" if dy > 1 else "top" if dy < -1 else "center",
                                alpha=max(alphas[i] for i in g),
                                arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "grey"} if r > 12 else None)
                box = t.get_window_extent(renderer).expanded(1.04, 1.1)
                cost = sum(_overlap(box, o) for o in obstacles + placed) + (0 if _contains(inside, box) else 1e9)
                if cost < best_cost:
                    if best is not None:
                        best.remove()
                    best, best_cost = t, cost
                else:
                    t.remove()
                if cost == 0:
                    break
            if best_cost == 0:
                break
        placed.append(best.get_window_extent(renderer).expanded(1.04, 1.1))
    return list(ax.texts)


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _contains(outer, inner) -> bool:
    return outer.x0 <= inner.x0 and outer.y0 <= inner.y0 and inner.x1 <= outer.x1 and inner.y1 <= outer.y1


def _pareto_plot(ok: pd.DataFrame, x: str, front: str, xlabel: str, title: str, limit: float | None, ms: bool = False):
    d = ok[ok[x].notna() & (ok[x] > 0)] if x in ok else ok.iloc[:0]
    if d.empty:
        return None
    on = d[front].fillna(False).astype(bool) if front in d else pd.Series(False, index=d.index)
    fig, ax = plt.subplots(figsize=(8, 5))
    sns.scatterplot(data=d[~on], x=x, y="accuracy", ax=ax, alpha=0.3, color="grey", s=50)
    sns.scatterplot(data=d[on], x=x, y="accuracy", ax=ax, color="tab:red", s=80, label="Pareto front")
    if on.any():
        f = d[on].sort_values(x)
        ax.step(f[x], f["accuracy"], where="post", color="tab:red", lw=1.5)
    if limit is not None:
        ax.axvline(limit, ls="--", color="tab:blue", label=f"budget {duration(limit) if ms else plain(limit)}")
    ax.set(xscale="log", xlabel=xlabel, ylabel="accuracy (%)", title=title)
    ax.margins(x=0.25, y=0.12)  # room for the labels of the points at the edges
    _log_axis(ax.xaxis, duration if ms else plain)
    _legend_outside(ax)
    ax.autoscale_view()
    fig.canvas.draw()  # final limits before the labels are placed
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    place_labels(ax, list(d[x]), list(d["accuracy"]), list(d["design"]), [1.0 if o else 0.5 for o in on])
    return fig


def _accuracy_by_type_plot(ok: pd.DataFrame):
    long = [{"design": r["design"], "type": str(t), "accuracy": a}
            for _, r in ok.iterrows() if isinstance(r.get("accuracy_by_type"), dict)
            for t, a in r["accuracy_by_type"].items() if not missing(a)]
    if not long:
        return None
    fig, ax = plt.subplots(figsize=(9, 5))
    sns.barplot(data=pd.DataFrame(long), x="type", y="accuracy", hue="design", ax=ax)
    ax.set(xlabel="question type", ylabel="accuracy (%)", title="Accuracy per question type")
    _legend_outside(ax)
    return fig


def _validation_curves_plot(ok: pd.DataFrame):
    """Validation loss against training step, one line per design and seed (the run that was kept)."""
    long = [{"design": r["design"], "seed": str(seed), "step": p[0], "validation loss": p[1]}
            for _, r in ok.iterrows() if isinstance(r.get("val_curves"), list)
            for seed, curve in zip(r["seeds"] if isinstance(r.get("seeds"), list) else range(len(r["val_curves"])),
                                   r["val_curves"])
            for p in curve if not (missing(p[0]) or missing(p[1]))]
    if not long:
        return None
    fig, ax = plt.subplots(figsize=(9, 5))
    sns.lineplot(data=pd.DataFrame(long), x="step", y="validation loss", hue="design", units="seed",
                 estimator=None, ax=ax, lw=1)
    ax.set(yscale="log", title="Validation loss while training (each seed; the best checkpoint is kept)")
    _legend_outside(ax)
    return fig


def _latency_breakdown_plot(ok: pd.DataFrame, device: str):
    parts = ["est_encoder_ms", "est_projector_ms", "est_prefill_ms"]
    d = ok.set_index("design")[[c for c in parts if c in ok]].dropna(how="all")
    if d.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(d) + 2))
    d.fillna(0).rename(columns=lambda c: c[4:-3]).plot.barh(stacked=True, ax=ax)
    ax.set(xlabel="estimated time", ylabel="", title=f"Time to first token breakdown on {device}")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: duration(v)))
    _legend_outside(ax)
    return fig


def _budget_plot(budgets: list[dict], latency_col: str, device: str):
    """Accuracy (95% interval as error bars) against `latency_col`, one colour per output budget."""
    if not any(not missing(r["latency_ms"]) for b in budgets for r in b["rows"]):
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    xs, ys, names = [], [], []
    for b, colour in zip(budgets, sns.color_palette(n_colors=len(budgets))):
        rows = [r for r in b["rows"] if not missing(r["latency_ms"])]
        if not rows:
            continue
        x, y = [r["latency_ms"] for r in rows], [r["accuracy"] for r in rows]
        err = [[a - r["ci"][0] for a, r in zip(y, rows)], [r["ci"][1] - a for a, r in zip(y, rows)]]
        ax.errorbar(x, y, yerr=err, fmt="o", color=colour, capsize=3, label=f"{b['tokens']} tokens")
        xs, ys, names = xs + x, ys + y, names + [r["design"].replace("$", r"\$") for r in rows]
    ax.set(xscale="log", xlabel=f"time {_words(latency_col)} on {device} (log)", ylabel="accuracy %",
           title="Accuracy vs time per token budget")
    ax.margins(x=0.25, y=0.12)
    _log_axis(ax.xaxis, duration)
    _legend_outside(ax)
    fig.canvas.draw()
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    place_labels(ax, xs, ys, names)
    return fig


def _plots(df: pd.DataFrame, device: str, latency_col: str, limits: dict) -> list[dict]:
    measured = df[df["status"] == "ok"].copy()  # costs-only rows (task=none) still get the latency breakdown
    measured["design"] = measured["design"].str.replace("$", r"\$", regex=False)  # a literal $, not mathtext
    measured["gmacs"] = measured["macs"] / 1e9 if "macs" in measured else float("nan")
    ok = measured[measured["accuracy"].notna()] if "accuracy" in measured else measured.iloc[:0]
    when = f"time {_words(latency_col)}"
    specs = [
        ("plot-pareto-latency", f"Accuracy vs {when} on {device}",
         lambda: _pareto_plot(ok, latency_col, "pareto_latency", f"{when} on {device} (log)",
                              f"Accuracy vs {when} on {device}", limits.get("latency_ms"), ms=True)),
        ("plot-pareto-macs", "Accuracy vs GMACs",
         lambda: _pareto_plot(ok, "gmacs", "pareto_macs", "GMACs (log)", "Accuracy vs GMACs", None)),
        ("plot-accuracy-by-type", "Accuracy per question type", lambda: _accuracy_by_type_plot(ok)),
        ("plot-validation-curves", "Validation loss while training", lambda: _validation_curves_plot(ok)),
        ("plot-latency-breakdown", f"Latency breakdown on {device}", lambda: _latency_breakdown_plot(measured, device)),
    ]
    with sns.axes_style("whitegrid"):
        out = [{"id": i, "alt": alt, "b64": _png(make())} for i, alt, make in specs]
    return [p for p in out if p["b64"]]


WARNINGS = ("accuracy_warning", "load_warning")  # row columns shown in the last column of an ok row


def _accuracy(r: pd.Series) -> str:
    acc = _fmt(r.get("accuracy"))
    if acc and not missing(r.get("accuracy_ci_low")) and not missing(r.get("accuracy_ci_high")):
        acc += f" [{_fmt(r['accuracy_ci_low'])}, {_fmt(r['accuracy_ci_high'])}]"
    return acc


def _notes(r: pd.Series) -> str:
    if r.get("status") != "ok":
        return _fmt(r.get("error"))
    return "; ".join(str(r[w]) for w in WARNINGS if not missing(r.get(w)))


# (header, cell, right-aligned): the table a person reads first, which fits the page; `EVERY` adds the rest
SHOWN: list[tuple[str, Any, bool]] = [
    ("design", lambda r, d: r["design"], False),
    ("tokens", lambda r, d: _fmt(r.get("tokens_out"), 0), True),
    ("params", lambda r, d: si(r.get("params")), True),
    ("MACs", lambda r, d: si(r.get("macs")), True),
    ("projector, measured here", lambda r, d: duration(r.get("latency_ms")), True),
    ("to first token on {device}", lambda r, d: duration(r.get("est_ttft_ms")), True),
    ("peak memory", lambda r, d: _mb(r.get("peak_mem_mb")), True),
    ("accuracy % [95% CI]", lambda r, d: _accuracy(r), False),
    ("error / warning", lambda r, d: _notes(r), False),
]
EVERY: list[tuple[str, Any, bool]] = SHOWN[:1] + [
    ("status", lambda r, d: r.get("status"), False),
    *SHOWN[1:5],
    ("projector on {device}", lambda r, d: duration(r.get("est_projector_ms")), True),
    *SHOWN[5:6],
    ("… uncalibrated bound", lambda r, d: duration(r.get("est_ttft_ms_bound")), True),
    ("decode tokens/s", lambda r, d: _fmt(r.get("est_decode_tok_s"), 1), True),
    *SHOWN[6:7],
    ("XNNPACK fp32 / int8", lambda r, d: _xnnpack_ms(r), True),
    ("exports", lambda r, d: _exports(r), False),
    *SHOWN[7:],
]


def _mb(x: Any) -> str:
    return "" if missing(x) else f"{plain(x)} MB"


def _xnnpack_ms(r: pd.Series) -> str:
    fp32, int8 = duration(r.get("xnnpack_latency_ms")), duration(r.get("xnnpack_int8_latency_ms"))
    return f"{fp32} / {int8}" if fp32 or int8 else ""


def _exports(r: pd.Series) -> str:
    """Each runtime's verdict for the design (and its encoder, when the row measured one)."""
    parts = []
    for prefix, who in (("", ""), ("encoder_", "encoder ")):
        e, outside = r.get(f"{prefix}exports"), r.get(f"{prefix}xnnpack_outside")
        if isinstance(e, dict):
            parts += [f"{who}{rt}: {v}" for rt, v in e.items()
                      if "_" not in rt or v not in ("ok", e.get(rt.split("_")[0]))]
        if isinstance(outside, list) and outside:  # they run on ExecuTorch's portable (reference) kernels
            parts.append(f"{who}{len(outside)} ops outside XNNPACK "
                         f"({', '.join(outside[:3])}{', …' if len(outside) > 3 else ''})")
    return "; ".join(parts)


def _tables(df: pd.DataFrame, device: str) -> dict[str, Any]:
    """The results table (`SHOWN`) and every column (`EVERY`) as header and cell lists, and one note per column
    whose cells are the same in every row (a runtime that is missing, the same encoder): said once above the
    table, not in each row. A column empty in every row is left out."""
    cells = {h.format(device=device): [cell(r, device) for _, r in df.iterrows()] for h, cell, _ in EVERY}
    constant, drop = [], set()
    for h, vals in cells.items():
        if h == "design":
            continue
        texts = {str(v) for v in vals}
        if texts <= {"", "None"}:
            drop.add(h)
        elif len(df) > 1 and len(texts) == 1:
            constant.append(f"Every design: {h}: {vals[0]}")
            drop.add(h)
    css = ["failed" if r.get("status") != "ok" else "" for _, r in df.iterrows()]

    def table(spec: list[tuple[str, Any, bool]]) -> tuple[list[str], list[dict], set[int]]:
        heads = [h.format(device=device) for h, _, _ in spec if h.format(device=device) not in drop]
        right = {i for i, (h, _, n) in enumerate(x for x in spec if x[0].format(device=device) not in drop) if n}
        rows = [{"css": c, "cells": [cells[h][i] for h in heads]} for i, c in enumerate(css)]
        return heads, rows, right

    columns, rows, numeric = table(SHOWN)
    all_columns, all_rows, _ = table(EVERY)
    extra = len(all_columns) > len(columns)
    return {"columns": columns, "rows": rows, "numeric": numeric, "constant": constant,
            "all_columns": all_columns if extra else [], "all_rows": all_rows if extra else []}


def _alternative(alt: Mapping[str, Any] | None, feasible: bool) -> str:
    if not alt:
        return "the pick" if feasible else ""
    acc = "" if missing(alt.get("accuracy")) else f"{alt['accuracy']:.1f}%, "
    return f"{alt['design']}: {acc}{duration(alt.get('latency_ms'))}"


def _recommendation_rows(recommendations: list[dict]) -> list[dict]:
    out = []
    for r in recommendations:
        scored = bool(r.get("feasible")) and not missing(r.get("accuracy"))
        out.append({**r, "design": r.get("design") or "none", "latency_ms": duration(r.get("latency_ms")),
                    "accuracy": "" if missing(r.get("accuracy")) else f"{r['accuracy']:.1f}%",
                    "params": si(r.get("params")), "memory_mb": _mb(r.get("memory_mb")),
                    "most_accurate": _alternative(r.get("most_accurate"), scored),
                    "fastest_within": _alternative(r.get("fastest_within"), scored),
                    "tradeoff": r.get("tradeoff") or "",
                    "reason": r.get("reason") or "", "basis": r.get("basis") or "estimates as measured"})
    return out


def _pick_rule(recommendations: list[dict], latency_col: str) -> str:
    if not recommendations:
        return ""
    r = recommendations[0]
    tol = r.get("tolerance")
    tol = 0.0 if missing(tol) else tol
    words = _words(latency_col)
    return (f"Budget: {r.get('budget') or 'none'}. The pick on each device: of the designs within {tol:g} accuracy "
            f"points of the most accurate there, or statistically tied with it, the one with the lowest time "
            f"{words}, then the least memory, then the fewest parameters (budget.accuracy_tolerance). Hover a row "
            f"for its reason.")


def _validation(validation: dict | None) -> dict | None:
    if not validation:
        return None
    rows = []
    for name, v in validation.get("per_design", {}).items():
        m, e = v.get("measured_ms"), v.get("estimated_ms")
        err = f"{(e - m) / m:+.0%}" if not (missing(m) or missing(e) or m == 0) else ""
        rows.append((name, duration(m), duration(e), err))
    med = validation.get("median_abs_error")  # a fraction: 0.12 is 12 %
    return {"median": "n/a" if missing(med) else f"{med:.1%}", "rows": rows}


def estimate_basis(df: pd.DataFrame) -> str:
    """What the rows' `est_*` are on the report's device (`est_basis`: calibrated on how many published points,
    or the uncalibrated bound), or '' for rows without it."""
    if "est_basis" not in df:
        return ""
    return "; ".join(dict.fromkeys(df["est_basis"].dropna().astype(str)))


class ReportNotWritten(OutputError):
    """The HTML could not be written (a full disk, a folder without permission): one line naming the folder."""


def write_report(df: pd.DataFrame, out_dir: str | Path, *, title: str, device: str, latency_col: str,
                 recommendations: list[dict], provenance: dict, validation: dict | None = None,
                 extra_plots: list[dict] | None = None, budgets: list[dict] | None = None,
                 notes: list[str] | None = None, agreement: list[dict] | None = None) -> Path:
    """Write `out_dir/report-<YYYYmmdd-HHMMSS>.html` (self-contained) and return its path; `extra_plots` are
    `{"id", "alt", "b64"}` dicts appended to the plots; `budgets` is `choose.token_budgets`; `notes` are lines
    shown under the plots (what could not be plotted); `agreement` is `agreement.as_records`. The file is written
    whole or not at all: on an OS error (a full disk) `ReportNotWritten` is raised and no partial file is left."""
    df = df.reset_index(drop=True).copy()
    df["design"] = design_label(df)
    limits = (recommendations[0].get("limits") or {}) if recommendations else {}
    failed = df.loc[df["status"] != "ok", "design"].tolist()
    summary = f"{len(df)} designs measured, {len(failed)} failed" + (f" ({', '.join(failed)})." if failed else ".")
    basis = estimate_basis(df)
    recs = _recommendation_rows(recommendations)
    tolerance = next((r["tolerance"] for r in recommendations if not missing(r.get("tolerance"))), 0.0)
    words = _words(latency_col)
    prov = [(k, v if isinstance(v, str) else json.dumps(v, indent=1, default=str)) for k, v in provenance.items()]
    budgets = budgets or []
    if budgets:
        with sns.axes_style("whitegrid"):
            b64 = _png(_budget_plot(budgets, latency_col, device))
        extra_plots = ([{"id": "plot-token-budgets", "alt": "Accuracy vs time per token budget", "b64": b64}]
                       if b64 else []) + (extra_plots or [])
    shown = [{**b, "rows": [{**r, "accuracy": f"{_fmt(r['accuracy'])} [{_fmt(r['ci'][0])}, {_fmt(r['ci'][1])}]",
                             "acc_tokens": _fmt(r["acc_tokens"], 0), "latency_ms": duration(r["latency_ms"])}
                            for r in b["rows"]]}
             for b in budgets]
    html = Environment(autoescape=True).from_string(TEMPLATE).render(
        title=title, device=device, basis=basis, summary=summary, recommendations=recs,
        rule=_pick_rule(recommendations, latency_col), latency_words=f"time {words}", tolerance=f"{tolerance:g}",
        bases=any(r.get("basis") or r.get("reason") for r in recommendations),
        **_tables(df, device), plots=_plots(df, device, latency_col, limits) + (extra_plots or []),
        validation=_validation(validation), provenance=prov, budgets=shown, latency_col=latency_col, notes=notes or [],
        agreement=[{**a, "tau_text": "n/a" if missing(a["tau"]) else f"{a['tau']:+.2f}"} for a in agreement or []])
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
        path = next(p for i in range(1000) if not (p := out / f"report-{stamp}{f'-{i}' if i else ''}.html").exists())
        atomic_write(path, html)
    except OSError as e:
        raise ReportNotWritten(f"the report could not be written in {out} ({e.strerror or e}); nothing was written: "
                               "free some space there or set reports_dir=<another folder>") from None
    return path


def study_plots(study: Any) -> list[dict]:
    """An Optuna study's optimization history and parameter importances, for each objective (Optuna's own
    matplotlib plots). Too few finished trials for importances gives a plot of its reason instead of nothing."""
    import warnings

    import optuna
    from optuna.visualization import matplotlib as ovm

    out = []
    names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")  # handled: see `good`
        for i, name in enumerate(names):
            def target(t, i=i):
                return t.values[i]
            ax = ovm.plot_optimization_history(study, target=target, target_name=name)
            out.append({"id": f"plot-history-{i}", "alt": f"Optimization history: {name}", "b64": _png(ax.figure)})
            try:
                # Optuna's default evaluator (PED-ANOVA) ranks parameters for reaching *low* target values
                good = ((lambda t, i=i: -t.values[i]) if study.directions[i] == optuna.study.StudyDirection.MAXIMIZE
                        else target)
                ax = ovm.plot_param_importances(study, target=good, target_name=name)
                fig = ax.figure
            except (ValueError, RuntimeError) as e:  # e.g. fewer than two completed trials: say so in the report
                fig, ax = plt.subplots(figsize=(6, 1))
                ax.axis("off")
                ax.text(0, 0.5, f"parameter importances for {name} unavailable: {e}", fontsize=9)
            out.append({"id": f"plot-importance-{i}", "alt": f"Parameter importances: {name}", "b64": _png(fig)})
    return out


# ---- rows the report can use: what it reads from a row, and what each value must be (null or absent is fine
# unless required). A hand-edited or foreign row that breaks one is skipped, named, rather than failing the report.
NUMBERS = ("tokens_in", "tokens_out", "params", "macs", "latency_ms", "peak_mem_mb", "accuracy", "accuracy_ci_low",
           "accuracy_ci_high", "xnnpack_latency_ms", "xnnpack_int8_latency_ms", "encoder_params", "encoder_peak_mem_mb",
           "trial", "token_budget", "acc_tokens_out", "design_params", "design_mem_mb")
TEXTS = ("encoder", "sweep_id", "env_git_commit", "env_torch", "env_timm", "env_cpu")  # compared, grouped or sorted
REQUIRED = ("projector", "status")  # every row's label and verdict
LM_NEEDS = [f.name for f in fields(LanguageModel) if f.default is MISSING]


def _number(v: Any) -> bool:
    """A JSON number pandas can hold: not a bool, and an integer within int64 (a longer one overflows a float)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and (not isinstance(v, int) or abs(v) < 2**63)


def _shown(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _is_number_column(name: str) -> bool:
    return name in NUMBERS or (name.startswith("est_") and name != "est_basis")


def _ops_problem(ops: Any) -> str | None:
    if missing(ops) or ops == []:
        return None
    if not isinstance(ops, list):
        return f"is {_shown(ops)}, not a list of ops"
    for op in ops:
        if not (isinstance(op, list) and len(op) == 5 and all(isinstance(x, str) for x in op[:2])
                and all(_number(x) and math.isfinite(x) for x in op[2:])):
            return f"holds {_shown(op)}, not an op [kind, dtype, flops, bytes, count]"
    return None


def _lm_problem(config: Any) -> str | None:
    if missing(config):
        return None
    if not isinstance(config, Mapping):
        return f"config is {_shown(config)}, not a mapping"
    if "lm" not in config:
        return None  # no LM to price it with: the row is shown without estimates
    lm = config["lm"]
    if not isinstance(lm, Mapping):
        return f"config.lm is {_shown(lm)}, not a mapping"
    if lacks := [k for k in LM_NEEDS if k not in lm]:
        return f"config.lm has no {', '.join(lacks)}"
    try:
        LanguageModel.from_config(lm)
    except (ConfigError, TypeError, ValueError) as e:
        return f"config.lm cannot be priced: {first_line(e)}"
    return None


def _curves_problem(curves: Any) -> str | None:
    def point(p: Any) -> bool:
        return isinstance(p, list) and len(p) >= 2 and all(x is None or _number(x) for x in p[:2])

    if missing(curves) or isinstance(curves, list) and all(isinstance(c, list) and all(map(point, c)) for c in curves):
        return None
    return f"val_curves is {_shown(curves)}, not a list of [step, loss, ...] per seed"


def row_problem(row: Mapping[str, Any]) -> str | None:
    """Why the report cannot use `row` (a value of the wrong type where it reads one), or None."""
    for k in REQUIRED:
        if not isinstance(row.get(k), str) or not row[k]:
            return f"no {k}" if missing(row.get(k)) else f"{k} is {_shown(row[k])}, not a name"
    for k, v in row.items():
        if _is_number_column(k) and not (missing(v) or _number(v)):
            return f"{k} is {_shown(v)}, not a number"
    for k in TEXTS:
        if not (missing(row.get(k)) or isinstance(row[k], str)):
            return f"{k} is {_shown(row[k])}, not a string"
    for k in ("ops", "encoder_ops"):
        if why := _ops_problem(row.get(k)):
            return f"{k} {why}"
    if isinstance(row.get("ops"), list) and row["ops"] and not (_number(row.get("tokens_out"))
                                                                and math.isfinite(row["tokens_out"])):
        return "it has ops but no tokens_out to price them at"
    by_type = row.get("accuracy_by_type")
    if not (missing(by_type) or isinstance(by_type, Mapping) and all(missing(a) or _number(a)
                                                                      for a in by_type.values())):
        return f"accuracy_by_type is {_shown(by_type)}, not a mapping of type to accuracy"
    for k in ("xnnpack_outside", "encoder_xnnpack_outside"):
        if not (missing(row.get(k)) or isinstance(row[k], list) and all(isinstance(o, str) for o in row[k])):
            return f"{k} is {_shown(row[k])}, not a list of op names"
    return _lm_problem(row.get("config")) or _curves_problem(row.get("val_curves"))


def reportable(rows: list[tuple[int, dict[str, Any]]], table: Path) -> pd.DataFrame:
    """The frame of the rows (line number, row) of `table` that the report can use (`row_problem`); the others
    are skipped with one warning naming their lines and why. A `ConfigError` when none is left."""
    keep, skipped = [], []
    for n, row in rows:
        if why := row_problem(row):
            skipped.append(f"{f'line {n}' if isinstance(n, int) else n} ({why})")
        else:
            keep.append(row)
    listed = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
    if skipped and not keep:
        raise ConfigError(f"none of the {len(rows)} selected row(s) of {table} can be reported: {listed}; fix or "
                          "delete those lines, or choose another --sweep")
    if skipped:
        log.warning("%s: skipped %d row(s) the report cannot use: %s; fix or delete those lines",
                    table, len(skipped), listed)
    df = pd.DataFrame(keep)
    # a number column that holds only nulls would stay `object`, whose None breaks arithmetic: make it NaN
    return df.astype({c: float for c in df.columns if _is_number_column(c) and df[c].dtype == object})


def _readable_storage(spec: str | None, results_dir: Path) -> str | None:
    """`search.storage` as a spec that reads what exists and creates nothing, or None when there is nothing to
    read: SQLite (null: `optuna.db` in `results_dir`) opened read-only, a journal only when its file exists.
    A database server's URL is returned as it is."""
    if spec and spec.startswith("journal:"):
        return spec if Path(spec.removeprefix("journal:")).expanduser().is_file() else None
    if spec and not spec.startswith("sqlite:"):
        return spec
    if spec and not spec.startswith("sqlite:///"):
        return None  # sqlite:// is an in-memory database: nothing a report could read
    path = Path(spec.removeprefix("sqlite:///").split("?")[0]) if spec else results_dir / "optuna.db"
    if not path.is_file():
        return None
    return spec if spec and "?" in spec else f"sqlite:///file:{path.resolve()}?mode=ro&uri=true"


def _studies(df: pd.DataFrame, results_dir: str | Path, storage_spec: str | None) -> tuple[list[Any], list[str]]:
    """The Optuna studies the rows came from (rows with a `trial` column), read from their storage without
    creating it, and a note naming those that could not be read (no study plots for them; not a failure)."""
    if "trial" not in df or "sweep_id" not in df or df["trial"].isna().all():
        return [], []
    names = sorted({n for n in df.loc[df["trial"].notna(), "sweep_id"] if isinstance(n, str)})
    where = storage_spec or str(Path(results_dir) / "optuna.db")
    spec = _readable_storage(storage_spec, Path(results_dir))
    if spec is None:
        return [], [f"No study plots for {', '.join(names)}: its storage {where} does not exist (give the search's "
                    "search.storage=..., or the results folder its optuna.db is in)."]
    studies, absent = [], []
    for name in names:
        try:
            studies += load_studies([name], results_dir, spec)
        except KeyError:  # Optuna's "Record does not exist"
            absent.append(name)
        except ConfigError as e:  # the storage cannot be opened
            return [], [f"No study plots for {', '.join(names)}: {e}."]
    return studies, [f"No study plots for {', '.join(absent)}: not in {where}."] if absent else []


def build_report(df: pd.DataFrame, cfg: Any, out_dir: str | Path, provenance: dict[str, Any],
                 results_dir: str | Path | None = None) -> Path:
    """The HTML report of `df` under `out_dir`: `choose.analyse`'s decisions for `cfg` (device, budget),
    rendered with the plots of the Optuna studies the rows came from."""
    a = analyse(df, cfg, provenance)
    search = cfg.get("search") or {}
    studies, notes = _studies(a.df, results_dir or cfg.results_dir, search.get("storage"))
    for note in notes:
        log.warning(note)
    plots = [p for st in studies for p in study_plots(st)]
    print(picks(a.recommendations))
    return write_report(a.df, out_dir, title=f"projector_bench: {len(a.df)} designs on {a.device}", device=a.device,
                        latency_col=a.latency_col, recommendations=[r.as_dict() for r in a.recommendations],
                        provenance=a.provenance, validation=a.validation, extra_plots=plots, budgets=a.budgets,
                        notes=notes, agreement=as_records(agreements(a.df)))


def report_at_end(df: pd.DataFrame, cfg: Any, command: str) -> Path:
    """The report a sweep or a search writes when it ends (unless `report=false`); prints its path."""
    path = build_report(df.reset_index(drop=True), cfg, cfg.reports_dir,
                        {"command": command, "results": cfg.results_dir})
    print(f"report: {path}")
    return path
