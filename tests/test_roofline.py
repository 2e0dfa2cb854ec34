"""Per-op traces against hand counts and fvcore, device profiles as data, the LM's ops, the budget's choice."""
import json
import math
import time

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from projector_bench import create_projector, list_projectors
from projector_bench.analysis.choose import add_estimates, pareto_mask, recommend
from projector_bench.core.budget import Budget
from projector_bench.core.errors import ConfigError
from projector_bench.core.ops import totals
from projector_bench.core.settings import config_dir, group_choices
from projector_bench.costs import roofline
from projector_bench.costs.measure import MATMUL_OPS, count_flops
from projector_bench.costs.roofline import (
    Device,
    calibrate_host,
    device_from_config,
    estimate_row,
    trace_ops,
    trace_timm_on_meta,
)
from projector_bench.models.lm import LanguageModel

TARGETS = [d for d in group_choices("device") if d != "host"]


def matmul_flops(ops) -> int:
    return sum(op[2] * op[4] for op in ops if op[0] in ("matmul", "conv", "depthwise_conv", "attention"))


def lm(name="mobilellama_1.4b") -> LanguageModel:
    return LanguageModel.from_config(yaml.safe_load((config_dir() / "lm" / f"{name}.yaml").read_text()))


def target(name: str) -> Device:
    cfg = yaml.safe_load((config_dir() / "device" / f"{name}.yaml").read_text())
    return device_from_config(cfg, threads=1)


def test_a_linear_is_one_matmul_with_its_flops_and_bytes():
    [[kind, dtype, flops, nbytes, count]] = trace_ops(nn.Linear(8, 4), torch.randn(3, 8))
    assert (kind, dtype, count) == ("matmul", "fp32", 1)
    assert flops == 2 * 3 * 8 * 4
    assert nbytes == 4 * (3 * 8 + 4 * 8 + 4 + 3 * 4)  # input, weight, bias, output


def test_convolutions_are_told_apart_and_views_are_free():
    x = torch.randn(1, 4, 6, 6)
    dw = {op[0]: op for op in trace_ops(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), x)}
    pw = {op[0]: op for op in trace_ops(nn.Conv2d(4, 8, 1, bias=False), x)}
    assert dw["depthwise_conv"][2] == 2 * 4 * 9 * 36 and pw["conv"][2] == 2 * 4 * 8 * 36
    assert trace_ops(lambda t: t.permute(0, 2, 1).transpose(0, 1).reshape(6),
                     torch.randn(1, 2, 3).transpose(1, 2)) == []
    [copy] = trace_ops(lambda t: t.permute(0, 2, 1).reshape(6), torch.randn(1, 2, 3))  # a real copy is not free
    assert copy[0] == "elementwise" and copy[3] == 2 * 6 * 4


@pytest.mark.parametrize("name", [n for n in list_projectors() if n != "int8"])
def test_every_design_traces_the_macs_that_count_flops_counts(name):
    p = create_projector(name, 32, 48).eval()
    x = torch.randn(1, 64, 32)
    ops = trace_ops(p, x)
    fc = count_flops(p, x)
    assert matmul_flops(ops) == pytest.approx(2 * fc.matmul_macs, rel=1e-6)
    # the rest differs only by the conventions for cheap ops: fvcore counts a norm as 5 MACs an element (10
    # flops) and an activation as 1 MAC (2 flops), the roofline 1 op an element; so the roofline's cheap ops are
    # between a tenth of fvcore's and all of them
    cheap_fc = 2 * sum(v for k, v in fc.by_op.items() if k not in MATMUL_OPS)
    cheap_roof = totals(ops)["flops"] - matmul_flops(ops)
    assert 0.1 * cheap_fc <= cheap_roof <= cheap_fc
    dtypes = {op[1] for op in ops if op[0] == "matmul"}
    assert ("int8" in dtypes) if name.endswith("_int8") else (dtypes <= {"fp32"})


def test_a_timm_model_traced_on_meta_matches_its_real_count():
    import timm

    meta = matmul_flops(trace_timm_on_meta("vit_tiny_patch16_224", 224))
    real = count_flops(timm.create_model("vit_tiny_patch16_224", num_classes=0, global_pool="").eval(),
                       torch.randn(1, 3, 224, 224))
    assert meta == pytest.approx(2 * real.matmul_macs, rel=1e-6)


def test_an_op_is_limited_by_its_own_roof():
    d = Device("d", "target", {"fp32": 100.0}, memory_gbps=10.0, eff_compute=0.5, eff_memory=0.5, op_overhead_us=1.0)
    assert d.op_seconds("matmul", "fp32", 50e9, 1e6) == pytest.approx(1.0 + 1e-6)  # compute-bound: 50 / (100 * 0.5)
    assert d.op_seconds("elementwise", "fp32", 1e6, 5e9) == pytest.approx(1.0 + 1e-6)  # memory-bound: 5 / (10 * 0.5)
    assert d.op_seconds("matmul", "int8", 50e9, 0) == d.op_seconds("matmul", "fp32", 50e9, 0)  # no int8 peak: fp32's


@pytest.mark.parametrize("name", TARGETS)
def test_every_target_device_has_a_source_for_every_figure(name):
    cfg = yaml.safe_load((config_dir() / "device" / f"{name}.yaml").read_text())
    figures = [f"peak_gflops.{k}" for k in cfg["peak_gflops"]] + ["memory_gbps", "efficiency", "op_overhead_us"]
    assert all(str(cfg["sources"].get(f, "")).strip() for f in figures), set(figures) - set(cfg["sources"])
    dev = target(name)
    assert dev.kind == "target" and dev.peak_gflops["fp32"] > 0 and dev.memory_gbps > 0 and 0 < dev.eff_compute <= 1


def test_a_device_without_its_figures_is_a_one_line_error():
    with pytest.raises(ConfigError, match="needs peak_gflops.fp32 and memory_gbps"):
        device_from_config({"name": "phone", "kind": "target", "peak_gflops": {"fp16": 1.0}}, threads=1)


def test_host_calibration_measures_every_roof():
    host = calibrate_host(threads=1)
    # in the units the roofline divides by: GFLOP/s and GB/s (not FLOP/s or bytes/s), µs per op
    assert host.kind == "host" and 1 < host.peak_gflops["fp32"] < 5000 and 0.5 < host.memory_gbps < 2000
    assert host.peak_gflops["fp16"] >= host.peak_gflops["fp32"] and 0.01 < host.op_overhead_us < 1000
    assert set(host.kind_gflops) == {"conv", "depthwise_conv", "attention", "elementwise", "reduction"}
    assert set(host.roofs) == {"fp32", "fp16"} and host.roofs["fp32"].startswith("fp32 GEMM ")


def test_a_kernel_slower_than_the_bound_is_timed_once():
    calls = []

    def slow():
        calls.append(1)
        time.sleep(roofline.SLOW_CALL_S * 1.2)

    t = roofline._seconds(slow)
    assert t.calls == 1 and len(calls) == 1 and t.seconds >= roofline.SLOW_CALL_S


def test_roofs_measured_on_a_loaded_machine_are_measured_again_and_the_quieter_kept(tmp_path, monkeypatch):
    from dataclasses import asdict, replace

    loaded = Device("host", "host", {"fp32": 0.1}, 1.0, cpu_share=0.3)  # a first run beside a busy neighbour
    quiet = replace(loaded, peak_gflops={"fp32": 80.0}, cpu_share=0.97)
    key = roofline.host_key(1)
    (tmp_path / "host_device.json").write_text(json.dumps({key: asdict(loaded)}))
    calls = []
    monkeypatch.setattr(roofline, "_calibrated", lambda threads: calls.append(threads) or quiet)
    assert roofline.host_device(1, tmp_path).peak_gflops["fp32"] == 80.0 and calls == [1]
    assert json.loads((tmp_path / "host_device.json").read_text())[key]["cpu_share"] == 0.97
    assert roofline.host_device(1, tmp_path).peak_gflops["fp32"] == 80.0 and calls == [1]  # quiet now: cached
    assert "loaded machine" in loaded.estimate_basis() and "loaded" not in quiet.estimate_basis()


def test_gemm_sizes_stop_before_a_call_would_be_slow(monkeypatch):
    """A dtype whose GEMM is 200x slower than fp32 here (bf16 on a CPU without bf16 instructions) is measured at
    the sizes whose one call stays under the bound, not at 2048 (a minute a call on such a CPU)."""
    sizes = []

    def fake(n, dtype):
        sizes.append(n)
        return roofline.Timed(2 * n**3 / 0.3e9, 1)  # 0.3 GFLOP/s

    monkeypatch.setattr(roofline, "_gemm_seconds", fake)
    rate, at, calls = roofline._gemm(torch.bfloat16)
    assert sizes == [128, 256] and at in (128, 256) and rate == pytest.approx(0.3) and calls == 2


def test_mobilellama_dimensions_give_its_published_size():
    assert lm().params == pytest.approx(2.73e9 / 2, rel=0.005)  # its fp16 checkpoint: 2.73 GB
    assert lm("mobilellama_2.7b").params == pytest.approx(2.7e9, rel=0.01)


@pytest.mark.parametrize("name, params", [("llama2_7b", 6_738_415_616), ("llama2_13b", 13_015_864_320),
                                          ("llama2_70b", 68_976_648_192)])
def test_llama2_dimensions_give_its_exact_parameter_count(name, params):
    assert lm(name).params == params  # 70B: grouped-query attention, K and V are 8 heads of 128 wide


def test_grouped_query_attention_shrinks_the_kv_projections_and_cache_only():
    gqa = lm("llama2_70b")
    mha = LanguageModel.from_config(vars(gqa) | {"kv_heads": 0})
    assert mha.params - gqa.params == mha.layers * 2 * gqa.hidden * (gqa.hidden - 1024)
    attn = lambda m: next(o for o in m.decode_ops(1000) if o.kind == "attention")  # noqa: E731
    assert attn(mha).flops == attn(gqa).flops and attn(mha).bytes > 7 * attn(gqa).bytes
    with pytest.raises(ConfigError, match="lm.kv_heads must be 0 .* divide lm.heads=64, got 7"):
        LanguageModel.from_config(vars(gqa) | {"kv_heads": 7})


def test_prefill_is_two_flops_per_weight_per_token_plus_attention_and_decode_reads_every_weight():
    m = lm()
    body = m.params - 2 * m.vocab * m.hidden  # embeddings are looked up, not multiplied; the head runs once
    prefill = totals(m.prefill_ops(144))["flops"]
    assert prefill == pytest.approx(2 * body * (144 + m.prompt_tokens), rel=0.05)
    decode = totals(m.decode_ops(176))
    assert decode["bytes"] == pytest.approx((m.params - m.vocab * m.hidden) * 2, rel=0.02)
    with pytest.raises(ConfigError, match="lm.hidden=100 is not a multiple of lm.heads=16"):
        LanguageModel.from_config({"name": "x", "hidden": 100, "layers": 1, "heads": 16, "intermediate": 4, "vocab": 8})


@pytest.fixture(scope="module")
def mobilevlm_rows():
    """mlp and ldp at MobileVLM 1.7B's shapes with CLIP ViT-L/14's ops, as a sweep records them."""
    x = torch.randn(1, 576, 1024)
    enc = [list(op) for op in trace_timm_on_meta("vit_large_patch14_clip_336", 336)]
    rows = []
    for name in ("mlp", "ldp"):
        p = create_projector(name, 1024, 2048).eval()
        rows.append({"projector": name, "tokens_out": p.num_tokens_out((24, 24)), "ops": trace_ops(p, x),
                     "encoder_ops": enc})
    return rows


def test_ldp_costs_more_itself_but_wins_end_to_end_on_a_phone(mobilevlm_rows):
    mlp, ldp = (estimate_row(r, target("snapdragon888_cpu"), lm()) for r in mobilevlm_rows)
    assert ldp["est_projector_ms"] > mlp["est_projector_ms"]
    assert ldp["est_prefill_ms"] < mlp["est_prefill_ms"] / 3  # 144 + 32 tokens instead of 576 + 32
    assert ldp["est_ttft_ms"] < mlp["est_ttft_ms"]
    assert ldp["est_ttft_ms"] == pytest.approx(ldp["est_encoder_ms"] + ldp["est_projector_ms"] + ldp["est_prefill_ms"])
    assert ldp["est_decode_tok_s"] > mlp["est_decode_tok_s"] > 0  # a shorter KV cache to read


def test_pareto_front_by_hand():
    df = pd.DataFrame({"cost": [1, 2, 3, 2, 5], "accuracy": [50, 60, 55, 60, 70]})
    # equal points do not dominate each other
    assert pareto_mask(df, "cost").tolist() == [True, True, False, True, True]


def table(**cols) -> pd.DataFrame:
    base = {"projector": ["mlp", "ldp", "pool"], "status": ["ok"] * 3, "encoder": ["none"] * 3,
            "est_ttft_ms": [3000.0, 1500.0, 900.0], "params": [6.3e6, 18.9e6, 6.3e6], "peak_mem_mb": [35.0, 92.0, 35.0],
            "accuracy": [70.7, 51.9, 51.0], "accuracy_ci_low": [68.7, 49.7, 48.8],
            "accuracy_ci_high": [72.7, 54.1, 53.2]}
    return pd.DataFrame(base | cols).assign(design_params=lambda d: d.params, design_mem_mb=lambda d: d.peak_mem_mb)


def test_the_cheapest_design_as_accurate_as_the_best_within_budget_is_recommended_with_a_reason():
    r = recommend(table(), Budget(latency_ms=2000), "phone")
    # ldp is the most accurate within 2000 ms, but pool's gap of 0.9 is within hypot(51.9 - 49.7, 53.2 - 51.0) = 3.1:
    # statistically tied, so the faster pool is picked, and the reason says what it gives up
    assert r.feasible and r.design == "pool" and r.most_accurate["design"] == "ldp" and r.fastest_within is None
    assert r.reason == ("pool: 900 ms to the first token on phone, 51.0%; ldp is 0.9 points more accurate at 1.7× the "
                        "time (statistically tied: the 95% interval of the difference is ±3.1) (2 of 3 designs within "
                        "ttft ≤ 2000 ms)")
    assert r.tradeoff == "ldp is 0.9 points more accurate at 1.7× the time"
    top = recommend(table(), Budget(), "phone")  # mlp's 18.8 over ldp against ±3.0: no tie, no tolerance
    assert top.design == "mlp" and top.most_accurate is None and top.reason == (
        "mlp: 3.0 s to the first token on phone, 70.7%, the most accurate; the next, ldp, is 18.8 points below, "
        "outside the 95% interval of the difference (±3.0) at 0.5× the time")
    no_ci = recommend(table(accuracy_ci_low=[math.nan] * 3), Budget(latency_ms=2000), "phone")
    assert no_ci.design == "ldp" and "the next, pool, is 0.9 points below at 0.6× the time" in no_ci.reason  # no claim
    assert recommend(table(), Budget(params=10e6, memory_mb=50), "phone").design == "mlp"
    strict = recommend(table(), Budget(latency_ms=2000, accuracy_tolerance=0.0), "phone")
    assert strict.design == "pool"  # a statistical tie is equal at any tolerance


def test_a_gap_within_the_tolerance_decides_nothing_however_significant():
    """The most accurate is 0.4 points ahead at 2.3x the latency, a gap thousands of test questions make
    significant: the faster design is picked, and the reason says what was given up and what was gained."""
    df = table(projector=["bottleneck_transformer", "ldpv2", "pool"], est_ttft_ms=[18_300.0, 8_000.0, 3_000.0],
               accuracy=[99.7, 99.3, 67.0], accuracy_ci_low=[99.65, 99.25, 66.0], accuracy_ci_high=[99.75, 99.35, 68.0])
    r = recommend(df, Budget(), "snapdragon888_cpu")
    assert r.design == "ldpv2" and r.most_accurate == {"design": "bottleneck_transformer", "latency_ms": 18_300.0,
                                                       "accuracy": 99.7}
    assert r.reason.startswith("ldpv2: 8.0 s to the first token on snapdragon888_cpu, 99.3%; bottleneck_transformer is "
                               "0.4 points more accurate at 2.3× the time (within the 0.5-point tolerance)")
    assert recommend(df, Budget(accuracy_tolerance=0.3), "snapdragon888_cpu").design == "bottleneck_transformer"
    assert recommend(df, Budget(latency_ms=5000), "snapdragon888_cpu").design == "pool"  # the only one that fits


def test_a_statistical_tie_beyond_the_tolerance_names_the_fastest_within_it():
    df = table(projector=["a", "b", "c"], est_ttft_ms=[3000.0, 2000.0, 1000.0], accuracy=[80.0, 79.8, 77.0],
               accuracy_ci_low=[75.0, 75.0, 72.0], accuracy_ci_high=[85.0, 85.0, 82.0])
    r = recommend(df, Budget(), "phone")
    assert r.design == "c" and r.fastest_within["design"] == "b" and r.most_accurate["design"] == "a"
    assert "(statistically tied: the 95% interval of the difference is ±7.1)" in r.reason


def test_a_pick_whose_accuracy_carries_a_warning_says_so():
    warned = table(accuracy_warning=[None, None,
                                     "only 12 test questions: this accuracy and its interval mean little; give"])
    r = recommend(warned, Budget(latency_ms=2000), "phone")
    assert r.design == "pool" and r.reason.endswith("; pool's accuracy warns: only 12 test questions")
    assert "warns" not in recommend(warned, Budget(), "phone").reason  # mlp's row has none


def test_an_impossible_budget_says_so_and_names_the_closest_design():
    r = recommend(table(), Budget(latency_ms=100), "phone")
    assert not r.feasible and r.design == "pool" and "no design fits" in r.reason and (
        "9.0× over the latency_ms limit" in r.reason)
    assert "900 ms to the first token on phone" in r.reason


def test_without_accuracy_the_fastest_within_budget_is_picked():
    r = recommend(table(accuracy=[math.nan] * 3), Budget(latency_ms=2000), "phone")
    assert r.feasible and r.design == "pool" and "fastest" in r.reason


def test_bad_budgets_are_one_line_errors():
    with pytest.raises(ConfigError, match="budget.latency='gpu' is not one of: ttft, vision, projector"):
        Budget(latency="gpu")
    with pytest.raises(ConfigError, match="budget.params must be positive or null"):
        Budget(params=0)
    with pytest.raises(ConfigError,
                       match="budget.accuracy_tolerance must be a number of accuracy points from 0 to 100"):
        Budget(accuracy_tolerance=-1)


def test_estimates_are_added_per_row_from_its_own_lm(mobilevlm_rows):
    rows = [r | {"status": "ok", "params": 1.0, "peak_mem_mb": 1.0, "config": {"lm": {**vars(lm())}}}
            for r in mobilevlm_rows]
    rows[1] |= {"encoder_params": 5.0, "encoder_peak_mem_mb": 2.0}  # an encoder that is part of the design counts
    df = add_estimates(pd.DataFrame(rows + [{"projector": "old", "status": "ok"}]), target("raspberry_pi5"))
    assert (df["device"] == "raspberry_pi5").all() and df["est_ttft_ms"].iloc[:2].gt(0).all()
    assert df["design_params"].iloc[:2].tolist() == [1.0, 6.0] and df["design_mem_mb"].iloc[:2].tolist() == [1.0, 3.0]
    assert math.isnan(df["est_ttft_ms"].iloc[2])  # a row recorded before ops were: no estimate, not a wrong one


@pytest.mark.parametrize("device,prompt_tok_s,decode_tok_s", [
    ("snapdragon888_cpu", 19.7, 14.1),  # llama.cpp docs/multimodal/MobileVLM.md: MobileVLM-1.7B q4_k, 4 threads
    ("jetson_orin", 801.7, 65.6),
])
def test_a_roofline_bounds_the_published_llama_cpp_speeds(device, prompt_tok_s, decode_tok_s):
    """No real runtime beats the roofs: a published speed above the uncalibrated estimate (the profile's assumed
    efficiencies, kept as `bound` once the device is calibrated on those same speeds) would mean a wrong profile."""
    m = LanguageModel.from_config(vars(lm()) | {"weight_bits": 4.5, "prompt_tokens": 0})
    d = target(device).bound
    assert 256 / (d.latency_ms(m.prefill_ops(256)) / 1e3) > prompt_tok_s
    assert 1e3 / d.latency_ms(m.decode_ops(256)) > decode_tok_s


def test_a_damaged_host_cache_is_named_and_measured_again(tmp_path, caplog, monkeypatch):
    from projector_bench.costs import roofline

    (tmp_path / "host_device.json").write_text('{"trunc')
    fake = roofline.Device("host", "host", {"fp32": 1.0}, 1.0, 1.0, 1.0, 1.0)
    monkeypatch.setattr(roofline, "_calibrated", lambda threads: fake)
    assert roofline.host_device(1, tmp_path) == fake
    assert any("host_device.json could not be read" in r.getMessage() for r in caplog.records)
    assert roofline.host_device(1, tmp_path) == fake  # rewritten: read back without a warning


def test_eager_and_xnnpack_roofs_time_one_kernel_table():
    """Both calibrations read `kernels.kernels()`: the op kinds a device holds each have a kernel there, with its
    work at MobileVLM's shape."""
    from projector_bench.core.shapes import MOBILEVLM
    from projector_bench.costs import deploy, roofline
    from projector_bench.costs.kernels import KINDS, kernels

    table = kernels()
    assert set(KINDS) <= set(table) and deploy.kernels is roofline.kernels is kernels
    assert table["fp32"].work == 2 * MOBILEVLM.tokens * MOBILEVLM.lm_dim**2 == 2 * 576 * 2048 * 2048
    for name, k in table.items():
        y = k.make().eval()(*k.inputs)  # every kernel runs on its inputs
        assert torch.isfinite(y).all(), name
