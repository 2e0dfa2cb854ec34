"""The results table: one JSON line per measurement in `results/runs.jsonl`.

Load everything with one pandas call: `pd.read_json("results/runs.jsonl", lines=True)`.
Each append rewrites the file to a temporary sibling and renames it over the original under an
exclusive lock, so a crash or a concurrent writer never leaves a row half-written or lost.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

TABLE = "runs.jsonl"


def table_path(results_dir: str | Path) -> Path:
    """Where the results table of `results_dir` lives."""
    return Path(results_dir) / TABLE


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append_row(results_dir: str | Path, row: dict[str, Any]) -> Path:
    """Append one row atomically; returns the table's path."""
    path = table_path(results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(_json_safe(row), default=str) + "\n"
    with _locked(path):
        old = path.read_bytes() if path.exists() else b""
        if old and not old.endswith(b"\n"):
            raise ValueError(f"{path} does not end with a newline: it was edited by hand; fix its last line, then re-run")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(old + line.encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return path


def load_results(results_dir: str | Path = "results") -> pd.DataFrame:
    """All rows of the table (empty frame if there is none yet)."""
    path = table_path(results_dir)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    return pd.read_json(path, lines=True)
