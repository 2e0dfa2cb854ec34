"""Small mechanics every layer shares: torch's thread count for a block, atomic file writes, a projector
config's constructor arguments. A leaf: it imports nothing from the package."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

PROJECTOR_KEYS = ("name", "in_dim", "out_dim")  # a projector config's keys that are not constructor arguments


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with `torch.set_num_threads(threads)`; the previous count is restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def atomic_write(path: str | Path, data: str | bytes | Callable[[Path], None], mode: int | None = None) -> None:
    """Replace `path` by `data` (text, bytes, or a function that writes a given temporary path) in one rename:
    a reader sees the old file or the new one, never half of one. The temporary file is per process (workers
    may write the same path at once); text and bytes are synced to disk before the rename; `mode` sets its
    permission bits."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def projector_kwargs(pcfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments in a `projector` config: every key but its name and its dimensions."""
    spec = OmegaConf.to_container(pcfg, resolve=True) if isinstance(pcfg, DictConfig) else dict(pcfg)
    return {k: v for k, v in spec.items() if k not in PROJECTOR_KEYS}


def accuracy_projector_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """The constructor arguments of the design trained for accuracy: the projector's own, with
    `accuracy.projector` on top (a count the smaller accuracy grid needs, e.g. a resampler's latents)."""
    spec = OmegaConf.to_container(cfg.projector, resolve=True)
    extra = cfg.accuracy.get("projector") or {}
    return projector_kwargs({**spec, **(OmegaConf.to_container(extra, resolve=True)
                                        if isinstance(extra, DictConfig) else extra)})
