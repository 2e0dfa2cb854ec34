"""One job: a composed config in, one results row out — build the token source and the projector, measure
their costs, estimate them on the device, score the design's accuracy, append the row (`run`). Column
meanings: docs/costs.md, docs/devices.md, docs/accuracy.md; the row's schema: `results.COLUMNS`."""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from ..accuracy.cache import code_version
from ..accuracy.evaluate import evaluate_projector
from ..core.env import environment
from ..core.errors import ConfigError, OutputError, first_line
from ..core.settings import DEFAULT_THREADS, SWEEP_ENV, host_cache, host_lock, launched_elsewhere
from ..core.util import projector_kwargs, torch_threads
from ..costs.deploy import deploy_costs
from ..costs.measure import (
    count_flops,
    count_params,
    float_design,
    host_load,
    measure_latency,
    peak_memory_mb,
    size_mb,
)
from ..costs.roofline import device_from_config, estimate_row, trace_ops, trace_timm_on_meta
from ..models._registry import create_projector
from ..models.encoders import Variant, create_encoder
from ..models.lm import LanguageModel
from ..models.projectors.base import Grid, token_grid
from .results import append_row, jsonable, load_results, write_job_row

log = logging.getLogger(__name__)


def _costs(prefix: str, module: nn.Module, inputs: tuple[Tensor, ...], cfg: DictConfig,
           **kwargs: Any) -> dict[str, Any]:
    device, threads = cfg.device, cfg.device.threads or DEFAULT_THREADS
    float_module = float_design(module)  # an int8 design's float twin, built once for the counts and the lowering
    fc = count_flops(module, *inputs, float_module=float_module, **kwargs)
    lat = measure_latency(lambda: module(*inputs, **kwargs), threads=threads, min_run_time=device.min_run_time,
                          warmup=device.warmup)
    deployed = {} if cfg.deploy.runtime is None else deploy_costs(
        prefix, module, inputs, threads, device.min_run_time, device.warmup, tuple(cfg.deploy.precisions),
        float_module=float_module, **kwargs)
    return deployed | {
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
            info["encoder_ops"] = [list(op) for op in
                                   trace_timm_on_meta(cfg.shape.vision_encoder, cfg.shape.vision_img_size)]
        return tokens, grid, info
    enc = create_encoder(cfg.encoder.name, cfg.encoder.stage, cfg.encoder.weights,
                         Variant.from_config(cfg.encoder)).eval()
    images = torch.randn(batch, 3, cfg.encoder.img_size, cfg.encoder.img_size, generator=gen)
    with torch.inference_mode():
        tokens, grid = enc(images)
    info = {"encoder": enc.name, "encoder_weights": enc.weights_source, "img_size": cfg.encoder.img_size}
    return tokens.clone(), grid, info | _costs("encoder_", enc.model, (images,), cfg)


def build_projector(pcfg: DictConfig, in_dim: int) -> nn.Module:
    """The projector a `projector` config describes, for tokens of `in_dim` channels, in eval mode."""
    return create_projector(pcfg.name, in_dim, pcfg.out_dim, **projector_kwargs(pcfg)).eval()


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
    return row | _costs("", proj, (tokens,), cfg, grid=grid)


def estimates(cfg: DictConfig, row: dict[str, Any]) -> dict[str, Any]:
    """The row's end-to-end estimates on `cfg.device` (roofline per op; `host`: roofs measured here)."""
    lm = LanguageModel.from_config(cfg.lm)
    if lm.hidden != row["out_dim"]:
        log.warning("lm %s is %d wide but the projector outputs %d: the prefill is priced at the LM's width",
                    lm.name, lm.hidden, row["out_dim"])
    device = device_from_config(cfg.device, cfg.device.threads or DEFAULT_THREADS, host_cache())
    return {"device": device.name} | estimate_row(row, device, lm)


def compression_warning(row: dict[str, Any]) -> str | None:
    """Says when the accuracy model cut its grid by another ratio than the costed design did (1.5x apart or
    more): a token *count* (`pool`'s grid, a resampler's latents) kept on the smaller accuracy grid is a milder
    cut there, so the accuracy is not that of the compression the latency is priced at (docs/accuracy.md)."""
    t_in, t_out, a_in, a_out = (row.get(k) for k in ("tokens_in", "tokens_out", "acc_tokens_in", "acc_tokens_out"))
    if not (t_in and t_out and a_in and a_out):
        return None
    cost, acc = t_in / t_out, a_in / a_out
    if max(cost, acc) / min(cost, acc) < 1.5:
        return None
    return (f"accuracy measured at {a_in} -> {a_out} tokens ({acc:.3g}x), costs at {t_in} -> {t_out} ({cost:.3g}x): "
            "not the cut its costs are priced at (match them with accuracy.projector or a finer accuracy grid: "
            "docs/accuracy.md)")


def job_overrides() -> list[str]:
    """This Hydra job's own overrides (without `resume=`): what identifies a job of a multirun."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return sorted(o for o in HydraConfig.get().overrides.task if not o.startswith("resume="))


VOLATILE = ("resume", "quiet", "report", "reports_dir")  # config keys that do not change what a job measures


def job_identity(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """What identifies a job's measurement: its whole composed config (as the table stores it), without Hydra's
    own node and the keys that change only how it is run or reported (`VOLATILE`)."""
    keep = [k for k in cfg if k not in VOLATILE and k != "hydra"]  # Hydra's node resolves only inside Hydra's run
    return jsonable({k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
                     for k in keep})


def done_rows(df: Any, sweep: str, identity: dict[str, Any]) -> Any:
    """The ok rows of `sweep` in the table `df` measured from the config `identity` (an accuracy, from this code)."""
    if not len(df) or "config" not in df or "sweep_id" not in df:
        return df.iloc[0:0] if len(df) else df
    done = df[(df["sweep_id"] == sweep) & (df["status"] == "ok")]
    same = done[done["config"].map(lambda c: isinstance(c, dict) and job_identity(c) == identity)]
    if "acc_code_version" in same:  # an accuracy measured by other code is measured again
        same = same[same["acc_code_version"].isna() | (same["acc_code_version"] == code_version())]
    return same


@contextmanager
def _claimed(cfg: DictConfig, identity: dict[str, Any]) -> Iterator[None]:
    """While a resumed sweep's job runs, hold a lock named by its sweep and config: a second process resuming the
    same sweep at the same time waits for it, then finds its row, instead of measuring the job twice."""
    if not cfg.get("resume"):
        yield
        return
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cfg.results_dir) / ".claims" / f"{cfg.resume}-{digest}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _done_in_resumed_sweep(cfg: DictConfig, identity: dict[str, Any]) -> dict[str, Any] | None:
    if not cfg.get("resume") or cfg.get("search"):  # a search resumes through its study, not through rows
        return None
    same = done_rows(load_results(cfg.results_dir), cfg.resume, identity)
    return same.iloc[-1].to_dict() if len(same) else None


def run(cfg: DictConfig, extra: dict[str, Any] | None = None, record: bool = True) -> dict[str, Any]:
    """Measure one design and append its row (with the `extra` columns; `record=False`: only return it);
    a failure is recorded in the row, never raised. With `resume=<sweep_id>`, a job that sweep already holds
    an ok row for (measured from the same composed config; its accuracy, if any, from the same `code_version()`)
    is not measured again: that row is returned."""
    identity = job_identity(cfg)
    with _claimed(cfg, identity):
        if (done := _done_in_resumed_sweep(cfg, identity)) is not None:
            log.info("resume: %s is already in sweep %s (run %s)", " ".join(job_overrides()), cfg.resume,
                     done.get("run_id"))
            return done
        return _run(cfg, extra, record)


def _run(cfg: DictConfig, extra: dict[str, Any] | None, record: bool) -> dict[str, Any]:
    overrides = job_overrides()
    row: dict[str, Any] = {
        "run_id": uuid.uuid4().hex[:12], "sweep_id": os.environ.get(SWEEP_ENV) or uuid.uuid4().hex[:12],
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "projector": cfg.projector.name, "encoder": cfg.encoder.name or "none", "status": "running",
        "job_overrides": overrides, "token_budget": cfg.get("token_budget"),
    } | (extra or {})
    threads = used = cfg.device.threads or DEFAULT_THREADS  # its type and range: validate.py, before any job
    try:
        with torch_threads(threads):
            used = torch.get_num_threads()  # what the job's kernels ran with (the row's `threads`)
            with host_lock(timing=True):  # parallel jobs on this host: no training beside a timing
                row |= measure(cfg)
                row |= host_load(threads)
                row |= estimates(cfg, row)
            if cfg.task.get("_target_"):
                with host_lock(timing=False):
                    row |= evaluate_projector(cfg)
                said = [row.get("accuracy_warning"), compression_warning(row)]
                row["accuracy_warning"] = "; ".join(w for w in said if w) or None
        row["status"], row["error"] = "ok", None
    except Exception as e:  # recorded in the row (and the log), then the sweep goes on
        row["status"], row["error"] = "failed", first_line(e, typed=not isinstance(e, ConfigError))
        log.debug("job failed", exc_info=True)
    row |= environment() | {"threads": used, "config": OmegaConf.to_container(cfg, resolve=True)}
    if record:
        try:
            (write_job_row if launched_elsewhere() else append_row)(cfg.results_dir, row)
        except (OSError, ValueError) as e:
            raise OutputError(f"could not record the row: {e}") from e
    return row
