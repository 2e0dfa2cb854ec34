"""Where things are and process-wide defaults: `conf/`, the host cache folder and this host's measurement lock,
the default thread count, the sweep-id variable. A leaf: it imports only the package's errors."""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError
from .util import atomic_write

GROUPS = ("projector", "encoder", "lm", "shape", "device", "sweep", "search", "task",
          "at_budget")  # conf/<group>/<option>.yaml
SWEEP_ENV = "PROJECTOR_BENCH_SWEEP_ID"     # a multirun's id, inherited by its jobs (in-process or launched)
THREADS_ENV = "PROJECTOR_BENCH_HOST_THREADS"  # "host:threads" of the process that launched a multirun
LAUNCHER_ENV = "PROJECTOR_BENCH_LAUNCHER"  # "host:pid" of that process: a job elsewhere writes its row apart
log = logging.getLogger(__name__)


def launched_elsewhere() -> bool:
    """Whether this job runs in another process than the multirun that launched it (a parallel launcher's worker,
    another machine): its row is then written as its own file (`results.write_job_row`), not under a lock."""
    launcher = os.environ.get(LAUNCHER_ENV)
    return launcher is not None and launcher != f"{socket.gethostname()}:{os.getpid()}"


def _default_threads() -> int:
    """torch's own thread count; in a job that a parallel launcher started on the host of the multirun (joblib's
    loky gives each worker a share of the cores), the launching process's: a latency is timed at the host's
    threads however its job was launched. A job on another machine (a SLURM node) keeps its own."""
    host, _, threads = os.environ.get(THREADS_ENV, "").rpartition(":")
    return int(threads) if host == socket.gethostname() and threads.isdigit() else torch.get_num_threads()


DEFAULT_THREADS = _default_threads()  # `device.threads: null`; jobs of a multirun share this process
CACHE_ENV = "PROJECTOR_BENCH_CACHE"


def config_dir() -> Path:
    """`conf/`: inside the installed wheel, or at the top of the source tree (editable install)."""
    packaged = Path(__file__).resolve().parent.parent / "conf"
    return packaged if packaged.is_dir() else packaged.parent.parent / "conf"


def group_choices(group: str) -> list[str]:
    """The options of a config group: its `conf/<group>/*.yaml` files (shared bases live in `conf/shared/`) and
    the configs registered in Hydra's ConfigStore (the projectors' int8 twins, once `models` is imported)."""
    from hydra.core.config_store import ConfigStore

    try:
        stored = {n.removesuffix(".yaml") for n in ConfigStore.instance().list(group)}
    except OSError:  # the group has no stored config
        stored = set()
    return sorted({p.stem for p in (config_dir() / group).glob("*.yaml")} | stored)


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


@contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    with open(path, "a") as f:
        try:
            fcntl.flock(f, mode | fcntl.LOCK_NB)
        except BlockingIOError:  # another job holds it: say why this one waits, then wait
            log.warning("waiting for another job on this host (%s): %s", path.name,
                        "its training, to time alone" if mode == fcntl.LOCK_EX else "its timing, to train")
            fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def host_lock(timing: bool) -> Iterator[None]:
    """This host's measurement lock, held across processes: a timing holds it alone (`timing=True`), trainings
    share it. Jobs run in parallel (a joblib launcher, a search's workers, two terminals) then never time a
    latency beside another's training, and still train side by side. A waiting timing goes first: trainings
    pass a gate that it holds. Where the cache folder cannot hold a lock (a file system without `flock`), the
    jobs run unlocked after one warning."""
    folder, host = host_cache(), socket.gethostname()
    held = ExitStack()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if timing:
            held.enter_context(_flock(folder / f"gate-{host}.lock", fcntl.LOCK_EX))
        else:
            with _flock(folder / f"gate-{host}.lock", fcntl.LOCK_SH):
                pass
        held.enter_context(_flock(folder / f"measure-{host}.lock", fcntl.LOCK_EX if timing else fcntl.LOCK_SH))
    except OSError as e:
        held.close()
        log.warning("no measurement lock in %s (%s): jobs run in parallel on this host may time beside each other",
                    folder, e)
    with held:
        yield


def write_json_cache(path: Path, value: dict[str, Any]) -> None:
    """Replace `path` atomically with `value` as JSON (per-process temporary: workers may write at once)."""
    atomic_write(path, json.dumps(value, indent=1))


def read_json_cache(path: Path | None) -> dict[str, Any]:
    """A JSON object saved in the host cache, or {} (with a warning naming the file) when it is missing or
    cannot be read: the caller measures again and rewrites it."""
    if not path or not path.exists():
        return {}
    try:
        saved = json.loads(path.read_bytes())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
        return saved
    except (OSError, ValueError) as e:
        log.warning("host cache %s could not be read (%s); it is discarded and measured again", path, e)
        return {}
