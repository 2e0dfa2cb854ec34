"""The training workers: one pool of processes per process, kept from job to job, how many a design gets, and
a task's result that fails at once when a worker dies instead of waiting for ever."""
from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import signal
from typing import Any

import torch

from ..core import _worker
from ..core.env import available_memory, usable_cores

log = logging.getLogger(__name__)


class WorkerDiedError(RuntimeError):
    """A training worker was killed (the out-of-memory killer, a `kill`) while it trained a model."""


_POOL: dict[int, Any] = {}  # this process's training pool by size: kept from job to job (a multirun, a search)


def get_pool(workers: int) -> Any:
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


def result(r: Any, procs: list[Any], name: str) -> dict[str, Any]:
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
