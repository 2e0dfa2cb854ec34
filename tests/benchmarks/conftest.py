"""The benchmark suite runs only when asked: `pytest tests/benchmarks --benchmark-enable` (the ordinary `pytest`
has `--benchmark-disable` in its options and skips this folder)."""
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_enable") or config.getoption("benchmark_only"):
        return
    skip = pytest.mark.skip(reason="benchmarks: pytest tests/benchmarks --benchmark-enable")
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(skip)
