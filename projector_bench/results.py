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


def _line(row: dict[str, Any]) -> str:
    return json.dumps(_json_safe(row), default=str) + "\n"


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """`row` as the table stores it (non-finite floats become null, other objects their `str`)."""
    return json.loads(_line(row))


def append_rows(results_dir: str | Path, rows: list[dict[str, Any]], unique: str | None = None) -> int:
    """Append `rows` atomically (all or none); with `unique`, skip a row whose `unique` value is already in
    the table, so writing the same rows again is harmless. Returns how many were appended."""
    path = table_path(results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        old = path.read_bytes() if path.exists() else b""
        if old and not old.endswith(b"\n"):
            raise ValueError(f"{path} does not end with a newline: it was edited by hand; fix its last line, then re-run")
        if unique:
            have = {json.loads(line).get(unique) for line in old.splitlines() if line.strip()}
            rows = [r for r in rows if r.get(unique) not in have]
        if not rows:
            return 0
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(old + "".join(map(_line, rows)).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return len(rows)


def append_row(results_dir: str | Path, row: dict[str, Any]) -> Path:
    """Append one row atomically; returns the table's path."""
    append_rows(results_dir, [row])
    return table_path(results_dir)


def load_results(results_dir: str | Path = "results") -> pd.DataFrame:
    """All rows of the table (empty frame if there is none yet)."""
    path = table_path(results_dir)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    return pd.read_json(path, lines=True)
