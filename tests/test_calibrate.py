"""Target devices calibrated on published points: the fit, leave-one-out, the data, and both estimate families."""
import math
import re
import statistics

import pandas as pd
import pytest
import torch
import yaml

from projector_bench import create_projector
from projector_bench.analysis.choose import add_estimates, recommend
from projector_bench.core.budget import Budget
from projector_bench.core.errors import ConfigError
from projector_bench.core.settings import config_dir, group_choices
from projector_bench.costs import calibrate
from projector_bench.costs.calibrate import Efficiencies, Point, PointResult, calibrate_config, load_points, own_dtypes
from projector_bench.costs.roofline import Device, device_from_config, estimate_row
from projector_bench.costs.trace import trace_ops, trace_timm_on_meta
from projector_bench.models.lm import LanguageModel

from .conftest import HOST

EST = ["est_encoder_ms", "est_projector_ms", "est_prefill_ms", "est_vision_ms", "est_ttft_ms", "est_decode_tok_s"]
PROFILES = {d: yaml.safe_load((config_dir() / "device" / f"{d}.yaml").read_text()) for d in group_choices("device")}
WITH_POINTS = [d for d, cfg in PROFILES.items() if cfg.get("measured")]
SOURCE = "https://example.org/doc"


def lm() -> LanguageModel:
    return LanguageModel.from_config(yaml.safe_load((config_dir() / "lm" / "mobilellama_1.4b.yaml").read_text()))


def synthetic_points(device: Device) -> list[Point]:
    """Points whose measured times are the roofline's own, on `device`: what a perfect fit must recover."""
    int8 = {"dtype": "int8", "weight_bits": 4.5}
    shapes = [("encode", {"projector": "ldpv2", "dtype": "fp16"}), ("prefill", {"tokens": 200, **int8}),
              ("prefill", {"tokens": 60, **int8}), ("decode", {"context": 100, **int8}),
              ("decode", {"context": 300, **int8})]
    out = []
    for i, (workload, kw) in enumerate(shapes):
        p = Point(workload, "mobilellama_1.4b", 1.0, group=f"g{i}", source=SOURCE, **kw)
        out.append(Point(**{**vars(p), "ms": device.latency_ms(calibrate.point_ops(p))}))
    return out


def test_pricing_with_arrays_is_the_devices_own():
    d = Device("d", "target", {"fp32": 100.0, "fp16": 200.0}, 20.0, 0.3, 0.6, 7.0, eff_compute_dtype={"fp16": 0.1})
    ops = calibrate.encode_ops("ldp", "fp16")[:5] + tuple(lm().step_ops(3, 10))
    eff = Efficiencies(0.3, 0.6, 7.0, (("fp16", 0.1),))
    assert calibrate.predict_ms(calibrate.work(ops, d.peak_gflops, d.memory_gbps), eff) == pytest.approx(
        d.latency_ms(ops), rel=1e-12)


def test_the_fit_recovers_known_efficiencies_from_the_models_own_points(monkeypatch):
    truth = Device("phone", "target", {"fp32": 200.0, "fp16": 400.0, "int8": 800.0}, 40.0, 0.06, 0.3, 40.0)
    points = synthetic_points(truth)
    works = [calibrate.work(calibrate.point_ops(p), truth.peak_gflops, truth.memory_gbps) for p in points]
    monkeypatch.setattr(calibrate, "PRIOR_WEIGHT", 0.0)  # exact data: the fit alone must land on the truth
    got = calibrate.fit(points, works, Efficiencies(0.5, 0.7, 5.0))
    assert (got.compute, got.memory, got.overhead_us) == pytest.approx((0.06, 0.3, 40.0), rel=1e-3)
    # the shipped prior steers what the points barely see: decode time splits between memory and per-op overhead
    # almost freely (both decode points run the same ops), so only compute and the predictions are pinned
    monkeypatch.setattr(calibrate, "PRIOR_WEIGHT", 0.05)
    got = calibrate.fit(points, works, Efficiencies(0.5, 0.7, 5.0))
    assert got.compute == pytest.approx(0.06, rel=0.02) and got.memory == pytest.approx(0.3, rel=0.2)
    assert all(calibrate.predict_ms(w, got) == pytest.approx(p.ms, rel=0.02) for p, w in zip(points, works))


def test_leave_one_out_error_is_relative_to_the_measurement_and_the_median_is_over_workloads():
    p = Point("decode", "mobilellama_1.4b", 100.0, "int8", 4.5, context=10, group="a", source=SOURCE)
    r = PointResult(p, fitted_ms=90.0, loo_ms=130.0, bound_ms=50.0)
    assert r.loo_error == pytest.approx(0.3) and r.bound_error == pytest.approx(0.5)
    assert calibrate.relative_error(70.0, 100.0) == pytest.approx(0.3)
    twin = PointResult(Point(**{**vars(p), "ms": 200.0}), 90.0, 130.0, 50.0)  # same group: its mean counts once
    other = PointResult(Point(**{**vars(p), "group": "b"}), 100.0, 110.0, 40.0)
    assert calibrate.group_median([r, twin, other], lambda x: x.loo_error) == pytest.approx(
        statistics.median([(0.3 + 0.35) / 2, 0.1]))


def test_repeats_are_left_out_together():
    truth = Device("phone", "target", {"fp32": 200.0, "fp16": 400.0, "int8": 800.0}, 40.0, 0.06, 0.3, 40.0)
    points = synthetic_points(truth)
    points[4] = Point(**{**vars(points[4]), "group": "g3", "ms": points[4].ms * 3})  # a repeat of g3 that disagrees
    works = [calibrate.work(calibrate.point_ops(p), truth.peak_gflops, truth.memory_gbps) for p in points]
    prior = Efficiencies(0.5, 0.7, 5.0)
    loo = calibrate.leave_one_out(points, works, prior)
    without = calibrate.fit(points[:3], works[:3], prior)  # neither decode point: the twin cannot predict its twin
    assert loo[3] == pytest.approx(calibrate.predict_ms(works[3], without)) and loo[4] == pytest.approx(
        calibrate.predict_ms(works[4], without))


def test_a_dtype_gets_its_own_compute_efficiency_only_when_two_workloads_use_it():
    def pts(*spec):
        return [Point("prefill" if d == "int8" else "encode", "mobilellama_1.4b", 1.0, d, group=g) for d, g in spec]

    assert own_dtypes(pts(("fp16", "a"), ("int8", "b"))) == []  # every shipped device: one shared efficiency
    assert own_dtypes(pts(("fp16", "a"), ("fp16", "b"))) == []  # one dtype: the shared one is its own
    assert own_dtypes(pts(("fp16", "a"), ("fp16", "b"), ("int8", "c"))) == ["fp16"]
    assert own_dtypes(pts(("fp16", "a"), ("fp16", "b"), ("int8", "c"), ("int8", "d"))) == ["int8"]


@pytest.mark.parametrize("name", WITH_POINTS)
def test_every_measured_entry_has_a_source_and_what_the_fit_needs(name):
    needs = {"encode": {"projector"}, "prefill": {"tokens", "weight_bits"}, "decode": {"context", "weight_bits"}}
    for m in PROFILES[name]["measured"]:
        assert re.match(r"https://\S+$", m["source"]), m
        assert {"workload", "model", "lm", "dtype", "precision", "runtime", "threads", "case"} <= set(m), m
        assert needs[m["workload"]] <= set(m) and ("ms" in m) != ("tok_s" in m), m
        assert (config_dir() / "lm" / f"{m['lm']}.yaml").exists() and m["dtype"] in PROFILES[name]["peak_gflops"]
    points = load_points(PROFILES[name]["measured"], name)
    assert all(p.ms > 0 for p in points) and len({p.group for p in points}) >= 3


def test_timings_of_one_workload_share_a_group_and_each_lm_is_its_own_workload():
    entry = {"workload": "decode", "context": 64, "weight_bits": 4.5, "dtype": "fp16", "source": SOURCE, "tok_s": 10.0}
    points = load_points([entry | {"lm": "mobilellama_1.4b"},
                          entry | {"lm": "mobilellama_1.4b", "case": "another source"},
                          entry | {"lm": "llama2_7b"},
                          {**entry, "workload": "encode", "projector": "ldp", "lm": "llama2_7b"},
                          {**entry, "workload": "encode", "projector": "ldpv2", "lm": "mobilellama_1.4b"}], "orin")
    assert [p.group for p in points] == ["decode mobilellama_1.4b"] * 2 + ["decode llama2_7b", "encode", "encode"]


def test_a_bad_measured_entry_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"conf/device/phone.yaml measured\[0\]: prefill needs tokens, weight_bits"):
        load_points([{"workload": "prefill", "lm": "mobilellama_1.4b", "dtype": "int8", "source": SOURCE, "ms": 1.0}],
                    "phone")
    with pytest.raises(ConfigError, match="workload must be one of encode, prefill, decode"):
        load_points([{"workload": "train"}], "phone")


@pytest.mark.parametrize("name", WITH_POINTS)
def test_a_device_with_points_is_calibrated_and_keeps_its_bound(name):
    dev = device_from_config(PROFILES[name], threads=1)
    cal = calibrate_config(PROFILES[name])
    assert dev.bound is not None and dev.bound.eff_compute == PROFILES[name]["efficiency"]["compute"]
    assert dev.eff_compute == cal.fitted.compute and 0 < dev.eff_compute <= 1 and 0 < dev.eff_memory <= 1
    assert re.fullmatch(r"calibrated on \d+ published points \(\d+ workloads; median leave-one-out error \d+%\)",
                        dev.estimate_basis())
    assert all(math.isfinite(r.loo_ms) and r.loo_ms > 0 for r in cal.results)
    # the published runtimes are slower than the roofline bound on every point, and the fit is far closer
    assert all(r.bound_ms < r.point.ms for r in cal.results)
    fitted = statistics.median(calibrate.relative_error(r.fitted_ms, r.point.ms) for r in cal.results)
    assert cal.median_bound > 0.3 and fitted < 0.3 and fitted < cal.median_bound / 2


@pytest.fixture(scope="module")
def mobilevlm_row():
    """ldp at MobileVLM 1.7B's shapes with CLIP ViT-L/14's ops, as a sweep records it (traced on meta)."""
    with torch.device("meta"):
        p = create_projector("ldp", 1024, 2048).eval()
        x = torch.empty(1, 576, 1024)
    return {"projector": "ldp", "status": "ok", "tokens_out": 144, "ops": [list(o) for o in trace_ops(p, x)],
            "encoder_ops": [list(o) for o in trace_timm_on_meta("vit_large_patch14_clip_336", 336)], "params": 1.0,
            "peak_mem_mb": 1.0, "config": {"lm": {**vars(lm())}}}


def test_estimate_row_returns_the_calibrated_estimate_and_the_bound(mobilevlm_row):
    dev = device_from_config(PROFILES["snapdragon888_cpu"], threads=1)
    out = estimate_row(mobilevlm_row, dev, lm())
    assert all(c in out and f"{c}_bound" in out for c in EST)
    assert out["est_basis"].startswith("calibrated on 7 published points")
    assert out["est_ttft_ms"] > 3 * out["est_ttft_ms_bound"] and out["est_decode_tok_s"] < out["est_decode_tok_s_bound"]
    assert out["est_ttft_ms"] == pytest.approx(out["est_encoder_ms"] + out["est_projector_ms"] + out["est_prefill_ms"])
    assert out["est_ttft_ms_bound"] == pytest.approx(estimate_row(mobilevlm_row, dev.bound, lm())["est_ttft_ms"])


def test_a_device_without_points_falls_back_to_the_bound_labelled(mobilevlm_row):
    dev = device_from_config(PROFILES["raspberry_pi5"], threads=1)
    out = estimate_row(mobilevlm_row, dev, lm())
    assert dev.bound is None and out["est_basis"].startswith("roofline bound")
    assert all(out[c] == out[f"{c}_bound"] for c in EST)
    host = estimate_row(mobilevlm_row, HOST, lm())
    assert host["est_basis"] == "measured roofs (host)" and all(host[c] == host[f"{c}_bound"] for c in EST)


def test_budgets_are_checked_against_the_calibrated_estimate(mobilevlm_row):
    dev = device_from_config(PROFILES["snapdragon888_cpu"], threads=1)
    df = add_estimates(pd.DataFrame([mobilevlm_row]), dev)
    calibrated, bound = df["est_ttft_ms"].iloc[0], df["est_ttft_ms_bound"].iloc[0]
    r = recommend(df, Budget(latency_ms=math.sqrt(calibrated * bound)), dev.name)  # the bound fits, the calibrated not
    assert not r.feasible and r.values["latency_ms"] == pytest.approx(calibrated)
    assert r.basis.startswith("calibrated on 7 published points")


def test_a_bad_published_point_is_one_line_before_any_job(tmp_path, monkeypatch, capsys):
    from .test_hostile import run_cli

    code, _, err = run_cli(monkeypatch, capsys, tmp_path,
                           ["device=snapdragon888_cpu", "device.measured.0.workload=boot"])
    assert code == 2 and "measured[0]: workload must be one of encode, prefill, decode, got 'boot'" in err
    assert not (tmp_path / "results" / "runs.jsonl").exists()


def test_the_fit_and_the_device_model_price_ops_alike():
    """`calibrate.predict_ms` (arrays, what the fit minimises) and `Device.latency_ms` (op by op, what estimates
    use) are one formula (`pricing.op_seconds`): a fitted device must predict what its fit saw."""
    ops = lm().step_ops(144, 0) + lm().step_ops(1, 600)
    peaks = {"fp32": 900.0, "fp16": 1800.0, "int8": 3600.0}
    eff = Efficiencies(0.3, 0.6, 4.0, (("fp16", 0.2),))
    dev = Device("d", "cpu", peaks, 40.0, eff.compute, eff.memory, eff.overhead_us, eff_compute_dtype={"fp16": 0.2})
    assert calibrate.predict_ms(calibrate.work(ops, peaks, 40.0), eff) == pytest.approx(dev.latency_ms(ops), rel=1e-12)
