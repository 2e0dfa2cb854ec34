"""The proxy's ranking held against published ablations (`conf/published/`, one file per source table): per
table, benchmark and token budget the rows cover, Kendall's τ between the two rankings, and the *robust pairs*
(a gap of at least `ROBUST` points in the source) the proxy reproduces, ties (the gap within the 95% interval
of the difference, `choose.tie`) or contradicts (the other way round, outside that interval).

    df = load_results("results")                 # a +sweep=token_budget run: rows with `token_budget`
    for a in agreements(df):
        print(a.text())
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf
from scipy.stats import kendalltau

from ..core.budget import missing
from ..core.errors import ConfigError
from ..core.settings import config_dir
from .choose import finite, tie

ROBUST = 1.0  # points: a source gap below this is within what re-training moves a published score


@dataclass(frozen=True)
class Published:
    """One source table: where it comes from, its benchmarks, and per (output tokens, our design) its scores."""

    name: str
    paper: str
    table: str
    setting: str
    benchmarks: list[str]
    scores: dict[tuple[int, str], dict[str, float]]

    @property
    def source(self) -> str:
        return f"{self.paper}, {self.table} ({self.setting})"


def published_tables(folder: str | Path | None = None) -> dict[str, Published]:
    """Every table in `folder` (default `conf/published/`), by file name; a malformed file is a `ConfigError`
    naming it and what is wrong."""
    out = {}
    for path in sorted(Path(folder or config_dir() / "published").glob("*.yaml")):
        raw = OmegaConf.to_container(OmegaConf.load(path))
        try:
            src, names, benches = raw["source"], raw["designs"], list(raw["benchmarks"])
            scores: dict[tuple[int, str], dict[str, float]] = {}
            for entry in raw["scores"]:
                tokens, design, *values = entry
                if design not in names or len(values) != len(benches):
                    raise ValueError(f"entry {entry} names no design of `designs` or has not {len(benches)} scores")
                scores[(int(tokens), names[design])] = dict(zip(benches, map(float, values)))
            out[path.stem] = Published(path.stem, src["paper"], src["table"], src["setting"], benches, scores)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{path}: not a published table ({type(e).__name__}: {e}); it needs source.paper, "
                              "source.table, source.setting, designs, benchmarks and scores") from None
    return out


@dataclass(frozen=True)
class Pair:
    """Two designs at one budget: the source's gap (first minus second, at least `ROBUST`), the proxy's, the
    half-width of the proxy's 95% interval of its difference, and the verdict."""

    first: str
    second: str
    source_gap: float
    our_gap: float
    half: float
    verdict: str  # reproduced | tied | contradicted

    def text(self) -> str:
        return (f"{self.first} > {self.second} by {self.source_gap:.1f} in the source; proxy "
                f"{self.our_gap:+.1f} ±{self.half:.1f}: {self.verdict}")


@dataclass(frozen=True)
class Agreement:
    """One table's benchmark at one budget, held against the rows: the designs both cover, Kendall's τ (None
    under two designs) and every robust pair."""

    table: str
    source: str
    benchmark: str
    tokens: int
    designs: list[str]
    tau: float | None
    pairs: list[Pair] = field(default_factory=list)

    def count(self, verdict: str) -> int:
        return sum(p.verdict == verdict for p in self.pairs)

    def text(self) -> str:
        tau = "n/a" if self.tau is None else f"{self.tau:+.2f}"
        head = (f"{self.table} {self.benchmark} at {self.tokens} tokens ({len(self.designs)} designs): "
                f"Kendall τ {tau}; "
                f"robust pairs: {self.count('reproduced')} reproduced, {self.count('tied')} tied, "
                f"{self.count('contradicted')} contradicted of {len(self.pairs)}")
        return "\n".join([head, *(f"  {p.text()}" for p in self.pairs)])


def _pair(first: pd.Series, second: pd.Series, source_gap: float) -> Pair:
    gap = float(first["accuracy"] - second["accuracy"])
    t = tie(first, second) if gap >= 0 else tie(second, first)
    half = 0.0 if t is None else t[1]
    verdict = "tied" if abs(gap) <= half else "reproduced" if gap > 0 else "contradicted"
    return Pair(first["projector"], second["projector"], source_gap, gap, half, verdict)


def agreement(df: pd.DataFrame, table: Published) -> list[Agreement]:
    """`table` held against the rows of `df` that have a `token_budget` and an accuracy: one `Agreement` per
    benchmark and budget where the rows cover at least two of its designs (the last row of a design counts)."""
    need = {"token_budget", "projector", "accuracy"}
    if not need <= set(df.columns):
        return []
    rows = finite(df)
    rows = rows[rows["token_budget"].notna() & rows["accuracy"].notna()
                & ((rows["status"] == "ok") if "status" in rows else True)]
    mine = {(int(r["token_budget"]), r["projector"]): r for _, r in rows.iterrows()}
    out = []
    for tokens in sorted({t for t, _ in table.scores}, reverse=True):
        designs = sorted(d for t, d in table.scores if t == tokens and (t, d) in mine)
        if len(designs) < 2:
            continue
        for bench in table.benchmarks:
            theirs = [table.scores[(tokens, d)][bench] for d in designs]
            ours = [float(mine[(tokens, d)]["accuracy"]) for d in designs]
            tau = kendalltau(theirs, ours)[0]
            pairs = []
            for i, a in enumerate(designs):
                for b in designs[i + 1:]:
                    gap = table.scores[(tokens, a)][bench] - table.scores[(tokens, b)][bench]
                    if abs(gap) >= ROBUST:
                        first, second = (a, b) if gap > 0 else (b, a)
                        pairs.append(_pair(mine[(tokens, first)], mine[(tokens, second)], abs(gap)))
            out.append(Agreement(table.name, table.source, bench, tokens, designs,
                                 None if missing(tau) else float(tau), pairs))
    return out


def agreements(df: pd.DataFrame, tables: dict[str, Published] | None = None) -> list[Agreement]:
    """`agreement` for every published table (default: `published_tables()`)."""
    return [a for t in (tables or published_tables()).values() for a in agreement(df, t)]


def as_records(found: list[Agreement]) -> list[dict[str, Any]]:
    """Plain dicts, for the report."""
    return [{"table": a.table, "source": a.source, "benchmark": a.benchmark, "tokens": a.tokens,
             "designs": a.designs, "tau": a.tau, "reproduced": a.count("reproduced"), "tied": a.count("tied"),
             "contradicted": a.count("contradicted"), "pairs": [p.text() for p in a.pairs]} for a in found]
