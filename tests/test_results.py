import json
import multiprocessing as mp
import os

import pandas as pd
import pytest

from projector_bench.results import (
    append_row,
    append_rows,
    jsonable,
    load_results,
    table_path,
)


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

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        append_row(tmp_path, {"projector": "ldp"})
    assert table_path(tmp_path).read_bytes() == before


def test_a_hand_edited_table_is_refused_not_overwritten(tmp_path):
    table_path(tmp_path).write_text('{"projector": "mlp"}')  # no final newline
    with pytest.raises(ValueError, match="does not end with a newline"):
        append_row(tmp_path, {"projector": "ldp"})
    assert table_path(tmp_path).read_text() == '{"projector": "mlp"}'


def test_append_rows_with_a_unique_column_writes_each_row_once(tmp_path):
    a, b = {"run_id": "a", "x": 1}, {"run_id": "b", "x": float("inf")}
    assert append_rows(tmp_path, [a], unique="run_id") == 1
    assert append_rows(tmp_path, [a, b], unique="run_id") == 1  # a is there: only b
    assert append_rows(tmp_path, [a, b], unique="run_id") == 0
    assert load_results(tmp_path)["run_id"].tolist() == ["a", "b"] and jsonable(b) == {"run_id": "b", "x": None}
