"""The frozen encoder a design's tokens come from: pretrained weights, or the stand-in adapted to the task
(kept frozen, fine-tuned, or trained on the task alone, whichever validates best), and its features of every
image, cached."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from scipy.stats import binomtest
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core.env import training_device
from ..models.encoders import TimmEncoder, Variant
from ..tasks import TaskData, carve
from .cache import device_key, entry_key, task_key
from .standin import standin_encoder
from .training import batches, better_than_chance, cached, cpu_state, fit, normalize

log = logging.getLogger(__name__)


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
        adapted, _ = cached(cache / "encoders" / f"{enc.name}-{task.name}-{entry_key(*key)}.pt",
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

    feats, _ = cached(cache / "features" / f"{enc.name}-{entry_key(*key)}.pt", extract)
    return feats["features"], tuple(feats["grid"]), info
