import json
import multiprocessing as mp
import os
from pathlib import Path

import pandas as pd
import pytest

from projector_bench import ConfigError
from projector_bench.jobs.results import append_row, append_rows, jsonable, load_results, table_path


def test_rows_round_trip_through_one_pandas_call(tmp_path):
    append_row(tmp_path, {"projector": "mlp", "macs": 3, "by_op": {"linear": 3}, "latency_ms": float("nan")})
    append_row(tmp_path, {"projector": "ldp", "macs": 5, "error": "boom"})
    df = pd.read_json(tmp_path / "runs.jsonl", lines=True)  # the documented way
    assert list(df["projector"]) == ["mlp", "ldp"] and df["by_op"][0] == {"linear": 3}
    assert df["latency_ms"].isna().all() and load_results(tmp_path).shape == df.shape


def test_load_of_a_missing_table_is_empty(tmp_path):
    assert load_results(tmp_path / "none").empty


def _writer(results_dir, worker):
    for i in range(25):
        append_row(results_dir, {"worker": worker, "i": i, "pad": "x" * 2000})


def test_concurrent_writers_lose_nothing(tmp_path):
    procs = [mp.get_context("fork").Process(target=_writer, args=(tmp_path, w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    rows = [json.loads(line) for line in table_path(tmp_path).read_text().splitlines()]
    assert sorted((r["worker"], r["i"]) for r in rows) == [(w, i) for w in range(3) for i in range(25)]


def test_a_crash_mid_write_leaves_the_table_as_it_was(tmp_path, monkeypatch):
    append_row(tmp_path, {"projector": "mlp"})
    before = table_path(tmp_path).read_bytes()

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", crash)  # the row's bytes are written, the sync is interrupted
    with pytest.raises(KeyboardInterrupt):
        append_row(tmp_path, {"projector": "ldp"})
    assert table_path(tmp_path).read_bytes() == before


def test_a_write_the_disk_refuses_part_way_is_cut_back_off(tmp_path):
    """A real partial write: with the file size limit a few bytes past the table, the OS writes those bytes and
    refuses the rest (EFBIG, as a full disk refuses with ENOSPC); the table must be as it was."""
    import resource
    import signal

    append_row(tmp_path, {"projector": "mlp"})
    before = table_path(tmp_path).read_bytes()
    old_limit, old_handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 10, old_limit[1]))
    try:
        with pytest.raises(OSError):
            append_row(tmp_path, {"projector": "ldp", "pad": "x" * 1000})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert table_path(tmp_path).read_bytes() == before


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="counts the bytes written from Linux's /proc/self/io")
def test_an_append_writes_its_rows_not_the_whole_table(tmp_path):
    """A long sweep's appends cost their own rows: nothing rewrites what the table already holds."""
    def written() -> int:
        return int(next(ln for ln in Path("/proc/self/io").read_text().splitlines()
                        if ln.startswith("wchar:")).split()[1])

    append_rows(tmp_path, [{"run_id": str(i), "pad": "x" * 1000} for i in range(200)])
    before = written()
    append_row(tmp_path, {"run_id": "new"})
    assert written() - before < 5000 < table_path(tmp_path).stat().st_size  # the row and the lock, not 200 kB
    assert len(table_path(tmp_path).read_text().splitlines()) == 201


def test_a_hand_edited_table_is_refused_not_overwritten(tmp_path):
    table_path(tmp_path).write_text('{"projector": "mlp"}')  # no final newline
    with pytest.raises(ConfigError, match="does not end with a newline"):
        append_row(tmp_path, {"projector": "ldp"})
    assert table_path(tmp_path).read_text() == '{"projector": "mlp"}'


def test_append_rows_with_a_unique_column_writes_each_row_once(tmp_path):
    a, b = {"run_id": "a", "x": 1}, {"run_id": "b", "x": float("inf")}
    assert append_rows(tmp_path, [a], unique="run_id") == 1
    assert append_rows(tmp_path, [a, b], unique="run_id") == 1  # a is there: only b
    assert append_rows(tmp_path, [a, b], unique="run_id") == 0
    assert load_results(tmp_path)["run_id"].tolist() == ["a", "b"] and jsonable(b) == {"run_id": "b", "x": None}


def test_a_damaged_table_is_read_without_its_bad_lines_and_with_one_warning(tmp_path, caplog):
    append_row(tmp_path, {"projector": "mlp", "x": 1})
    with open(table_path(tmp_path), "ab") as f:
        f.write(b'{"projector": "ld\n\xff\xfe binary\n[1, 2]\n')  # a torn line, a binary one, not an object
    append_row(tmp_path, {"projector": "ldp", "x": 2})
    before = table_path(tmp_path).read_bytes()
    df = load_results(tmp_path)
    assert df["projector"].tolist() == ["mlp", "ldp"]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "skipped 3 damaged line(s)" in warned[0] and "line 2, 3, 4" in warned[0]
    assert append_rows(tmp_path, [{"run_id": "z"}], unique="run_id") == 1  # the bad lines stay as they were
    assert table_path(tmp_path).read_bytes() == before + b'{"run_id": "z"}\n'


def test_a_read_only_table_or_a_directory_is_refused_and_left_alone(tmp_path):
    append_row(tmp_path, {"projector": "mlp"})
    path = table_path(tmp_path)
    before = path.read_bytes()
    path.chmod(0o444)
    try:
        with pytest.raises(ConfigError, match="read-only: the row was not recorded"):
            append_row(tmp_path, {"projector": "ldp"})
        assert path.read_bytes() == before and (path.stat().st_mode & 0o777) == 0o444
    finally:
        path.chmod(0o644)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "runs.jsonl").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        load_results(tmp_path / "d")
    with pytest.raises(ConfigError, match="is a directory"):
        append_row(tmp_path / "d", {"projector": "ldp"})


def test_an_append_keeps_the_tables_permissions(tmp_path):
    append_row(tmp_path, {"projector": "mlp"})
    table_path(tmp_path).chmod(0o640)
    append_row(tmp_path, {"projector": "ldp"})
    assert (table_path(tmp_path).stat().st_mode & 0o777) == 0o640


def test_ids_that_look_like_numbers_are_read_back_as_the_strings_they_are(tmp_path):
    append_rows(tmp_path, [{"run_id": "000000000123", "sweep_id": "123456789e12", "x": 1}, {"run_id": "abc", "x": 2}])
    df = load_results(tmp_path)
    assert list(df["run_id"]) == ["000000000123", "abc"] and df["sweep_id"].iloc[0] == "123456789e12"
    assert df["sweep_id"].isna().iloc[1] and df["x"].tolist() == [1, 2]


def test_read_sweep_keeps_only_the_selected_sweeps_rows_with_their_line_numbers(tmp_path, caplog):
    from projector_bench.jobs.results import read_sweep

    path = table_path(tmp_path)
    path.write_bytes(b'{"sweep_id": "a", "x": 1}\n{"sweep_id": "b", "x": 2}\n{"torn\n\n'
                     b'{"sweep_id": "a", "x": 3}\n{"x": 4}\n{"sweep_id": ["c"], "x": 5}\n{"sweep_id": "b", "x": NaN}\n'
                     b'{"x": 7}\n')
    pick = {s: [(n, r["x"]) for n, r in read_sweep(path, s).rows] for s in ("a", "b", "last", "all", "nope")}
    assert pick["a"] == [(1, 1), (5, 3)]  # a resumed sweep's rows, wherever they are
    assert pick["b"] == pick["last"] == [(2, 2), (8, None)]  # the last row with a sweep id; NaN is read as null
    assert [n for n, _ in pick["all"]] == [1, 2, 5, 6, 7, 8, 9] and pick["nope"] == []
    s = read_sweep(path, "a")
    assert s.sweeps == ["a", "b"] and s.total == 7
    damaged = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(damaged) == 6 and all("skipped 1 damaged line(s) (not a JSON row): line 3" in m for m in damaged)
    path.write_bytes(b'{"x": 1}\n{"x": 2}\n')  # no row has a sweep id: `last` is every row
    assert [r["x"] for _, r in read_sweep(path, "last").rows] == [1, 2]
    assert read_sweep(tmp_path / "none.jsonl").total == 0


def test_read_sweep_of_a_directory_is_refused(tmp_path):
    from projector_bench.jobs.results import read_sweep

    (tmp_path / "runs.jsonl").mkdir()
    with pytest.raises(ConfigError, match="is a directory, not a results table"):
        read_sweep(tmp_path / "runs.jsonl")


def test_a_job_launched_elsewhere_writes_its_row_apart_and_readers_see_it_until_it_is_merged_once(tmp_path):
    """No lock across machines: the job's row is its own file; load_results and read_sweep merge it on read, and
    the launching process appends it to the table once (a merge cut short before the files went is finished)."""
    from projector_bench.jobs.results import JOB_ROWS, merge_job_rows, read_sweep, write_job_row

    append_row(tmp_path, {"run_id": "a", "sweep_id": "s1", "timestamp": "2026-01-01T00:00:00", "projector": "mlp"})
    for rid in ("c", "b"):
        write_job_row(tmp_path, {"run_id": rid, "sweep_id": "s2", "timestamp": f"2026-01-02T00:00:0{rid == 'c':d}",
                                 "projector": "ldp"})
    assert list(load_results(tmp_path)["run_id"]) == ["a", "b", "c"]
    sel = read_sweep(tmp_path / "runs.jsonl", "last")
    assert [r["run_id"] for _, r in sel.rows] == ["b", "c"] and sel.rows[0][0] == f"{JOB_ROWS}/b.json"
    assert sel.sweeps == ["s1", "s2"] and sel.total == 3
    append_row(tmp_path, {"run_id": "b", "sweep_id": "s2", "timestamp": "2026-01-02T00:00:00", "projector": "ldp"})
    assert merge_job_rows(tmp_path) == 1 and merge_job_rows(tmp_path) == 0  # b was in already: only c appended
    assert not list((tmp_path / JOB_ROWS).glob("*.json"))
    assert [json.loads(line)["run_id"]
            for line in (tmp_path / "runs.jsonl").read_text().splitlines()] == ["a", "b", "c"]


def test_only_a_job_in_another_process_than_its_launcher_writes_its_row_apart(monkeypatch):
    import socket

    from projector_bench.core.settings import LAUNCHER_ENV, launched_elsewhere

    monkeypatch.delenv(LAUNCHER_ENV, raising=False)
    assert not launched_elsewhere()  # a single run
    monkeypatch.setenv(LAUNCHER_ENV, f"{socket.gethostname()}:{os.getpid()}")
    assert not launched_elsewhere()  # Hydra's basic launcher: the jobs run in the launching process
    monkeypatch.setenv(LAUNCHER_ENV, f"{socket.gethostname()}:{os.getpid() + 1}")
    assert launched_elsewhere()  # joblib's worker, a SLURM job
