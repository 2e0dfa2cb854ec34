"""The HTML report: self-contained, escaped, and rendered by a real headless Chromium."""
import base64
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from projector_bench.analysis.report import write_report

PLOT_IDS = ["plot-pareto-latency", "plot-pareto-macs", "plot-accuracy-by-type", "plot-validation-curves",
            "plot-latency-breakdown"]
EVIL = "<script>alert(1)</script>"
NAN = float("nan")


def _curves(loss):
    return [[[100 * i, loss / i + seed, 50.0 + i] for i in range(1, 6)] for seed in (0, 1)]


def _row(projector, acc, ttft, macs, pl=False, pm=False, status="ok", error=NAN, by_type=NAN, curves=NAN):
    return {"projector": projector, "encoder": "vit_tiny", "status": status, "error": error, "params": macs / 500,
            "macs": macs, "tokens_in": 196, "tokens_out": 49, "latency_ms": ttft / 10, "peak_mem_mb": 120.0,
            "size_mb": macs / 2e8, "accuracy": acc, "accuracy_ci_low": acc - 3, "accuracy_ci_high": acc + 3,
            "accuracy_by_type": by_type, "est_encoder_ms": ttft * 0.5, "est_projector_ms": ttft * 0.1,
            "est_prefill_ms": ttft * 0.4, "est_ttft_ms": ttft, "est_decode_tok_s": 30.0, "pareto_latency": pl,
            "pareto_macs": pm, "val_curves": curves, "seeds": [0, 1]}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    df = pd.DataFrame([
        _row("mlp", 70.0, 120.0, 2e9, True, True, by_type={"count": 60.0, "color": 80.0}, curves=_curves(1.0)),
        _row("ldp", 74.0, 180.0, 3e9, True, True, by_type={"count": 66.0, "color": 82.0}, curves=_curves(2.0)),
        _row("resampler", 68.0, 200.0, 4e9) | {"accuracy_warning": "only 6 test questions: this accuracy means little",
                                               "load_warning": "timed on a loaded machine: 2.10x"},
        _row(EVIL, 78.0, 300.0, 6e9, True, True, by_type={"count": 70.0, "color": 86.0}),
        _row("qformer", NAN, NAN, 5e9, status="failed", error="RuntimeError: <oom> & friends"),
    ])
    df.loc[4, ["accuracy_ci_low", "accuracy_ci_high", "est_encoder_ms", "est_projector_ms", "est_prefill_ms"]] = np.nan
    recs = [{"budget": "est_ttft_ms ≤ 200, params ≤ 20M", "device": "phone", "design": "ldp", "feasible": True,
             "reason": "best accuracy within budget <b>", "latency_ms": 180.0, "params": 6e6, "memory_mb": 120.0,
             "limits": {"latency_ms": 200.0, "params": 20e6}},
            {"budget": "est_ttft_ms ≤ 50", "device": "phone", "design": None, "feasible": False,
             "reason": "no design fits: fastest is mlp at 120 ms", "latency_ms": None, "params": None,
             "memory_mb": None}]
    provenance = {"command": "python -m projector_bench +sweep=ldp_vs_mlp", "git_commit": "abc123",
                  "config": {"sweep": {"projectors": ["mlp", "ldp"]}, "note": "</pre><script>x()</script>"}}
    validation = {"median_abs_error": 0.12, "per_design": {"mlp": {"measured_ms": 10.0, "estimated_ms": 11.0}}}
    path = write_report(df, tmp_path_factory.mktemp("reports") / "out", title="Projector sweep", device="phone",
                        latency_col="est_ttft_ms", recommendations=recs, provenance=provenance, validation=validation)
    return path, path.read_text(encoding="utf-8")


def test_report_is_written_self_contained_and_escaped(report):
    path, html = report
    assert path.exists() and re.fullmatch(r"report-\d{8}-\d{6}\.html", path.name)
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", html, re.IGNORECASE)
    assert "<link" not in html and "@import" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)" not in html and "<script>x()" not in html
    assert html.count("<script") == 1  # only the report's own image counter
    assert "RuntimeError: &lt;oom&gt; &amp; friends" in html
    for i in ["recommendations", "results-table", *PLOT_IDS]:
        assert f'id="{i}"' in html, i
    assert "12.0%" in html and "no design fits" in html and "abc123" in html
    assert "only 6 test questions: this accuracy means little; timed on a loaded machine: 2.10x" in html


def test_each_plot_is_an_embedded_png(report):
    _, html = report
    for i in PLOT_IDS:
        m = re.search(rf'<img id="{i}" alt="[^"]+" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
        assert m, i
        assert base64.b64decode(m.group(1)).startswith(b"\x89PNG\r\n\x1a\n"), i


def _chromium():
    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium not installed: .ci/run should have installed it (apt-get install chromium)")
        pytest.skip("chromium not installed: apt-get install chromium")
    return exe


def _run_chromium(tmp_path, *args):
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.browser
def test_chromium_loads_every_plot(report, tmp_path):
    path, _ = report
    dom = _run_chromium(tmp_path, "--dump-dom", path.as_uri()).stdout
    assert re.search(rf'<body[^>]*data-images-loaded="{len(PLOT_IDS)}"', dom), dom[:500]
    assert 'id="results-table"' in dom and 'id="recommendations"' in dom


@pytest.mark.browser
def test_chromium_screenshot_is_not_blank(report, tmp_path):
    from PIL import Image

    path, _ = report
    shot = tmp_path / "shot.png"
    _run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", path.as_uri())
    with Image.open(shot) as img:
        rgb = img.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 24)
        assert rgb.size == (1280, 2000)
    assert len(colours) > 20 and rgb.getextrema() != ((255, 255), (255, 255), (255, 255))


def _budget_rows():
    rows = [("mlp", 576, 99.7, 99.4, 100.0, 900.0), ("c_abstractor", 144, 99.0, 98.5, 99.4, 500.0),
            ("resampler", 144, 98.7, 98.0, 99.3, 520.0), ("pixel_shuffle", 144, 95.0, 94.0, 96.0, 480.0),
            ("c_abstractor", 64, 97.0, 96.0, 98.0, 400.0), ("resampler", 64, 90.0, 88.0, 92.0, 410.0)]
    return pd.DataFrame([{"projector": p, "status": "ok", "tokens_out": t, "token_budget": t, "acc_tokens_out": t // 4,
                          "accuracy": a, "accuracy_ci_low": lo, "accuracy_ci_high": hi, "est_ttft_ms": ms}
                         for p, t, a, lo, hi, ms in rows])


def test_token_budgets_say_which_design_keeps_the_most_and_which_tie_with_it():
    from projector_bench.analysis.choose import design_label, token_budgets

    df = _budget_rows()
    assert list(design_label(df)) == ["mlp", "c_abstractor@144", "resampler@144", "pixel_shuffle", "c_abstractor@64",
                                      "resampler@64"]
    b = {x["tokens"]: x for x in token_budgets(df)}
    assert list(b) == [576, 144, 64]
    # resampler@144: a gap of 0.3 against hypot(0.5, 0.6) = 0.78, a tie; pixel_shuffle: 4.0 against 1.1
    assert b[144]["verdict"] == ("144 tokens: c_abstractor@144 keeps the most, 99.0% [98.5, 99.4]; "
                                 "tied with it: resampler@144")
    assert b[64]["verdict"].endswith("every other design is below it") and "only mlp" in b[576]["verdict"]
    # rows of any other sweep have no budget: no verdicts, and labels that do not repeat get no suffix
    other = df.assign(token_budget=None).drop_duplicates("projector")
    assert token_budgets(other) == [] and token_budgets(df.drop(columns="token_budget")) == []
    assert list(design_label(other)) == ["mlp", "c_abstractor", "resampler", "pixel_shuffle"]


def test_report_shows_the_token_budgets_and_their_plot(tmp_path):
    from projector_bench.analysis.choose import token_budgets

    df = _budget_rows()
    path = write_report(df, tmp_path, title="budgets", device="phone", latency_col="est_ttft_ms", recommendations=[],
                        provenance={}, budgets=token_budgets(df))
    html = path.read_text(encoding="utf-8")
    assert 'id="budgets"' in html and 'id="plot-token-budgets"' in html
    assert "c_abstractor@144 keeps the most" in html and "98.7 [98.0, 99.3]" in html


def test_report_says_what_the_estimates_are_on_each_device(tmp_path):
    calibrated = "calibrated on 7 published points (4 workloads; median leave-one-out error 21%)"
    df = pd.DataFrame([_row("mlp", 70.0, 120.0, 2e9) | {"est_ttft_ms_bound": 30.0, "est_basis": calibrated}])
    recs = [{"budget": "ttft ≤ 200 ms", "device": "phone", "design": "mlp", "feasible": True, "reason": "r",
             "basis": calibrated},
            {"budget": "ttft ≤ 200 ms", "device": "pi", "design": "mlp", "feasible": True, "reason": "r",
             "basis": "roofline bound (assumed efficiencies; no published points for this device)"}]
    html = write_report(df, tmp_path, title="t", device="phone", latency_col="est_ttft_ms", recommendations=recs,
                        provenance={}).read_text(encoding="utf-8")
    assert re.search(r'Device: <b>phone</b>\. <span id="estimate-basis">'
                     r'Estimates \(est_\*\) on it: calibrated on 7 published points', html)
    assert "<li><b>pi</b>: roofline bound (assumed efficiencies; no published points for this device). r.</li>" in html
    assert "<th>… uncalibrated bound</th>" in html and "<td>30 ms</td>" in html  # among every column


def test_non_finite_values_count_as_missing_in_every_decision():
    from projector_bench.analysis.choose import finite, recommend, token_budgets
    from projector_bench.core.budget import Budget, missing

    assert missing(float("inf")) and missing(-np.inf) and missing(NAN) and not missing(10**30) and not missing(0.0)
    df = pd.DataFrame([_row("mlp", np.inf, 100.0, 2e9), _row("ldp", 60.0, 150.0, 3e9), _row("pool", 50.0, 90.0, 1e9)])
    df["design_params"], df["design_mem_mb"] = df["params"], df["peak_mem_mb"]
    assert finite(df)["accuracy"].isna().tolist() == [True, False, False]
    r = recommend(df, Budget(latency_ms=200), "phone")
    assert r.design == "ldp" and "1 without an accuracy is left out" in r.reason and "inf" not in r.reason
    df.loc[1, "design_params"] = np.inf  # an unknown cost is never within its limit
    r = recommend(df, Budget(params=1e12), "phone")
    assert r.design == "pool" and "inf" not in r.reason
    budgets = _budget_rows()
    budgets.loc[1, "accuracy"] = np.inf
    budgets.loc[2, ["accuracy_ci_low", "accuracy_ci_high"]] = [-np.inf, np.inf]
    verdict = {b["tokens"]: b["verdict"] for b in token_budgets(budgets)}[144]
    assert verdict.startswith("144 tokens: resampler@144 keeps the most, 98.7%; ") and "inf" not in verdict


def test_a_report_reads_study_storage_without_creating_it(tmp_path):
    from projector_bench.analysis.report import _readable_storage

    db = tmp_path / "optuna.db"
    assert _readable_storage(None, tmp_path) is None and _readable_storage(f"sqlite:///{db}", tmp_path) is None
    assert _readable_storage(f"journal:{tmp_path}/j.log", tmp_path) is None
    assert _readable_storage("sqlite://", tmp_path) is None
    db.write_bytes(b"")
    (tmp_path / "j.log").write_bytes(b"")
    assert _readable_storage(None, tmp_path) == _readable_storage(f"sqlite:///{db}", tmp_path) == \
        f"sqlite:///file:{db}?mode=ro&uri=true"
    assert _readable_storage(f"journal:{tmp_path}/j.log", tmp_path) == f"journal:{tmp_path}/j.log"
    assert _readable_storage("postgresql://u@h/db", tmp_path) == "postgresql://u@h/db"  # as the search opens it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.log", "optuna.db"]


# ---- the default sweep's own rows: `python -m projector_bench +sweep=ldp_vs_mlp deploy.runtime=null` at commit
# 178fe05 on 2 cores of an AMD EPYC (their env_* columns say so), read as a user's table would be
SWEEP_ROWS = os.path.join(os.path.dirname(__file__), "sweep_ldp_vs_mlp")
PHONES = ("snapdragon888_cpu", "snapdragon888_gpu", "snapdragon778g_cpu", "apple_a17_pro")


def _sweep_rows(exports: bool = True) -> pd.DataFrame:
    """The rows, with the `exports` a default sweep records where ExecuTorch is not installed."""
    from projector_bench.costs import deploy
    from projector_bench.jobs.results import load_results

    df = load_results(SWEEP_ROWS)
    if exports:
        why = {"executorch":
               f"not measured: {deploy.unavailable() or 'executorch is not installed; ' + deploy.INSTALL}"}
        df["exports"] = [why] * len(df)
    return df


def _device(name: str):
    from omegaconf import OmegaConf

    from projector_bench.core.settings import config_dir
    from projector_bench.costs.roofline import device_from_config

    return device_from_config(OmegaConf.to_container(OmegaConf.load(config_dir() / "device" / f"{name}.yaml")),
                              threads=1)


@pytest.mark.parametrize("device", PHONES)
def test_the_pick_on_every_phone_is_the_fastest_design_within_the_tolerance_of_the_best(device):
    from projector_bench.analysis.choose import add_estimates, design_label, recommend
    from projector_bench.core.budget import Budget

    df = add_estimates(_sweep_rows(), _device(device))
    r = recommend(df, Budget(), device)
    df["label"] = design_label(df)
    close = df[df["accuracy"] >= df["accuracy"].max() - 0.5]
    assert r.design == close.sort_values("est_ttft_ms")["label"].iloc[0], r.reason
    assert r.design != "bottleneck_transformer" and "points more accurate at" in r.tradeoff


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory):
    """The HTML report of the default sweep's rows on a phone, as `python -m projector_bench report` writes it."""
    from hydra import compose, initialize_config_dir

    from projector_bench.analysis.report import build_report
    from projector_bench.core.settings import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["device=snapdragon888_cpu"])
    path = build_report(_sweep_rows(), cfg, tmp_path_factory.mktemp("sweep"), {"command": "test"})
    return path, path.read_text(encoding="utf-8")


def test_the_report_says_numbers_as_a_person_reads_them(sweep_report):
    _, html = sweep_report
    text = re.sub(r'src="data:image/png;base64,[^"]+"', "", html)
    assert not re.findall(r"\d[eE][+-]\d", text)  # no 1.068e+05 anywhere
    assert "56.3 s" in text and "6.32M" in text and "ms</td>" in text


def test_the_report_has_one_recommendation_table_for_every_device(sweep_report):
    _, html = sweep_report
    table = re.search(r'<table id="recommendations">(.*?)</table>', html, re.S).group(1)
    rows = re.findall(r"<tr class=[^>]*>(.*?)</tr>", table, re.S)
    assert len(rows) == 6 and all("<td>ldpv2</td>" in r or "<td>ldp_int8</td>" in r for r in rows)
    assert "bottleneck_transformer is 0.4 points more accurate at 1.9× the time" in table
    assert table.count("the pick") >= 6  # the fastest within the tolerance is the pick itself


def test_a_value_every_row_shares_is_said_once_above_the_table(sweep_report):
    _, html = sweep_report
    results = re.search(r'<table id="results-table">(.*?)</table>', html, re.S).group(1)
    notes = re.findall(r'<p class="note constant">(.*?)</p>', html)
    assert any(n.startswith("Every design: exports: executorch: not measured: ") for n in notes), notes
    assert "not measured" not in results and "<th>status</th>" not in results


def _figure_boxes(fig):
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    return r, [t.get_window_extent(r) for ax in fig.axes for t in ax.texts]


def _intersect(a, b) -> bool:
    return min(a.x1, b.x1) > max(a.x0, b.x0) and min(a.y1, b.y1) > max(a.y0, b.y0)


@pytest.mark.parametrize("x", ["est_ttft_ms", "gmacs"])
def test_pareto_labels_do_not_overlap_and_the_legend_covers_no_data(x):
    from projector_bench.analysis.choose import add_estimates, design_label, pareto_mask
    from projector_bench.analysis.report import _pareto_plot

    df = add_estimates(_sweep_rows(), _device("snapdragon888_cpu"))
    df["design"], df["gmacs"] = design_label(df), df["macs"] / 1e9
    df["front"] = pareto_mask(df, x)
    fig = _pareto_plot(df, x, "front", x, "t", None, ms=x.endswith("_ms"))
    r, boxes = _figure_boxes(fig)
    assert len(boxes) >= 3  # the grid designs that score alike share a label: 9 designs, fewer labels
    assert sum(len(re.split(r", |\n", t.get_text())) for t in fig.axes[0].texts) == len(df)  # each named once
    for i, a in enumerate(boxes):
        assert all(not _intersect(a, b) for b in boxes[:i]), [t.get_text() for t in fig.axes[0].texts]
    legend = fig.axes[0].get_legend().get_window_extent(r)
    assert not _intersect(legend, fig.axes[0].get_window_extent(r))


def test_labels_of_many_crowded_points_do_not_overlap():
    import matplotlib.pyplot as plt

    from projector_bench.analysis.report import place_labels

    rng = np.random.default_rng(0)
    x, y = list(10 ** rng.uniform(2, 3, 16)), list(rng.uniform(60, 100, 16))
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter(x, y)
    ax.set(xscale="log")
    ax.margins(0.25)
    fig.canvas.draw()
    texts = place_labels(ax, x, y, [f"design_{i}" for i in range(16)])
    _, boxes = _figure_boxes(fig)
    inside = ax.get_window_extent()
    assert len(texts) >= 12
    for i, a in enumerate(boxes):
        assert all(not _intersect(a, b) for b in boxes[:i])
        assert inside.x0 <= a.x0 and a.x1 <= inside.x1 and inside.y0 <= a.y0 and a.y1 <= inside.y1
    plt.close(fig)


def test_the_type_bars_keep_their_legend_off_the_bars():
    from projector_bench.analysis.choose import design_label
    from projector_bench.analysis.report import _accuracy_by_type_plot

    df = _sweep_rows()
    df["design"] = design_label(df)
    fig = _accuracy_by_type_plot(df)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    legend = fig.axes[0].get_legend().get_window_extent(r)
    assert not any(_intersect(legend, p.get_window_extent(r)) for p in fig.axes[0].patches)


@pytest.mark.browser
def test_the_default_sweeps_report_fits_a_1280_pixel_screen(sweep_report, tmp_path):
    path, _ = sweep_report
    dom = _run_chromium(tmp_path, "--window-size=1280,800", "--dump-dom", path.as_uri()).stdout
    width = int(re.search(r'data-page-width="(\d+)"', dom).group(1))
    overflow = int(re.search(r'data-table-overflow="(-?\d+)"', dom).group(1))
    assert width <= 1280 and overflow <= 0, (width, overflow)


def test_the_terminal_summary_and_recommendation_are_free_of_scientific_notation():
    from projector_bench.analysis.choose import add_estimates, recommend
    from projector_bench.analysis.tables import picks, summary
    from projector_bench.core.budget import Budget

    df = add_estimates(_sweep_rows(), _device("snapdragon888_cpu"))
    text = summary(df) + picks([recommend(df, Budget(), "snapdragon888_cpu")])
    assert not re.findall(r"\d[eE][+-]\d", text) and "56,330" in text, text  # est_ttft_ms of ldpv2 on the phone
    assert re.search(r"snapdragon888_cpu  ldpv2  56.3 s +99.4%  "
                     r"bottleneck_transformer is 0.4 points more accurate", text)
