"""The text tables a run, a sweep and the bench print: the summary of rows, and accuracy per question type."""
from __future__ import annotations

import pandas as pd

from ..core.budget import duration, plain
from .choose import Recommendation, design_label

# Columns printed at the end of a run or sweep (the table holds many more).
SUMMARY = ["projector", "encoder", "status", "tokens_in", "tokens_out", "params", "macs", "latency_ms",
           "latency_iqr_ms", "peak_mem_mb", "size_mb", "est_projector_ms", "est_prefill_ms", "est_ttft_ms",
           "accuracy", "accuracy_ci_low", "accuracy_ci_high", "converged", "error"]

def summary(df) -> str:
    """The printed table: the summary columns that the rows have, params in M and MACs in G."""
    view = df[[c for c in SUMMARY if c in df.columns]].copy()
    for col, scale, name in (("params", 1e6, "params_M"), ("macs", 1e9, "GMACs")):
        if col in view:
            view[col] = view[col] / scale
            view = view.rename(columns={col: name})
    if "error" in view:
        view["error"] = view["error"].astype(object).fillna("")
    return view.to_string(index=False, float_format=plain)


def picks(recs: list[Recommendation]) -> str:
    """The recommendation, one line per device: the pick, its time and accuracy, and what choosing it trades."""
    if not recs:
        return ""
    rows = [{"device": r.device, "pick": r.design or "none", "time": duration(r.values.get("latency_ms")),
             "accuracy": "" if pd.isna(r.values.get("accuracy", float("nan"))) else f"{r.values['accuracy']:.1f}%",
             "trade-off": r.tradeoff} for r in recs]
    head = (f"recommendation ({recs[0].budget}; designs within {recs[0].tolerance:g} accuracy points of the most "
            "accurate, or statistically tied, count as equal and the fastest is picked):\n")
    width = {k: max(len(k), *(len(r[k]) for r in rows)) for k in rows[0]}
    lines = ["  ".join(k.ljust(width[k]) for k in width)]
    right = ("time", "accuracy")
    lines += ["  ".join((r[k].rjust if k in right else r[k].ljust)(width[k]) for k in width) for r in rows]
    return head + "\n".join(line.rstrip() for line in lines)


def accuracy_table(df) -> str:
    """Accuracy per question type with its 95% interval, one row per design ("" without accuracy). A type that
    no design answers better than its own majority answer (interval above it) is marked as not learned."""
    if "accuracy_by_type" not in df or df["accuracy_by_type"].isna().all():
        return ""
    rows, learned, judged = {}, set(), set()
    acc = df.dropna(subset=["accuracy_by_type"])
    label = design_label(acc)
    if ("acc_encoder" in acc and acc["acc_encoder"].nunique() > 1
            and not (acc["acc_encoder"] == acc.get("encoder")).all()):
        # designs told apart by the encoder they trained on, where it is not the encoder already in the label
        label = label + "@" + acc["acc_encoder"].astype(str)
    for name, (_, r) in zip(label, acc.iterrows()):
        by_type = r["accuracy_ci_by_type"]
        rows[name] = {"tokens": r["acc_tokens_out"],
                      "all": f"{r['accuracy']:.1f} [{r['accuracy_ci_low']:.1f}, {r['accuracy_ci_high']:.1f}]"} | {
            k: f"{v:.1f} [{by_type[k][0]:.1f}, {by_type[k][1]:.1f}]" for k, v in r["accuracy_by_type"].items()}
        if "converged" in r and isinstance(r["converged"], bool):
            rows[name]["converged"] = "yes" if r["converged"] else "NO"
        majority = r.get("majority_by_type")
        if isinstance(majority, dict):
            learned |= {k for k in by_type if by_type[k][0] > majority[k]}
            judged |= set(by_type)
            base_row = {k: f"{v:.1f}" for k, v in majority.items()}
    if judged:
        rows["(majority answer)"] = base_row
    table = pd.DataFrame(rows).T.fillna("")
    unlearned = sorted(judged - learned)
    table = table.rename(columns={k: f"{k} (NOT LEARNED)" for k in unlearned})
    base = df["majority_baseline"].dropna()
    note = f"\nmajority-answer baseline: {base.iloc[0]:.1f}" if len(base) else ""
    if unlearned:
        note += f"\nnot learned by any design (no interval above the type's majority answer): {', '.join(unlearned)}"
    head = "accuracy % on held-out questions, mean over seeds [95% two-level bootstrap CI: seeds, questions]\n"
    return head + table.to_string() + note
