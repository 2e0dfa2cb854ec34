"""Accuracy of a projector as MobileVLM trains one in its first stage: frozen encoder, the projector under
test, a small LM, trained together to answer questions about the image (docs/accuracy.md).

Each design is trained to convergence on a validation split carved from the train split, at every rate of
a small grid and for `accuracy.seeds` seeds; the rate with the best mean validation loss is kept, and the
test split scores each kept model once. The row's accuracy is the mean over seeds with a two-level
bootstrap interval (seeds, then questions). Every cached task, encoder, feature set and trained model is
keyed by its config and by `code_version()`, a hash of the source it depends on and the torch and timm
versions, so edited code retrains.
"""
from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ..core.compat import pool_processes
from ..core.env import device_label, training_device
from ..core.util import accuracy_projector_kwargs, torch_threads
from ..models._registry import create_projector
from ..models.encoders import Variant
from ..models.projectors.int8 import Int8Projector, quantize_linear_int8
from ..tasks import TaskData, carve
from . import pool as workers_pool
from .cache import code_version, device_key, entry_key, load_task, task_key
from .features import encoder_features
from .proxy import TinyVLM, forward_questions, question_slots, score
from .stats import two_level_bootstrap
from .training import DivergedError, batches, cached, fit

log = logging.getLogger(__name__)
SMALL_TEST = 200  # fewer test questions than this: the row says its interval is wide
TOO_SMALL_TEST = 30  # fewer than this: the row warns that its accuracy and interval mean little


def _lr_grid(value: Any) -> list[float]:  # `training.lr`: one rate or a grid
    grid = list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else [value]
    return [float(v) for v in grid]


class _Setup(NamedTuple):
    task: TaskData
    feats: Tensor
    grid: tuple[int, int]
    source: str
    train: Tensor
    val: Tensor
    slots: Tensor
    name: str          # the design that is trained: an int8 design's float twin
    kwargs: dict
    int8: bool
    base_key: tuple
    standin: dict | None  # the stand-in encoder's pretraining record, when it stood in for pretrained weights
    adapted: dict | None  # and what the task's own labels taught it (`_adapt`)
    device: str           # where the models train (`accuracy.device`, resolved)

    def build(self, seed: int, t: DictConfig) -> TinyVLM:
        torch.manual_seed(seed)
        proj = create_projector(self.name, self.feats.shape[-1], t.width, **self.kwargs)
        return TinyVLM(proj, self.grid, self.task.vocab_size, self.task.questions.shape[1], self.task.num_answers,
                       t.width, t.layers, t.heads)


def _setup(cfg: DictConfig, quiet: bool) -> _Setup:
    cache = Path(cfg.results_dir) / "cache"
    task = load_task(cfg.task, cache)
    feats, grid, info = encoder_features(task, cfg, cache, quiet)
    source = info["source"]
    a, t = cfg.accuracy, cfg.accuracy.training
    train, val = carve(task.train, a.val_fraction, cfg.seed)
    kwargs = accuracy_projector_kwargs(cfg)
    name, in_dim = cfg.projector.name, feats.shape[-1]
    design = create_projector(name, in_dim, t.width, **kwargs)
    int8 = isinstance(design, Int8Projector)
    if int8:
        name, kwargs = design.float_twin
    recipe = {k: v for k, v in OmegaConf.to_container(t, resolve=True).items() if k != "lr"}
    device = training_device(str(a.device))
    base_key = (name, kwargs, in_dim, grid, source, task_key(cfg.task), a.val_fraction, recipe, *device_key(device))
    return _Setup(task, feats, grid, source, train, val, question_slots(task), name, kwargs, int8, base_key,
                  info.get("standin"), info.get("adapted"), str(device))


def _model_path(s: _Setup, models: Path, seed: int, lr: float) -> Path:
    return models / f"{s.name}-{entry_key(*s.base_key, seed, lr)}.pt"


def _train_model(s: _Setup, t: DictConfig, path: Path, quiet: bool, seed: int, lr: float,
                 threads: int) -> dict[str, Any]:
    """Train (or load from the cache file `path`) the model of setup `s` for one seed and learning rate; the
    returned run has `cached` and, if it diverged, `error`. Runs in a worker process or in this one, on `s.device`."""

    def make() -> dict[str, Any]:
        model = s.build(seed, t).to(s.device)

        def loss_on(b: Tensor) -> Tensor:
            logits, qi = forward_questions(model, s.feats, s.task, s.slots, b)
            return F.cross_entropy(logits, s.task.answers[qi].to(logits.device))

        def validate() -> tuple[float, float]:
            logits, qi, correct = score(model, s.feats, s.task, s.slots, s.val)
            return F.cross_entropy(logits, s.task.answers[qi]).item(), 100 * correct.float().mean().item()

        return fit(model, loss_on, validate, batches(s.train, t.batch_size, seed), t, lr,
                   f"{s.name} seed {seed}", quiet)

    try:
        with torch_threads(threads):
            run, hit = cached(path, make)
    except DivergedError as e:
        return {"error": str(e), "seed": seed, "lr": lr}
    return run | {"cached": hit, "seed": seed}


def _train_all(s: _Setup, t: DictConfig, models: Path, quiet: bool, jobs: list[tuple[int, float]],
               workers: int) -> list[dict[str, Any]]:
    """`_train_model` for every (seed, lr): in `workers` processes of one thread each when workers > 1 (these
    small models use a core each better than when two threads share one model).
    A worker gets the setup itself (task, features), so it neither rebuilds nor re-reads them. Models already
    in the cache are loaded here: an int8 design, whose float twin was just trained, starts no worker."""
    threads = torch.get_num_threads()
    paths = {j: _model_path(s, models, *j) for j in jobs}
    todo = [j for j in jobs if not paths[j].exists()]
    if workers <= 1 or len(jobs) == 1 or not todo:  # else a worker trains each model, one thread each, as cold
        return [_train_model(s, t, paths[j], quiet, *j, threads) for j in jobs]
    per = max(1, threads // workers)
    # Workers ignore Ctrl-C: the parent gets it and ends them, so it prints one line, not a traceback per worker.
    pool = workers_pool.get_pool(workers)
    # its workers: a Pool replaces one that dies, but its task never ends (get() waits forever)
    procs = pool_processes(pool)
    pending: dict[tuple[int, float], Any] = {}
    try:
        pending = {j: pool.apply_async(_train_model, (s, t, paths[j], quiet, *j, per)) for j in todo}
        return [workers_pool.result(pending[j], procs, s.name) if j in pending
                else _train_model(s, t, paths[j], quiet, *j, threads) for j in jobs]
    except BaseException as e:  # the pool's other jobs would train on for nothing: end them
        workers_pool.close_pool()
        if not isinstance(e, KeyboardInterrupt):
            raise
    del pending, pool  # free the pool's semaphores now (its objects form cycles), and raise a fresh
    gc.collect()       # KeyboardInterrupt whose traceback holds no pool: else the resource tracker warns at exit
    raise KeyboardInterrupt


def evaluate_projector(cfg: DictConfig) -> dict[str, Any]:
    """Train projector + LM to convergence for every seed and every learning rate of the grid, keep the
    rate of the best mean validation loss, and score its models on the test split; returns row columns.

    An int8 design trains its float twin, then quantizes it (post-training quantization). Trained models
    are cached by everything they depend on, so `mlp_int8` reuses the `mlp` just trained.
    """
    start = time.perf_counter()
    quiet = bool(cfg.quiet)
    s = _setup(cfg, quiet)  # builds and caches the task, the encoder and its features for the workers
    task, feats, slots, int8, grid, source = s.task, s.feats, s.slots, s.int8, s.grid, s.source
    a, t = cfg.accuracy, cfg.accuracy.training
    seeds = [cfg.seed + i for i in range(int(a.seeds))]
    jobs = [(seed, lr) for lr in _lr_grid(t.lr) for seed in seeds]
    workers = workers_pool.training_workers(a.workers, len(jobs), s.device)
    done = _train_all(s, t, Path(cfg.results_dir) / "cache" / "models", quiet, jobs, workers)
    by_lr: dict[float, list[dict[str, Any]]] = {}
    for run in done:
        by_lr.setdefault(run["lr"], []).append(run)
    ok = {lr: rs for lr, rs in by_lr.items() if not any("error" in r for r in rs)}
    if not ok:
        raise DivergedError(next(r["error"] for r in done if "error" in r))
    lr = min(ok, key=lambda k: float(np.mean([r["val_loss"] for r in ok[k]])))
    runs = sorted(ok[lr], key=lambda r: r["seed"])
    val_by_lr = {f"{k:g}": (float(np.mean([r["val_loss"] for r in rs])) if k in ok else None)
                 for k, rs in by_lr.items()}

    test_q = task.split("test")
    correct, qi = [], None
    for run in runs:
        model = s.build(0, t)
        model.load_state_dict(run["state_dict"])
        model.eval()
        if int8:
            model.projector = quantize_linear_int8(model.projector)
        with torch.inference_mode():
            _, qi, c = score(model, feats, task, slots, task.test)
        correct.append(c.numpy().astype(np.float64))
    correct_m = np.stack(correct)  # seeds × test questions
    types = np.array(task.qtype)[qi.numpy()]
    kinds = sorted(set(types.tolist()))
    answers_test = task.answers[qi].numpy()
    train_q = task.split("train")
    majority_by_type = {}
    for k in kinds:
        in_train = np.array(task.qtype)[train_q.numpy()] == k
        common = np.bincount(task.answers[train_q].numpy()[in_train]).argmax() if in_train.any() else -1
        majority_by_type[k] = 100 * float((answers_test[types == k] == common).mean())
    ci_by_type = {k: two_level_bootstrap(correct_m[:, types == k], cfg.seed) for k in kinds}
    lo, hi = two_level_bootstrap(correct_m, cfg.seed)
    per_seed = (100 * correct_m.mean(1)).tolist()
    majority = torch.mode(task.answers[train_q]).values
    note = (f"small test split: {len(test_q)} questions; the interval is wide" if len(test_q) < SMALL_TEST else None)
    warning = (f"only {len(test_q)} test questions: this accuracy and its interval mean little; give the task more "
               "images" if len(test_q) < TOO_SMALL_TEST else None)
    for what, rec in (("stand-in encoder", s.standin),
                      (f"encoder (with a head trained on {task.name}'s labels)", s.adapted)):
        if rec is not None and not rec["better_than_chance"]:
            warning = "; ".join(w for w in (warning, (
                f"the {what} is no better than chance on its own validation ({rec['val_accuracy']:.1f}%, chance "
                f"{rec['chance']:.1f}%): this accuracy says nothing of the design; give the encoder pretrained weights "
                "(accuracy.encoder.weights) or a longer stand-in pretraining (accuracy.standin)")) if w)
    if warning:
        log.warning(warning)
    return {
        "task": task.name,
        "accuracy": float(np.mean(per_seed)),
        "accuracy_ci_low": lo, "accuracy_ci_high": hi,
        "accuracy_ci_method": f"two-level bootstrap 95% over {len(seeds)} seeds and {len(test_q)} test questions",
        "accuracy_by_seed": per_seed,
        "accuracy_seed_std": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None,
        "accuracy_by_type": {k: 100 * float(correct_m[:, types == k].mean()) for k in kinds},
        "accuracy_ci_by_type": ci_by_type,
        "majority_by_type": majority_by_type,
        "types_not_learned": [k for k in kinds if ci_by_type[k][0] <= majority_by_type[k]],
        "majority_baseline": 100 * float((task.answers[test_q] == majority).float().mean()),
        "accuracy_note": note, "accuracy_warning": warning,
        "seeds": seeds, "lr": lr, "lr_grid": val_by_lr,
        "train_steps": [r["steps"] for r in runs], "best_step": [r["best_step"] for r in runs],
        "converged": all(r["converged"] for r in runs),
        "val_accuracy": float(np.mean([r["val_accuracy"] for r in runs])),
        "val_loss": float(np.mean([r["val_loss"] for r in runs])),
        "val_curves": [r["curve"] for r in runs],
        "train_time_s": sum(r.get("time_s", 0.0) for r in done), "train_workers": workers,
        "train_steps_per_s": float(np.median([r["steps_per_s"] for r in runs])),
        "train_questions_per_s": (float(np.median([r["steps_per_s"] for r in runs])) * t.batch_size
                                  * len(task.answers) / len(task.images)),
        "accuracy_time_s": time.perf_counter() - start,
        "acc_cached": all(r.get("cached", False) for r in done),
        "acc_code_version": code_version(),
        "acc_encoder": Variant.from_config(a.encoder).label(a.encoder.name), "acc_encoder_source": source,
        "acc_encoder_val_accuracy": s.adapted["val_accuracy"] if s.adapted else None,
        "acc_encoder_chance": s.adapted["chance"] if s.adapted else None,
        "acc_encoder_fine_tuned": s.adapted["fine_tuned"] if s.adapted else None,
        "acc_encoder_kept": s.adapted["kept"] if s.adapted else None,
        "acc_device": device_label(torch.device(s.device)),
        "acc_grid": f"{grid[0]}x{grid[1]}", "acc_tokens_in": grid[0] * grid[1],
        "acc_tokens_out": s.build(0, t).projector.num_tokens_out(grid), "acc_test_questions": len(test_q),
        "acc_val_questions": int((slots[s.val] >= 0).sum()),
    }
