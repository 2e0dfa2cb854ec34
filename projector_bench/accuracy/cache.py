"""The accuracy pipeline's cache keys: what a cached task, encoder, feature set or trained model depends on
besides its config (`code_version()`: a hash of the source it runs and of the torch and timm versions, so edited
code retrains), and the task itself, built once and cached by its key."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..core.env import code_hash
from ..core.errors import ConfigError, first_line
from ..tasks import TaskData
from .training import cached

SOURCE_ROOT = Path(__file__).parent.parent
SOURCES = ("models/_registry.py", "accuracy", "models/encoders.py", "models/projectors", "tasks", "core/util.py")


def code_version() -> str:
    """Hash of the source files the accuracy pipeline runs (`SOURCES`) and of the torch and timm versions."""
    return code_hash(*SOURCES, root=SOURCE_ROOT)


def device_key(device: torch.device) -> list[str]:
    """What a cached encoder, feature set or model adds to its key for the device it was made on: nothing on the
    CPU (the caches made before devices existed stay valid), the device's type elsewhere (not the CPU's bit for bit)."""
    return [] if device.type == "cpu" else [device.type]


def entry_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([code_version(), *parts], sort_keys=True, default=str).encode()).hexdigest()[:16]


def task_key(task_cfg: DictConfig) -> str:
    """What a task's data depends on: its config and, for a folder of images, the folder's files."""
    spec = OmegaConf.to_container(task_cfg, resolve=True)
    root = spec.get("root")
    if root and Path(root).expanduser().is_dir():
        spec["files"] = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns)
                               for p in Path(root).expanduser().rglob("*") if p.is_file())
    return entry_key(spec)


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
