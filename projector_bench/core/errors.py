"""The exception types an entry point turns into one `error:` line and an exit code, and the one place that does.

Input errors (`ConfigError`) exit 2, work that ran and failed (`JobFailed`, and `OutputError` when a result could
not be written) exit 1, an interrupt exits 130 with the rows recorded so far kept."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn


class ConfigError(ValueError):
    """Bad input: the message is one line naming the problem and the fix."""


class JobFailed(RuntimeError):
    """Work that was started and failed: the message is one line saying what failed and where to look."""


class OutputError(JobFailed):
    """A result (a row, a table, a report) could not be written: one line naming the place and the fix."""


EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = ((ConfigError, 2), (JobFailed, 1))
INTERRUPTED = "interrupted: the rows recorded so far are kept; run the same command again to go on"


def first_line(e: BaseException, typed: bool = False) -> str:
    """The first non-empty line of `e`'s message (`Type: line` when `typed`): one line for a row or a message."""
    text = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {text}" if typed else text


def handled(e: BaseException) -> int | None:
    """Print the line for `e` (`error: ...`, or the interrupt's) and return its exit code; None, printing
    nothing, for an exception that is not the house's to report (a bug: its traceback is what helps)."""
    if isinstance(e, KeyboardInterrupt):  # rows are written whole (atomic rename): none is left half-written
        print(INTERRUPTED, file=sys.stderr)
        return 130
    code = next((c for t, c in EXIT_CODES if isinstance(e, t)), None)
    if code is not None:
        print(f"error: {e}", file=sys.stderr)
    return code


@contextmanager
def exit_codes() -> Iterator[None]:
    """Around an entry point (and the Hydra task and callbacks, whose exceptions Hydra would report as tracebacks
    or warnings): the house's exceptions become their line and `SystemExit` with their code."""
    try:
        yield
    except (Exception, KeyboardInterrupt) as e:
        if (code := handled(e)) is None:
            raise
        raise SystemExit(code) from None


def exit_code(fn: Callable[..., int], *args: Any) -> int:
    """`fn(*args)`, a command's body that returns its exit code; the house's exceptions become their line and
    code, returned (a `main(argv) -> int` that `raise SystemExit(main())` ends)."""
    try:
        return fn(*args)
    except (Exception, KeyboardInterrupt) as e:
        if (code := handled(e)) is None:
            raise
        return code


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are the house's one `error:` line and exit 2 (`ConfigError`), not a usage block."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message}; see {self.prog} --help")
