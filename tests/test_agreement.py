"""The proxy held against published ablations: the tables as data, Kendall τ, and the robust pairs' verdicts."""
import re
from pathlib import Path

import pandas as pd
import pytest

from projector_bench.analysis.agreement import ROBUST, Published, agreement, agreements, as_records, published_tables
from projector_bench.core.errors import ConfigError

ROWS_0612 = Path(__file__).resolve().parent.parent / "docs" / "results" / "2026-12-06-token-budget-rows.csv"


def test_the_published_tables_load_with_their_sources_in_our_names():
    tables = published_tables()
    tp, hb = tables["tokenpacker_table3"], tables["honeybee_table8"]
    assert "arXiv 2407.02392" in tp.source and "Table 3" in tp.source and "Vicuna-7B" in tp.setting
    assert tp.scores[(144, "ldpv2")]["GQA"] == 61.1 and tp.scores[(64, "avgpool_mlp")]["GQA"] == 58.8
    assert tp.scores[(144, "qwen_vl_adapter")]["Avg"] == 60.4  # its "Resampler" is Qwen-VL's
    assert len(tp.scores) == 13 and tp.benchmarks[-1] == "Avg"
    assert hb.scores[(400, "c_abstractor")] == {"AvgN": 72.3} and len(hb.scores) == 8


def _table() -> Published:
    scores = {(144, d): {"X": s} for d, s in (("a", 70.0), ("b", 68.0), ("c", 67.5), ("d", 60.0))}
    return Published("t", "paper", "Table 1", "setting", ["X"], scores)


def _rows(**acc) -> pd.DataFrame:
    return pd.DataFrame([{"projector": d, "token_budget": 144, "status": "ok", "accuracy": a, "accuracy_ci_low": a - w,
                          "accuracy_ci_high": a + w} for d, (a, w) in acc.items()])


def test_robust_pairs_are_reproduced_tied_or_contradicted_and_tau_ranks_the_rest():
    (found,) = agreement(_rows(a=(90.0, 0.5), b=(85.0, 0.5), c=(86.0, 0.5), d=(50.0, 0.5)), _table())
    assert found.designs == ["a", "b", "c", "d"] and found.tau == pytest.approx(2 / 3)  # one pair of six swapped
    verdicts = {(p.first, p.second): p.verdict for p in found.pairs}
    # b-c differ by 0.5 < ROBUST in the source: not a robust pair, so c above b costs nothing but tau
    assert ROBUST == 1.0 and verdicts == {("a", "b"): "reproduced", ("a", "c"): "reproduced", ("a", "d"): "reproduced",
                                          ("b", "d"): "reproduced", ("c", "d"): "reproduced"}
    (swapped,) = agreement(_rows(a=(85.0, 0.5), b=(90.0, 0.5), c=(80.0, 0.5), d=(50.0, 0.5)), _table())
    assert {(p.first, p.second): p.verdict for p in swapped.pairs}[("a", "b")] == "contradicted"
    (wide,) = agreement(_rows(a=(85.0, 5.0), b=(90.0, 5.0), c=(80.0, 5.0), d=(50.0, 5.0)), _table())
    pair = next(p for p in wide.pairs if (p.first, p.second) == ("a", "b"))
    assert pair.verdict == "tied" and pair.half == pytest.approx(7.07, abs=0.01)
    assert "a > b by 2.0 in the source; proxy -5.0 ±7.1: tied" in wide.text()


def test_rows_that_cover_under_two_designs_of_a_budget_give_no_agreement():
    assert agreement(_rows(a=(90.0, 0.5)), _table()) == []
    assert agreement(pd.DataFrame([{"projector": "a", "accuracy": 90.0}]), _table()) == []  # not a budget sweep


def test_the_token_budget_run_of_2026_12_06_against_tokenpacker_table3():
    """Its printed rows (docs/results/2026-12-06-token-budget-rows.csv): at 144 tokens one robust GQA pair is
    contradicted, ldpv2 below pixel_shuffle (its PEG: docs/results/2026-12-06-token-budget.md)."""
    found = {(a.table, a.benchmark, a.tokens): a for a in agreements(pd.read_csv(ROWS_0612))}
    gqa = found[("tokenpacker_table3", "GQA", 144)]
    assert len(gqa.designs) == 6 and len(gqa.pairs) == 10
    assert [(p.first, p.second) for p in gqa.pairs if p.verdict == "contradicted"] == [("ldpv2", "pixel_shuffle")]
    assert found[("tokenpacker_table3", "GQA", 64)].count("contradicted") == 0
    assert found[("honeybee_table8", "AvgN", 144)].count("reproduced") == 1
    assert {r["table"] for r in as_records(list(found.values()))} == {"tokenpacker_table3", "honeybee_table8"}


def test_a_malformed_published_table_is_one_error_naming_its_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("source: {paper: p, table: t, setting: s}\ndesigns: {A: a}\n"
                                       "benchmarks: [X, Y]\nscores:\n  - [144, A, 1.0]\n")
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'bad.yaml'}: not a published table")):
        published_tables(tmp_path)


def test_bench_prints_every_pair_and_the_gqa_target(capsys, tmp_path):
    from projector_bench.bench import main

    assert main(["--agreement-only", str(ROWS_0612)]) == 1  # one GQA pair contradicted at 144 tokens
    out = capsys.readouterr().out
    assert "ldpv2 > pixel_shuffle by 1.0 in the source; proxy -3.7 ±1.3: contradicted" in out
    assert "TokenPacker Table 3 GQA at 144 tokens: 90% of 10 robust pairs reproduced or tied, 1 contradicted" in out
    assert main(["--agreement-only", str(tmp_path / "none.csv")]) == 2
    assert "error: no results at" in capsys.readouterr().err


def test_the_report_shows_the_agreement(tmp_path):
    from projector_bench.analysis.report import write_report

    df = pd.read_csv(ROWS_0612)
    html = write_report(df, tmp_path, title="t", device="phone", latency_col="est_ttft_ms", recommendations=[],
                        provenance={}, agreement=as_records(agreements(df))).read_text(encoding="utf-8")
    assert 'id="agreement"' in html and "tokenpacker_table3" in html
    assert "ldpv2 &gt; pixel_shuffle by 1.0 in the source; proxy -3.7 ±1.3: contradicted" in html
