"""Where Optuna studies live: the storage a search writes to and a report reads its studies back from.
Below the search and the report, so that neither imports the other (docs/search.md).

Bad storage input is one `ConfigError` line, found before any trial runs: a URL that does not parse, a
database driver that is not installed, a server that cannot be reached. A URL is only ever shown with its
password hidden."""
from __future__ import annotations

import random
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna

from .errors import ConfigError

STORAGE_HELP = "use null (SQLite), a SQLAlchemy URL or journal:PATH"
# The documented `postgresql://` URL needs psycopg under SQLAlchemy >= 2.1, psycopg2 before: the search extra
# (pyproject.toml) installs both
SEARCH_EXTRA = "install the search extra in the projector_bench clone: pip install -e '.[search]'"
DRIVER_EXTRAS = {"psycopg": SEARCH_EXTRA, "psycopg2": SEARCH_EXTRA}


def storage(spec: str | None, results_dir: str, heartbeat: int, grace: int) -> optuna.storages.BaseStorage:
    """The study's storage: `null` (SQLite in `results_dir`), a SQLAlchemy URL, or `journal:PATH`."""
    if spec and spec.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(spec.removeprefix("journal:")))
    if not spec:
        Path(results_dir).mkdir(parents=True, exist_ok=True)
        spec = f"sqlite:///{Path(results_dir).resolve() / 'optuna.db'}"
    engine_kwargs = {"connect_args": {"timeout": 60}} if spec.startswith("sqlite") else None
    check_database(spec, engine_kwargs)
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(spec, heartbeat_interval=heartbeat, grace_period=grace,
                                              heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
                                              engine_kwargs=engine_kwargs)
        except Exception as e:  # the server answered (check_database), so mostly a race on a new schema
            race = isinstance(e, IntegrityError | OperationalError) or (  # workers started together race to create
                isinstance(e, ProgrammingError) and "already exists" in str(e))  # the schema (PostgreSQL: DuplicateTable)
            if race and attempt < 4:
                time.sleep(0.5 + random.random())  # the loser opens it once it exists
                continue
            raise ConfigError(f"search.storage {shown(spec)!r} cannot be opened ({_why(e, spec)}); "
                              f"{STORAGE_HELP}") from None
    raise AssertionError("unreachable")  # the last attempt returns or raises


def shown(spec: str) -> str:
    """`spec` as it may be printed: a URL with its password replaced by ***."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(spec).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: hide what sits where a password would
        password = _raw_password(spec)
        return spec.replace(f":{password}@", ":***@") if password else spec


def _raw_password(spec: str) -> str:
    """The password part of `user:password@host` in `spec` as written (percent-encoded or not), or ''."""
    _, sep, rest = spec.partition("://")
    auth = rest.rpartition("@")[0] if sep else ""
    return auth.partition(":")[2]


def _why(e: BaseException, spec: str) -> str:
    """`Type: first line` of an error from a driver or SQLAlchemy, with the URL's password hidden."""
    from sqlalchemy.engine import make_url

    text = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    secrets = {_raw_password(spec)}
    try:
        secrets.add(make_url(spec).password or "")
    except Exception:
        pass
    for s in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(s, "***")
    return text


def check_database(spec: str, engine_kwargs: dict[str, Any] | None = None) -> None:
    """Raise one `ConfigError` line unless `spec` parses, its driver imports and its database accepts a connection.

    Connecting once first tells a server that is down or a wrong URL (fail at once) from workers racing to
    create a new schema (`storage` retries those)."""
    import sqlalchemy
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        url = make_url(spec)
        engine = sqlalchemy.create_engine(url, **(engine_kwargs or {}))
    except ImportError as e:  # the dialect's DBAPI module
        fix = DRIVER_EXTRAS.get(e.name or "", f"install the Python package that provides {e.name!r}")
        raise ConfigError(f"search.storage {shown(spec)!r} needs the database driver {e.name!r}, which is not "
                          f"installed: {fix}") from None
    except (ArgumentError, ValueError) as e:  # not a URL, or a dialect SQLAlchemy does not know
        raise ConfigError(f"search.storage {shown(spec)!r} is not a usable SQLAlchemy URL ({_why(e, spec)}); "
                          f"{STORAGE_HELP}") from None
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as e:
        if url.get_backend_name() == "sqlite":
            raise ConfigError(f"search.storage {shown(spec)!r}: the SQLite file {url.database!r} cannot be opened "
                              f"({_why(e, spec)}); give a writable path, or null for results_dir/optuna.db") from None
        server = f"{url.host or 'localhost'}{f':{url.port}' if url.port else ''}"
        raise ConfigError(f"search.storage {shown(spec)!r}: cannot connect to the database server at {server} "
                          f"({_why(e, spec)}); start the server, or fix the host, port, user, password or database "
                          "in the URL") from None
    finally:
        engine.dispose()


def load_studies(names: Iterable[str], results_dir: str | Path, spec: str | None) -> list[optuna.Study]:
    """The studies `names` from the storage `spec` (as `search.storage`; null: SQLite in `results_dir`)."""
    store = storage(spec, str(results_dir), heartbeat=60, grace=600)
    return [optuna.load_study(study_name=name, storage=store) for name in sorted(names)]
