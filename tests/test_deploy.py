"""ExecuTorch / XNNPACK: designs lowered and run by the real runtime (installed by
`python -m projector_bench.costs.deploy install`, which the README's test command runs), the `exports` verdict, and
`budget.deployable`."""
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pandas as pd
import pytest
import torch
from torch import nn

from projector_bench import create_projector, list_projectors
from projector_bench.analysis.choose import recommend
from projector_bench.core.budget import Budget
from projector_bench.core.errors import ConfigError
from projector_bench.costs import deploy
from projector_bench.costs.measure import _Call, float_twin
from projector_bench.models.projectors.int8 import Int8Projector

from .test_cli import cli, rows  # noqa: F401 (cli: the command line in this process, a fixture)


@pytest.mark.extra("deploy")
def test_executorch_is_installed_with_xnnpack():
    assert deploy.unavailable() is None, "install the deploy extra: python -m projector_bench.costs.deploy install"


@pytest.mark.extra("deploy")
def test_mlp_program_computes_the_design_in_fp32_and_int8():
    torch.manual_seed(0)
    p, x = create_projector("mlp", 64, 96).eval(), torch.randn(1, 36, 64)
    cols = deploy.deploy_costs("", p, (x,), threads=1, min_run_time=0.05, warmup=1, grid=(6, 6))
    assert cols["exports"] == {"executorch": "ok", "executorch_fp32": "ok", "executorch_int8": "ok"}
    assert cols["xnnpack_rel_err"] < 1e-5  # the lowered fp32 program is the design
    assert 0 < cols["xnnpack_int8_rel_err"] < 0.05  # int8: close, not equal
    assert cols["xnnpack_outside"] == [] and cols["xnnpack_latency_ms"] > 0 and cols["xnnpack_int8_latency_ms"] > 0
    assert cols["xnnpack_int8_pte_mb"] < cols["xnnpack_pte_mb"] / 2  # int8 weights


@pytest.mark.extra("deploy")
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_lowered_design_is_not_kept_alive_by_the_toolchains_memos(precision):
    """ExecuTorch (`is_same_node`), torch.ao / torchao (`assert_and_get_unique_device`) and FakeTensorMode (its
    dispatch cache) memoize on graph nodes and modules without a bound: before `lower` emptied them, a multirun's
    process kept every job's lowered graphs and weights (its RSS grew about 0.25 GB a job on `+sweep=token_budget`)."""
    import gc
    import weakref

    p, x = create_projector("mlp", 64, 96).eval(), torch.randn(1, 36, 64)
    weight = weakref.ref(next(p.parameters()))
    deploy.lower(p, (x,), precision)
    del p
    gc.collect()
    assert weight() is None, (
        "a toolchain memo still holds the lowered design's weights: see deploy.release_lowered_graphs")


@pytest.mark.extra("deploy")
def test_an_int8_design_is_lowered_from_its_float_twin_and_judged_by_its_int8_program():
    p, x = create_projector("mlp_int8", 64, 96), torch.randn(1, 36, 64)
    cols = deploy.deploy_costs("", p, (x,), threads=1, min_run_time=0.05, warmup=1, precisions=("fp32",))
    assert cols["xnnpack_rel_err"] < 1e-5  # the fp32 program is the float twin
    assert cols["exports"]["executorch"] == "int8: not tried (deploy.precisions=['fp32'])"  # its own precision
    assert deploy.deploy_costs("", p, (x,), 1, 0.05, 1)["exports"]["executorch"] == "ok"


class _NotExportable(nn.Module):
    def forward(self, x):
        return x * float(x.sum().item() > 0)  # data-dependent Python: torch.export cannot trace it


@pytest.mark.extra("deploy")
def test_a_design_that_does_not_lower_gets_its_first_error_not_an_exception():
    cols = deploy.deploy_costs("", _NotExportable(), (torch.randn(4, 8),), threads=1, min_run_time=0.05, warmup=1)
    verdict = cols["exports"]["executorch"]
    assert verdict.startswith("fp32: ") and "\n" not in verdict and len(verdict) < 200
    assert "xnnpack_latency_ms" not in cols


def test_without_executorch_the_columns_say_why(monkeypatch):
    monkeypatch.setattr(deploy, "unavailable", lambda: "executorch is not installed; " + deploy.INSTALL)
    cols = deploy.deploy_costs("encoder_", nn.Linear(4, 4), (torch.randn(2, 4),), 1, 0.05, 1)
    assert cols == {"encoder_exports": {"executorch": "not measured: executorch is not installed; " + deploy.INSTALL}}


def _rows() -> pd.DataFrame:
    return pd.DataFrame([
        {"projector": "fast", "status": "ok", "accuracy": 90.0, "est_ttft_ms": 10.0, "design_params": 1e6,
         "design_mem_mb": 1.0, "exports": {"executorch": "fp32: RuntimeError: XNNPACK rejected it"}},
        {"projector": "slow", "status": "ok", "accuracy": 80.0, "est_ttft_ms": 20.0, "design_params": 1e6,
         "design_mem_mb": 1.0, "exports": {"executorch": "ok"}},
    ])


def test_budget_deployable_keeps_only_designs_that_ran_there():
    df = _rows()
    assert recommend(df, Budget(latency_ms=100), "host").design == "fast"
    pick = recommend(df, Budget(latency_ms=100, deployable="executorch"), "host")
    assert pick.design == "slow" and "deployable on executorch" in pick.reason
    over = recommend(df, Budget(latency_ms=5, deployable="executorch"), "host")
    assert not over.feasible and over.design == "slow" and "runs on executorch" in over.reason
    df["exports"] = [math.nan, {"executorch": "not measured: executorch is not installed"}]
    none = recommend(df, Budget(deployable="executorch"), "host")
    assert none.design is None and "deploy install" in none.reason


def test_budget_deployable_names_the_runtimes():
    with pytest.raises(ConfigError, match="budget.deployable='tflite' is not one of: executorch"):
        Budget(deployable="tflite")


def _graph(module: nn.Module, x: torch.Tensor, **kwargs) -> list[str]:
    """The ops `torch.export` traces for `module(x, **kwargs)`: what `deploy.lower` hands to XNNPACK's partitioner."""
    graph = torch.export.export(_Call(module, **kwargs).eval(), (x,)).graph
    return [str(n.target) for n in graph.nodes if n.op == "call_function"]


# knobs for an 8x8 grid (c_abstractor keeps its table learned for CLIP's 24x24: resampled by a matmul); a design
# that repeats a block is lowered with one (`depth: 1`): the repeats are the same ops in the same partitions, and
# lowering them again is where this test's time went (a sweep's jobs lower each design at its configured depth)
_KNOBS = {"resampler": {"num_latents": 16, "depth": 1}, "c_abstractor": {"num_queries": 16, "depth": 1},
          "bottleneck_transformer": {"depth": 1}}


def _design(name: str) -> nn.Module:
    return create_projector(name, 32, 64, **_KNOBS.get(name.removesuffix("_int8"), {})).eval()


def _exports(name: str) -> dict[str, str]:
    """The `exports` verdicts of design `name` lowered at the 8x8 grid (a worker process's job)."""
    return deploy.deploy_costs("", _design(name), (torch.randn(1, 64, 32),), threads=1, min_run_time=0.02, warmup=1,
                               grid=(8, 8))["exports"]


@pytest.mark.extra("deploy")
@pytest.mark.slow
def test_every_shipped_design_lowers_to_xnnpack_in_fp32_and_int8():
    x = torch.randn(1, 64, 32)
    twins = {n: p for n in list_projectors() if isinstance(p := _design(n), Int8Projector)}
    # the largest graphs first, so that the last one to finish does not start last
    floats = sorted((n for n in list_projectors() if n not in twins), key=lambda n: -len(list(_design(n).modules())))
    # one design per worker process, two at a time (a CI machine's cores)
    with ProcessPoolExecutor(min(2, os.cpu_count() or 1), mp_context=multiprocessing.get_context("spawn")) as pool:
        verdicts = dict(zip(floats, pool.map(_exports, floats)))
    # An int8 design's programs are its float design's, lowered again: the same graph (dequantized weights),
    # so its verdicts are that design's, with int8 as its own. The graph is checked instead of lowered again:
    # the lowering is what this test's time is spent on.
    for name, p in twins.items():
        base, kw = p.float_twin
        assert _graph(float_twin(p), x, grid=(8, 8)) == _graph(
            create_projector(base, 32, 64, **kw).eval(), x, grid=(8, 8)), name
        verdicts[name] = verdicts[base] | {"executorch": verdicts[base]["executorch_int8"]}
    assert len(twins) >= 10 and len(verdicts) == len(list_projectors())
    # every design's fp32 program runs; where int8 does not, the verdict says so in one line naming the precision
    assert {k: v for k, v in verdicts.items() if v["executorch_fp32"] != "ok"} == {}
    failed = {k: v["executorch_int8"] for k, v in verdicts.items() if v["executorch_int8"] != "ok"}
    assert all(e.startswith("int8: ") and "\n" not in e for e in failed.values()), failed
    # nn.MultiheadAttention's addmm
    assert set(failed) <= {"qwen_vl_adapter", "qwen_vl_adapter_int8", "tokenpacker", "tokenpacker_int8"}, failed


@pytest.mark.extra("deploy")
@pytest.mark.slow
def test_a_job_records_the_design_and_its_encoder_on_xnnpack(cli, tmp_path):  # noqa: F811 (the fixture)
    r = cli(tmp_path, "projector=ldpv2", "encoder=mobilevit_xxs", "encoder.weights=random", "encoder.img_size=64",
            "deploy.runtime=executorch", "deploy.precisions=[fp32]")
    assert r.returncode == 0, r.stderr
    row = rows(tmp_path)[-1]  # every column it holds is described in results.COLUMNS
    assert row["exports"] == row["encoder_exports"] == {"executorch": "ok", "executorch_fp32": "ok"}
    assert row["xnnpack_latency_ms"] > 0 and row["encoder_xnnpack_latency_ms"] > 0
    assert row["xnnpack_rel_err"] < 1e-4 and row["encoder_xnnpack_rel_err"] < 1e-4
    assert "xnnpack_int8_latency_ms" not in row


def test_the_report_table_shows_each_runtime_verdict_and_the_program_times():
    from projector_bench.analysis.report import _exports, _xnnpack_ms

    r = pd.Series({"exports": {"executorch": "ok", "executorch_fp32": "ok"},
                   "encoder_exports": {"executorch": "fp32: RuntimeError: no",
                                       "executorch_fp32": "fp32: RuntimeError: no"},
                   "xnnpack_latency_ms": 12.345, "xnnpack_int8_latency_ms": 4.5})
    assert _exports(r) == "executorch: ok; encoder executorch: fp32: RuntimeError: no"
    r["xnnpack_outside"] = ["addmm", "native_layer_norm", "where.self", "clamp"]
    assert _exports(r) == ("executorch: ok; 4 ops outside XNNPACK (addmm, native_layer_norm, where.self, …); "
                           "encoder executorch: fp32: RuntimeError: no")
    assert _xnnpack_ms(r) == "12.3 ms / 4.5 ms"
    assert _exports(pd.Series({"exports": math.nan})) == "" and _xnnpack_ms(pd.Series({})) == ""


def test_min_times_interleaves_the_programs_and_keeps_each_ones_fastest_round(monkeypatch):
    calls, script = [], iter([5.0, 9.0, 3.0, 11.0, 4.0, 7.0])  # a, b per round
    monkeypatch.setattr(deploy, "load", lambda program, threads: program)
    monkeypatch.setattr(deploy, "measure_latency",
                        lambda fn, **kw: (calls.append(fn()), deploy.Latency(next(script), 0, 1, 1))[1])
    got = deploy.min_times({"a": (lambda i: "a", ()), "b": (lambda i: "b", ())}, threads=2, rounds=3)
    assert calls == ["a", "b"] * 3  # one timing of each per round, the programs alternating
    assert got == {"a": 3.0, "b": 7.0}


def test_xnnpack_roofs_are_chained_kernel_differences_timed_with_the_designs(monkeypatch):
    kernels = deploy.kernels()
    per_kernel = {k: 0.5 + i for i, k in enumerate(kernels)}  # ms of one kernel of each roof
    monkeypatch.setattr(deploy, "lower", lambda module, inputs, precision="fp32": module)

    def times(programs, threads, rounds):
        assert rounds == 3 and ("mlp", 0) in programs  # the design is timed in the roofs' rounds
        return {key: 2.0 + (len(m.steps) * per_kernel[key[0]] if key[1] else 40.0) for key, (m, _) in programs.items()}

    monkeypatch.setattr(deploy, "min_times", times)
    host, measured = deploy.calibrate_xnnpack(1, {"mlp": (create_projector("mlp", 8, 8), (torch.randn(1, 4, 8),))}, 3)
    assert measured == {"mlp": 42.0}
    gemm = 2 * 576 * 2048 * 2048  # the 2 ms a program costs once is left out of every roof
    assert host.peak_gflops["fp32"] == pytest.approx(gemm / per_kernel["fp32"] / 1e6)
    assert host.kind_gflops["reduction"] == pytest.approx(576 * 2048 / per_kernel["reduction"] / 1e6)
    assert host.memory_gbps == pytest.approx(3 * 2**24 * 4 / per_kernel["bandwidth"] / 1e6)
    assert host.op_overhead_us == pytest.approx(per_kernel["overhead"] * 1e3)
