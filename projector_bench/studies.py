"""Where Optuna studies live: the storage a search writes to and a report reads its studies back from.
Below the search and the report, so that neither imports the other (docs/search.md)."""
from __future__ import annotations

import random
import time
from collections.abc import Iterable
from pathlib import Path

import optuna

from .errors import ConfigError


def storage(spec: str | None, results_dir: str, heartbeat: int, grace: int) -> optuna.storages.BaseStorage:
    """The study's storage: `null` (SQLite in `results_dir`), a SQLAlchemy URL, or `journal:PATH`."""
    if spec and spec.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(spec.removeprefix("journal:")))
    if not spec:
        Path(results_dir).mkdir(parents=True, exist_ok=True)
        spec = f"sqlite:///{Path(results_dir).resolve() / 'optuna.db'}"
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(spec, heartbeat_interval=heartbeat, grace_period=grace,
                                              heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
                                              engine_kwargs={"connect_args": {"timeout": 60}} if spec.startswith("sqlite") else None)
        except Exception as e:  # SQLAlchemy's own errors (bad URL, missing driver, unreachable server)
            race = isinstance(e, IntegrityError | OperationalError) or (  # workers started together race to create
                isinstance(e, ProgrammingError) and "already exists" in str(e))  # the schema (PostgreSQL: DuplicateTable)
            if race and attempt < 4:
                time.sleep(0.5 + random.random())  # the loser opens it once it exists
                continue
            raise ConfigError(f"search.storage {spec!r} cannot be opened ({type(e).__name__}: {str(e).splitlines()[0]}); "
                              "use null (SQLite), a SQLAlchemy URL or journal:PATH") from None
    raise AssertionError("unreachable")  # the last attempt returns or raises


def load_studies(names: Iterable[str], results_dir: str | Path, spec: str | None) -> list[optuna.Study]:
    """The studies `names` from the storage `spec` (as `search.storage`; null: SQLite in `results_dir`)."""
    store = storage(spec, str(results_dir), heartbeat=60, grace=600)
    return [optuna.load_study(study_name=name, storage=store) for name in sorted(names)]
