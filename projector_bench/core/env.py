"""Where a measurement was taken: versions, threads, CPU, git commit, the cores and memory this process may use;
and the hash of the code a cached value depends on. A leaf: it imports nothing from the package."""
from __future__ import annotations

import hashlib
import platform
import subprocess
from functools import cache
from importlib.metadata import version
from pathlib import Path

import torch


@cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (empty where there is none)."""
    try:
        block = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in block.splitlines() if ":" in line)}


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else `platform.processor()`)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_id() -> str:
    """The CPU's model name with its family, model and stepping numbers where /proc/cpuinfo gives them: VMs
    often report one generic name ("Intel(R) Xeon(R) Processor") for several microarchitectures."""
    nums = [f"{k} {_cpuinfo()[k]}" for k in ("cpu family", "model", "stepping") if k in _cpuinfo()]
    return f"{cpu_model()} ({', '.join(nums)})" if nums else cpu_model()


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _meminfo(field: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def available_memory() -> int | None:
    """Bytes this process can still allocate: the machine's available memory, or less where a container's
    memory limit (cgroup v2 or v1) leaves less; None where neither can be read (not Linux)."""
    free = [_meminfo("MemAvailable")]
    for limit, used in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        lim, cur = _read_int(limit), _read_int(used)
        if lim is not None and cur is not None and lim < 2**60:  # v1 states "no limit" as a huge number
            free.append(max(0, lim - cur))
    known = [f for f in free if f is not None]
    return min(known) if known else None


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity on Linux (containers and `taskset` set it), else all."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def training_device(name: str) -> torch.device:
    """The device `accuracy.device` names: `auto` is the first of CUDA, Apple's MPS and the CPU that torch can use;
    `cpu`, `cuda`, `cuda:1`, `mps` name one. ValueError, naming the fix, for one torch cannot use here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{name!r} is not a device the proxy trains on; use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"{name!r}: torch sees {torch.cuda.device_count() if torch.cuda.is_available() else 'no'} "
                         "CUDA device(s) here; use accuracy.device=auto or cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name!r}: torch cannot use Apple's MPS here; use accuracy.device=auto or cpu")
    return dev


def device_label(dev: torch.device) -> str:
    """`dev` as a row records it: its type and index, and a GPU's name."""
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(dev)


PACKAGE = Path(__file__).resolve().parent.parent


def code_hash(*names: str, root: Path = PACKAGE, pattern: str = "*.py") -> str:
    """Hash of the source `names` (files, or folders' `pattern` files, under `root`, the package by default) and of
    the torch and timm versions: a cache entry keyed by it is not reused after that code or an upgrade changes it."""
    h = hashlib.sha256(f"torch {torch.__version__} timm {version('timm')}".encode())
    for name in names:
        path = root / name
        for f in sorted(path.rglob(pattern)) if path.is_dir() else [path]:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


@cache
def git_commit() -> str:
    """HEAD of the repository this package runs from, with `-dirty` if it has changes; `unknown` outside git."""
    root = PACKAGE.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def environment() -> dict[str, str | int]:
    """Flat `env_*` columns for a results row."""
    import fvcore
    import timm

    return {
        "env_torch": torch.__version__,
        "env_timm": timm.__version__,
        "env_fvcore": getattr(fvcore, "__version__", "unknown"),
        "env_python": platform.python_version(),
        "env_cpu": cpu_model(),
        "env_machine": platform.machine(),
        "env_git_commit": git_commit(),
    }
