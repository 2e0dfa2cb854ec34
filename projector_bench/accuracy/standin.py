"""The stand-in encoder: an encoder without pretrained weights trained once on generated scenes
(`tasks.scenes`), cached per machine, encoder, image size and recipe, and then used as pretrained weights are.

Its cache key hashes `STANDIN_SOURCES`, the code that trains it, and nothing else: editing a design, a task it
does not train on or the proxy VLM keeps it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from ..core.env import code_hash
from ..core.settings import host_cache
from ..models.encoders import TimmEncoder, Variant
from ..tasks.scenes import COLOUR_BINS, KINDS, cell_targets, scenes
from .training import batches, better_than_chance, cached, cpu_state, fit, normalize

SOURCE_ROOT = Path(__file__).parent.parent
STANDIN_SOURCES = ("accuracy/standin.py", "accuracy/training.py", "models/encoders.py", "tasks/__init__.py",
                   "tasks/scenes.py", "core/util.py")


def pretrain(enc: TimmEncoder, img_size: int, s: DictConfig, quiet: bool, device: torch.device) -> dict[str, Any]:
    """Train `enc` on `s.images` generated scenes (`tasks.scenes`) at `img_size` px: per cell of its feature grid,
    the kind of thing covering it, its colour and the cell's pooled pixels; a tenth of them validate. Returns
    its weights (on the CPU), the run, and its validation kind accuracy beside chance (the majority kind's share of
    cells). It trains on `device`; the scenes stay on the CPU and go there a batch at a time."""
    images, kinds, colours = scenes(int(s.images), img_size, int(s.seed))
    enc.model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        grid = tuple(enc.model(torch.zeros(1, 3, img_size, img_size))[-1].shape[-2:])
    kind, colour, pix = cell_targets(kinds, colours, images, grid)
    del kinds, colours
    n_kind, n_colour = len(KINDS), COLOUR_BINS + 1
    head = nn.Conv2d(enc.channels, n_kind + n_colour + pix.shape[-1], 1)
    model = nn.ModuleDict({"enc": enc.model, "head": head}).to(device)
    n_val = max(1, len(images) // 10)
    val, train = torch.arange(n_val), torch.arange(n_val, len(images))

    def outputs(b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = head(enc.model(normalize(images[b].to(device)))[-1]).permute(0, 2, 3, 1)  # (B, h, w, heads)
        return out[..., :n_kind], out[..., n_kind:n_kind + n_colour], out[..., n_kind + n_colour:]

    def loss_on(b: Tensor) -> Tensor:
        k, c, p = outputs(b)
        return (F.cross_entropy(k.flatten(0, 2), kind[b].flatten().to(device))
                + F.cross_entropy(c.flatten(0, 2), colour[b].flatten().to(device))
                + F.mse_loss(p, pix[b].to(device).float()))

    def correct() -> Tensor:
        return torch.cat([(outputs(b)[0].argmax(-1).cpu() == kind[b]).flatten() for b in val.split(256)])

    def validate() -> tuple[float, float]:
        loss = sum(loss_on(b).item() * len(b) for b in val.split(256)) / len(val)
        return loss, 100 * correct().float().mean().item()

    torch.manual_seed(int(s.seed))
    run = fit(model, loss_on, validate, batches(train, s.batch_size, int(s.seed)), s, s.lr, f"stand-in {enc.name}",
              quiet)
    cells = kind[val].flatten()
    chance = float(torch.bincount(cells).max()) / len(cells)
    with torch.inference_mode():
        better = better_than_chance(correct(), chance)
    return ({"state_dict": cpu_state(enc), "images": int(s.images), "img_size": img_size, "chance": 100 * chance,
             "better_than_chance": better} | {k: v for k, v in run.items() if k not in ("state_dict", "curve")})


def standin_encoder(e: DictConfig, img_size: int, s: DictConfig, quiet: bool,
                    device: torch.device) -> tuple[TimmEncoder, dict[str, Any]]:
    """The encoder `e` as it stands in for pretrained weights it has not got: trained once on generated scenes at
    `img_size` px (`accuracy.standin`), then shared by every task, design and seed, as pretrained weights are:
    cached per encoder, stage, image size and recipe in the machine's cache (`settings.host_cache`), beside
    the measured roofs, not in one results folder. One trained on an accelerator is keyed apart: it is not the
    CPU's bit for bit. The encoder is returned on the CPU."""
    torch.manual_seed(int(s.seed))
    enc = TimmEncoder(e.name, e.stage, "random", Variant.from_config(e))
    parts = [code_hash(*STANDIN_SOURCES, root=SOURCE_ROOT), enc.name, e.stage, img_size,
             OmegaConf.to_container(s, resolve=True)] + ([] if device.type == "cpu" else [device.type])
    key = hashlib.sha256(json.dumps(["standin", *parts], sort_keys=True, default=str).encode()).hexdigest()[:16]
    state, _ = cached(host_cache() / "standin" / f"{enc.name}-{img_size}px-{key}.pt",
                      lambda: pretrain(enc, img_size, s, quiet, device))
    enc.model.cpu()
    enc.load_state_dict(state["state_dict"])
    return enc, {k: v for k, v in state.items() if k != "state_dict"}
