"""The results table: one JSON line per measurement in `results/runs.jsonl`; its columns: `COLUMNS`.

Load everything with one pandas call: `pd.read_json("results/runs.jsonl", lines=True)`.
Each append writes its new lines at the end under an exclusive lock, synced before the lock is released, and
cuts a failed write back off; readers take the lock shared: so a crash or a concurrent writer never leaves a
row half-written or lost, and a reader never sees one.
`load_results` also reads a damaged table: lines that are not a JSON object are skipped with one warning
naming the file and their line numbers; appending keeps them as they are. `read_sweep` reads one sweep's rows
line by line, with their line numbers (the report: its memory follows the sweep, not the table).

A job launched in another process than its multirun's (a parallel launcher's worker, another machine of a
cluster) takes no lock: a lock on a shared file system cannot be trusted. It writes its row as its own file in
`results/rows/` (`write_job_row`, one rename), and the process that launched the multirun appends those to the
table at its end (`merge_job_rows`), one writer on one machine. Until then, and if that process died, readers
merge them on read: `load_results` and `read_sweep` see every row recorded.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd

from ..core.errors import ConfigError
from ..core.util import atomic_write

log = logging.getLogger(__name__)
TABLE = "runs.jsonl"
JOB_ROWS = "rows"  # beside the table: one <run_id>.json per row of a job launched in another process

# The columns of a row, with their meaning (docs/costs.md, docs/devices.md, docs/accuracy.md say more).
# A column not listed here is a bug: a test runs jobs and checks every column they write against this.
COST_COLUMNS = {  # the projector's; the encoder's are the same with an `encoder_` prefix
    "params": "parameters", "macs": "multiply-accumulates of one forward (fvcore, holes filled)",
    "flops": "2 × macs", "macs_by_op": "MACs per op type", "torch_flops": "torch FlopCounterMode's count",
    "torch_flops_agree": "torch_flops == 2 × matmul MACs", "uncounted_ops": "ops no counter priced (should be {})",
    "latency_ms": "median eager latency", "latency_iqr_ms": "its interquartile range", "latency_runs": "timed runs",
    "peak_mem_mb": "peak memory of the forward", "size_mb": "serialized size",
    "ops": "per-op work as [kind, dtype, flops, bytes, count] (ops.Op)",
    # on a phone's runtime (deploy.deploy_costs): ExecuTorch's XNNPACK backend, run here
    "exports": "{runtime: ok | the first error}", "xnnpack_threads": "XNNPACK thread pool size",
    **{f"xnnpack{p}_{k}": v for p in ("", "_int8") for k, v in (
        ("latency_ms", "median latency of the lowered program"), ("latency_iqr_ms", "its interquartile range"),
        ("rel_err", "relative L2 distance from eager"), ("pte_mb", "program size"),
        ("outside", "ops left to portable kernels"), ("lower_s", "export + lowering time, s"))},
}
COLUMNS = {
    **COST_COLUMNS,
    # identity and provenance
    "run_id": "this row's id", "sweep_id": "the multirun's (or study's) id", "timestamp": "UTC, ISO 8601",
    "projector": "design name", "token_budget": "the output budget a conf/at_budget/ job belongs to (else null)",
    "encoder": "token source (`none`: synthetic tokens)", "status": "ok | failed",
    "error": "one line when failed", "job_overrides": "the job's Hydra overrides (resume= matches them)",
    "config": "the full composed config", "threads": "torch threads the job used",
    "trial": "Optuna trial number (searches)", "trial_overrides": "the trial's sampled overrides",
    "env_torch": "", "env_timm": "", "env_fvcore": "", "env_python": "", "env_cpu": "", "env_machine": "",
    "env_git_commit": "HEAD, -dirty with changes",
    # the token source and shapes
    "encoder_weights": "pretrained | random | a checkpoint path", "img_size": "encoder input size",
    "e2e_encoder": "the timm encoder synthetic tokens stand for (its ops: encoder_ops)",
    "grid": "token grid h x w", "tokens_in": "", "tokens_out": "", "in_dim": "", "out_dim": "", "batch": "",
    # load check (measure.load_check)
    "reference_ms": "the reference GEMM now",
    "load_ratio": "how much other work inflated latencies: the larger of 1 / load_cpu_share and reference_ms / the "
                  "best here",
    "load_cpu_share": "share of the wall time the reference GEMM's threads had a core (1: no other work held them)",
    "load_basis": "how load_ratio was decided, in words", "load_warning": "set when load_ratio > measure.LOAD_LIMIT",
    # estimates on `device` (roofline.estimate_row)
    "device": "device profile", "est_encoder_ms": "", "est_projector_ms": "", "est_prefill_ms": "",
    "est_vision_ms": "encoder + projector", "est_ttft_ms": "vision + LM prefill", "est_decode_tok_s": "",
    "est_basis": "what est_* are: calibrated on N published points (median leave-one-out error), the roofline "
                 "bound (no points for the device), or measured roofs (host)",
    **{f"{c}_bound": "the uncalibrated roofline (the profile's assumed efficiencies); = the est_ column without points"
       for c in ("est_encoder_ms", "est_projector_ms", "est_prefill_ms", "est_vision_ms", "est_ttft_ms",
                 "est_decode_tok_s")},
    "design_params": "projector (+ encoder) parameters", "design_mem_mb": "projector (+ encoder) peak memory",
    # accuracy (accuracy.evaluate_projector)
    "task": "", "accuracy": "mean over seeds, %", "accuracy_ci_low": "95% two-level bootstrap",
    "accuracy_ci_high": "", "accuracy_ci_method": "", "accuracy_by_seed": "", "accuracy_seed_std": "",
    "accuracy_by_type": "per question type", "accuracy_ci_by_type": "", "accuracy_note": "small test split",
    "accuracy_warning": "under 30 test questions; a compression ratio unlike the costed design's "
                        "(runner.compression_warning)",
    "accuracy_time_s": "", "majority_baseline": "",
    "majority_by_type": "", "types_not_learned": "", "seeds": "", "lr": "the rate chosen on validation",
    "lr_grid": "mean validation loss per rate", "train_steps": "per seed", "best_step": "per seed",
    "converged": "every seed stopped on a plateau", "val_curves": "[step, loss, accuracy] per seed",
    "val_loss": "", "val_accuracy": "", "train_time_s": "", "train_steps_per_s": "",
    "train_questions_per_s": "", "train_workers": "", "acc_cached": "models from the cache",
    "acc_code_version": "accuracy.code_version()", "acc_encoder": "",
    "acc_encoder_source": "pretrained weights, a checkpoint, or the stand-in and its pretraining",
    "acc_encoder_val_accuracy": "the kept encoder's accuracy, with a head, on the task's validation labels, %",
    "acc_encoder_chance": "the majority label's share of them, %",
    "acc_encoder_fine_tuned": "whether fine-tuning on the task's train labels beat the frozen stand-in on validation",
    "acc_encoder_kept": "which encoder validation chose: the stand-in frozen, fine-tuned, or trained on the task alone",
    "acc_device": "where the encoder and the models trained (accuracy.device)",
    "acc_grid": "",
    "acc_tokens_in": "", "acc_tokens_out": "", "acc_test_questions": "", "acc_val_questions": "",
}


def unknown_columns(row: dict[str, Any]) -> list[str]:
    """The columns of `row` that `COLUMNS` does not describe (the `encoder_` costs included)."""
    known = set(COLUMNS) | {f"encoder_{c}" for c in COST_COLUMNS}
    return sorted(set(row) - known)


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
def _locked(path: Path, shared: bool = False) -> Iterator[None]:
    """Hold the table's lock file: exclusively to append, shared to read (a reader then never sees a row half
    appended). A reader of a table no writer has locked yet, or of a read-only folder, reads without it."""
    lock_path = path.with_name(path.name + ".lock")
    if shared and not lock_path.exists():
        yield
        return
    with open(lock_path, "r" if shared else "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
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


def _ids(path: Path, key: str) -> set[Any]:
    """The `key` values of the table's rows (read line by line)."""
    with open(path, "rb") as f:
        return {row.get(key) for line in f if (row := _row(line)) is not None}


def append_rows(results_dir: str | Path, rows: list[dict[str, Any]], unique: str | None = None) -> int:
    """Append `rows` whole (all or none) under the table's lock; with `unique`, skip a row whose `unique` value is
    already in the table, so writing the same rows again is harmless. Returns how many were appended.

    Only the new lines are written (a long sweep's appends cost its rows, not the table's size each time), synced
    to disk before the lock is released; a write that fails part-way (a full disk) is cut back off, so the table
    is as it was. A table that cannot be written (read-only by its mode, even for root; a directory) or whose last
    line is torn is refused with a `ConfigError` and left as it is."""
    path = table_path(results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    _writable(path)
    with _locked(path):
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
            if size and os.pread(fd, 1, size - 1) != b"\n":
                raise ConfigError(f"{path} does not end with a newline (a torn or hand-edited last line): the row "
                                  "was not recorded; end or delete that line, then re-run")
            if unique:
                have = _ids(path, unique)
                rows = [r for r in rows if r.get(unique) not in have]
            if not rows:
                return 0
            data = memoryview("".join(map(_line, rows)).encode())
            try:
                while data:  # a write may land part of the bytes: the rest follows, or the error stops it
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, size)  # nothing of a row that did not land whole is left behind
                raise
        finally:
            os.close(fd)
    return len(rows)


def append_row(results_dir: str | Path, row: dict[str, Any]) -> Path:
    """Append one row atomically; returns the table's path."""
    append_rows(results_dir, [row])
    return table_path(results_dir)


def _writable(path: Path) -> None:
    if path.is_dir() or (path.exists() and (not path.stat().st_mode & 0o222 or not os.access(path, os.W_OK))):
        raise ConfigError(f"{path} is {'a directory' if path.is_dir() else 'read-only'}: the row was not recorded; "
                          "make it a writable file or set results_dir=<another folder>")


def write_job_row(results_dir: str | Path, row: dict[str, Any]) -> Path:
    """Record the row of a job launched in another process as its own file, `rows/<run_id>.json`, written whole in
    one rename and without a lock; `merge_job_rows` appends it to the table. Returns the file."""
    _writable(table_path(results_dir))
    path = Path(results_dir) / JOB_ROWS / f"{row['run_id']}.json"
    atomic_write(path, _line(row))
    return path


def _job_rows(results_dir: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """The job rows not yet in the table, oldest first; a file that is not one JSON row is named in a warning."""
    folder = Path(results_dir) / JOB_ROWS
    out, bad = [], []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:  # a temporary .<name>.tmp is not matched
        try:
            row = _row(path.read_bytes())
        except OSError:  # merged and removed by another reader meanwhile
            continue
        if row is None:
            bad.append(path.name)
        else:
            out.append((path, row))
    if bad:
        log.warning("%s: skipped %d damaged job row file(s): %s", folder, len(bad), ", ".join(bad[:10]))
    return sorted(out, key=lambda pr: (str(pr[1].get("timestamp")), str(pr[1].get("run_id"))))


def merge_job_rows(results_dir: str | Path) -> int:
    """Append the job rows of `rows/` to the table (skipping a row whose run_id it already holds, so a merge cut
    short is finished by the next one), then remove their files. Returns how many were appended."""
    pending = _job_rows(results_dir)
    if not pending:
        return 0
    n = append_rows(results_dir, [row for _, row in pending], unique="run_id")
    for path, _ in pending:
        path.unlink(missing_ok=True)
    return n


ID_COLUMNS = ("run_id", "sweep_id", "env_git_commit", "acc_code_version")


def _not_a_directory(path: Path) -> None:
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a results table; move it away or set "
                          "results_dir=<another folder>")


def _warn_damaged(path: Path, bad: list[int]) -> None:
    if bad:
        log.warning("%s: skipped %d damaged line(s) (not a JSON row): line %s", path, len(bad), _lines(bad))


def load_results(results_dir: str | Path = "results") -> pd.DataFrame:
    """All rows of the table and the job rows not yet merged into it (empty frame if there is none yet); damaged
    lines are skipped with one warning."""
    path = table_path(results_dir)
    _not_a_directory(path)
    data = b""
    if path.exists() and path.stat().st_size:
        with _locked(path, shared=True):
            data = path.read_bytes()
    rows, good, bad = _parse(data)
    _warn_damaged(path, bad)
    have = {r.get("run_id") for r in rows}
    good += [_line(row).encode().rstrip() for _, row in _job_rows(results_dir) if row.get("run_id") not in have]
    if not good:
        return pd.DataFrame()
    # ids and hashes stay strings: pandas would read a hex id such as "123456789e12" as a float
    return pd.read_json(io.StringIO(b"\n".join(good).decode()), lines=True, dtype=dict.fromkeys(ID_COLUMNS, str))


def _row(line: bytes) -> dict[str, Any] | None:
    """One line's row, or None when it is not a JSON object. NaN and Infinity (which Python's own json writes)
    are read as null: the table stores a non-finite number as null."""
    try:
        row = json.loads(line, parse_constant=lambda name: None)
    except ValueError:  # torn, binary or hand-edited: UnicodeDecodeError and JSONDecodeError alike
        return None
    return row if isinstance(row, dict) else None


@dataclass
class Selection:
    """The rows of one sweep of a table, each with its (1-based) line number, and the table's sweep ids."""

    rows: list[tuple[int | str, dict[str, Any]]]  # a job row not yet merged: its file's name, not a line number
    sweeps: list[str]  # every sweep id of the table, in the order of their first rows
    total: int  # rows in the table, every sweep's


def _index(f: BinaryIO) -> tuple[list[tuple[int, int, str | None]], list[int]]:
    """(line number, offset, sweep id) of each row of an open table, and the numbers of its damaged lines."""
    where, bad, offset = [], [], 0
    for n, line in enumerate(f, 1):
        start, offset = offset, offset + len(line)
        if not line.strip():
            continue
        if (row := _row(line)) is None:
            bad.append(n)
            continue
        sid = row.get("sweep_id")
        where.append((n, start, sid if isinstance(sid, str) else None))
    return where, bad


def read_sweep(path: str | Path, sweep: str = "all") -> Selection:
    """The rows of sweep `sweep` of the table at `path` (a .jsonl file): an id, `last` (the sweep of the last
    row that has one; every row when none has) or `all`. An unknown id selects no row. Damaged lines are
    skipped with one warning, as `load_results` does.

    The table is read twice, line by line: first each row's sweep id and where its line starts, then only
    the selected lines, so the memory it takes follows the rows selected, not the size of the table."""
    path = Path(path)
    _not_a_directory(path)
    jobs = [(f"{JOB_ROWS}/{p.name}", row) for p, row in (_job_rows(path.parent) if path.name == TABLE else [])]
    if not path.exists() and not jobs:
        return Selection([], [], 0)
    rows: list[tuple[int | str, dict[str, Any]]] = []
    where: list[tuple[int, int, str | None]] = []
    if path.exists():
        with _locked(path, shared=True), open(path, "rb") as f:  # no append lands between the two passes
            where, bad = _index(f)
            _warn_damaged(path, bad)
            wanted = _wanted(sweep, [sid for _, _, sid in where], jobs)
            for n, start, sid in where:
                if wanted is None or sid == wanted:
                    f.seek(start)
                    rows.append((n, _row(f.readline())))
    wanted = _wanted(sweep, [sid for _, _, sid in where], jobs)
    have = {row.get("run_id") for _, row in rows}
    rows += [(name, row) for name, row in jobs
             if (wanted is None or row.get("sweep_id") == wanted) and row.get("run_id") not in have]
    ids = [sid for _, _, sid in where if sid is not None] + _job_sweeps(jobs)
    return Selection(rows, list(dict.fromkeys(ids)), len(where) + len(jobs))


def _wanted(sweep: str, table_ids: list[str | None], jobs: list[tuple[str, dict[str, Any]]]) -> str | None:
    """The sweep id `sweep` selects (None: every row): `last` is the last row's that has one, job rows last."""
    if sweep == "all":
        return None
    if sweep != "last":
        return sweep
    ids = [i for i in table_ids if i is not None] + _job_sweeps(jobs)
    return ids[-1] if ids else None


def _job_sweeps(jobs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [r["sweep_id"] for _, r in jobs if isinstance(r.get("sweep_id"), str)]
