"""Accuracy of a projector as MobileVLM trains one in its first stage: frozen encoder, projector, small LM.

1. The task is built (or loaded from the cache) and, if the encoder has no pretrained weights, the
   encoder is first trained on the task's images against `encoder_labels` (a short stage, cached).
2. Encoder features of every image are computed once per (encoder, weights, task, seed) and cached.
3. Projector and a small transformer LM over [projected visual tokens; question tokens; answer slot]
   train together on the train split; accuracy is measured on the held-out split, per question type,
   with a 95% bootstrap confidence interval over test questions.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._registry import create_projector
from .encoders import TimmEncoder, Variant
from .projectors.int8 import Int8Projector, quantize_linear_int8
from .tasks import TaskData


class DivergedError(RuntimeError):
    """Training produced a non-finite loss."""


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(path: Path, build):
    if path.exists():
        return torch.load(path, weights_only=False)
    value = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: search workers may cache the same entry
    torch.save(value, tmp)
    tmp.replace(path)
    return value


def task_key(task_cfg: DictConfig) -> str:
    """What a task's data depends on: its config and, for a folder of images, the folder's files."""
    spec = OmegaConf.to_container(task_cfg, resolve=True)
    root = spec.get("root")
    if root and Path(root).expanduser().is_dir():
        spec["files"] = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns)
                               for p in Path(root).expanduser().rglob("*") if p.is_file())
    return _key(spec)


def load_task(task_cfg: DictConfig, cache: Path) -> TaskData:
    """Build the task from its config (`_target_`), cached on disk by `task_key`."""
    name = task_cfg._target_.rsplit(".", 1)[-1]
    return _cached(cache / "tasks" / f"{name}-{task_key(task_cfg)}.pt", lambda: instantiate(task_cfg))


def _normalize(images: Tensor) -> Tensor:
    return (images.float() / 255.0 - 0.5) / 0.25


def _pretrain_encoder(enc: TimmEncoder, task: TaskData, cfg: DictConfig, seed: int, quiet: bool) -> dict[str, Any]:
    """Train the encoder on the task's images: per-region classes (dense head) or image classes."""
    labels = task.encoder_labels
    dense = labels.ndim == 3
    classes = int(labels.max()) + 1
    head = nn.Conv2d(enc.channels, classes, 1) if dense else nn.Linear(enc.channels, classes)
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    idx = task.train
    enc.train()
    steps = cfg.epochs * -(-len(idx) // cfg.batch_size)
    bar = tqdm(total=steps, desc=f"train encoder {enc.name}", disable=quiet, leave=False)
    for _ in range(cfg.epochs):
        for b in idx[torch.randperm(len(idx), generator=gen)].split(cfg.batch_size):
            fmap = enc.model(_normalize(task.images[b]))[-1]
            if dense:
                target = F.interpolate(labels[b, None].float(), size=fmap.shape[-2:], mode="nearest")[:, 0].long()
                loss = F.cross_entropy(head(fmap), target)
            else:
                loss = F.cross_entropy(head(fmap.mean((2, 3))), labels[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    enc.eval()
    return {"state_dict": enc.state_dict(), "final_loss": loss.item()}


def encoder_features(task: TaskData, cfg: DictConfig, cache: Path, quiet: bool) -> tuple[Tensor, tuple[int, int], str]:
    """Features `(N, h·w, C)` of every image of `task`, the grid, and how the encoder was obtained (cached)."""
    e = cfg.accuracy.encoder
    variant = Variant.from_config(e)
    enc = TimmEncoder(e.name, e.stage, e.weights, variant)
    key = _key(enc.name, e.stage, e.weights, enc.weights_source, task_key(cfg.task), cfg.seed)
    source = enc.weights_source
    if source == "random":  # no pretrained weights: train on the task first
        torch.manual_seed(cfg.seed)
        enc = TimmEncoder(e.name, e.stage, "random", variant)
        state = _cached(cache / "encoders" / f"{enc.name}-{key}.pt",
                        lambda: _pretrain_encoder(enc, task, cfg.accuracy.encoder_training, cfg.seed, quiet))
        enc.load_state_dict(state["state_dict"])
        source = f"trained on {task.name} ({cfg.accuracy.encoder_training.epochs} epochs from random init)"

    def extract() -> dict[str, Any]:
        enc.eval()
        out = []
        with torch.inference_mode():
            for b in tqdm(torch.arange(len(task.images)).split(256), desc=f"features {enc.name}", disable=quiet, leave=False):
                tokens, grid = enc(_normalize(task.images[b]))
                out.append(tokens.to(torch.float16))
        return {"features": torch.cat(out), "grid": grid}

    feats = _cached(cache / "features" / f"{enc.name}-{key}.pt", extract)
    return feats["features"], tuple(feats["grid"]), source


class TinyVLM(nn.Module):
    """Projector + a small pre-norm transformer over [visual tokens; question tokens; answer slot]."""

    def __init__(self, projector: nn.Module, grid: tuple[int, int], vocab: int, q_len: int, answers: int,
                 width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.projector, self.grid = projector, grid
        m = projector.num_tokens_out(grid)
        side = math.isqrt(m)  # fixed 2-D sin-cos positions of the output grid (1-D if it is not square)
        shape = [side, side] if side * side == m else [m, 1]
        self.register_buffer("visual_pos", build_sincos2d_pos_embed(shape, dim=width)[None], persistent=False)
        self.word = nn.Embedding(vocab, width, padding_idx=0)
        self.text_pos = nn.Parameter(torch.zeros(1, q_len + 1, width))
        self.answer_slot = nn.Parameter(torch.zeros(1, 1, width))
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.lm = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, answers)
        for p in (self.text_pos, self.answer_slot):
            nn.init.normal_(p, std=0.02)

    def forward(self, visual: Tensor, question: Tensor) -> Tensor:
        v = self.projector(visual, self.grid) + self.visual_pos
        t = torch.cat([self.word(question), self.answer_slot.expand(len(question), -1, -1)], 1) + self.text_pos
        pad = torch.cat([torch.zeros(v.shape[:2], dtype=torch.bool), question == 0,
                         torch.zeros(len(question), 1, dtype=torch.bool)], 1)
        h = self.lm(torch.cat([v, t], 1), src_key_padding_mask=pad)
        return self.head(self.norm(h[:, -1]))


def bootstrap_ci(correct: np.ndarray, seed: int, resamples: int = 2000) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of `correct` (0/1 per test question), in points."""
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), (resamples, len(correct)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return 100 * float(lo), 100 * float(hi)


def _train(model: TinyVLM, task: TaskData, feats: Tensor, cfg: DictConfig, label: str, quiet: bool) -> dict[str, Any]:
    t = cfg.accuracy.training
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=0.01)
    train_q = task.split("train")
    steps = t.epochs * -(-len(train_q) // t.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=t.lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    model.train()
    with tqdm(total=steps, desc=f"train {label}", disable=quiet, leave=False) as bar:
        for epoch in range(t.epochs):
            for step, b in enumerate(train_q[torch.randperm(len(train_q), generator=gen)].split(t.batch_size)):
                loss = F.cross_entropy(model(feats[task.image_of[b]].float(), task.questions[b]), task.answers[b])
                if not torch.isfinite(loss):
                    raise DivergedError(f"training diverged: loss is {loss.item()} at epoch {epoch} step {step} "
                                        f"(lr={t.lr}); lower accuracy.training.lr")
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return {"state_dict": model.state_dict(), "train_time_s": time.perf_counter() - start, "train_final_loss": loss.item()}


def evaluate_projector(cfg: DictConfig) -> dict[str, Any]:
    """Train projector + LM on the task's train split and score the test split; returns row columns.

    An int8 design trains its float twin, then quantizes it (post-training quantization). Trained
    models are cached by everything they depend on, so `mlp_int8` reuses the `mlp` just trained.
    """
    cache = Path(cfg.results_dir) / "cache"
    quiet = bool(cfg.quiet)
    task = load_task(cfg.task, cache)
    feats, grid, source = encoder_features(task, cfg, cache, quiet)
    t = cfg.accuracy.training
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.projector, resolve=True).items()
              if k not in ("name", "in_dim", "out_dim")}
    name, in_dim = cfg.projector.name, feats.shape[-1]
    proj = create_projector(name, in_dim, t.width, **kwargs)
    int8 = isinstance(proj, Int8Projector)
    if int8:
        name, kwargs = proj.float_twin
    torch.manual_seed(cfg.seed)
    proj = create_projector(name, in_dim, t.width, **kwargs)
    model = TinyVLM(proj, grid, task.vocab_size, task.questions.shape[1], task.num_answers, t.width, t.layers, t.heads)
    key = _key(name, kwargs, in_dim, grid, source, task_key(cfg.task), OmegaConf.to_container(cfg.accuracy, resolve=True), cfg.seed)
    trained = _cached(cache / "models" / f"{name}-{key}.pt", lambda: _train(model, task, feats, cfg, name, quiet))
    model.load_state_dict(trained["state_dict"])
    model.eval()
    if int8:
        model.projector = quantize_linear_int8(model.projector)
    test_q = task.split("test")
    with torch.inference_mode():
        pred = torch.cat([model(feats[task.image_of[b]].float(), task.questions[b]).argmax(-1) for b in test_q.split(512)])
    correct = (pred == task.answers[test_q]).numpy().astype(np.float64)
    types = np.array(task.qtype)[test_q.numpy()]
    kinds = sorted(set(types.tolist()))
    lo, hi = bootstrap_ci(correct, cfg.seed)
    majority = torch.mode(task.answers[task.split("train")]).values
    return {
        "task": task.name,
        "accuracy": 100 * float(correct.mean()),
        "accuracy_ci_low": lo, "accuracy_ci_high": hi, "accuracy_ci_method": "bootstrap 95% over test questions",
        "accuracy_by_type": {k: 100 * float(correct[types == k].mean()) for k in kinds},
        "accuracy_ci_by_type": {k: bootstrap_ci(correct[types == k], cfg.seed) for k in kinds},
        "majority_baseline": 100 * float((task.answers[test_q] == majority).float().mean()),
        "train_time_s": trained["train_time_s"], "train_final_loss": trained["train_final_loss"],
        "acc_encoder": Variant.from_config(cfg.accuracy.encoder).label(cfg.accuracy.encoder.name), "acc_encoder_source": source,
        "acc_grid": f"{grid[0]}x{grid[1]}", "acc_tokens_in": grid[0] * grid[1],
        "acc_tokens_out": proj.num_tokens_out(grid), "acc_test_questions": len(test_q),
    }
