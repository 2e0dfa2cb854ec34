"""The one mapping from the house's exceptions to an `error:` line and an exit code (core/errors.py)."""
from __future__ import annotations

import pytest

from projector_bench.core.errors import (
    INTERRUPTED,
    ConfigError,
    JobFailed,
    OutputError,
    exit_code,
    exit_codes,
    first_line,
)


def _raise(e: BaseException):
    def body() -> int:
        raise e
    return body


@pytest.mark.parametrize("error, code", [
    (ConfigError("unknown projector 'mpl'; choose one of: mlp, ldp"), 2),  # bad input
    (JobFailed("2 of 5 jobs failed; see the `error` column"), 1),  # work that ran and failed
    (OutputError("could not record the row: No space left on device"), 1),  # an I/O error is a failed job
])
def test_each_house_exception_is_its_one_line_and_exit_code(error, code, capsys):
    assert exit_code(_raise(error)) == code
    assert capsys.readouterr().err == f"error: {error}\n"
    with pytest.raises(SystemExit) as e:
        with exit_codes():
            raise error
    assert e.value.code == code and capsys.readouterr().err == f"error: {error}\n"


def test_an_interrupt_is_130_and_says_the_rows_are_kept(capsys):
    assert exit_code(_raise(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == INTERRUPTED + "\n"


def test_a_bug_keeps_its_traceback_and_a_success_its_code(capsys):
    with pytest.raises(ZeroDivisionError):  # not the house's: hiding it behind one line would hide the bug
        exit_code(_raise(ZeroDivisionError("division by zero")))
    with pytest.raises(KeyError):
        with exit_codes():
            raise KeyError("x")
    assert exit_code(lambda: 0) == 0 and capsys.readouterr().err == ""


def test_first_line_is_the_first_non_empty_line_typed_on_request():
    e = RuntimeError("\n  shape mismatch: 576 vs 144 \nTraceback-like detail")
    assert first_line(e) == "shape mismatch: 576 vs 144"
    assert first_line(e, typed=True) == "RuntimeError: shape mismatch: 576 vs 144"
    assert first_line(ValueError(), typed=True) == "ValueError: "
