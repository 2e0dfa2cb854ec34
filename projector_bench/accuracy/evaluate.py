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

import atexit
import gc
import hashlib
import json
import logging
import math
import multiprocessing as mp
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from scipy.stats import binomtest
from timm.layers import Mlp
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core import _worker
from ..core.compat import pool_processes
from ..core.env import available_memory, code_hash, device_label, training_device, usable_cores
from ..core.errors import ConfigError, first_line
from ..core.util import accuracy_projector_kwargs, torch_threads
from ..models._registry import create_projector
from ..models.encoders import TimmEncoder, Variant
from ..models.projectors.int8 import Int8Projector, quantize_linear_int8
from ..tasks import TaskData, carve
from .standin import standin_encoder
from .training import DivergedError, batches, better_than_chance, cached, cpu_state, fit, normalize

# What a cached task, encoder, feature set or trained model depends on besides its config.
log = logging.getLogger(__name__)
SOURCE_ROOT = Path(__file__).parent.parent
SOURCES = ("models/_registry.py", "accuracy", "models/encoders.py", "models/projectors", "tasks", "core/util.py")
SMALL_TEST = 200  # fewer test questions than this: the row says its interval is wide
TOO_SMALL_TEST = 30  # fewer than this: the row warns that its accuracy and interval mean little


class WorkerDiedError(RuntimeError):
    """A training worker was killed (the out-of-memory killer, a `kill`) while it trained a model."""


def code_version() -> str:
    """Hash of the source files the accuracy pipeline runs (`SOURCES`) and of the torch and timm versions."""
    return code_hash(*SOURCES, root=SOURCE_ROOT)


def device_key(device: torch.device) -> list[str]:
    """What a cached encoder, feature set or model adds to its key for the device it was made on: nothing on the
    CPU (the caches made before devices existed stay valid), the device's type elsewhere (not the CPU's bit for bit)."""
    return [] if device.type == "cpu" else [device.type]


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([code_version(), *parts], sort_keys=True, default=str).encode()).hexdigest()[:16]


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

    def build() -> TaskData:
        try:
            return instantiate(task_cfg)
        except InstantiationException as e:  # Hydra wraps the task's own error: give the user that one
            cause = e.__cause__
            if isinstance(cause, ConfigError):
                raise cause from None
            raise ConfigError(f"task {name}: {first_line(cause or e, typed=True)}") from e

    return cached(cache / "tasks" / f"{name}-{task_key(task_cfg)}.pt", build)[0]


def _beats(new: Tensor, old: Tensor) -> bool:
    """Whether validation hits `new` beat `old` (0/1, the same labels): paired exact test at 5%. Hits, not
    losses: a fine-tune lowers the loss of images a frozen encoder already gets right, and on a small folder's
    handful of validation images that alone would replace the stand-in the folder should keep."""
    gained, lost = int((new & ~old).sum()), int((old & ~new).sum())
    return gained > lost and binomtest(gained, gained + lost, 0.5, alternative="greater").pvalue < 0.05


# how the encoder a task's features come from was obtained, in the order the candidates are tried
KEPT = ("frozen", "fine-tuned", "task-only")
KEPT_NAMES = (("frozen_val_accuracy", "frozen"), ("tuned_val_accuracy", "fine-tuned"),
              ("alone_val_accuracy", "task-only"))


def _adapt(enc: TimmEncoder, fresh: Callable[[], TimmEncoder], task: TaskData, train: Tensor, val: Tensor,
           t: DictConfig, seed: int, quiet: bool, device: torch.device) -> dict[str, Any]:
    """The encoder a task's features come from, chosen on the task's validation labels (`TaskData.labels`) as
    one chooses between a pretrained model and one trained from scratch. Three candidates, each with a head
    (per cell, or over the whole grid for an image's class, so that where things are counts): the stand-in
    frozen (a head trained on it), the stand-in fine-tuned with that head, and the encoder `fresh()` from random
    weights trained on the task's train labels alone. The frozen stand-in is the default, as pretrained weights
    are; a later candidate replaces the one kept only when it beats it on validation (`_beats`, at 5%):
    a folder of a few hundred images keeps the stand-in frozen, a task with enough images of its own (scikit's
    digits) may be better served by training on them, as it would with pretrained weights from another domain.
    `t.keep` names the candidate to keep instead (an ablation). Every candidate trains on `device`; the weights
    returned are on the CPU."""
    labels = task.labels
    dense = labels.ndim == 3
    classes = int(labels.max()) + 1
    enc.model.to(device)
    with torch.no_grad():  # the frozen stand-in's maps, once: the head alone trains on them
        maps = torch.cat([enc.model(normalize(task.images[b].to(device)))[-1]
                          for b in torch.arange(len(task.images)).split(256)])
    c, h, w = maps.shape[1:]
    target = (F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long() if dense else labels)

    def new_head() -> nn.Module:
        head = nn.Conv2d(c, classes, 1) if dense else nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, classes))
        return head.to(device)

    def scored(encode: Callable[[Tensor], Tensor], head: nn.Module) -> tuple[Callable[[Tensor], Tensor],
                                                                              Callable[[], tuple[float, float]],
                                                                              Callable[[], tuple[Tensor, Tensor]]]:
        def logits(b: Tensor) -> Tensor:
            out = head(encode(b))
            return out.permute(0, 2, 3, 1).flatten(0, 2) if dense else out

        def loss_on(b: Tensor) -> Tensor:
            return F.cross_entropy(logits(b), target[b].flatten().to(device))

        def scores() -> tuple[Tensor, Tensor]:  # per validation label: hit; per validation image: mean loss
            hits, losses = [], []
            for b in val.split(256):
                out = logits(b)
                hits.append(out.argmax(-1).cpu() == target[b].flatten())
                losses.append(F.cross_entropy(out, target[b].flatten().to(device), reduction="none").view(len(b), -1)
                              .mean(1).cpu())
            return torch.cat(hits), torch.cat(losses)

        def validate() -> tuple[float, float]:
            hits, losses = scores()
            return losses.mean().item(), 100 * hits.float().mean().item()

        return loss_on, validate, scores

    def train_with(encoder: TimmEncoder | None, head: nn.Module, offset: int,
                   label: str) -> tuple[tuple[Tensor, Tensor], int]:
        if encoder is None:
            loss_on, validate, scores = scored(lambda b: maps[b.to(device)], head)
            model: nn.Module = head
        else:
            encoder.model.to(device, memory_format=torch.channels_last)
            loss_on, validate, scores = scored(lambda b: encoder.model(normalize(task.images[b].to(device)))[-1], head)
            model = nn.ModuleDict({"enc": encoder.model, "head": head})
        run = fit(model, loss_on, validate, batches(train, t.batch_size, seed + offset), t, t.lr, label, quiet)
        with torch.inference_mode():
            return scores(), run["steps"]

    torch.manual_seed(seed)
    head = new_head()
    frozen, probe_steps = train_with(None, head, 0, f"probe {enc.name}")
    standin = cpu_state(enc)
    tuned, tuned_steps = train_with(enc, head, 1, f"fine-tune {enc.name}")
    tuned_state = cpu_state(enc)
    torch.manual_seed(seed)
    alone_enc = fresh()
    alone, alone_steps = train_with(alone_enc, new_head(), 2, f"train {enc.name} on {task.name} alone")
    candidates = {"frozen": (frozen, standin), "fine-tuned": (tuned, tuned_state),
                  "task-only": (alone, cpu_state(alone_enc))}
    kept = "frozen" if t.get("keep", "best") == "best" else t.keep  # an ablation may name the one to keep
    for name in KEPT[1:] if t.get("keep", "best") == "best" else []:
        if _beats(candidates[name][0][0], candidates[kept][0][0]):
            kept = name
    (hits, losses), state = candidates[kept]
    chance = float(torch.bincount(target[val].flatten(), minlength=classes).max()) / target[val].numel()
    pct = {name: 100 * x[0].float().mean().item() for name, x in zip(KEPT, (frozen, tuned, alone))}
    loss = {name: x[1].mean().item() for name, x in zip(KEPT, (frozen, tuned, alone))}
    return {"state_dict": state, "kept": kept, "fine_tuned": kept == "fine-tuned",
            "labels": "per cell" if dense else "per image",
            "frozen_val_accuracy": pct["frozen"], "tuned_val_accuracy": pct["fine-tuned"],
            "alone_val_accuracy": pct["task-only"], "val_accuracy": pct[kept], "chance": 100 * chance,
            "better_than_chance": better_than_chance(hits, chance), "probe_steps": probe_steps, "steps": tuned_steps,
            "alone_steps": alone_steps, "val_loss": loss}


def encoder_features(task: TaskData, cfg: DictConfig, cache: Path,
                     quiet: bool) -> tuple[Tensor, tuple[int, int], dict[str, Any]]:
    """Features `(N, h·w, C)` of every image of `task` from the frozen encoder, the grid, and how the encoder was
    obtained: `source` and, for the stand-in, its pretraining (`standin`) and what the task taught it (`adapted`).
    Cached."""
    e, device = cfg.accuracy.encoder, training_device(str(cfg.accuracy.device))
    enc = TimmEncoder(e.name, e.stage, e.weights, Variant.from_config(e))
    info: dict[str, Any] = {"source": enc.weights_source}
    key = [enc.name, e.stage, e.weights, enc.weights_source, task_key(cfg.task), *device_key(device)]
    if enc.weights_source == "random":  # no pretrained weights: the stand-in, pretrained on generated scenes
        img_size = int(task.images.shape[-1])
        enc, record = standin_encoder(e, img_size, cfg.accuracy.standin, quiet, device)

        def fresh() -> TimmEncoder:
            return TimmEncoder(e.name, e.stage, "random", Variant.from_config(e))

        train, val = carve(task.train, cfg.accuracy.val_fraction, cfg.seed)
        recipe = OmegaConf.to_container(cfg.accuracy.encoder_training, resolve=True)
        key += [OmegaConf.to_container(cfg.accuracy.standin, resolve=True), cfg.seed, cfg.accuracy.val_fraction, recipe]
        adapted, _ = cached(cache / "encoders" / f"{enc.name}-{task.name}-{_key(*key)}.pt",
                            lambda: _adapt(enc, fresh, task, train, val, cfg.accuracy.encoder_training, cfg.seed,
                                           quiet, device))
        enc.load_state_dict(adapted.pop("state_dict"))
        loss = adapted["val_loss"]
        than = (f"on {task.name}'s {adapted['labels']} validation labels {adapted['val_accuracy']:.1f}% right, loss "
                f"{loss[adapted['kept']]:.3f}, against " + ", ".join(f"{n} {adapted[k]:.1f}% / {loss[n]:.3f}"
                                                             for k, n in KEPT_NAMES if n != adapted["kept"]))
        standin_how = (f"trained from random weights on {record['images']:,} generated scenes at {img_size} px "
                       f"({record['steps']} steps; validation {record['val_accuracy']:.1f}% of cells' kind, chance "
                       f"{record['chance']:.1f}%)")
        info = {"source": {"frozen": f"stand-in: {standin_how}, kept frozen ({than})",
                           "fine-tuned": f"stand-in: {standin_how}, fine-tuned ({adapted['steps']} steps; {than})",
                           "task-only": (f"trained from random weights on {task.name} alone "
                                         f"({adapted['alone_steps']} steps; {than}): the stand-in, {standin_how}, "
                                         "did not serve this task as well")
                           }[adapted["kept"]], "standin": record, "adapted": adapted}

    def extract() -> dict[str, Any]:
        enc.model.to(device)
        enc.eval()
        out = []
        with torch.inference_mode():
            for b in tqdm(torch.arange(len(task.images)).split(256), desc=f"features {enc.name}", disable=quiet,
                          leave=False):
                tokens, grid = enc(normalize(task.images[b].to(device)))
                out.append(tokens.to(torch.float16).cpu())
        return {"features": torch.cat(out), "grid": grid}

    feats, _ = cached(cache / "features" / f"{enc.name}-{_key(*key)}.pt", extract)
    return feats["features"], tuple(feats["grid"]), info


def question_slots(task: TaskData) -> Tensor:
    """`(images, S)` question indices of each image (S = most questions on one image), -1 where it has fewer."""
    counts = torch.bincount(task.image_of, minlength=len(task.images))
    order = torch.argsort(task.image_of, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order)) - starts[task.image_of[order]]
    slots = torch.full((len(task.images), max(1, int(counts.max()))), -1, dtype=torch.long)
    slots[task.image_of[order], rank] = order
    return slots


class PrefixBlock(nn.Module):
    """A pre-norm transformer block in which the image attends to itself and each question token to the
    image and to itself: one attention call for the image, and for the questions their scores against the
    image's keys beside each one's score against its own key (no copy of the image per question)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: Tensor, m: int) -> Tensor:
        """`x (B, m + S, W)`: m image tokens, then S question tokens."""
        b, n, w = x.shape
        h, d = self.heads, w // self.heads
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # each (B, H, N, D)
        image = F.scaled_dot_product_attention(q[:, :, :m], k[:, :, :m], v[:, :, :m])
        qt = q[:, :, m:] * d**-0.5
        p = torch.cat([qt @ k[:, :, :m].transpose(-1, -2), (qt * k[:, :, m:]).sum(-1, keepdim=True)], -1).softmax(-1)
        text = p[..., :m] @ v[:, :, :m] + p[..., m:] * v[:, :, m:]
        x = x + self.proj(torch.cat([image, text], 2).transpose(1, 2).reshape(b, n, w))
        return x + self.mlp(self.norm2(x))


class TinyVLM(nn.Module):
    """Projector + a small pre-norm transformer over [visual tokens; one token per question].

    All the questions about one image share one sequence, as a VLM's prompt follows its image: the visual
    tokens attend to each other only (a causal VLM's image prefix does not see the text that follows), and
    each question attends to the visual tokens and to itself, never to another question. A question is one
    token: a Linear over its words' embeddings side by side (so word order and which colour goes with which
    shape are kept), read out where it sits. The projector and the visual tokens are computed once per image.
    """

    def __init__(self, projector: nn.Module, grid: tuple[int, int], vocab: int, q_len: int, answers: int,
                 width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.projector, self.grid = projector, grid
        self.m = m = projector.num_tokens_out(grid)
        side = math.isqrt(m)  # fixed 2-D sin-cos positions of the output grid (1-D if it is not square)
        shape = [side, side] if side * side == m else [m, 1]
        self.register_buffer("visual_pos", build_sincos2d_pos_embed(shape, dim=width)[None], persistent=False)
        self.word = nn.Embedding(vocab, width, padding_idx=0)
        self.question = nn.Linear(q_len * width, width)
        self.blocks = nn.ModuleList(PrefixBlock(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, answers)

    def forward(self, visual: Tensor, questions: Tensor) -> Tensor:
        """`visual (B, N, C)` and `questions (B, S, L)` (word ids, 0 = padding) → answer logits `(B, S, answers)`."""
        x = torch.cat([self.projector(visual, self.grid) + self.visual_pos,
                       self.question(self.word(questions).flatten(2))], 1)
        for block in self.blocks:
            x = block(x, self.m)
        return self.head(self.norm(x[:, self.m:]))


def _forward(model: TinyVLM, feats: Tensor, task: TaskData, slots: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
    """Logits (on the model's device) and question indices of every question about `images` (one row per question)."""
    q = slots[images]
    dev = model.head.weight.device
    logits = model(feats[images].to(dev).float(), (task.questions[q.clamp(min=0)] * (q >= 0)[..., None]).to(dev))
    return logits[(q >= 0).to(dev)], q[q >= 0]


def _score(model: TinyVLM, feats: Tensor, task: TaskData, slots: Tensor,
           images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(logits, question indices, correct) over `images`, in batches, on the CPU."""
    out = [_forward(model, feats, task, slots, b) for b in images.split(256)]
    logits, qi = torch.cat([o[0].float().cpu() for o in out]), torch.cat([o[1] for o in out])
    return logits, qi, logits.argmax(-1) == task.answers[qi]


def two_level_bootstrap(correct: np.ndarray, seed: int, resamples: int = 2000) -> tuple[float, float]:
    """95% percentile interval, in points, of the mean of `correct` (seeds × test questions, 0/1).

    Each resample draws the seeds with replacement and, independently, the test questions with
    replacement (the same questions for every drawn seed: they are one test set), so the interval holds
    both the training noise between seeds and the sampling noise of the test set. Where the exact
    (Clopper–Pearson) binomial interval of the test questions is wider, it widens the interval: a bootstrap
    of a test with no error is [100, 100] whatever its size, which says nothing of how little a few questions tell.
    """
    correct = np.atleast_2d(np.asarray(correct, dtype=np.float64))
    s, q = correct.shape
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(q, np.full(q, 1 / q), size=resamples)  # question draws: (R, Q) multiplicities
    per_seed = counts @ correct.T / q                                # (R, S)
    pick = rng.integers(0, s, (resamples, s))
    means = np.take_along_axis(per_seed, pick, 1).mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    exact = binomtest(int(round(correct.mean(0).sum())), q).proportion_ci(0.95, method="exact")
    return 100 * float(min(lo, exact.low)), 100 * float(max(hi, exact.high))


def bootstrap_ci(correct: np.ndarray, seed: int, resamples: int = 2000) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of `correct` (0/1 per test question), in points."""
    return two_level_bootstrap(np.asarray(correct)[None], seed, resamples)


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
    return models / f"{s.name}-{_key(*s.base_key, seed, lr)}.pt"


def _train_model(s: _Setup, t: DictConfig, path: Path, quiet: bool, seed: int, lr: float,
                 threads: int) -> dict[str, Any]:
    """Train (or load from the cache file `path`) the model of setup `s` for one seed and learning rate; the
    returned run has `cached` and, if it diverged, `error`. Runs in a worker process or in this one, on `s.device`."""

    def make() -> dict[str, Any]:
        model = s.build(seed, t).to(s.device)

        def loss_on(b: Tensor) -> Tensor:
            logits, qi = _forward(model, s.feats, s.task, s.slots, b)
            return F.cross_entropy(logits, s.task.answers[qi].to(logits.device))

        def validate() -> tuple[float, float]:
            logits, qi, correct = _score(model, s.feats, s.task, s.slots, s.val)
            return F.cross_entropy(logits, s.task.answers[qi]).item(), 100 * correct.float().mean().item()

        return fit(model, loss_on, validate, batches(s.train, t.batch_size, seed), t, lr,
                   f"{s.name} seed {seed}", quiet)

    try:
        with torch_threads(threads):
            run, hit = cached(path, make)
    except DivergedError as e:
        return {"error": str(e), "seed": seed, "lr": lr}
    return run | {"cached": hit, "seed": seed}


_POOL: dict[int, Any] = {}  # this process's training pool by size: kept from job to job (a multirun, a search)


def _pool(workers: int) -> Any:
    """The training pool of `workers` processes, started once: a start costs seconds (each worker imports
    torch and the package)."""
    if workers not in _POOL:
        close_pool()
        ours = mp.get_start_method(allow_none=True)
        # In a launcher's worker (joblib's loky) the default start method is the launcher's own, and a spawned
        # child is told to use it, which it cannot: the default is spawn while the pool starts.
        foreign = ours not in (None, *mp.get_all_start_methods())
        if foreign:
            mp.set_start_method("spawn", force=True)
        try:
            _POOL[workers] = mp.get_context("spawn").Pool(workers, _worker.init)
        finally:
            if foreign:
                mp.set_start_method(ours, force=True)
    return _POOL[workers]


def close_pool() -> None:
    """End the training pool's workers, if it has any (also at exit)."""
    while _POOL:
        pool = _POOL.popitem()[1]
        pool.terminate()
        pool.join()


atexit.register(close_pool)


def _result(r: Any, procs: list[Any], name: str) -> dict[str, Any]:
    """The result of the pool's task `r`, or WorkerDiedError as soon as one of the workers `procs` has died."""
    while not r.ready():
        r.wait(1.0)
        if dead := [p.exitcode for p in procs if p.exitcode is not None]:
            how = f"killed by {signal.Signals(-dead[0]).name}" if dead[0] < 0 else f"exit code {dead[0]}"
            raise WorkerDiedError(f"a training worker died ({how}"
                                  f"{': out of memory?' if dead[0] == -signal.SIGKILL else ''}) "
                                  f"while {name} trained; its finished models are cached: run the same command again "
                                  "to go on, with accuracy.workers=1 if memory is short")
    return r.get()


WORKER_BYTES = 0.7e9  # what one training worker holds: torch and the package imported, the task and its features


def training_workers(asked: int | None, trainings: int, device: str = "cpu") -> int:
    """How many training processes a design gets: `accuracy.workers`, by default a core each on the CPU (the cores
    this process may use: `taskset` and containers are honoured) and one on an accelerator (its trainings run one
    after another there); never more than its trainings (seeds × rates), nor more than the free memory holds
    (each is a process of `WORKER_BYTES`)."""
    default = usable_cores() if torch.device(device).type == "cpu" else 1
    n = min(asked if asked is not None else default, trainings)
    free = available_memory()
    if free is not None and n > (fit := max(1, int(free // WORKER_BYTES))):
        log.warning("accuracy: %d training workers would need about %.1f GB, %.1f GB is free: training with %d",
                    n, n * WORKER_BYTES / 1e9, free / 1e9, fit)
        n = fit
    return n


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
    pool = _pool(workers)
    # its workers: a Pool replaces one that dies, but its task never ends (get() waits forever)
    procs = pool_processes(pool)
    pending: dict[tuple[int, float], Any] = {}
    try:
        pending = {j: pool.apply_async(_train_model, (s, t, paths[j], quiet, *j, per)) for j in todo}
        return [_result(pending[j], procs, s.name) if j in pending else _train_model(s, t, paths[j], quiet, *j, threads)
                for j in jobs]
    except BaseException as e:  # the pool's other jobs would train on for nothing: end them
        close_pool()
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
    workers = training_workers(a.workers, len(jobs), s.device)
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
            _, qi, c = _score(model, feats, task, slots, task.test)
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
