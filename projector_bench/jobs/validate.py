"""One check of a composed config before any job runs: types, ranges, choices and combinations that cannot work.

Single runs, every job of a multirun (composed up front), searches and `report` call `validate`; each problem
is one `ConfigError` line that names the key, the value and the fix.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..core.budget import DEPLOY_RUNTIMES, Budget
from ..core.compat import basic_sweeper
from ..core.env import training_device
from ..core.errors import ConfigError, first_line
from ..core.settings import check_host_cache
from ..core.util import accuracy_projector_kwargs, projector_kwargs
from ..costs.calibrate import load_points
from ..models._registry import create_projector
from ..models.encoders import TimmEncoder, Variant
from ..models.projectors.base import token_grid
from .results import COLUMNS, COST_COLUMNS

Rule = Callable[[Any], bool]


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pos_int(v: Any) -> bool:
    return _int(v) and v > 0


def _pos_num(v: Any) -> bool:
    return _num(v) and v > 0


def _opt(rule: Rule) -> Rule:
    return lambda v: v is None or rule(v)


# key: (rule, what the value must be)
RULES: dict[str, tuple[Rule, str]] = {
    "seed": (lambda v: _int(v) and 0 <= v < 2**63, "a non-negative integer below 2**63 (torch's seed range)"),
    "device.threads": (_opt(_pos_int), "a positive integer or null (all cores)"),
    "device.min_run_time": (_pos_num, "a positive number of seconds"),
    "device.warmup": (lambda v: _int(v) and v >= 0, "a non-negative integer"),
    "shape.batch": (_pos_int, "a positive integer"),
    "shape.tokens": (_pos_int, "a positive integer"),
    "shape.in_dim": (_pos_int, "a positive integer"),
    "encoder.img_size": (_pos_int, "a positive integer (pixels)"),
    "encoder.stage": (_int, "an integer stage index"),
    "projector.out_dim": (_pos_int, "a positive integer"),
    "projector.in_dim": (_opt(_pos_int), "a positive integer or null (the token source's)"),
    "budget.latency_ms": (_opt(_pos_num), "a positive number or null"),
    "budget.params": (_opt(_pos_num), "a positive number or null"),
    "budget.memory_mb": (_opt(_pos_num), "a positive number or null"),
    "budget.accuracy_tolerance": (lambda v: _num(v) and 0 <= v < 100,
                                  "a number of accuracy points from 0 to 100 (0: only statistical ties are equal)"),
    "accuracy.seeds": (_pos_int, "a positive integer"),
    "accuracy.val_fraction": (lambda v: _num(v) and 0 < v < 1, "a fraction between 0 and 1"),
    "accuracy.workers": (_opt(_pos_int), "a positive integer or null"),
    "accuracy.training.lr": (lambda v: _pos_num(v) or (isinstance(v, list) and len(v) > 0 and all(map(_pos_num, v))),
                             "a positive number or a list of them"),
    "accuracy.projector": (lambda v: v is None or isinstance(v, dict),
                           "a mapping of projector keys (accuracy.projector.num_latents=16), or null"),
    "deploy.runtime": (lambda v: v is None or v in DEPLOY_RUNTIMES, f"one of {', '.join(DEPLOY_RUNTIMES)} or null"),
    "deploy.precisions": (lambda v: isinstance(v, list) and len(v) > 0 and set(v) <= {"fp32", "int8"},
                          "a non-empty list of fp32 and int8"),
    "budget.deployable": (lambda v: v is None or v in DEPLOY_RUNTIMES, f"one of {', '.join(DEPLOY_RUNTIMES)} or null"),
    "token_budget": (_opt(_pos_int), "a positive integer (tokens) or null"),
    "search.n_trials": (_pos_int, "a positive integer"),
    "search.heartbeat": (_pos_int, "a positive integer (seconds)"),
    "search.grace_period": (_pos_int, "a positive integer (seconds)"),
}
for _group in ("accuracy.training", "accuracy.standin", "accuracy.encoder_training"):
    for _k in ("batch_size", "min_steps", "max_steps", "eval_every", "patience"):
        RULES[f"{_group}.{_k}"] = (_pos_int, "a positive integer")
    RULES[f"{_group}.drop_patience"] = (_opt(_pos_int), "a positive integer or null (null: the same as patience)")
    RULES[f"{_group}.warmup_steps"] = (lambda v: _int(v) and v >= 0, "a non-negative integer")
    RULES[f"{_group}.lr_drops"] = (lambda v: _int(v) and v >= 0, "a non-negative integer")
    RULES[f"{_group}.min_delta"] = (lambda v: _num(v) and v >= 0, "a non-negative number")
RULES["accuracy.standin.lr"] = RULES["accuracy.encoder_training.lr"] = (_pos_num, "a positive number")
RULES["accuracy.standin.images"] = (lambda v: _int(v) and v >= 20, "an integer of at least 20 (images)")
RULES["accuracy.standin.seed"] = (lambda v: _int(v) and v >= 0, "a non-negative integer")
RULES["accuracy.encoder_training.keep"] = (lambda v: v in ("best", "frozen", "fine-tuned", "task-only"),
                                           "one of best, frozen, fine-tuned, task-only")
NEEDS_ACCURACY = {"accuracy", "accuracy_ci_low", "accuracy_ci_high", "val_accuracy"}
# Row columns that hold text, lists, mappings or flags: nothing a search can maximize or minimize
NOT_NUMERIC_COSTS = {"macs_by_op", "torch_flops_agree", "uncounted_ops", "ops", "exports", "xnnpack_outside",
                     "xnnpack_int8_outside"}
NOT_NUMERIC = NOT_NUMERIC_COSTS | {
    "run_id", "sweep_id", "timestamp", "projector", "encoder", "status", "error", "job_overrides", "config",
    "trial_overrides", "env_torch", "env_timm", "env_fvcore", "env_python", "env_cpu", "env_machine", "env_git_commit",
    "encoder_weights", "e2e_encoder", "grid", "load_basis", "load_warning", "device", "est_basis", "task",
    "accuracy_ci_method", "accuracy_by_seed", "accuracy_by_type", "accuracy_ci_by_type", "accuracy_note",
    "accuracy_warning", "majority_by_type", "types_not_learned", "seeds", "lr_grid", "train_steps", "best_step",
    "converged", "val_curves", "acc_cached", "acc_code_version", "acc_encoder", "acc_encoder_source", "acc_grid",
    "acc_encoder_kept", "acc_device"}


def _value(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    node = OmegaConf.select(cfg, key, default=KeyError)
    if node is KeyError:
        return False, None
    return True, OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _check_rules(cfg: DictConfig) -> None:
    for key, (rule, what) in RULES.items():
        present, v = _value(cfg, key)
        if present and not rule(v):
            raise ConfigError(f"{key}={v!r} is not valid: it must be {what}; fix it on the command line or in conf/")


@cache
def _encoder_shape(name: str, stage: int, variant: Any) -> tuple[int, int]:
    """(reduction, channels) of an encoder stage, from a randomly initialised build (no weights are read)."""
    enc = TimmEncoder(name, stage, "random", variant)
    return int(enc.model.feature_info.reduction()[-1]), int(enc.channels)


def _check_grid(cfg: DictConfig) -> None:
    """The encoder's token grid must exist (≥ 2×2) and the projector must accept it."""
    e = cfg.encoder
    if e.name is None:
        return
    variant = Variant.from_config(e)
    reduction, channels = _encoder_shape(e.name, e.stage, variant)
    side = e.img_size // reduction
    if side < 2:
        raise ConfigError(f"encoder.img_size={e.img_size} gives a {side}x{side} token grid at stage {e.stage} "
                          f"of {e.name} (stride {reduction}); use encoder.img_size >= {2 * reduction}")
    proj = _build(cfg.projector.name, cfg.projector.in_dim or channels, cfg.projector.out_dim,
                  projector_kwargs(cfg.projector))
    _check_tokens(proj, cfg.projector.name, side, "encoder.img_size")


def _build(name: str, in_dim: int, out_dim: int, kwargs: dict[str, Any]) -> Any:
    """The projector `name` built on the meta device (shapes only: no memory, whatever its size), or a one-line
    error for a key its constructor does not take."""
    try:
        with torch.device("meta"):
            return create_projector(name, in_dim, out_dim, **kwargs)
    except TypeError as e:
        raise ConfigError(f"projector {name}: {first_line(e)}; its keys are those of "
                          f"conf/projector/{name}.yaml (remove the key, or add it to the design)") from None


def _check_projector(cfg: DictConfig) -> None:
    """The projector takes its config's keys (also without an encoder, whose check builds it too)."""
    if cfg.encoder.get("name") is None:
        _build(cfg.projector.name, cfg.projector.in_dim or cfg.shape.in_dim, cfg.projector.out_dim,
               projector_kwargs(cfg.projector))


def _check_shape_grid(cfg: DictConfig) -> None:
    grid = cfg.shape.get("grid")
    if cfg.encoder.get("name") is None and grid is not None:
        try:
            token_grid(cfg.shape.tokens, OmegaConf.to_container(grid) if OmegaConf.is_config(grid) else grid, "shape")
        except ConfigError as e:
            raise ConfigError(f"shape.grid={grid!r} is not valid: {e}") from None


def _check_steps(cfg: DictConfig) -> None:
    for group in ("accuracy.training", "accuracy.standin", "accuracy.encoder_training"):
        node = OmegaConf.select(cfg, group)
        if node is not None and node.min_steps > node.max_steps:
            raise ConfigError(f"{group}.min_steps={node.min_steps} is above {group}.max_steps={node.max_steps}: a run "
                              "would end before it may stop; raise max_steps or lower min_steps")


def _check_device(cfg: DictConfig) -> None:
    try:
        training_device(str(cfg.accuracy.get("device", "auto")))
    except ValueError as e:
        raise ConfigError(f"accuracy.device={e}") from None


def _check_results_dir(cfg: DictConfig) -> None:
    """`results_dir` is a folder this process can write (its mode too: root writes through a read-only mode), or
    one it can create."""
    path = Path(cfg.results_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"results_dir={cfg.results_dir} is a file, not a folder: nothing could be recorded; "
                          "set results_dir=<a folder>")
    here = next(p for p in (path, *path.parents) if p.exists())
    if not here.stat().st_mode & 0o222 or not os.access(here, os.W_OK):
        raise ConfigError(f"results_dir={cfg.results_dir}: {here} is read-only, so no row could be recorded; make it "
                          "writable or set results_dir=<another folder>")


def _check_deployable(cfg: DictConfig) -> None:
    """`budget.deployable` keeps designs that ran on a runtime: the jobs must lower to it, and it must be here."""
    want = cfg.budget.get("deployable")
    if want is None:
        return
    if cfg.deploy.get("runtime") != want:
        raise ConfigError(f"budget.deployable={want} keeps designs that ran on {want}, but deploy.runtime="
                          f"{cfg.deploy.get('runtime')} lowers none there: set deploy.runtime={want} "
                          "or drop budget.deployable")
    from ..costs.deploy import unavailable

    if (why := unavailable()) is not None:
        raise ConfigError(f"budget.deployable={want} keeps designs that ran on {want}, but {why}; "
                          "or drop budget.deployable")


GB = 1e9
WEIGHT_COPIES = 2.0             # a job's eager measurements hold about twice the weights (tracing, memory tracking)
WEIGHT_COPIES_PER_LOWERING = 3.0  # ... and each precision lowered to a runtime three more (export, program, its load)


def job_memory(cfg: DictConfig) -> dict[str, tuple[float, str]]:
    """What a job will allocate, in bytes, by its larger parts, each with the key that sizes it: the projector's and
    the encoder's weights (times the copies the measurements make) and their forwards' activations, from builds
    on the meta device (nothing is allocated)."""
    from ..costs.measure import meta_footprint

    lowered = len(cfg.deploy.precisions) if cfg.deploy.get("runtime") else 0
    copies = WEIGHT_COPIES + WEIGHT_COPIES_PER_LOWERING * lowered
    parts: dict[str, tuple[float, str]] = {}
    batch, e, pc = cfg.shape.batch, cfg.encoder, cfg.projector
    with torch.device("meta"):
        if e.get("name") is None:
            tokens, grid = torch.empty(batch, cfg.shape.tokens, cfg.shape.in_dim), None
        else:
            enc = TimmEncoder(e.name, e.stage, "random", Variant.from_config(e))
            images = torch.empty(batch, 3, e.img_size, e.img_size)
            w, act = meta_footprint(enc, images)
            parts["encoder"] = (w * copies + 3 * act, f"encoder {e.name} at encoder.img_size={e.img_size}")
            tokens, grid = enc(images)
        proj = _build(pc.name, pc.in_dim or tokens.shape[-1], pc.out_dim, projector_kwargs(pc))
        w, act = meta_footprint(proj, tokens, grid=grid if getattr(proj, "needs_grid", False) else None)
    parts["projector"] = (w * copies + 3 * act, f"projector {pc.name} ({w / 4e9:.2f} G parameters at "
                                                 f"{tokens.shape[-1]} -> projector.out_dim={pc.out_dim})")
    return parts


def _check_memory(cfg: DictConfig) -> None:
    """Refuse a job that cannot fit in the memory this machine (or container) has free, naming what sizes it: the
    out-of-memory killer would end it with no row and no message."""
    from ..core.env import available_memory

    free = available_memory()
    if free is None:
        return
    try:
        parts = job_memory(cfg)
    except ConfigError:
        return  # a grid the design cannot take: the job fails with its own message
    need = sum(v for v, _ in parts.values())
    if need > free:
        _, what = max(parts.values())
        raise ConfigError(f"the job needs about {need / GB:.1f} GB, mostly for the {what}, "
                          f"but {free / GB:.1f} GB is free "
                          "here (machine or container): make it smaller or run where there is more memory")


def _check_tokens(proj: Any, name: str, side: int, knob: str) -> None:
    """`proj` must make at least one token from a side×side grid (and accept the grid at all)."""
    if getattr(proj, "needs_grid", False) and proj.num_tokens_out((side, side)) < 1:  # may raise its own ConfigError
        raise ConfigError(f"projector {name} makes no token from a {side}x{side} grid; use a larger {knob}")


def _check_accuracy_grid(cfg: DictConfig) -> None:
    """With a task, the projector is also trained on the accuracy encoder's grid (task images at its stage):
    it must accept that grid too, before any cost is measured."""
    a, img = cfg.accuracy.encoder, cfg.task.get("img_size")
    if not cfg.task.get("_target_") or not isinstance(img, int) or not a.get("name"):
        return
    reduction, channels = _encoder_shape(a.name, a.stage, Variant.from_config(a))
    side = img // reduction
    proj = _build(cfg.projector.name, channels, cfg.accuracy.training.width, accuracy_projector_kwargs(cfg))
    try:
        _check_tokens(proj, cfg.projector.name, side, "task.img_size")
    except ConfigError as e:
        raise ConfigError(f"on the accuracy grid ({side}x{side}: task.img_size={img} at stage {a.stage} "
                          f"of {a.name}): {e}") from None


def objective_columns() -> list[str]:
    """The results-row columns a search may take as objectives: the numeric ones (the encoder's costs too)."""
    encoder = [f"encoder_{c}" for c in COST_COLUMNS if c not in NOT_NUMERIC_COSTS]
    return sorted([c for c in COLUMNS if c not in NOT_NUMERIC] + encoder)


def _check_search(cfg: DictConfig) -> None:
    s = cfg.search
    choices = objective_columns()
    for m, d in s.objectives.items():
        if m not in choices:  # else every trial fails (a missing column) or the search crashes (a text column)
            raise ConfigError(f"search.objectives.{m}: {m!r} is not a numeric column of the results row; choose from: "
                              f"{', '.join(choices)} (docs/costs.md, docs/devices.md, docs/accuracy.md)")
        if d not in ("maximize", "minimize"):
            raise ConfigError(f"search.objectives.{m}={d!r}: use maximize or minimize")
    if not cfg.task.get("_target_") and NEEDS_ACCURACY & set(s.objectives):
        raise ConfigError(f"search objective {sorted(NEEDS_ACCURACY & set(s.objectives))[0]!r} needs a task, "
                          "but task=none; set task=shapes_vqa (or another task) or remove the objective")
    spec = s.storage
    if (isinstance(spec, str) and spec.startswith("journal:")
            and not Path(spec.removeprefix("journal:")).expanduser().parent.is_dir()):
        raise ConfigError(f"search.storage={spec!r}: the folder {str(Path(spec.removeprefix('journal:')).parent)!r} "
                          "does not exist; create it or give another path")


def validate(cfg: DictConfig, jobs: bool = True) -> None:
    """Raise one `ConfigError` for the first problem in a composed config (run, multirun job, search, report);
    `jobs=False` (a report of recorded rows) skips what only measuring needs."""
    _check_rules(cfg)
    if "accuracy" in cfg:
        _check_steps(cfg)
        if jobs and cfg.get("task") and cfg.task.get("_target_"):  # a job that trains
            _check_device(cfg)
    if jobs:
        _check_results_dir(cfg)
        if "deploy" in cfg and "budget" in cfg:
            _check_deployable(cfg)
    if "shape" in cfg and "encoder" in cfg:
        _check_shape_grid(cfg)
        if "projector" in cfg:
            _check_projector(cfg)
    Budget.from_config(cfg.budget)  # budget.latency: one of the latency columns
    if cfg.get("device") and cfg.device.get("measured"):  # published points: checked before any job, not at its end
        load_points(OmegaConf.to_container(cfg.device.measured, resolve=True), cfg.device.get("name", ""))
    if "encoder" in cfg and "projector" in cfg:
        _check_grid(cfg)
    if "accuracy" in cfg and "projector" in cfg:
        _check_accuracy_grid(cfg)
    if jobs and "deploy" in cfg and "shape" in cfg and "projector" in cfg:
        _check_memory(cfg)
    if cfg.get("search"):
        _check_search(cfg)
    check_host_cache()  # every command may measure this host and write its roofs there


def job_configs(config: DictConfig) -> list[DictConfig]:
    """Every job config of the multirun that `config` (a callback's) starts, composed as Hydra's BasicSweeper will."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    BasicSweeper = basic_sweeper()
    if OmegaConf.select(config, "hydra.sweeper._target_") != f"{BasicSweeper.__module__}.{BasicSweeper.__name__}":
        return [config]  # another sweeper composes its jobs its own way: check the config it starts from
    params = [f"{k}={v}" for k, v in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()]
    loader = GlobalHydra.instance().config_loader()
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(params + list(config.hydra.overrides.task))
    return [loader.load_sweep_config(config, list(job))
            for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
