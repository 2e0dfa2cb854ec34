"""`python -m projector_bench.bench`: which targets each flag runs (the targets themselves take minutes)."""
import pytest

from projector_bench import bench


def _refuse(*_a, **_k):
    raise AssertionError("a one-target mode ran another target")


@pytest.mark.parametrize("accuracy", [99.2, 90.0])
def test_digits_only_runs_the_digits_job_alone_and_exits_on_its_targets(monkeypatch, capsys, accuracy):
    for name in ("_speed_targets", "deploy_targets", "_sweep", "_calibration_targets"):
        monkeypatch.setattr(bench, name, _refuse)
    monkeypatch.setattr(bench, "_digits", lambda extra: [
        ("task=digits projector=mlp accuracy (%)", accuracy, 0.0, ">= 95", accuracy >= 95)])
    assert bench.main(["--digits-only"]) == (0 if accuracy >= 95 else 1)
    lines = [ln for ln in capsys.readouterr().out.splitlines()
             if ln.startswith("task=digits projector=mlp accuracy (%)")]
    assert len(lines) == 1 and lines[0].endswith("ok" if accuracy >= 95 else "MISSED")


@pytest.mark.parametrize("accuracy", [97.2, 43.1])
def test_folder_only_runs_the_folder_job_alone_and_exits_on_its_target(monkeypatch, capsys, accuracy):
    for name in ("_speed_targets", "deploy_targets", "_sweep", "_calibration_targets", "_digits"):
        monkeypatch.setattr(bench, name, _refuse)
    monkeypatch.setattr(bench, "_folder", lambda extra: [
        ("blob folder 3x60 at 96 px, mlp accuracy (%)", accuracy, 0.0, ">= 90", accuracy >= 90)])
    assert bench.main(["--folder-only"]) == (0 if accuracy >= 90 else 1)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("blob folder 3x60")]
    assert len(lines) == 1 and lines[0].endswith("ok" if accuracy >= 90 else "MISSED")


def _refuse_work(*_a, **_k):
    raise AssertionError("bench started a target before it had checked its arguments")


# (arguments, words the one error line must hold): each refused before any target runs, exit 2
BAD_ARGS = [
    (["--rounds", "0"], "argument --rounds: 0 is not valid: give an integer >= 3"),
    (["--rounds", "abc"], "argument --rounds: 'abc' is not valid: give an integer >= 3"),
    (["--deploy-only", "--rounds", "2"], "argument --rounds: 2 is not valid: give an integer >= 3"),
    (["--accuracy-only", "--seeds", "-1"], "argument --seeds: -1 is not valid: give an integer >= 1"),
    (["--seeds", "0"], "argument --seeds: 0 is not valid: give an integer >= 1"),
    (["--accuracy-only", "--digits-only"], "argument --digits-only: not allowed with argument --accuracy-only"),
    (["--accuracy-only", "--skip-sweep"], "argument --skip-sweep: not allowed with argument --accuracy-only"),
    (["--digits-only", "--seeds", "2"], "--seeds sets the sweep's accuracy.seeds, but --digits-only runs no sweep"),
    (["--deploy-only", "--device", "cpu"],
     "--device sets where the accuracy runs train, but --deploy-only trains nothing"),
    (["--digits-only", "--device", "gpu"], "--device 'gpu' is not a device; use auto, cpu, cuda, cuda:N or mps"),
    (["--bogus"], "unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize("args,words", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_arguments_are_one_line_and_exit_2_before_any_target(monkeypatch, capsys, args, words):
    for name in ("calibrations", "_speed_targets", "deploy_targets", "_sweep", "_digits", "_folder",
                 "_calibration_targets"):
        monkeypatch.setattr(bench, name, _refuse_work)
    code = bench.main(args)
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(errors) == 1 and words in errors[0], err
    assert "Traceback" not in out + err and out == ""  # no target ran, nothing was printed as measured


def test_a_failed_child_run_is_one_line_with_its_own_error_and_exit_1(monkeypatch, capsys):
    """The cold sweep's child `python -m projector_bench` refuses its input (here an override bench would never
    pass, added on the way): bench's one error line carries the child's own, not a CalledProcessError."""
    real = bench._run_child
    monkeypatch.setattr(bench, "calibrations", lambda: {})
    monkeypatch.setattr(bench, "_run_child", lambda args: real([*args, "accuracy.seeds=-1"]))
    monkeypatch.setattr(bench, "_digits", _refuse_work)  # after a failed sweep, nothing else runs
    code = bench.main(["--accuracy-only"])
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1, err
    assert len(errors) == 1 and "+sweep=ldp_vs_mlp" in errors[0] and "exited 2" in errors[0], err
    assert "accuracy.seeds=-1 is not valid" in errors[0], err
    assert "Traceback" not in out + err


def test_the_targets_measured_before_a_failed_child_are_still_printed(monkeypatch, capsys):
    def failed_sweep(*_a):
        raise bench.ChildFailed("`python -m projector_bench +sweep=ldp_vs_mlp` exited 1: 1 of 2 jobs failed")

    monkeypatch.setattr(bench, "calibrations", lambda: {})
    monkeypatch.setattr(bench, "_speed_targets",
                        lambda x, rounds: ([("ldp time / official", 1.0, 0.0, "<= 1.05", True)], {}))
    monkeypatch.setattr(bench, "deploy_targets", lambda x, rounds: ([], {}, {}, {}))
    monkeypatch.setattr(bench, "_sweep", failed_sweep)
    monkeypatch.setattr(bench, "_digits", _refuse_work)
    assert bench.main([]) == 1
    out, err = capsys.readouterr()
    assert any(line.startswith("ldp time / official") and line.endswith("ok") for line in out.splitlines())
    assert err.splitlines() == ["error: `python -m projector_bench +sweep=ldp_vs_mlp` exited 1: 1 of 2 jobs failed"]


def test_a_digits_run_that_trained_the_stand_in_is_timed_again_with_it_in_place(monkeypatch, tmp_path):
    """The first run on a machine pretrains the stand-in encoder (as weights are downloaded once): its wall is
    shown, and the target bounds the job's own wall, measured again with the stand-in cached."""
    import pandas as pd

    monkeypatch.setenv("PROJECTOR_BENCH_CACHE", str(tmp_path))
    walls = iter([900.0, 80.0, 70.0])

    def job(extra):
        (tmp_path / "standin").mkdir(exist_ok=True)
        (tmp_path / "standin" / "mobilevit_xxs-32px-k.pt").touch()
        return next(walls), pd.Series({"accuracy": 98.0, "load_ratio": 1.0, "acc_encoder_kept": "task-only"})

    monkeypatch.setattr(bench, "_digits_job", job)
    first, *rest = bench._digits([])
    assert first[:2] == ("task=digits first run, stand-in pretraining included (s)", 900.0)
    assert ("task=digits projector=mlp wall, cold results (s)", 80.0, 0.0, "<= 120", True) in rest
    assert rest[-1][:2] == ("  its encoder: task-only (0 frozen, 1 fine-tuned, 2 task-only)", 2.0)
    again = bench._digits([])  # the stand-in is cached now: one run, no first-run line
    assert [r[0] for r in again][0] == "task=digits projector=mlp accuracy (%)" and again[1][1] == 70.0


def test_device_reaches_every_run_that_trains(monkeypatch, capsys):
    seen = []
    for name in ("_speed_targets", "deploy_targets", "_sweep", "_calibration_targets", "_folder"):
        monkeypatch.setattr(bench, name, _refuse)
    monkeypatch.setattr(bench, "_digits", lambda extra: seen.append(extra) or [])
    assert bench.main(["--digits-only", "--device", "cpu"]) == 0 and seen == [["accuracy.device=cpu"]]
