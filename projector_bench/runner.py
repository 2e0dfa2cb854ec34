"""One Hydra job: build the token source and the projector, measure them, append one row."""
from __future__ import annotations

import logging
import os
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from ._registry import create_projector
from .accuracy import code_version, evaluate_projector
from .choose import estimate_row
from .encoders import Variant, create_encoder
from .env import cpu_model, environment
from .errors import ConfigError
from .lm import LanguageModel
from .measure import count_flops, count_params, load_check, measure_latency, peak_memory_mb, size_mb
from .projectors.base import Grid, token_grid
from .results import append_row, load_results
from .validate import job_configs, validate
from .roofline import device_from_config, read_json_cache, trace_ops, trace_timm_on_meta, write_json_cache

log = logging.getLogger(__name__)

# Columns printed at the end of a run or sweep (the table holds many more).
SUMMARY = ["projector", "encoder", "status", "tokens_in", "tokens_out", "params", "macs", "latency_ms",
           "latency_iqr_ms", "peak_mem_mb", "size_mb", "est_projector_ms", "est_prefill_ms", "est_ttft_ms",
           "accuracy", "accuracy_ci_low", "accuracy_ci_high", "converged", "error"]
_PROJECTOR_KEYS = ("name", "in_dim", "out_dim")
DEFAULT_THREADS = torch.get_num_threads()  # `device.threads: null`; jobs of a multirun share this process
SWEEP_ENV = "PROJECTOR_BENCH_SWEEP_ID"
# The host's measured roofs (about 8 s to measure) are kept per machine, CPU, thread count and torch version.
HOST_CACHE = os.environ.get("PROJECTOR_BENCH_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "projector_bench")


def _costs(prefix: str, module: nn.Module, inputs: tuple[Tensor, ...], device: DictConfig, **kwargs: Any) -> dict[str, Any]:
    fc = count_flops(module, *inputs, **kwargs)
    lat = measure_latency(lambda: module(*inputs, **kwargs), threads=device.threads or DEFAULT_THREADS,
                          min_run_time=device.min_run_time, warmup=device.warmup)
    return {
        f"{prefix}params": count_params(module),
        f"{prefix}macs": fc.macs,
        f"{prefix}flops": fc.flops,
        f"{prefix}macs_by_op": fc.by_op,
        f"{prefix}torch_flops": fc.torch_flops,
        f"{prefix}torch_flops_agree": fc.torch_flops == 2 * fc.matmul_macs,
        f"{prefix}uncounted_ops": fc.uncounted_ops,
        f"{prefix}latency_ms": lat.median_ms,
        f"{prefix}latency_iqr_ms": lat.iqr_ms,
        f"{prefix}latency_runs": lat.runs,
        f"{prefix}peak_mem_mb": peak_memory_mb(module, *inputs, **kwargs),
        f"{prefix}size_mb": size_mb(module),
        f"{prefix}ops": trace_ops(module, *inputs, **kwargs),  # [kind, dtype, flops, bytes, count]: for the roofline
    }


def _token_source(cfg: DictConfig, gen: torch.Generator) -> tuple[Tensor, Grid | None, dict[str, Any]]:
    """Tokens from the encoder (and its costs), or synthetic tokens of `shape.*` when `encoder=none`."""
    batch = cfg.shape.batch
    if cfg.encoder.name is None:
        grid = token_grid(cfg.shape.tokens, cfg.shape.grid, "shape") if cfg.shape.grid is not None else None
        tokens = torch.randn(batch, cfg.shape.tokens, cfg.shape.in_dim, generator=gen)
        info: dict[str, Any] = {"encoder": "none"}
        if cfg.shape.get("vision_encoder"):  # the encoder these tokens stand for: its ops, for end-to-end estimates
            info["e2e_encoder"] = cfg.shape.vision_encoder
            info["encoder_ops"] = [list(op) for op in trace_timm_on_meta(cfg.shape.vision_encoder, cfg.shape.vision_img_size)]
        return tokens, grid, info
    enc = create_encoder(cfg.encoder.name, cfg.encoder.stage, cfg.encoder.weights, Variant.from_config(cfg.encoder)).eval()
    images = torch.randn(batch, 3, cfg.encoder.img_size, cfg.encoder.img_size, generator=gen)
    with torch.inference_mode():
        tokens, grid = enc(images)
    info = {"encoder": enc.name, "encoder_weights": enc.weights_source, "img_size": cfg.encoder.img_size}
    return tokens.clone(), grid, info | _costs("encoder_", enc.model, (images,), cfg.device)


def build_projector(pcfg: DictConfig, in_dim: int) -> nn.Module:
    """The projector a `projector` config describes, for tokens of `in_dim` channels, in eval mode."""
    kwargs = {k: v for k, v in OmegaConf.to_container(pcfg, resolve=True).items() if k not in _PROJECTOR_KEYS}
    return create_projector(pcfg.name, in_dim, pcfg.out_dim, **kwargs).eval()


def measure(cfg: DictConfig) -> dict[str, Any]:
    """Every cost column of one (token source, projector) pair."""
    gen = torch.Generator().manual_seed(cfg.seed)
    tokens, grid, row = _token_source(cfg, gen)
    in_dim = tokens.shape[-1]
    pcfg = cfg.projector
    if pcfg.in_dim is not None and pcfg.in_dim != in_dim:
        raise ConfigError(f"projector.in_dim={pcfg.in_dim} does not match the token source ({row['encoder']}: {in_dim} "
                          f"channels); set projector.in_dim={in_dim} or null")
    torch.manual_seed(cfg.seed)
    proj = build_projector(pcfg, in_dim)
    if proj.needs_grid:
        grid = token_grid(tokens.shape[1], grid, pcfg.name)
    with torch.inference_mode():
        out = proj(tokens, grid)
    row |= {"grid": f"{grid[0]}x{grid[1]}" if grid else None, "tokens_in": tokens.shape[1], "tokens_out": out.shape[1],
            "in_dim": in_dim, "out_dim": out.shape[-1], "batch": tokens.shape[0]}
    return row | _costs("", proj, (tokens,), cfg.device, grid=grid)


def _load(threads: int) -> dict[str, Any]:
    """`load_check` against the best reference time this machine has recorded (kept in the host cache)."""
    path = Path(HOST_CACHE) / "reference_kernel.json"
    key = f"{cpu_model()}|{threads}|{torch.__version__}"
    saved = read_json_cache(path)
    best = saved.get(key) if isinstance(saved.get(key), (int, float)) else None
    out = load_check(threads, best)
    if best is None or out["reference_ms"] < best:
        write_json_cache(path, saved | {key: out["reference_ms"]})
    if out["load_warning"]:
        log.warning(out["load_warning"])
    return out


def estimates(cfg: DictConfig, row: dict[str, Any]) -> dict[str, Any]:
    """The row's end-to-end estimates on `cfg.device` (roofline per op; `host`: roofs measured here)."""
    lm = LanguageModel.from_config(cfg.lm)
    if lm.hidden != row["out_dim"]:
        log.warning("lm %s is %d wide but the projector outputs %d: the prefill is priced at the LM's width",
                    lm.name, lm.hidden, row["out_dim"])
    device = device_from_config(cfg.device, cfg.device.threads or DEFAULT_THREADS, HOST_CACHE)
    return {"device": device.name} | estimate_row(row, device, lm)


def job_overrides() -> list[str]:
    """This Hydra job's own overrides (without `resume=`): what identifies a job of a multirun."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return sorted(o for o in HydraConfig.get().overrides.task if not o.startswith("resume="))


def _done_in_resumed_sweep(cfg: DictConfig, overrides: list[str]) -> dict[str, Any] | None:
    if not cfg.get("resume") or cfg.get("search"):  # a search resumes through its study, not through rows
        return None
    df = load_results(cfg.results_dir)
    if not len(df) or "job_overrides" not in df:
        return None
    done = df[(df["sweep_id"] == cfg.resume) & (df["status"] == "ok")]
    same = done[done["job_overrides"].map(lambda o: isinstance(o, list) and sorted(o) == overrides)]
    if "acc_code_version" in same:  # an accuracy measured by other code is measured again
        same = same[same["acc_code_version"].isna() | (same["acc_code_version"] == code_version())]
    return same.iloc[-1].to_dict() if len(same) else None


def run(cfg: DictConfig, extra: dict[str, Any] | None = None, record: bool = True) -> dict[str, Any]:
    """Measure one design and append its row (with the `extra` columns; `record=False`: only return it);
    a failure is recorded in the row, never raised. With `resume=<sweep_id>`, a job that sweep already holds
    an ok row for (same overrides; its accuracy, if any, from the same `code_version()`) is not measured
    again: that row is returned."""
    overrides = job_overrides()
    if (done := _done_in_resumed_sweep(cfg, overrides)) is not None:
        log.info("resume: %s is already in sweep %s (run %s)", " ".join(overrides), cfg.resume, done.get("run_id"))
        return done
    row: dict[str, Any] = {
        "run_id": uuid.uuid4().hex[:12], "sweep_id": os.environ.get(SWEEP_ENV) or uuid.uuid4().hex[:12],
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "projector": cfg.projector.name, "encoder": cfg.encoder.name or "none", "status": "running",
        "job_overrides": overrides,
    } | (extra or {})
    try:
        threads = cfg.device.threads or DEFAULT_THREADS  # its type and range: validate.py, before any job
        torch.set_num_threads(threads)
        row |= measure(cfg)
        row |= _load(threads)
        row |= estimates(cfg, row)
        if cfg.task.get("_target_"):
            row |= evaluate_projector(cfg)
        row["status"], row["error"] = "ok", None
    except Exception as e:  # recorded in the row (and the log), then the sweep goes on
        first = str(e).splitlines()[0] if str(e) else ""
        row["status"], row["error"] = "failed", first if isinstance(e, ConfigError) else f"{type(e).__name__}: {first}"
        log.debug("job failed", exc_info=True)
    row |= environment() | {"threads": torch.get_num_threads(), "config": OmegaConf.to_container(cfg, resolve=True)}
    if record:
        try:
            append_row(cfg.results_dir, row)
        except (OSError, ValueError) as e:
            raise ConfigError(f"could not record the row: {e}") from e
    return row


def summary(df) -> str:
    """The printed table: the summary columns that the rows have, params in M and MACs in G."""
    view = df[[c for c in SUMMARY if c in df.columns]].copy()
    for col, scale, name in (("params", 1e6, "params_M"), ("macs", 1e9, "GMACs")):
        if col in view:
            view[col] = view[col] / scale
            view = view.rename(columns={col: name})
    if "error" in view:
        view["error"] = view["error"].fillna("")
    return view.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def accuracy_table(df) -> str:
    """Accuracy per question type with its 95% interval, one row per design ("" without accuracy). A type that
    no design answers better than its own majority answer (interval above it) is marked as not learned."""
    if "accuracy_by_type" not in df or df["accuracy_by_type"].isna().all():
        return ""
    rows, learned, judged = {}, set(), set()
    acc = df.dropna(subset=["accuracy_by_type"])
    for _, r in acc.iterrows():
        by_type = r["accuracy_ci_by_type"]
        rows[r["projector"]] = {"tokens": r["acc_tokens_out"], "all": f"{r['accuracy']:.1f} [{r['accuracy_ci_low']:.1f}, {r['accuracy_ci_high']:.1f}]"} | {
            k: f"{v:.1f} [{by_type[k][0]:.1f}, {by_type[k][1]:.1f}]" for k, v in r["accuracy_by_type"].items()}
        if "converged" in r and isinstance(r["converged"], bool):
            rows[r["projector"]]["converged"] = "yes" if r["converged"] else "NO"
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


class PrintSweepTable(Callback):
    """Gives a multirun its id; at its end prints its rows and exits 1 if any job failed."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:  # every job's config, before the first job runs
            for job in job_configs(config):
                validate(job)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        resume = config.get("resume")
        if resume:
            df = load_results(config.results_dir)
            if not len(df) or "sweep_id" not in df or resume not in set(df["sweep_id"]):
                print(f"error: resume={resume}: no sweep {resume!r} in {config.results_dir}/runs.jsonl; give the "
                      "sweep_id of its rows", file=sys.stderr)
                raise SystemExit(2)
        os.environ[SWEEP_ENV] = resume or uuid.uuid4().hex[:12]  # inherited by jobs, in-process or launched

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = os.environ.pop(SWEEP_ENV, None)
        table = f"{config.results_dir}/runs.jsonl"
        try:  # Hydra turns an exception here into a warning and exit 0: every failure must be an exit 1 instead
            df = load_results(config.results_dir)
            df = df[df["sweep_id"] == sweep] if len(df) and "sweep_id" in df else df.iloc[0:0]
            if not len(df):
                print(f"error: no row of this sweep is in {table}", file=sys.stderr)
                raise SystemExit(1)
            print(summary(df))
            if acc := accuracy_table(df):
                print(acc)
            if config.get("report"):
                from .report import report_at_end

                report_at_end(df, config, " ".join(["python -m projector_bench", *sys.argv[1:]]))
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        except Exception as e:
            print(f"error: the sweep's rows are in {table}, but its summary or report failed: "
                  f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
            raise SystemExit(1) from None
        failed = df[df["status"] != "ok"]
        if len(failed):
            print(f"error: {len(failed)} of {len(df)} jobs failed; see the `error` column in {table}", file=sys.stderr)
            raise SystemExit(1)
