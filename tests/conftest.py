"""Shared fixtures: a seeded torch, a temporary host cache for the whole session (no test reads or writes the
user's ~/.cache/projector_bench; host roofs fixed), the command line run in this process (`in_process`), and
the `extra` marker: a test of an optional extra skips, with the reason, when the extra is absent, unless the
extra is named in $PROJECTOR_BENCH_REQUIRE_EXTRAS (CI installs it and sets that), where its absence fails."""
import json
import logging
import os
import subprocess
import sys
import warnings
from dataclasses import asdict

import pytest
import torch

from projector_bench import cli
from projector_bench.core.settings import CACHE_ENV, DEFAULT_THREADS, SWEEP_ENV
from projector_bench.costs.roofline import Device, host_key

warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated.*")

REQUIRE_EXTRAS = "PROJECTOR_BENCH_REQUIRE_EXTRAS"  # comma-separated extras whose absence fails their tests
def _launchers() -> str | None:
    from importlib.util import find_spec

    missing = [m for m in ("hydra_plugins.hydra_joblib_launcher", "hydra_plugins.hydra_submitit_launcher")
               if not find_spec(m)]
    return f"{', '.join(missing)} not importable: pip install -e '.[launchers]'" if missing else None


EXTRAS = {"deploy": lambda: __import__(
              "projector_bench.costs.deploy", fromlist=["unavailable"]).unavailable(),  # why not, or None
          "launchers": _launchers}


def pytest_runtest_setup(item):
    for mark in item.iter_markers("extra"):
        name = mark.args[0]
        why = EXTRAS[name]()
        if why is None:
            continue
        if name in os.environ.get(REQUIRE_EXTRAS, "").split(","):
            pytest.fail(f"the {name} extra is required here (${REQUIRE_EXTRAS}) but missing: {why}", pytrace=False)
        pytest.skip(f"the {name} extra is not installed: {why}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# The host's roofs the tests' jobs price their estimates with: fixed, so that no job spends the seconds a
# calibration takes (the tests of jobs check rows, not the estimator; test_roofline measures the real roofs).
HOST = Device("host", "host", {"fp32": 60.0, "fp16": 60.0, "int8": 120.0}, 10.0, 1.0, 1.0, 5.0,
              {"conv": 30.0, "depthwise_conv": 5.0, "attention": 20.0, "elementwise": 2.0, "reduction": 2.0})


@pytest.fixture(scope="session", autouse=True)
def _host_cache(tmp_path_factory):
    """Every test, and every process a test starts, keeps the host cache in one temporary folder, seeded with
    `HOST` for every thread count: the user's cache is never read or written, and no job calibrates."""
    folder = tmp_path_factory.mktemp("host_cache")
    seeded = {host_key(t): asdict(HOST) for t in range(1, max(os.cpu_count() or 1, DEFAULT_THREADS) + 1)}
    (folder / "host_device.json").write_text(json.dumps(seeded))
    mp = pytest.MonkeyPatch()
    mp.setenv(CACHE_ENV, str(folder))
    yield
    mp.undo()


def in_process(monkeypatch, capsys, args: list[str]) -> subprocess.CompletedProcess:
    """`python -m projector_bench ARGS`, run by `cli.main()` in this process: its exit code and output. What a
    run leaves behind in the process (a multirun's sweep id, Hydra's log handlers and level, torch's thread
    count) is put back, so the next test starts as a fresh process would."""
    root, handlers, level, threads = logging.root, logging.root.handlers[:], logging.root.level, torch.get_num_threads()
    os.environ.pop(SWEEP_ENV, None)
    monkeypatch.setattr(sys, "argv", ["projector_bench", *args])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        os.environ.pop(SWEEP_ENV, None)
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        root.setLevel(level)
        leaked = torch.get_num_threads()
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    assert leaked == threads, f"the run left torch at {leaked} threads (was {threads})"
    return subprocess.CompletedProcess(["projector_bench", *args], code, out, err)
