"""Each FLOP handle against a tiny hand-built module with a hand-computed count (as fvcore's own tests)."""
import csv
import os
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from fvcore.nn import FlopCountAnalysis
from torch import nn

from projector_bench import create_projector, list_projectors
from projector_bench.core.settings import group_choices
from projector_bench.costs.measure import (
    _ELEMENTWISE,
    _REDUCTIONS,
    count_flops,
    count_params,
    float_twin,
    measure_latency,
    peak_memory_mb,
    size_mb,
)
from projector_bench.models.encoders import list_encoders


class SDPA(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_sdpa_handle_counts_both_products_and_the_softmax():
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 5)
    fc = count_flops(SDPA(), q, k, v)
    # Q·Kᵀ: 2 heads × 4 × 6 × 8; A·V: 2 × 4 × 6 × 5; softmax: 2 × 4 × 6 elements
    assert fc.by_op == {"scaled_dot_product_attention": 2 * 4 * 6 * (8 + 5), "attention_softmax": 48}
    assert fc.uncounted_ops == {}
    assert fc.torch_flops == 2 * fc.matmul_macs  # torch's counter, taught the CPU kernel, agrees


@pytest.mark.parametrize("act,op", [(nn.GELU(), "gelu"), (nn.Hardswish(), "hardswish"), (nn.SiLU(), "silu"),
                                    (nn.ReLU(), "relu"), (nn.Hardsigmoid(), "hardsigmoid"), (nn.Sigmoid(), "sigmoid")])
def test_activation_handles_count_one_op_per_element(act, op):
    fc = count_flops(act, torch.randn(2, 3, 5))
    assert fc.by_op == {op: 30} and fc.uncounted_ops == {}


class Arith(nn.Module):
    def forward(self, a, b):
        return (a + b) * b - a / 2, a.mean(dim=-1), a.softmax(-1)


def test_arithmetic_reduction_and_softmax_handles():
    fc = count_flops(Arith(), torch.randn(4, 5), torch.randn(4, 5))
    assert fc.by_op == {"add": 20, "mul": 20, "div": 20, "sub": 20, "mean": 20, "softmax": 20}
    assert fc.uncounted_ops == {}


def test_fvcore_linear_and_conv_counts_are_kept():
    fc = count_flops(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 25, 7)),
                     torch.randn(1, 3, 5, 5))
    assert fc.by_op == {"conv": 25 * 4 * 3 * 9, "linear": 100 * 7}
    assert fc.torch_flops == 2 * fc.macs


def test_quantized_linear_counts_the_macs_of_its_float_twin():
    f = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    q = torch.ao.quantization.quantize_dynamic(f, {nn.Linear}, dtype=torch.qint8)
    x = torch.randn(5, 8)
    with pytest.raises(RuntimeError):  # the hole we fill: fvcore alone cannot trace it
        FlopCountAnalysis(q, x).total()
    fq, ff = count_flops(q, x), count_flops(f, x)
    assert fq.by_op == ff.by_op == {"linear": 5 * 8 * 4 + 5 * 4 * 3, "relu": 20}
    assert fq.torch_flops == ff.torch_flops == 2 * (5 * 8 * 4 + 5 * 4 * 3)  # counted on the real int8 op
    assert count_params(q) == count_params(f) == 8 * 4 + 4 + 4 * 3 + 3
    assert type(float_twin(q)[0]) is nn.Linear and type(q[0]) is not nn.Linear


@pytest.mark.parametrize("name", list_projectors())
def test_every_design_is_fully_counted_and_agrees_with_torch(name):
    p = create_projector(name, 32, 48).eval()
    fc = count_flops(p, torch.randn(1, 64, 32))
    assert fc.uncounted_ops == {}
    assert fc.macs >= fc.matmul_macs > 0
    assert fc.torch_flops == 2 * fc.matmul_macs


def test_int8_design_counts_the_same_as_its_float_twin():
    x = torch.randn(1, 576, 64)
    f, q = create_projector("ldp", 64, 96), create_projector("ldp_int8", 64, 96)
    assert count_flops(q, x).by_op == count_flops(f, x).by_op
    assert count_params(q) == count_params(f)
    assert size_mb(q) < size_mb(f)


@pytest.mark.parametrize("name,published", [("mlp", 3.624e9), ("ldp", 6.677e9), ("ldpv2", 3.628e9)])
def test_mobilevlm_macs_match_published_fvcore_counts(name, published):
    # shared/REFERENCES.md: fvcore MACs at 576 tokens, 1024 -> 2048. Ours add the elementwise ops (< 0.1%).
    fc = count_flops(create_projector(name, 1024, 2048), torch.randn(1, 576, 1024))
    assert abs(fc.macs - published) / published < 1e-3
    assert fc.by_op["linear"] == 576 * (1024 * 2048 + 2048 * 2048)


PUBLISHED = {r["model"]: r for r in csv.DictReader(open(Path(__file__).parent / "timm_published.csv"))}


def test_every_encoder_config_has_a_published_count():
    assert set(PUBLISHED) <= set(list_encoders())
    assert {n for n in group_choices("encoder") if n != "none"} - {
        "mobilevitv2_125", "mobilevitv2_150", "mobilevitv2_175", "mobilevitv2_200"} <= set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(n for n in PUBLISHED if n.startswith("mobilevit")))
def test_mobilevit_macs_match_timm_published(name):
    m = timm.create_model(name).eval()
    size, published = int(PUBLISHED[name]["img_size"]), float(PUBLISHED[name]["gmacs"]) * 1e9
    fc = count_flops(m, torch.randn(1, 3, size, size))
    assert fc.uncounted_ops == {}
    assert abs(fc.macs - published) / published < 0.03  # our whole count, elementwise ops included
    assert fc.torch_flops == 2 * fc.matmul_macs


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_encoder_macs_match_timm_published(name):
    """timm's GMACs (full model with its head, at the stated size) follow fvcore's convention, which leaves out
    elementwise ops; our `macs` adds them (`measure._ELEMENTWISE`), so the comparison leaves them out too."""
    row = PUBLISHED[name]
    size, published = int(row["img_size"]), float(row["gmacs"]) * 1e9
    m = timm.create_model(name).eval()
    fc = count_flops(m, torch.randn(1, 3, size, size))
    assert fc.uncounted_ops == {} and fc.torch_flops == 2 * fc.matmul_macs
    added = set(_ELEMENTWISE) | set(_REDUCTIONS)
    fvcore_convention = sum(v for k, v in fc.by_op.items() if k not in added)
    assert abs(fvcore_convention - published) / published < 0.03
    assert fvcore_convention <= fc.macs


def test_fvcore_alone_misses_mobilevit_attention():
    m, x = timm.create_model("mobilevit_xxs").eval(), torch.randn(1, 3, 256, 256)
    raw = FlopCountAnalysis(m, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    assert raw.total() < 0.35e9 and "aten::scaled_dot_product_attention" in raw.unsupported_ops()
    assert count_flops(m, x).by_op["scaled_dot_product_attention"] > 0


def test_peak_memory_covers_weights_and_output():
    p, x = create_projector("mlp", 256, 512).eval(), torch.randn(1, 64, 256)
    weights_mb = count_params(p) * 4 / 2**20
    out_mb = 64 * 512 * 4 / 2**20
    assert weights_mb + out_mb <= peak_memory_mb(p, x) < 3 * (weights_mb + out_mb) + 1
    q = create_projector("mlp_int8", 256, 512)
    assert count_params(q) / 2**20 <= peak_memory_mb(q, x) < peak_memory_mb(p, x)
    assert not any(t.requires_grad for t in q.parameters())  # left as it was


def test_latency_reports_median_iqr_and_runs():
    lat = measure_latency(lambda: torch.randn(64, 64) @ torch.randn(64, 64), threads=1, min_run_time=0.05, warmup=1)
    assert lat.median_ms > 0 and lat.iqr_ms >= 0 and lat.runs >= 1 and lat.threads == 1


@pytest.mark.parametrize("name", ["mobilevitv2_125", "mobilevitv2_150", "mobilevitv2_175", "mobilevitv2_200"])
def test_every_shipped_encoder_is_fully_counted(name):
    from projector_bench.models.encoders import create_encoder

    enc = create_encoder(name, weights="random").eval()
    fc = count_flops(enc.model, torch.randn(1, 3, 64, 64))
    assert fc.uncounted_ops == {} and fc.torch_flops == 2 * fc.matmul_macs


def test_load_check_flags_a_reference_kernel_slower_than_its_best_time_here():
    from projector_bench.costs.measure import LOAD_LIMIT, Best, load_check

    first = load_check(1, None)
    assert first["reference_ms"] > 0 and "the first probe" in first["load_basis"] and 0 < first["load_cpu_share"] <= 1
    loaded = load_check(1, Best(first["reference_ms"] / 3, 7, "2026-01-02"))  # as if the best time here were 3x faster
    assert loaded["load_ratio"] > LOAD_LIMIT and "timed on a loaded machine" in loaded["load_warning"]
    assert "the best of 7 probes here since 2026-01-02" in loaded["load_basis"]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity to share one core")
def test_load_check_sees_a_loaded_machine_on_its_first_probe():
    """With no history at all (the first probe on a machine), a core shared with two busy processes is flagged:
    the reference kernel's thread gets about a third of the wall time."""
    import json
    import subprocess
    import sys

    cpu = min(os.sched_getaffinity(0))
    pin = lambda: os.sched_setaffinity(0, {cpu})  # noqa: E731
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=pin) for _ in range(2)]
    try:
        code = ("import json; from projector_bench.costs.measure import load_check; "
                "r = load_check(1, None); "
                "print(json.dumps({k: r[k] for k in ('load_ratio', 'load_cpu_share', 'load_warning')}))")
        out = subprocess.run([sys.executable, "-c", code], preexec_fn=pin, capture_output=True, text=True, timeout=300)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["load_cpu_share"] < 0.6 and got["load_ratio"] > 1.6 and (
        "timed on a loaded machine" in got["load_warning"])


def test_an_int8_designs_float_twin_is_built_once_per_job(monkeypatch):
    """A job builds the float twin once and hands it to the counts and to every lowering (it was built four
    times: once to count, once for the runtime's reference output, once per precision lowered)."""
    from omegaconf import OmegaConf

    from projector_bench import create_projector
    from projector_bench.costs import deploy, measure
    from projector_bench.jobs import runner

    built, lowered = [], []
    real = measure.float_twin
    monkeypatch.setattr(measure, "float_twin", lambda m: built.append(m) or real(m))
    monkeypatch.setattr(deploy, "unavailable", lambda: None)

    def lower(module, inputs, precision="fp32", **kwargs):
        lowered.append((module, precision))
        raise RuntimeError("not lowered in this test")

    monkeypatch.setattr(deploy, "lower", lower)
    cfg = OmegaConf.create({"device": {"threads": 1, "min_run_time": 0.01, "warmup": 0},
                            "deploy": {"runtime": "executorch", "precisions": ["fp32", "int8"]}})
    row = runner._costs("", create_projector("mlp_int8", 16, 16), (torch.randn(1, 4, 16),), cfg)
    assert len(built) == 1 and [p for _, p in lowered] == ["fp32", "int8"]
    assert all(m is lowered[0][0] and not list(measure._quantized_linears(m)) for m, _ in lowered)  # the one twin
    assert row["exports"]["executorch"].startswith("int8: RuntimeError: not lowered")
