"""The timing gate against itself, on whatever machine runs it: an unchanged tree passes, and an extra matmul in
`mlp`'s forward (25% more MACs) is caught. The baseline is measured in the same test, unpatched (the median of 3
passes, as `regress time --update` records one), so this holds without a committed baseline for the machine class."""
import statistics

import pytest
import torch

from projector_bench.models.projectors.mlp import MLPProjector
from projector_bench.regress import cases, confirmed_regressions, limits, time_ratios

ROUNDS, TOL = 9, 0.10


@pytest.fixture
def slower_mlp(monkeypatch):
    """`mlp` with one more matmul in its forward: 576x1024 @ 1024x1536, +25% of its 3.62 GMACs."""
    extra = torch.randn(1024, 1536)
    project = MLPProjector.project

    def slow(self, x, grid):
        return project(self, x, grid) + (x @ extra).mean() * 0

    monkeypatch.setattr(MLPProjector, "project", slow)


def test_an_unchanged_tree_passes_and_an_extra_matmul_in_mlp_is_caught(request):
    selected = cases(["projector/mlp", "projector/linear"])
    passes = [time_ratios(selected, ROUNDS, 1) for _ in range(3)]  # a baseline as `--update` records one
    base = {n: statistics.median(p[n].median for p in passes) for n in selected}
    assert confirmed_regressions(
        time_ratios(selected, ROUNDS, 1), base, ROUNDS, 1, limits(selected, TOL)).confirmed == {}
    request.getfixturevalue("slower_mlp")
    v = confirmed_regressions(time_ratios(selected, ROUNDS, 1), base, ROUNDS, 1, limits(selected, TOL))
    assert set(v.confirmed) == {"projector/mlp"} and v.confirmed["projector/mlp"] > 1.15, (
        v.suspects, {n: (p.median / base[n], sorted(r / base[n] for r in p.ratios)) for n, p in v.second.items()})
