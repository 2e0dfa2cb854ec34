"""Where Optuna studies live: the storage a search writes to and a report reads its studies back from.
Below the search and the report, so that neither imports the other (docs/search.md).

Bad storage input is one `ConfigError` line, found before any trial runs: a URL that does not parse, a
database driver that is not installed, a server that cannot be reached, a journal line that cannot be read.
A URL is only ever shown with its password hidden; a journal's torn last line is set aside, not refused."""
from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from .errors import ConfigError, first_line

log = logging.getLogger(__name__)
STORAGE_HELP = "use null (SQLite), a SQLAlchemy URL or journal:PATH"
# The documented `postgresql://` URL needs psycopg under SQLAlchemy >= 2.1, psycopg2 before: the search extra
# (pyproject.toml) installs both
SEARCH_EXTRA = "install the search extra in the projector_bench clone: pip install -e '.[search]'"
DRIVER_EXTRAS = {"psycopg": SEARCH_EXTRA, "psycopg2": SEARCH_EXTRA}


def storage(spec: str | None, results_dir: str, heartbeat: int, grace: int) -> optuna.storages.BaseStorage:
    """The study's storage: `null` (SQLite in `results_dir`), a SQLAlchemy URL, or `journal:PATH`."""
    if spec and spec.startswith("journal:"):
        return journal(spec.removeprefix("journal:"))
    if not spec:
        Path(results_dir).mkdir(parents=True, exist_ok=True)
        spec = f"sqlite:///{Path(results_dir).resolve() / 'optuna.db'}"
    engine_kwargs = {"connect_args": {"timeout": 60}} if spec.startswith("sqlite") else None
    check_database(spec, engine_kwargs)
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                spec, heartbeat_interval=heartbeat, grace_period=grace,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
                engine_kwargs=engine_kwargs)
        except Exception as e:  # the server answered (check_database), so mostly a race on a new schema
            # workers started together race to create the schema (PostgreSQL: DuplicateTable)
            race = isinstance(e, IntegrityError | OperationalError) or (
                isinstance(e, ProgrammingError) and "already exists" in str(e))
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

    text = first_line(e, typed=True)
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


def journal(path: str) -> optuna.storages.JournalStorage:
    """Optuna's journal file at `path` (`~` expanded), checked line by line first: a line that is not an
    operation is one `ConfigError` naming it, and the file is left as it is."""
    path = str(Path(path).expanduser())
    if Path(path).is_dir():
        raise ConfigError(f"search.storage=journal:{path} is a directory; give a file in it "
                          f"(journal:{path}/study.journal)")
    check_journal(path)
    try:
        return optuna.storages.JournalStorage(_CheckedJournal(path))
    except OSError as e:
        raise ConfigError(f"search.storage=journal:{path} cannot be opened ({e.strerror or e}); give a file you can "
                          "read and write") from None


def check_journal(path: str | Path) -> None:
    """Raise one `ConfigError` line for the first complete line of the journal `path` that is not an operation."""
    if not Path(path).is_file():
        return  # a new journal (a directory is Optuna's to refuse)
    for n, line in _lines(path):
        if not line.endswith(b"\n"):
            return  # a torn last line: no reader applies it, and the next append sets it aside
        try:
            entry = json.loads(line)
            why = None if isinstance(entry, dict) and "op_code" in entry else "JSON, but not an operation"
        except json.JSONDecodeError as e:
            why = f"not JSON: {e.msg} at column {e.colno}"
        except ValueError:  # UnicodeDecodeError
            why = "binary bytes, not JSON text"
        if why:
            raise ConfigError(f"search.storage journal {str(path)!r}: line {n} cannot be read ({why}), so the study "
                              "cannot be replayed past it; the file is left as it is: restore it from a copy, or "
                              "start a new study in another file (search.storage=journal:NEW_PATH)")


def _lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        yield from enumerate(f, 1)


class _ReentrantLock:
    """Optuna's default journal lock (the same lock file, so plain Optuna writers still exclude ours), taken
    again by the thread that holds it without waiting: `append_logs` holds it across its own check and
    Optuna's write. It wraps the lock rather than subclassing it, as Optuna's `acquire` calls `self.release()`
    when interrupted."""

    def __init__(self, path: str) -> None:
        self._lock = JournalFileSymlinkLock(path)
        self._mutex, self._depth = threading.RLock(), 0

    def acquire(self) -> bool:
        """Take the file lock, or count one more hold if this thread has it."""
        self._mutex.acquire()
        if self._depth == 0:
            try:
                self._lock.acquire()
            except BaseException:
                self._mutex.release()
                raise
        self._depth += 1
        return True

    def release(self) -> None:
        """Count one hold less; the last one releases the file lock."""
        self._depth -= 1
        try:
            if self._depth == 0:
                self._lock.release()
        finally:
            self._mutex.release()


class _CheckedJournal(JournalFileBackend):
    """Optuna's journal file backend that sets a torn last line aside before it appends, and names the line
    when one cannot be read.

    A torn last line is an append that never completed: its writer was killed mid-write, under the lock, so no
    other writer was mid-line. Optuna's readers skip an unterminated last line, so no worker ever applied it;
    but the next append would glue a whole operation onto it, and that garbled line would stop every later
    reader. So the torn bytes are moved to `PATH.torn` (kept, not deleted) and the append goes on at a line
    start. A garbled complete line is another matter (a hand edit, a disk fault, a tear glued by a writer
    without this check): the operations after it may refer to it, so it is refused, not repaired."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._guard = _ReentrantLock(path)
        super().__init__(path, lock_obj=self._guard)  # type: ignore[arg-type]  # Optuna only calls acquire, release

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._guard.acquire()  # no other writer appends between the check and the write
        try:
            set_torn_tail_aside(self._path)
            super().append_logs(logs)
        except OSError as e:  # read-only, a full disk: one line, not a traceback from inside Optuna
            raise ConfigError(f"search.storage=journal:{self._path} cannot be written ({e.strerror or e}); give a "
                              "file you can write, on a disk with room") from None
        finally:
            self._guard.release()

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        try:
            yield from super().read_logs(log_number_from)
        except ValueError as e:  # a line garbled since this process checked the file
            check_journal(self._path)
            raise ConfigError(f"search.storage journal {self._path!r} cannot be read ({type(e).__name__}: {e}); "
                              "restore it from a copy, or start a new study in another file") from None


def set_torn_tail_aside(path: str | Path) -> int:
    """Move the bytes after the last newline of `path` (a torn append) to `PATH.torn`; returns how many.
    Call it holding the journal's lock."""
    path = Path(path)
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        f.seek(0)
        data = f.read()
    cut = data.rfind(b"\n") + 1
    torn = path.with_name(path.name + ".torn")
    with open(torn, "ab") as f:  # kept first, then cut: a kill in between leaves it in both, never in neither
        f.write(data[cut:] + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.truncate(path, cut)
    log.warning("%s: its last line was torn (a writer killed mid-append; no reader applied it): moved its %d bytes "
                "to %s; the journal goes on from line %d", path, len(data) - cut, torn, data.count(b"\n") + 1)
    return len(data) - cut


def load_studies(names: Iterable[str], results_dir: str | Path, spec: str | None) -> list[optuna.Study]:
    """The studies `names` from the storage `spec` (as `search.storage`; null: SQLite in `results_dir`)."""
    store = storage(spec, str(results_dir), heartbeat=60, grace=600)
    return [optuna.load_study(study_name=name, storage=store) for name in sorted(names)]
