"""`python -m projector_bench.costs.deploy`'s command line: `install` runs, `--help` is usage and exit 0, anything else
is one `error:` line and exit 2 with nothing installed; a failed install is one `error:` line and exit 1."""
import subprocess
import sys

import pytest

from projector_bench.costs import deploy


def _one_error(err: str, words: str) -> bool:
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    return len(errors) == 1 and words in errors[0]


def test_help_is_usage_and_exit_0():
    """The module itself, as a user runs it: its `__main__` decides the exit code."""
    r = subprocess.run([sys.executable, "-m", "projector_bench.costs.deploy", "--help"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: python -m projector_bench.costs.deploy") and "install" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


@pytest.fixture
def pip(monkeypatch):
    """The pip commands `install` would run, recorded instead of run; each returns the exit code in `pip.rc`.
    The package's metadata lists a `deploy` extra, however the package was installed."""
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "requires", lambda name: ['torch; extra == "test"',
                                                                      'ruamel.yaml; extra == "deploy"'])
    calls: list[list[str]] = []

    def call(cmd, *a, **k):
        calls.append(cmd)
        return call.rc

    call.rc, call.calls = 0, calls
    monkeypatch.setattr(deploy.subprocess, "call", call)
    return call


@pytest.mark.parametrize("args,words", [
    ([], "the following arguments are required: command"),
    (["instal"], "argument command: invalid choice: 'instal' (choose from 'install')"),
    (["install", "--yes"], "unrecognized arguments: --yes"),
    (["install", "now"], "unrecognized arguments: now"),
])
def test_bad_arguments_are_one_line_exit_2_and_install_nothing(args, words, pip, capsys):
    code = deploy.main(args)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert _one_error(err, words), err
    assert "Traceback" not in out + err
    assert pip.calls == []  # nothing installed


def test_a_failed_pip_is_one_line_and_exit_1(pip, capsys):
    pip.rc = 1
    code = deploy.main(["install"])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert _one_error(err, "pip failed (exit 1) installing executorch==1.5.1 torchao==0.18.0"), err
    assert "Traceback" not in out + err and len(pip.calls) == 1  # the second step does not run on a failed first


def test_an_install_that_still_does_not_import_is_one_line_and_exit_1(pip, monkeypatch, capsys):
    why = "executorch is not installed (ImportError: nope); python -m projector_bench.costs.deploy install"
    def still_missing():
        return why

    still_missing.cache_clear = lambda: None  # `install` clears `unavailable`'s cache before asking again
    monkeypatch.setattr(deploy, "unavailable", still_missing)
    code = deploy.main(["install"])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert _one_error(err, "installed, but ExecuTorch with XNNPACK still does not load: executorch is not installed")
    assert "Traceback" not in out + err and len(pip.calls) == 2


def test_an_uninstalled_package_is_one_line_and_exit_1_before_pip(pip, monkeypatch, capsys):
    import importlib.metadata

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "requires", not_installed)
    code = deploy.main(["install"])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert _one_error(err, "the installed projector_bench lists no `deploy` extra: install the package first"), err
    assert "Traceback" not in out + err and pip.calls == []
