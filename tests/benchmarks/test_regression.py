"""The timing gate against itself, on whatever machine runs it: an unchanged tree passes, and an extra matmul in
`mlp`'s forward (25% more MACs) is caught. The baseline is measured in the same test, unpatched, so this holds
without a committed baseline for the machine class."""
import pytest
import torch

from projector_bench.projectors.mlp import MLPProjector
from projector_bench.regress import cases, confirmed_regressions, time_ratios

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
    base = {n: p.median for n, p in time_ratios(selected, ROUNDS, 1).items()}
    assert confirmed_regressions(time_ratios(selected, ROUNDS, 1), base, selected, ROUNDS, 1, TOL).confirmed == {}
    request.getfixturevalue("slower_mlp")
    caught = confirmed_regressions(time_ratios(selected, ROUNDS, 1), base, selected, ROUNDS, 1, TOL).confirmed
    assert set(caught) == {"projector/mlp"} and caught["projector/mlp"] > 1.15
