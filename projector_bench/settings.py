"""Where things are and process-wide defaults: `conf/`, the host cache folder, the default thread count, the
sweep-id variable. A leaf: it imports only the package's errors."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import ConfigError

GROUPS = ("projector", "encoder", "lm", "shape", "device", "sweep", "search", "task", "at_budget")  # conf/<group>/<option>.yaml
DEFAULT_THREADS = torch.get_num_threads()  # `device.threads: null`; jobs of a multirun share this process
SWEEP_ENV = "PROJECTOR_BENCH_SWEEP_ID"     # a multirun's id, inherited by its jobs (in-process or launched)
CACHE_ENV = "PROJECTOR_BENCH_CACHE"


def config_dir() -> Path:
    """`conf/`: inside the installed wheel, or at the top of the source tree (editable install)."""
    packaged = Path(__file__).parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "conf"


def group_choices(group: str) -> list[str]:
    """The options of a config group: its `conf/<group>/*.yaml` files (shared bases live in `conf/shared/`)."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def host_cache() -> Path:
    """The per-machine cache (measured host roofs, the reference kernel's best time): `$PROJECTOR_BENCH_CACHE`,
    else `$XDG_CACHE_HOME/projector_bench` or `~/.cache/projector_bench`. Read at each call, so a test or a
    caller can point it elsewhere."""
    if path := os.environ.get(CACHE_ENV):
        return Path(path)
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "projector_bench"


def folder_problem(path: Path) -> str | None:
    """Why files cannot be written in the folder `path` (it is a file, a parent of it is a file, or it is not
    writable), or None. A folder that does not exist yet is fine when it could be created."""
    if path.exists():
        if not path.is_dir():
            return "is a file, not a folder"
        return None if os.access(path, os.W_OK | os.X_OK) else "is a folder this user cannot write in"
    parent = next(p for p in path.parents if p.exists())
    if not parent.is_dir():
        return f"cannot be created: {parent} is a file, not a folder"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"cannot be created in {parent} (not writable)"


def check_host_cache() -> None:
    """Refuse a host cache (`host_cache()`) that cannot be written before any work: a host measurement writes
    there after it, so a bad folder would otherwise be found only once the calibration's minutes are spent."""
    path = host_cache()
    if problem := folder_problem(path):
        where = f"{CACHE_ENV}={os.environ[CACHE_ENV]}" if os.environ.get(CACHE_ENV) else f"the host cache {path}"
        raise ConfigError(f"{where} {problem}; point {CACHE_ENV} at a folder you can write in")
