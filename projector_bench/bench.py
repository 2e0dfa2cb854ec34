"""The speed and estimator targets, each a ratio measured within one run: `python -m projector_bench.bench`.

Every target compares two things timed in the same run, interleaved round by round, and reports the median
of the per-round ratios (shared machines drift by 2× within minutes). The targets and a recorded run:
docs/results/2026-11-22-bench.md. The calibration of target devices on published points (leave-one-out
errors per point, against the roofline bound) runs alone in seconds: `--calibration-only`.
"""
from __future__ import annotations

import argparse
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from timm.layers import LayerNormAct2d
from torch import Tensor, nn
from torchvision.models.mobilenetv3 import InvertedResidual, InvertedResidualConfig
from torchvision.ops.misc import SqueezeExcitation

from . import create_projector, list_projectors
from .accuracy.features import KEPT
from .analysis.agreement import agreements
from .analysis.tables import accuracy_table
from .core.env import training_device
from .core.errors import ArgumentParser, ConfigError, JobFailed, exit_code
from .core.settings import config_dir, group_choices, host_cache
from .core.shapes import MOBILEVLM
from .core.util import torch_threads
from .costs import deploy
from .costs.calibrate import Calibration, calibrate_config
from .costs.measure import measure_latency, paired
from .costs.roofline import calibrate_host, trace_ops
from .jobs.results import load_results
from .tasks.classify import write_blob_folder

ROOF_ROUNDS = 5  # interleaved rounds of the XNNPACK roofs and designs (deploy.min_times)
SHAPE, OUT = (1, MOBILEVLM.tokens, MOBILEVLM.vision_dim), MOBILEVLM.lm_dim  # a projector's input and width
LOO_TARGET = 0.30  # the target for the calibrated estimate's leave-one-out median |error| per device


class OfficialLDP(nn.Module):
    """MobileVLM's `LDPBlock` as its repository builds it (Meituan-AutoML/MobileVLM,
    `mobilevlm/model/vision_projector.py`): torchvision's MobileNetV3 block config used as is."""

    def __init__(self, inc: int, ouc: int) -> None:
        super().__init__()
        norm = partial(LayerNormAct2d, act_layer=None)
        se = partial(SqueezeExcitation, scale_activation=nn.Hardsigmoid)
        self.mlp = nn.Sequential(nn.Identity(), nn.Linear(inc, ouc), nn.GELU(), nn.Linear(ouc, ouc))
        self.mb_block = nn.Sequential(nn.Identity(), *[
            InvertedResidual(InvertedResidualConfig(ouc, 3, ouc, ouc, True, "HS", s, 1, 1), norm, se) for s in (1, 2)
        ])

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        h = int(n**0.5)
        x = self.mlp(x).permute(0, 2, 1).reshape(b, -1, h, h)
        return self.mb_block(x).flatten(2).permute(0, 2, 1)


def roofline_errors(x: Tensor, rounds: int = 2) -> tuple[dict[str, tuple[float, float]], list[float]]:
    """(measured ms, estimated ms) of every shipped design on this machine, roofs calibrated in this run, and the
    wall seconds of each calibration. The roofs are measured again between rounds and each design's best round is
    kept, so that a burst of load from a neighbour on a shared machine does not decide the result."""
    threads = torch.get_num_threads()
    best: dict[str, tuple[float, float]] = {}
    walls = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        host = calibrate_host(threads)
        walls.append(time.perf_counter() - t0)
        for name in list_projectors():
            if name == "int8":
                continue  # `int8` is `mlp_int8` by another name
            p = create_projector(name, SHAPE[-1], OUT).eval()
            measured = measure_latency(partial(p, x), threads=threads, min_run_time=0.5).median_ms
            est = host.latency_ms(trace_ops(p, x))
            if name not in best or measured < best[name][0]:
                best[name] = (measured, est)
    return best, walls


def calibrations() -> dict[str, Calibration]:
    """Every device profile with published points (`measured:`), calibrated, leave-one-out included."""
    cfgs = {name: yaml.safe_load((config_dir() / "device" / f"{name}.yaml").read_text())
            for name in group_choices("device")}
    return {name: cal for name, cfg in cfgs.items() if (cal := calibrate_config(cfg)) is not None}


def calibration_table(cals: dict[str, Calibration]) -> str:
    """Per device: the fitted efficiencies, and per point the measured time, the leave-one-out estimate (fitted
    without the point's workload group) and the roofline bound, each with its error."""
    lines = []
    for name, cal in cals.items():
        f = cal.fitted
        per_dtype = "".join(f", compute[{d}] {v:.3f}" for d, v in f.compute_dtype)
        lines.append(f"{name}: fitted compute {f.compute:.3f}{per_dtype}, memory {f.memory:.3f}, "
                     f"overhead {f.overhead_us:.2f} us "
                     f"(assumed {cal.assumed.compute:g} / {cal.assumed.memory:g} / {cal.assumed.overhead_us:g} us); "
                     f"{cal.basis}")
        lines.append(f"  {'point':68s} {'measured ms':>12s} {'LOO est':>10s} {'error':>6s} "
                     f"{'bound est':>10s} {'error':>6s}")
        for r in cal.results:
            lines.append(f"  {r.point.label[:68]:68s} {r.point.ms:12.2f} {r.loo_ms:10.2f} {r.loo_error:6.0%} "
                         f"{r.bound_ms:10.2f} {r.bound_error:6.0%}")
        ok = "met" if cal.median_loo <= LOO_TARGET else "MISSED"
        lines.append(f"  median over workloads: leave-one-out {cal.median_loo:.0%} (target <= {LOO_TARGET:.0%}: {ok}); "
                     f"bound {cal.median_bound:.0%}")
    return "\n".join(lines)


def _calibration_targets(cals: dict[str, Calibration]) -> list[tuple[str, float, float, str, bool]]:
    out = []
    for name, cal in cals.items():
        out.append((f"{name}: calibrated, leave-one-out median |error|", cal.median_loo, 0.0, f"<= {LOO_TARGET:.2f}",
                    cal.median_loo <= LOO_TARGET))
        out.append((f"{name}: roofline bound, median |error|", cal.median_bound, 0.0, "info", True))
    return out


def deploy_targets(x: Tensor, rounds: int
                   ) -> tuple[list[tuple[str, float, float, str, bool]], dict[str, str], dict, dict]:
    """ExecuTorch/XNNPACK on this host: every shipped design lowered (fp32 and int8) with its verdict, the
    roofline with XNNPACK's own host roofs against each program's measured latency, and two paired ratios
    (one thread, interleaved): mlp's fp32 program against eager PyTorch, its int8 program against fp32."""
    if (why := deploy.unavailable()) is not None:
        return [(f"ExecuTorch: {why}", 0.0, 0.0, "installed", False)], {}, {}, {}
    threads = torch.get_num_threads()
    verdicts: dict[str, str] = {}
    modelled: dict[str, nn.Module] = {}
    outside: dict[str, list[str]] = {}
    names = [n for n in list_projectors() if n != "int8"]  # `int8` is `mlp_int8` by another name
    for name in sorted(names, key=lambda n: n.endswith("_int8")):
        base = name.removesuffix("_int8")
        if name != base and base in verdicts:  # an int8 design is lowered from its float twin: the same programs
            verdicts[name] = verdicts[base]
            continue
        p = create_projector(name, SHAPE[-1], OUT).eval()
        cols = deploy.deploy_costs("", p, (x,), threads, 0.5, 2)
        verdicts[name] = "; ".join(f"{k}: {v}" for k, v in cols["exports"].items() if k == deploy.RUNTIME or v != "ok")
        if gemms := [o for o in cols.get("xnnpack_outside", []) if o in deploy.MATMULS]:
            outside[name] = gemms  # matmuls on ExecuTorch's reference kernels: not what the XNNPACK roofs model
        elif "xnnpack_latency_ms" in cols:
            modelled[name] = p
    # the roofs and every modelled design's program timed in the same interleaved rounds, each at its fastest
    host, measured = deploy.calibrate_xnnpack(threads, {n: (p, (x,)) for n, p in modelled.items()}, ROOF_ROUNDS)
    roofline = {n: (measured[n], host.latency_ms(trace_ops(p, x))) for n, p in modelled.items()}
    ok = sum(v.startswith(f"{deploy.RUNTIME}: ok") for v in verdicts.values())
    out = [(f"designs that run on ExecuTorch/XNNPACK (of {len(verdicts)})", ok, 0.0, "all, or why", True)]
    errs = [abs(e - m) / m for m, e in roofline.values()]
    if len(errs) < 2:
        return out + [("designs timed on XNNPACK", len(errs), 0.0, ">= 2", False)], verdicts, roofline, outside
    q = statistics.quantiles(errs, n=4)
    out.append((f"roofline vs XNNPACK on host ({len(errs)} designs): median |error|", statistics.median(errs),
                q[2] - q[0], "<= 0.25", statistics.median(errs) <= 0.25))
    mlp = create_projector("mlp", SHAPE[-1], OUT).eval()
    fp32, int8 = deploy.lower(mlp, (x,)), deploy.lower(mlp, (x,), "int8")
    with torch_threads(1), torch.inference_mode():
        run32, run8 = deploy.load(fp32, 1), deploy.load(int8, 1)
        med, iqr = paired(lambda: run32((x,)), lambda: mlp(x), rounds, 1)[:2]
        out.append(("mlp: XNNPACK fp32 time / eager time", med, iqr, "<= 1.5", med <= 1.5))
        med, iqr = paired(lambda: run8((x,)), lambda: run32((x,)), rounds, 1)[:2]
        out.append(("mlp: XNNPACK int8 time / fp32 time", med, iqr, "< 1", med < 1))
    return out, verdicts, roofline, outside


class ChildFailed(JobFailed):
    """A `python -m projector_bench` run that a target started failed: the message quotes the child's own error."""


def _child_error(stderr: str) -> str:
    """What a failed child said: its last `error:` line (the house's one line), else its last line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln.removeprefix("error:").strip() for ln in lines if ln.startswith("error:")]
    return errors[-1] if errors else lines[-1] if lines else "nothing on stderr"


def _run_child(args: list[str]) -> None:
    """`python -m projector_bench ARGS`, its output captured; `ChildFailed` with the command and the child's own
    error when it exits non-zero (its whole output is the user's to see by running the command alone)."""
    r = subprocess.run([sys.executable, "-m", "projector_bench", *args], capture_output=True, text=True,
                       errors="replace")
    if r.returncode != 0:
        shown = " ".join(a for a in args if not a.startswith(("results_dir=", "hydra.")))  # its temporary folders
        how = f"exited {r.returncode}" if r.returncode > 0 else f"was killed by signal {-r.returncode}"
        raise ChildFailed(f"`python -m projector_bench {shown}` {how}: {_child_error(r.stderr)}; run that command "
                          "alone to see its whole output")


def _sweep(results_dir: str, *overrides: str) -> float:
    """Wall time of `+sweep=ldp_vs_mlp` (the targets' sweeps leave out the ExecuTorch lowering, `deploy.runtime=null`:
    they time the costs and the accuracy, as their targets were set; deploy_targets times the lowering)."""
    t0 = time.perf_counter()
    _run_child(["+sweep=ldp_vs_mlp", "quiet=true", f"results_dir={results_dir}", f"hydra.sweep.dir={results_dir}/hydra",
                *overrides])
    return time.perf_counter() - t0


def _accuracy_targets(df) -> list[tuple[str, float, float, str, bool]]:
    mlp, pool = df.loc["mlp"], df.loc["pool"]
    out = [("mlp accuracy - majority baseline (points)", mlp.accuracy - mlp.majority_baseline, 0.0, ">= 30",
            mlp.accuracy - mlp.majority_baseline >= 30)]
    for kind in ("what_at", "where"):
        gap = mlp.accuracy_ci_by_type[kind][0] - pool.accuracy_ci_by_type[kind][1]  # mlp low - pool high
        out.append((f"{kind}: mlp CI low - pool CI high (points)", gap, 0.0, "> 0", gap > 0))
    trained = df[~df["acc_cached"].astype(bool)]  # int8 designs reuse their float twin's models
    unconverged = int((~df["converged"].astype(bool)).sum())
    out.append(("designs not converged (of %d)" % len(df), unconverged, 0.0, "== 0", unconverged == 0))
    out.append(("mlp seed-to-seed std (points)", mlp.accuracy_seed_std, 0.0, "<= 1.5", mlp.accuracy_seed_std <= 1.5))
    med = statistics.median(trained["accuracy_time_s"])
    out.append(("accuracy time per trained design, median (s)", med, 0.0, "<= 90", med <= 90))
    for name in ("mlp", "ldp"):
        r = df.loc[name]
        out.append((f"{name} training: steps/s ({r.train_questions_per_s:.0f} questions/s)", r.train_steps_per_s, 0.0,
                    "info", True))
    return out


def _kept(row: Any) -> tuple[str, float, float, str, bool]:
    """Which encoder validation chose for the row's task, as a target line (`accuracy.KEPT`'s index)."""
    kept = row.get("acc_encoder_kept")
    return (f"  its encoder: {kept or 'pretrained'} ({', '.join(f'{i} {k}' for i, k in enumerate(KEPT))})",
            float(KEPT.index(kept)) if kept in KEPT else math.nan, 0.0, "info", True)


def _digits_job(extra: list[str]) -> tuple[float, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        _run_child(["task=digits", "projector=mlp", "quiet=true", "deploy.runtime=null", f"results_dir={tmp}",
                    f"hydra.run.dir={tmp}/hydra", *extra])
        wall = time.perf_counter() - t0
        return wall, load_results(tmp).iloc[-1]


def _digits(extra: list[str]) -> list[tuple[str, float, float, str, bool]]:
    """`task=digits projector=mlp` with cold results caches, without the ExecuTorch lowering (a Quick start install
    does not lower). Without pretrained weights a machine trains its stand-in encoder once per image size, as it
    would download weights once: when this run had to, its wall is shown and the job is timed again with the
    stand-in in place, which is what the target bounds."""
    standins = host_cache() / "standin"
    before = set(standins.glob("*.pt"))
    wall, row = _digits_job(extra)
    out = []
    if set(standins.glob("*.pt")) - before:
        out.append(("task=digits first run, stand-in pretraining included (s)", wall, 0.0, "info", True))
        wall, row = _digits_job(extra)
    return out + [("task=digits projector=mlp accuracy (%)", row.accuracy, 0.0, ">= 95", row.accuracy >= 95),
                  ("task=digits projector=mlp wall, cold results (s)", wall, 0.0, "<= 120", wall <= 120),
                  ("  its load ratio (its load_basis says why)", row.load_ratio, 0.0, "info", True), _kept(row)]


def _folder(extra: list[str]) -> list[tuple[str, float, float, str, bool]]:
    """A user's small folder on a machine without pretrained weights, cold: 3 classes × 60 PNGs at 96 px told apart
    only by where a bright spot sits (`write_blob_folder`), `projector=mlp`. The stand-in encoder is pretrained at
    96 px first (its share of the wall), then the folder trains only what the proxy trains."""
    with tempfile.TemporaryDirectory() as tmp:
        root = write_blob_folder(Path(tmp) / "folder")
        t0 = time.perf_counter()
        _run_child(["task=image_folder", f"task.root={root}", "projector=mlp", "quiet=true", "deploy.runtime=null",
                    f"results_dir={tmp}/results", *extra])
        wall = time.perf_counter() - t0
        row = load_results(f"{tmp}/results").iloc[-1]
    return [("blob folder 3x60 at 96 px, mlp accuracy (%)", row.accuracy, 0.0, ">= 90", row.accuracy >= 90),
            _kept(row),
            ("  its wall, cold, stand-in pretraining included (s)", wall, 0.0, "info", True)]


def agreement_targets(results: str) -> int:
    """Print how the rows in `results` agree with every published table they cover (`agreement.agreements`),
    pair by pair, and the target on TokenPacker Table 3's GQA column; 0 when it is met, 1 when not, 2 when the
    rows cover no published table."""
    path = Path(results)
    if not path.exists():
        raise ConfigError(f"no results at {results}: give a results folder, its runs.jsonl or a .csv of rows")
    df = pd.read_csv(path) if path.suffix == ".csv" else load_results(path.parent if path.suffix == ".jsonl" else path)
    found = agreements(df)
    if not found:
        raise ConfigError(f"the rows in {results} cover no published table (conf/published/): run "
                          "python -m projector_bench +sweep=token_budget first")
    for a in found:
        print(a.text())
    ok = True
    for a in (a for a in found if a.table == "tokenpacker_table3" and a.benchmark == "GQA"):
        share = (a.count("reproduced") + a.count("tied")) / len(a.pairs) if a.pairs else 1.0
        met = share >= AGREEMENT_TARGET and a.count("contradicted") == 0
        ok &= met
        print(f"TokenPacker Table 3 GQA at {a.tokens} tokens: {share:.0%} of {len(a.pairs)} robust pairs reproduced "
              f"or tied, {a.count('contradicted')} contradicted  target >= {AGREEMENT_TARGET:.0%}, none contradicted  "
              f"{'ok' if met else 'MISSED'}")
    return 0 if ok else 1


def _paired_targets(x: Tensor, rounds: int) -> list[tuple[str, float, float, str, bool]]:
    results: list[tuple[str, float, float, str, bool]] = []

    ours, official = create_projector("ldp", SHAPE[-1], OUT).eval(), OfficialLDP(SHAPE[-1], OUT).eval()
    official.load_state_dict(ours.state_dict())
    with torch.inference_mode():
        assert torch.allclose(ours(x), official(x), atol=1e-5), "ldp and the official block disagree"
    med, iqr = paired(lambda: ours(x), lambda: official(x), rounds, 1)[:2]
    results.append(("ldp time / official LDPBlock time", med, iqr, "<= 1.05", med <= 1.05))

    mlp = create_projector("mlp", SHAPE[-1], OUT).eval()
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    mlp_flops = 2 * SHAPE[1] * (SHAPE[-1] * OUT + OUT * OUT)
    med, iqr = paired(lambda: a @ b, lambda: mlp(x), rounds, 1)[:2]
    eff = med * mlp_flops / (2 * 2048**3)  # (mlp GFLOP/s) / (matmul GFLOP/s)
    results.append(("mlp GFLOP/s / 2048^3 matmul GFLOP/s", eff, iqr * mlp_flops / (2 * 2048**3), ">= 0.80",
                    eff >= 0.80))

    q = create_projector("mlp_int8", SHAPE[-1], OUT)
    med, iqr = paired(lambda: mlp(x), lambda: q(x), rounds, 1)[:2]
    results.append(("mlp time / mlp_int8 time", med, iqr, ">= 3", med >= 3))
    return results


def _speed_targets(x: Tensor, rounds: int) -> tuple[list[tuple[str, float, float, str, bool]], dict]:
    results: list[tuple[str, float, float, str, bool]] = []
    with torch_threads(1):  # the paired ratios: one thread, its CPU-time clock (measure.paired)
        results += _paired_targets(x, rounds)
    roofline, walls = roofline_errors(x)
    results.append((f"host calibration wall, worst of {len(walls)} (s)", max(walls), 0.0, "<= 30", max(walls) <= 30))
    errs = {n: abs(e - m) / m for n, (m, e) in roofline.items()}
    med = statistics.median(errs.values())
    q = statistics.quantiles(errs.values(), n=4)
    results.append(("roofline on host: median |error| / measured", med, q[2] - q[0], "<= 0.25", med <= 0.25))

    return results, roofline


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `low`, refused with a message saying so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not valid: give an integer >= {low}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is not valid: give an integer >= {low}")
        return value

    return parse


NO_SWEEP = ("--skip-sweep", "--digits-only", "--folder-only", "--deploy-only", "--calibration-only",
            "--agreement-only")  # modes that run no sweep
AGREEMENT_TARGET = 0.9  # of TokenPacker Table 3's robust GQA pairs at each budget, reproduced or tied


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked whole before any target runs; `ConfigError` naming the bad argument."""
    ap = ArgumentParser(prog="python -m projector_bench.bench", description=__doc__.splitlines()[0])
    # a median and quartiles of per-round ratios, each round in alternating order, need a few rounds (as regress)
    ap.add_argument("--rounds", type=_at_least(3), default=15, help="interleaved rounds of the paired ratios (>= 3)")
    ap.add_argument("--seeds", type=_at_least(1), default=None,
                    help="accuracy.seeds for the sweep (default: the config's)")
    ap.add_argument("--device", default=None,
                    help="accuracy.device of the runs that train (auto, cpu, cuda, cuda:N, mps; default: the config's)")
    modes = ap.add_mutually_exclusive_group()  # each picks which targets run: two of them would run none or guess
    modes.add_argument("--skip-sweep", action="store_true",
                       help="skip the end-to-end sweeps (and the accuracy targets)")
    modes.add_argument("--accuracy-only", action="store_true",
                       help="only the accuracy targets: the cold sweep and digits")
    modes.add_argument("--digits-only", action="store_true",
                       help="only the digits targets: a cold `task=digits projector=mlp` (minutes)")
    modes.add_argument("--folder-only", action="store_true",
                       help="only the small-folder target: a cold `task=image_folder` on a generated folder "
                            "(minutes)")
    modes.add_argument("--deploy-only", action="store_true", help="only the ExecuTorch/XNNPACK targets (minutes)")
    modes.add_argument("--calibration-only", action="store_true",
                       help="only the target devices' calibration on published points (a few seconds)")
    modes.add_argument("--agreement-only", metavar="RESULTS", nargs="?", const="results", default=None,
                       help="only the proxy against published tables (conf/published/), on the rows of a "
                            "+sweep=token_budget run in RESULTS (a folder, its runs.jsonl, or a .csv; "
                            "default: results)")
    args = ap.parse_args(argv)
    chosen = [m for m in NO_SWEEP if getattr(args, m[2:].replace("-", "_"))]
    if args.seeds is not None and chosen:  # else the seeds asked for would be silently ignored
        raise ConfigError(f"--seeds sets the sweep's accuracy.seeds, but {chosen[0]} runs no sweep; drop one of them")
    if args.device is not None:
        if chosen and chosen[0] not in ("--digits-only", "--folder-only"):  # else the device asked for would be ignored
            raise ConfigError(f"--device sets where the accuracy runs train, but {chosen[0]} trains nothing; "
                              "drop one of them")
        try:
            training_device(args.device)
        except ValueError as e:
            raise ConfigError(f"--device {e}") from None
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every target; print one line each; non-zero exit if one is missed. Bad arguments are one `error:` line
    and exit 2 before any target runs; a failed child run ends the targets with one `error:` line and exit 1."""
    return exit_code(lambda: run(parse_args(argv)))


def _end_to_end(args: argparse.Namespace, results: list[tuple[str, float, float, str, bool]]) -> None:
    """The sweeps' and the digits job's targets, appended to `results` as each is measured (so that the ones
    measured before a child run fails are still printed)."""
    extra = [f"accuracy.device={args.device}"] if args.device else []
    if args.digits_only:
        results += _digits(extra)
        return
    if args.folder_only:
        results += _folder(extra)
        return
    if not args.accuracy_only:
        with tempfile.TemporaryDirectory() as tmp:
            wall = _sweep(tmp, "task=none", "deploy.runtime=null")
            results.append(("+sweep=ldp_vs_mlp task=none wall (s)", wall, 0.0, "<= 180", wall <= 180))
    with tempfile.TemporaryDirectory() as tmp:
        seeds = [f"accuracy.seeds={args.seeds}"] if args.seeds is not None else []
        wall = _sweep(tmp, "deploy.runtime=null", *seeds, *extra)
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        results.append(("+sweep=ldp_vs_mlp wall, cold caches (s)", wall, 0.0, "<= 600", wall <= 600))
        results.append(("peak RSS of the sweeps (MiB)", rss, 0.0, "< 4096", rss < 4096))
        df = load_results(tmp).set_index("projector")
        load = df["load_ratio"].astype(float)  # a shared host's other tenants slow every step: read walls with it
        results.append((f"  its load ratio, median of {len(load)} jobs (max {load.max():.2f})", load.median(), 0.0,
                        "info", True))
        results += _accuracy_targets(df)
        print(accuracy_table(df.reset_index()))
    results += _digits(extra)
    results += _folder(extra)


def run(args: argparse.Namespace) -> int:
    """The targets `args` picks (`parse_args`), printed; 0 when every one is met."""
    torch.manual_seed(0)
    if args.agreement_only:
        return agreement_targets(args.agreement_only)
    cals = calibrations()
    if args.calibration_only:
        print(calibration_table(cals))
        return 0 if all(c.median_loo <= LOO_TARGET for c in cals.values()) else 1
    x = torch.randn(*SHAPE)
    results: list[tuple[str, float, float, str, bool]] = []
    roofline: dict = {}
    verdicts: dict = {}
    xnn: dict = {}
    outside: dict = {}
    skip_costs = args.accuracy_only or args.digits_only or args.folder_only  # the speed and deploy targets
    if not skip_costs and not args.deploy_only:
        results, roofline = _speed_targets(x, args.rounds)
        results += _calibration_targets(cals)
    if not skip_costs:
        deployed, verdicts, xnn, outside = deploy_targets(x, args.rounds)
        results += deployed
    failed = None
    if not (args.skip_sweep or args.deploy_only):
        try:
            _end_to_end(args, results)
        except ChildFailed as e:  # the targets measured so far are printed, then the child's error
            failed = e
    print(f"threads={torch.get_num_threads()} rounds={args.rounds} torch={torch.__version__}")
    for name, value, iqr, target, ok in results:
        print(f"{name:40s} {value:8.3f}  (IQR {iqr:.3f})  target {target:8s} {'ok' if ok else 'MISSED'}")
    if roofline:
        print("roofline on host, per design (ms):  "
              + ", ".join(f"{n} {m:.1f} meas / {e:.1f} est" for n, (m, e) in roofline.items()))
        print(calibration_table(cals))
    if verdicts:
        print("ExecuTorch/XNNPACK per design: " + "; ".join(f"{n} {v}" for n, v in verdicts.items()))
        print("roofline on host vs XNNPACK fp32, per design (ms):  "
              + ", ".join(f"{n} {m:.1f} meas / {e:.1f} est" for n, (m, e) in xnn.items()))
        if outside:
            print("not modelled (matmuls on ExecuTorch's reference kernels): "
                  + "; ".join(f"{n} {', '.join(o)}" for n, o in outside.items()))
    if failed is not None:
        raise failed
    return 0 if all(r[-1] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
