"""One check of a composed config before any job runs: types, ranges, choices and combinations that cannot work.

Single runs, every job of a multirun (composed up front), searches and `report` call `validate`; each problem
is one `ConfigError` line that names the key, the value and the fix.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ._registry import create_projector
from .budget import DEPLOY_RUNTIMES, Budget
from .calibrate import load_points
from .encoders import TimmEncoder, Variant
from .errors import ConfigError
from .settings import check_host_cache
from .util import accuracy_projector_kwargs, projector_kwargs

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
    "seed": (lambda v: _int(v) and v >= 0, "a non-negative integer"),
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
for _group in ("accuracy.training", "accuracy.encoder_training"):
    for _k in ("batch_size", "min_steps", "max_steps", "eval_every", "patience"):
        RULES[f"{_group}.{_k}"] = (_pos_int, "a positive integer")
    RULES[f"{_group}.drop_patience"] = (_opt(_pos_int), "a positive integer or null (null: the same as patience)")
    RULES[f"{_group}.warmup_steps"] = (lambda v: _int(v) and v >= 0, "a non-negative integer")
    RULES[f"{_group}.lr_drops"] = (lambda v: _int(v) and v >= 0, "a non-negative integer")
    RULES[f"{_group}.min_delta"] = (lambda v: _num(v) and v >= 0, "a non-negative number")
RULES["accuracy.encoder_training.lr"] = (_pos_num, "a positive number")
NEEDS_ACCURACY = {"accuracy", "accuracy_ci_low", "accuracy_ci_high", "val_accuracy"}


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
        raise ConfigError(f"encoder.img_size={e.img_size} gives a {side}x{side} token grid at stage {e.stage} of {e.name} "
                          f"(stride {reduction}); use encoder.img_size >= {2 * reduction}")
    proj = create_projector(cfg.projector.name, cfg.projector.in_dim or channels, cfg.projector.out_dim,
                            **projector_kwargs(cfg.projector))
    _check_tokens(proj, cfg.projector.name, side, "encoder.img_size")


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
    proj = create_projector(cfg.projector.name, channels, cfg.accuracy.training.width, **accuracy_projector_kwargs(cfg))
    try:
        _check_tokens(proj, cfg.projector.name, side, "task.img_size")
    except ConfigError as e:
        raise ConfigError(f"on the accuracy grid ({side}x{side}: task.img_size={img} at stage {a.stage} of {a.name}): {e}") from None


def _check_search(cfg: DictConfig) -> None:
    s = cfg.search
    for m, d in s.objectives.items():
        if d not in ("maximize", "minimize"):
            raise ConfigError(f"search.objectives.{m}={d!r}: use maximize or minimize")
    if not cfg.task.get("_target_") and NEEDS_ACCURACY & set(s.objectives):
        raise ConfigError(f"search objective {sorted(NEEDS_ACCURACY & set(s.objectives))[0]!r} needs a task, but task=none; "
                          "set task=shapes_vqa (or another task) or remove the objective")
    spec = s.storage
    if isinstance(spec, str) and spec.startswith("journal:") and not Path(spec.removeprefix("journal:")).expanduser().parent.is_dir():
        raise ConfigError(f"search.storage={spec!r}: the folder {str(Path(spec.removeprefix('journal:')).parent)!r} does not exist; "
                          "create it or give another path")


def validate(cfg: DictConfig) -> None:
    """Raise one `ConfigError` for the first problem in a composed config (run, multirun job, search, report)."""
    _check_rules(cfg)
    Budget.from_config(cfg.budget)  # budget.latency: one of the latency columns
    if cfg.get("device") and cfg.device.get("measured"):  # published points: checked before any job, not at its end
        load_points(OmegaConf.to_container(cfg.device.measured, resolve=True), cfg.device.get("name", ""))
    if "encoder" in cfg and "projector" in cfg:
        _check_grid(cfg)
    if "accuracy" in cfg and "projector" in cfg:
        _check_accuracy_grid(cfg)
    if cfg.get("search"):
        _check_search(cfg)
    check_host_cache()  # every command may measure this host and write its roofs there


def job_configs(config: DictConfig) -> list[DictConfig]:
    """Every job config of the multirun that `config` (a callback's) starts, composed as Hydra's BasicSweeper will."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if OmegaConf.select(config, "hydra.sweeper._target_") != f"{BasicSweeper.__module__}.{BasicSweeper.__name__}":
        return [config]  # another sweeper composes its jobs its own way: check the config it starts from
    params = [f"{k}={v}" for k, v in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()]
    loader = GlobalHydra.instance().config_loader()
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(params + list(config.hydra.overrides.task))
    return [loader.load_sweep_config(config, list(job)) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
