"""One test per private API the package uses (core/compat.py): an upgrade that moves one fails here, by name."""
from __future__ import annotations

import logging
import multiprocessing as mp

import optuna
import pytest

from projector_bench.core import compat


def test_hydras_basic_sweeper_splits_a_multirun_into_its_jobs():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = compat.basic_sweeper()
    parsed = OverridesParser.create().parse_overrides(["projector=mlp,ldp", "seed=1,2"])
    jobs = [job for batch in sweeper.split_arguments(parsed, None) for job in batch]
    assert sorted(map(tuple, jobs)) == sorted([("projector=mlp", "seed=1"), ("projector=mlp", "seed=2"),
                                               ("projector=ldp", "seed=1"), ("projector=ldp", "seed=2")])


def test_optunas_heartbeat_storage_and_trial_ids(tmp_path):
    beats = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'a.db'}", heartbeat_interval=60)
    study = optuna.create_study(storage=beats)
    trial = study.ask()
    store = compat.heartbeat_storage(study)  # Optuna wraps an RDB storage in its cache
    assert store is not None and store.get_heartbeat_interval() == 60
    assert store.get_trial(compat.trial_id(trial)).number == beats.get_trial(compat.trial_id(trial)).number == 0
    assert compat.heartbeat_storage(optuna.create_study()) is None  # in memory: no heartbeats
    assert compat.heartbeat_storage(optuna.create_study(storage=f"sqlite:///{tmp_path / 'b.db'}")) is None


def test_optunas_trial_failure_logger_is_the_one_quietened():
    from optuna.study import _optimize

    assert _optimize._logger.name == compat.OPTUNA_TRIAL_LOGGER
    assert logging.getLogger(compat.OPTUNA_TRIAL_LOGGER) is _optimize._logger


def test_a_pools_worker_processes_are_its_live_children():
    with mp.get_context("spawn").Pool(1) as pool:
        procs = compat.pool_processes(pool)
        assert len(procs) == 1 and procs[0].is_alive() and procs[0].pid in {p.pid for p in mp.active_children()}


@pytest.mark.extra("deploy")
def test_executorchs_backends_thread_pool_and_lowering_memos():
    from executorch.extension.pybindings import portable_lib

    assert "XnnpackBackend" in compat.executorch_backends()
    before = portable_lib._threadpool_get_thread_count()
    compat.executorch_threads(1)
    assert portable_lib._threadpool_get_thread_count() == 1
    compat.executorch_threads(before)
    memos = compat.lowering_memos()
    assert len(memos) == 4
    for clear in memos:
        clear()
