"""Where things are and process-wide defaults: `conf/`, the host cache folder, the default thread count, the
sweep-id variable. A leaf: it imports nothing from the package."""
from __future__ import annotations

import os
from pathlib import Path

import torch

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
