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
from matplotlib.ticker import FuncFormatter

from .budget import missing, si
from .choose import analyse, design_label
from .errors import ConfigError
from .lm import LanguageModel
from .studies import load_studies
from .util import atomic_write

log = logging.getLogger(__name__)

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: sans-serif; margin: 2em; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } tr.failed { background: #fde8e8; } tr.infeasible { color: #a00; }
img { max-width: 100%; display: block; margin: 1em 0; } pre { background: #f7f7f7; padding: 0.5em; overflow-x: auto; }
</style></head>
<body>
<h1>{{ title }}</h1>
<p>Device: <b>{{ device }}</b>.{% if basis %} <span id="estimate-basis">Estimates (est_*) on it: {{ basis }}; est_*_bound columns: the uncalibrated roofline.</span>{% endif %} {{ summary }}</p>

<h2>Recommendation</h2>
<table id="recommendations">
<tr><th>budget</th><th>device</th><th>design</th><th>feasible</th><th>latency (ms)</th><th>params</th><th>memory (MB)</th><th>reason</th></tr>
{% for r in recommendations %}
<tr class="{{ '' if r.feasible else 'infeasible' }}"><td>{{ r.budget }}</td><td>{{ r.device }}{% if r.basis %}<br><small>{{ r.basis }}</small>{% endif %}</td><td>{{ r.design }}</td>
<td>{{ 'yes' if r.feasible else 'no' }}</td><td>{{ r.latency_ms }}</td><td>{{ r.params }}</td><td>{{ r.memory_mb }}</td><td>{{ r.reason }}</td></tr>
{% endfor %}
</table>

<h2>Results</h2>
<table id="results-table">
<tr>{% for c in columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in rows %}
<tr class="{{ row.css }}">{% for v in row.cells %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}
</table>

{% if budgets %}
<h2>Token budgets</h2>
<p>Per output budget (tokens at the cost shape), the design that keeps the most accuracy, and those tied with it
(the gap within the 95% interval of the difference, from the two intervals as independent estimates).</p>
<ul id="budget-verdicts">{% for b in budgets %}<li>{{ b.verdict }}</li>{% endfor %}</ul>
<table id="budgets">
<tr><th>budget (tokens)</th><th>design</th><th>accuracy [95% CI]</th><th>accuracy-grid tokens</th><th>{{ latency_col }}</th></tr>
{% for b in budgets %}{% for r in b.rows %}<tr><td>{{ b.tokens }}</td><td>{{ r.design }}</td><td>{{ r.accuracy }}</td><td>{{ r.acc_tokens }}</td><td>{{ r.latency_ms }}</td></tr>
{% endfor %}{% endfor %}
</table>
{% endif %}

<h2>Plots</h2>
{% for p in plots %}
<h3>{{ p.alt }}</h3>
<img id="{{ p.id }}" alt="{{ p.alt }}" src="data:image/png;base64,{{ p.b64 }}">
{% else %}
<p>No successful design with an accuracy to plot.</p>
{% endfor %}
{% for n in notes %}<p class="note">{{ n }}</p>
{% endfor %}

{% if validation %}
<h2>Estimator validation</h2>
<p>Roofline estimate vs measured host latency: median absolute error {{ validation.median }}.</p>
<table id="validation">
<tr><th>design</th><th>measured (ms)</th><th>estimated (ms)</th><th>error</th></tr>
{% for v in validation.rows %}<tr><td>{{ v[0] }}</td><td>{{ v[1] }}</td><td>{{ v[2] }}</td><td>{{ v[3] }}</td></tr>{% endfor %}
</table>
{% endif %}

<h2>Provenance</h2>
<dl id="provenance">
{% for k, v in provenance %}<dt>{{ k }}</dt><dd><pre>{{ v }}</pre></dd>
{% endfor %}
</dl>
<script>
window.addEventListener("load", function () {
  var n = Array.prototype.filter.call(document.images, function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.imagesLoaded = String(n);
});
</script>
</body></html>
"""


def _fmt(x: Any, digits: int = 1, scale: float = 1.0) -> str:
    if missing(x):
        return ""
    if isinstance(x, numbers.Number) and not isinstance(x, bool):
        return f"{x / scale:,.{digits}f}"
    return str(x)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pareto_plot(ok: pd.DataFrame, x: str, front: str, xlabel: str, title: str, limit: float | None) -> str | None:
    d = ok[ok[x].notna() & (ok[x] > 0)]
    if d.empty:
        return None
    on = d[front].fillna(False).astype(bool) if front in d else pd.Series(False, index=d.index)
    fig, ax = plt.subplots(figsize=(8, 5))
    sns.scatterplot(data=d[~on], x=x, y="accuracy", ax=ax, alpha=0.3, color="grey", s=50)
    sns.scatterplot(data=d[on], x=x, y="accuracy", ax=ax, color="tab:red", s=80, label="Pareto front")
    if on.any():
        f = d[on].sort_values(x)
        ax.step(f[x], f["accuracy"], where="post", color="tab:red", lw=1.5)
    for _, r in d.iterrows():
        ax.annotate(r["design"], (r[x], r["accuracy"]), xytext=(4, 4), textcoords="offset points", fontsize=8,
                    alpha=1.0 if on[r.name] else 0.5)
    if limit is not None:
        ax.axvline(limit, ls="--", color="tab:blue", label=f"budget {limit:g}")
    ax.set(xscale="log", xlabel=xlabel, ylabel="accuracy (%)", title=title)
    for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
        axis(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.legend(loc="lower right")
    return _png(fig)


def _accuracy_by_type_plot(ok: pd.DataFrame) -> str | None:
    long = [{"design": r["design"], "type": str(t), "accuracy": a}
            for _, r in ok.iterrows() if isinstance(r.get("accuracy_by_type"), dict)
            for t, a in r["accuracy_by_type"].items() if not missing(a)]
    if not long:
        return None
    fig, ax = plt.subplots(figsize=(9, 5))
    sns.barplot(data=pd.DataFrame(long), x="type", y="accuracy", hue="design", ax=ax)
    ax.set(xlabel="question type", ylabel="accuracy (%)", title="Accuracy per question type")
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def _validation_curves_plot(ok: pd.DataFrame) -> str | None:
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
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def _latency_breakdown_plot(ok: pd.DataFrame, device: str) -> str | None:
    parts = ["est_encoder_ms", "est_projector_ms", "est_prefill_ms"]
    d = ok.set_index("design")[[c for c in parts if c in ok]].dropna(how="all")
    if d.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(d) + 2))
    d.fillna(0).rename(columns=lambda c: c[4:-3]).plot.barh(stacked=True, ax=ax)
    ax.set(xlabel="estimated ms", ylabel="", title=f"Time to first token breakdown on {device}")
    return _png(fig)


def _budget_plot(budgets: list[dict], latency_col: str, device: str) -> str | None:
    """Accuracy (95% interval as error bars) against `latency_col`, one colour per output budget."""
    if not any(not missing(r["latency_ms"]) for b in budgets for r in b["rows"]):
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for b, colour in zip(budgets, sns.color_palette(n_colors=len(budgets))):
        rows = [r for r in b["rows"] if not missing(r["latency_ms"])]
        if not rows:
            continue
        x, y = [r["latency_ms"] for r in rows], [r["accuracy"] for r in rows]
        err = [[a - r["ci"][0] for a, r in zip(y, rows)], [r["ci"][1] - a for a, r in zip(y, rows)]]
        ax.errorbar(x, y, yerr=err, fmt="o", color=colour, capsize=3, label=f"{b['tokens']} tokens")
        for xi, yi, r in zip(x, y, rows):
            ax.annotate(r["design"].replace("$", r"\$"), (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xscale="log", xlabel=f"{latency_col} on {device} (log)", ylabel="accuracy %", title="Accuracy vs time per token budget")
    ax.legend()
    return _png(fig)


def _plots(df: pd.DataFrame, device: str, latency_col: str, limits: dict) -> list[dict]:
    measured = df[df["status"] == "ok"].copy()  # costs-only rows (task=none) still get the latency breakdown
    measured["design"] = measured["design"].str.replace("$", r"\$", regex=False)  # a literal $, not mathtext
    measured["gmacs"] = measured["macs"] / 1e9 if "macs" in measured else float("nan")
    ok = measured[measured["accuracy"].notna()] if "accuracy" in measured else measured.iloc[:0]
    specs = [
        ("plot-pareto-latency", f"Accuracy vs {latency_col} on {device}",
         lambda: _pareto_plot(ok, latency_col, "pareto_latency", f"{latency_col} (log)",
                              f"Accuracy vs {latency_col} on {device}", limits.get("latency_ms"))),
        ("plot-pareto-macs", "Accuracy vs GMACs",
         lambda: _pareto_plot(ok, "gmacs", "pareto_macs", "GMACs (log)", "Accuracy vs GMACs", None)),
        ("plot-accuracy-by-type", "Accuracy per question type", lambda: _accuracy_by_type_plot(ok)),
        ("plot-validation-curves", "Validation loss while training", lambda: _validation_curves_plot(ok)),
        ("plot-latency-breakdown", f"Latency breakdown on {device}", lambda: _latency_breakdown_plot(measured, device)),
    ]
    with sns.axes_style("whitegrid"):
        out = [{"id": i, "alt": alt, "b64": make()} for i, alt, make in specs]
    return [p for p in out if p["b64"]]


COLUMNS = ["design", "status", "tokens_out", "params (M)", "GMACs", "latency_ms", "est_projector_ms", "est_ttft_ms",
           "est_ttft_ms_bound", "est_decode_tok_s", "peak_mem_mb", "XNNPACK ms (fp32 / int8)", "exports", "accuracy [95% CI]",
           "error / warning"]
WARNINGS = ("accuracy_warning", "load_warning")  # row columns shown in the last column of an ok row


def _xnnpack_ms(r: pd.Series) -> str:
    fp32, int8 = _fmt(r.get("xnnpack_latency_ms"), 2), _fmt(r.get("xnnpack_int8_latency_ms"), 2)
    return f"{fp32} / {int8}" if fp32 or int8 else ""


def _exports(r: pd.Series) -> str:
    """Each runtime's verdict for the design (and its encoder, when the row measured one)."""
    parts = []
    for prefix, who in (("", ""), ("encoder_", "encoder ")):
        e, outside = r.get(f"{prefix}exports"), r.get(f"{prefix}xnnpack_outside")
        if isinstance(e, dict):
            parts += [f"{who}{rt}: {v}" for rt, v in e.items() if "_" not in rt or v not in ("ok", e.get(rt.split("_")[0]))]
        if isinstance(outside, list) and outside:  # they run on ExecuTorch's portable (reference) kernels
            parts.append(f"{who}{len(outside)} ops outside XNNPACK ({', '.join(outside[:3])}{', …' if len(outside) > 3 else ''})")
    return "; ".join(parts)


def _table_rows(df: pd.DataFrame) -> list[dict]:
    rows = []
    for _, r in df.iterrows():
        acc = _fmt(r.get("accuracy"))
        if acc and not missing(r.get("accuracy_ci_low")) and not missing(r.get("accuracy_ci_high")):
            acc += f" [{_fmt(r['accuracy_ci_low'])}, {_fmt(r['accuracy_ci_high'])}]"
        failed = r.get("status") != "ok"
        cells = [r["design"], r.get("status"), _fmt(r.get("tokens_out"), 0), _fmt(r.get("params"), 2, 1e6),
                 _fmt(r.get("macs"), 3, 1e9), _fmt(r.get("latency_ms"), 2), _fmt(r.get("est_projector_ms"), 2),
                 _fmt(r.get("est_ttft_ms"), 1), _fmt(r.get("est_ttft_ms_bound"), 1), _fmt(r.get("est_decode_tok_s"), 1),
                 _fmt(r.get("peak_mem_mb"), 1), _xnnpack_ms(r), _exports(r),
                 acc, _fmt(r.get("error")) if failed else "; ".join(str(r[w]) for w in WARNINGS if not missing(r.get(w)))]
        rows.append({"css": "failed" if failed else "", "cells": cells})
    return rows


def _validation(validation: dict | None) -> dict | None:
    if not validation:
        return None
    rows = []
    for name, v in validation.get("per_design", {}).items():
        m, e = v.get("measured_ms"), v.get("estimated_ms")
        err = f"{(e - m) / m:+.0%}" if not (missing(m) or missing(e) or m == 0) else ""
        rows.append((name, _fmt(m, 2), _fmt(e, 2), err))
    med = validation.get("median_abs_error")  # a fraction: 0.12 is 12 %
    return {"median": "n/a" if missing(med) else f"{med:.1%}", "rows": rows}


def estimate_basis(df: pd.DataFrame) -> str:
    """What the rows' `est_*` are on the report's device (`est_basis`: calibrated on how many published points,
    or the uncalibrated bound), or '' for rows without it."""
    if "est_basis" not in df:
        return ""
    return "; ".join(dict.fromkeys(df["est_basis"].dropna().astype(str)))


class ReportNotWritten(OSError):
    """The HTML could not be written (a full disk, a folder without permission): one line naming the folder."""


def write_report(df: pd.DataFrame, out_dir: str | Path, *, title: str, device: str, latency_col: str,
                 recommendations: list[dict], provenance: dict, validation: dict | None = None,
                 extra_plots: list[dict] | None = None, budgets: list[dict] | None = None,
                 notes: list[str] | None = None) -> Path:
    """Write `out_dir/report-<YYYYmmdd-HHMMSS>.html` (self-contained) and return its path; `extra_plots` are
    `{"id", "alt", "b64"}` dicts appended to the plots; `budgets` is `choose.token_budgets`; `notes` are lines
    shown under the plots (what could not be plotted). The file is written whole or not at all: on an OS error
    (a full disk) `ReportNotWritten` is raised and no partial file is left."""
    df = df.reset_index(drop=True).copy()
    df["design"] = design_label(df)
    limits = (recommendations[0].get("limits") or {}) if recommendations else {}
    failed = df.loc[df["status"] != "ok", "design"].tolist()
    summary = f"{len(df)} designs measured, {len(failed)} failed" + (f" ({', '.join(failed)})." if failed else ".")
    basis = estimate_basis(df)
    recs = [{**r, "design": r.get("design") or "none", "latency_ms": _fmt(r.get("latency_ms")),
             "params": si(r.get("params")), "memory_mb": _fmt(r.get("memory_mb"))} for r in recommendations]
    prov = [(k, v if isinstance(v, str) else json.dumps(v, indent=1, default=str)) for k, v in provenance.items()]
    budgets = budgets or []
    if budgets:
        with sns.axes_style("whitegrid"):
            b64 = _budget_plot(budgets, latency_col, device)
        extra_plots = ([{"id": "plot-token-budgets", "alt": "Accuracy vs time per token budget", "b64": b64}] if b64 else []) + (extra_plots or [])
    shown = [{**b, "rows": [{**r, "accuracy": f"{_fmt(r['accuracy'])} [{_fmt(r['ci'][0])}, {_fmt(r['ci'][1])}]",
                             "acc_tokens": _fmt(r["acc_tokens"], 0), "latency_ms": _fmt(r["latency_ms"], 1)} for r in b["rows"]]}
             for b in budgets]
    html = Environment(autoescape=True).from_string(TEMPLATE).render(
        title=title, device=device, basis=basis, summary=summary, recommendations=recs, columns=COLUMNS, rows=_table_rows(df),
        plots=_plots(df, device, latency_col, limits) + (extra_plots or []), validation=_validation(validation),
        provenance=prov, budgets=shown, latency_col=latency_col, notes=notes or [])
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
                good = (lambda t, i=i: -t.values[i]) if study.directions[i] == optuna.study.StudyDirection.MAXIMIZE else target
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
        return f"config.lm cannot be priced: {str(e).splitlines()[0]}"
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
            skipped.append(f"line {n} ({why})")
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
    return write_report(a.df, out_dir, title=f"projector_bench: {len(a.df)} designs on {a.device}", device=a.device,
                        latency_col=a.latency_col, recommendations=[r.as_dict() for r in a.recommendations],
                        provenance=a.provenance, validation=a.validation, extra_plots=plots, budgets=a.budgets,
                        notes=notes)


def report_at_end(df: pd.DataFrame, cfg: Any, command: str) -> Path:
    """The report a sweep or a search writes when it ends (unless `report=false`); prints its path."""
    path = build_report(df.reset_index(drop=True), cfg, cfg.reports_dir, {"command": command, "results": cfg.results_dir})
    print(f"report: {path}")
    return path
