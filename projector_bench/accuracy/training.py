"""The training loop every model of the accuracy pipeline goes through (the stand-in encoder, a task's
encoder, the proxy VLM), its batches, its images' normalisation and its on-disk cache."""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from scipy.stats import binomtest
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core.errors import first_line
from ..core.util import atomic_write

log = logging.getLogger(__name__)


class DivergedError(RuntimeError):
    """Training produced a non-finite loss."""


def cached(path: Path, build: Callable[[], Any]) -> tuple[Any, bool]:
    """(value, True) from `path` if present, else (build(), False) after saving it atomically. An entry that
    cannot be read (truncated, not a torch file) is named in a warning, discarded and rebuilt."""
    if path.exists():
        try:
            return torch.load(path, weights_only=False), True
        except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError... for a damaged file
            log.warning("cache entry %s could not be read (%s); discarding and rebuilding it",
                        path, first_line(e, typed=True))
            path.unlink(missing_ok=True)
    value = build()
    atomic_write(path, lambda tmp: torch.save(value, tmp))  # per process: search workers may cache the same entry
    return value, False


def normalize(images: Tensor) -> Tensor:
    """uint8 images as the encoder reads them, channels last: its convolutions train a fifth faster so on CPUs."""
    return ((images.float() / 255.0 - 0.5) / 0.25).contiguous(memory_format=torch.channels_last)


def batches(idx: Tensor, size: int, seed: int) -> Iterator[Tensor]:
    """Endless shuffled batches of `idx` (a new permutation each pass; the last short batch is kept)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield from idx[torch.randperm(len(idx), generator=gen)].split(size)


def cpu_state(model: nn.Module) -> dict[str, Tensor]:
    """A copy of `model`'s weights on the CPU, wherever it trains: what the caches hold, readable on any machine."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def fit(model: nn.Module, loss_on: Callable[[Tensor], Tensor], validate: Callable[[], tuple[float, float]],
        batches: Iterator[Tensor], t: DictConfig, lr: float, label: str, quiet: bool) -> dict[str, Any]:
    """Train `model` until its validation loss stops improving; return its best checkpoint and the run.

    AdamW, linear warm-up over `t.warmup_steps`, then a constant rate. Every `t.eval_every` steps the
    validation loss is measured; evaluations without a gain over the last gain of both `t.min_delta`
    (relative) and `t.min_delta_abs` (absolute, default 0) make a plateau: `t.drop_patience` of them (default
    `t.patience`) divide the rate by 10 (`t.lr_drops` times), then `t.patience` end the run (`converged`) once
    `t.min_steps` are done; `t.max_steps` ends it unconverged. The weights of the best validation loss are restored
    (and returned on the CPU). `loss_on` and `validate` put their batches on the model's device.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, fused=True)
    warm = max(1, int(t.warmup_steps))
    best = {"loss": math.inf, "step": 0, "state": cpu_state(model), "accuracy": math.nan}
    curve: list[list[float]] = []
    drops, stale, step, converged, ref = int(t.lr_drops), 0, 0, False, math.inf
    drop_patience = t.get("drop_patience") or t.patience  # a drop cannot be undone: it may wait longer than the stop
    scale, start = 1.0, time.perf_counter()
    model.train()
    with tqdm(total=int(t.max_steps), desc=f"train {label} lr={lr:g}", disable=quiet, leave=False) as bar:
        while step < t.max_steps:
            for g in opt.param_groups:
                g["lr"] = lr * scale * min(1.0, (step + 1) / warm)
            loss = loss_on(next(batches))
            if not torch.isfinite(loss):
                raise DivergedError(f"training diverged: loss is {loss.item()} at step {step} (lr={lr:g}); "
                                    "lower accuracy.training.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            bar.update()
            if step % t.eval_every and step < t.max_steps:
                continue
            model.eval()
            with torch.inference_mode():
                val_loss, val_acc = validate()
            model.train()
            curve.append([step, val_loss, val_acc])
            bar.set_postfix(val_loss=f"{val_loss:.3f}", val_acc=f"{val_acc:.1f}")
            if not math.isfinite(val_loss):
                raise DivergedError(f"training diverged: validation loss is {val_loss} at step {step} (lr={lr:g}); "
                                    "lower accuracy.training.lr")
            if val_loss < best["loss"]:  # the checkpoint kept: the lowest validation loss
                best = {"loss": val_loss, "step": step, "state": cpu_state(model), "accuracy": val_acc}
            if ref == math.inf or val_loss < ref - max(ref * t.min_delta, t.get("min_delta_abs", 0.0)):  # progress
                ref, stale = val_loss, 0
                continue
            stale += 1
            if stale < (drop_patience if drops else t.patience):
                continue
            if drops:
                drops, stale, scale = drops - 1, 0, scale * 0.1
            elif step >= t.min_steps:
                converged = True
                break
    model.load_state_dict(best["state"])
    model.eval()
    elapsed = time.perf_counter() - start
    return {"state_dict": best["state"], "steps": step, "best_step": best["step"], "converged": converged,
            "val_loss": best["loss"], "val_accuracy": best["accuracy"], "curve": curve, "lr": lr,
            "time_s": elapsed, "steps_per_s": step / elapsed}


def better_than_chance(correct: Tensor, chance: float) -> bool:
    """Whether validation hits `correct` (0/1) beat the `chance` share (one-sided binomial test at 1%)."""
    hits, n = int(correct.sum()), correct.numel()
    return bool(hits / n > chance and binomtest(hits, n, chance, alternative="greater").pvalue < 0.01)
