"""`python -m projector_bench.bench`: which targets each flag runs (the targets themselves take minutes)."""
import pytest

from projector_bench import bench


def _refuse(*_a, **_k):
    raise AssertionError("--digits-only ran another target")


@pytest.mark.parametrize("accuracy", [99.2, 90.0])
def test_digits_only_runs_the_digits_job_alone_and_exits_on_its_targets(monkeypatch, capsys, accuracy):
    for name in ("_speed_targets", "deploy_targets", "_sweep", "_calibration_targets"):
        monkeypatch.setattr(bench, name, _refuse)
    monkeypatch.setattr(bench, "_digits", lambda: [("task=digits projector=mlp accuracy (%)", accuracy, 0.0, ">= 95",
                                                     accuracy >= 95)])
    assert bench.main(["--digits-only"]) == (0 if accuracy >= 95 else 1)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("task=digits projector=mlp accuracy (%)")]
    assert len(lines) == 1 and lines[0].endswith("ok" if accuracy >= 95 else "MISSED")
