"""A sweep's jobs in parallel under Hydra's launchers (joblib on one machine; submitit's local executor, the
SLURM launcher's twin) record what one process records: every row in the one table, the same accuracies, the
latencies timed at the host's threads, the end-of-sweep summary over every job."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import torch

from projector_bench.core.settings import DEFAULT_THREADS, THREADS_ENV, _default_threads, host_lock

from .test_cli import cli_subprocess

ACCURACY = ["task=shapes_vqa", "task.num_images=100", "task.questions_per_image=5", "task.img_size=32",
            "accuracy.encoder.weights=random", "accuracy.standin.images=40", "accuracy.standin.min_steps=2",
            "accuracy.standin.max_steps=4", "accuracy.standin.eval_every=2", "accuracy.standin.batch_size=16",
            "accuracy.encoder_training.min_steps=2", "accuracy.encoder_training.max_steps=4",
            "accuracy.encoder_training.eval_every=2", "accuracy.encoder_training.batch_size=16",
            "accuracy.training.min_steps=4", "accuracy.training.max_steps=8", "accuracy.training.eval_every=2",
            "accuracy.training.warmup_steps=2", "accuracy.training.patience=2", "accuracy.training.width=16",
            "accuracy.training.layers=1", "accuracy.training.heads=2", "accuracy.training.batch_size=8", "quiet=true"]
LAUNCHERS = {"joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
             "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20"]}


def _rows(folder):
    return {r["projector"]: r for r in map(json.loads, (folder / "results" / "runs.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    folder = tmp_path_factory.mktemp("one_process")
    r = cli_subprocess(folder, "-m", "projector=mlp,ldp", *ACCURACY)
    assert r.returncode == 0, r.stderr
    return _rows(folder)


@pytest.mark.slow
@pytest.mark.extra("launchers")
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_sweep_under_a_parallel_launcher_records_what_one_process_records(tmp_path, launcher, one_process):
    r = cli_subprocess(tmp_path, "-m", "projector=mlp,ldp", *ACCURACY, *LAUNCHERS[launcher])
    assert r.returncode == 0, r.stderr
    rows = _rows(tmp_path)
    assert set(rows) == {"mlp", "ldp"} and len({row["sweep_id"] for row in rows.values()}) == 1
    for name, row in rows.items():
        assert row["status"] == "ok" and row["accuracy"] == one_process[name]["accuracy"]  # bit for bit on the CPU
        assert row["threads"] == one_process[name]["threads"] == DEFAULT_THREADS  # timed as one process times
    assert all(name in r.stdout for name in rows)  # the end-of-sweep summary covers every job
    assert not list((tmp_path / "results" / "rows").glob("*"))  # written apart by the jobs, merged by the launcher


def test_a_job_launched_on_the_multirun_s_host_times_at_the_launching_process_s_threads(monkeypatch):
    import socket

    monkeypatch.setenv(THREADS_ENV, f"{socket.gethostname()}:7")
    assert _default_threads() == 7
    for other in ("another-host:7", "garbage", ""):  # a SLURM node keeps its own; a bad value is no value
        monkeypatch.setenv(THREADS_ENV, other)
        assert _default_threads() == torch.get_num_threads()


def test_a_timing_waits_for_the_trainings_of_other_processes_and_trainings_share(tmp_path, monkeypatch, caplog):
    """A training holds the host's lock shared in another process: a second training enters beside it, a timing
    enters only once it is released."""
    monkeypatch.setenv("PROJECTOR_BENCH_CACHE", str(tmp_path))
    marker = tmp_path / "released"
    code = (f"import time, pathlib; from projector_bench.core.settings import host_lock\n"
            f"with host_lock(timing=False):\n    print('held', flush=True); time.sleep(2)\n"
            f"    pathlib.Path({str(marker)!r}).touch()\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PROJECTOR_BENCH_CACHE": str(tmp_path)})
    try:
        assert child.stdout.readline().strip() == "held"
        entered = []

        def train():
            with host_lock(timing=False):
                entered.append(marker.exists())

        t = threading.Thread(target=train)
        t.start()
        t.join(timeout=60)
        assert entered == [False]  # entered while the child still trained
        with caplog.at_level("WARNING"), host_lock(timing=True):
            assert marker.exists()  # the timing waited for the child's training to end
        assert "waiting for another job on this host" in caplog.text and "to time alone" in caplog.text
    finally:
        child.wait(timeout=60)
