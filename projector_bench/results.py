"""The results table: one JSON line per measurement in `results/runs.jsonl`.

Load everything with one pandas call: `pd.read_json("results/runs.jsonl", lines=True)`.
Each append rewrites the file to a temporary sibling and renames it over the original under an
exclusive lock, so a crash or a concurrent writer never leaves a row half-written or lost.
`load_results` also reads a damaged table: lines that are not a JSON object are skipped with one warning
naming the file and their line numbers; appending keeps them as they are.
"""
from __future__ import annotations

import fcntl
import io
import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import ConfigError

log = logging.getLogger(__name__)
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


def _parse(data: bytes) -> tuple[list[dict[str, Any]], list[bytes], list[int]]:
    """The rows of a table's bytes, their lines, and the (1-based) numbers of the lines that are not a JSON object."""
    rows, good, bad = [], [], []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:  # torn, binary or hand-edited: UnicodeDecodeError and JSONDecodeError alike
            row = None
        if isinstance(row, dict):
            rows.append(row)
            good.append(line)
        else:
            bad.append(n)
    return rows, good, bad


def _lines(bad: list[int]) -> str:
    return ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")


def append_rows(results_dir: str | Path, rows: list[dict[str, Any]], unique: str | None = None) -> int:
    """Append `rows` atomically (all or none); with `unique`, skip a row whose `unique` value is already in
    the table, so writing the same rows again is harmless. Returns how many were appended.

    A table that cannot be written (read-only by its mode, even for root; a directory) or whose last line is torn is refused with a
    `ConfigError` and left as it is."""
    path = table_path(results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() or (path.exists() and (not path.stat().st_mode & 0o222 or not os.access(path, os.W_OK))):
        raise ConfigError(f"{path} is {'a directory' if path.is_dir() else 'read-only'}: the row was not recorded; "
                          "make it a writable file or set results_dir=<another folder>")
    with _locked(path):
        old = path.read_bytes() if path.exists() else b""
        if old and not old.endswith(b"\n"):
            raise ConfigError(f"{path} does not end with a newline (a torn or hand-edited last line): the row was "
                              "not recorded; end or delete that line, then re-run")
        if unique:
            have = {r.get(unique) for r in _parse(old)[0]}
            rows = [r for r in rows if r.get(unique) not in have]
        if not rows:
            return 0
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(old + "".join(map(_line, rows)).encode())
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    return len(rows)


def append_row(results_dir: str | Path, row: dict[str, Any]) -> Path:
    """Append one row atomically; returns the table's path."""
    append_rows(results_dir, [row])
    return table_path(results_dir)


def load_results(results_dir: str | Path = "results") -> pd.DataFrame:
    """All rows of the table (empty frame if there is none yet); damaged lines are skipped with one warning."""
    path = table_path(results_dir)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a results table; move it away or set results_dir=<another folder>")
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    _, good, bad = _parse(path.read_bytes())
    if bad:
        log.warning("%s: skipped %d damaged line(s) (not a JSON row): line %s", path, len(bad), _lines(bad))
    if not good:
        return pd.DataFrame()
    return pd.read_json(io.StringIO(b"\n".join(good).decode()), lines=True)
