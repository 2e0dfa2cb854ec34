"""Hostile input, in-process: every case exits non-zero with exactly one `error:` line that names the problem,
prints no traceback, and leaves the results table as it was (apart from rows appended whole)."""
import json

import pytest

from projector_bench import cli
from projector_bench.tasks.classify import write_image_folder

from .conftest import in_process

TINY = ["shape.tokens=16", "shape.in_dim=8", "shape.out_dim=12", "device.min_run_time=0.01", "device.warmup=1",
        "task=none", "quiet=true", "report=false", "deploy.runtime=null"]  # lowering: tests/test_deploy.py
SEARCH = ["+search=projector_space", "search.n_trials=1", "~search.objectives.accuracy"]  # costs only: task=none

# (arguments, exit code, words the one error line must hold)
CASES = [
    (["seed=abc"], 2, "seed='abc' is not valid: it must be a non-negative integer"),
    (["device.threads=0"], 2, "device.threads=0 is not valid"),
    (["device.threads=abc"], 2, "device.threads='abc' is not valid"),
    (["device.min_run_time=-1"], 2, "device.min_run_time=-1 is not valid"),
    (["budget.latency_ms=-1"], 2, "budget.latency_ms=-1 is not valid"),
    (["budget.latency_ms=abc"], 2, "budget.latency_ms='abc' is not valid"),
    (["budget.params=0"], 2, "budget.params=0 is not valid"),
    (["budget.latency=bogus"], 2, "budget.latency='bogus' is not one of: ttft, vision, projector"),
    (["encoder=mobilevit_xxs", "encoder.img_size=13"], 2, "encoder.img_size=13 gives a 0x0 token grid"),
    (["encoder=mobilevit_xxs", "encoder.img_size=-5"], 2, "encoder.img_size=-5 is not valid"),
    (["encoder=mobilevit_xxs", "encoder.stage=abc"], 2, "encoder.stage='abc' is not valid"),
    (["task=nope"], 2, "unknown task 'nope'; choose one of: digits, image_folder, none, shapes_vqa"),
    (["projector=nope"], 2, "unknown projector 'nope'; choose one of:"),
    (["encoder=nope"], 2, "unknown encoder 'nope'; choose one of:"),
    (["device=nope"], 2, "unknown device 'nope'; choose one of:"),
    (["shape.tokens=0"], 2, "shape.tokens=0 is not valid"),
    (["shape.batch=abc"], 2, "shape.batch='abc' is not valid"),
    (["projector.out_dim=0"], 2, "projector.out_dim=0 is not valid"),
    (["accuracy.seeds=0"], 2, "accuracy.seeds=0 is not valid"),
    (["accuracy.val_fraction=1.5"], 2, "accuracy.val_fraction=1.5 is not valid"),
    (["accuracy.training.lr=-1"], 2, "accuracy.training.lr=-1 is not valid"),
    (["accuracy.training.max_steps=0"], 2, "accuracy.training.max_steps=0 is not valid"),
    (["accuracy.training.drop_patience=0"], 2, "accuracy.training.drop_patience=0 is not valid"),
    (["shape.tokens=15", "projector=ldp"], 1, "ldp needs a square token grid but got 15 tokens"),
    (["-m", "projector=linear,pool", "budget.latency_ms=abc"], 2, "budget.latency_ms='abc' is not valid"),
    (["-m", "projector=ldp,mlp", "seed=x"], 2, "seed='x' is not valid"),
    (["-m", "projector=ldp", "shape.tokens=15"], 1, "1 of 1 jobs failed"),
    ([*SEARCH, "search.n_trials=0"], 2, "search.n_trials=0 is not valid"),
    ([*SEARCH, "search.n_trials=abc"], 2, "search.n_trials='abc' is not valid"),
    ([*SEARCH, "search.storage=journal:/nonexistent/dir/j.log"], 2, "the folder '/nonexistent/dir' does not exist"),
    ([*SEARCH[:2], "search.objectives.accuracy=up"], 2, "search.objectives.accuracy='up': use maximize or minimize"),
    (SEARCH[:2], 2, "search objective 'accuracy' needs a task, but task=none"),  # TINY sets task=none
    (["task=image_folder"], 1, "task image_folder needs its folder: set task.root="),
    (["task=image_folder", "task.root=/nonexistent/images"], 1, "image folder '/nonexistent/images' does not exist"),
    (["task=image_folder", "task.root={one_class}"], 1, "has a single class"),
    (["task=image_folder", "task.root={empty}"], 1, "holds no images in class sub-folders"),
    (["report", "{results}", "--bogus-flag"], 2, "unknown option '--bogus-flag'"),
    (["report", "{results}", "task=nope"], 2, "unknown task 'nope'"),
    (["report", "{results}", "budget.latency_ms=abc"], 2, "budget.latency_ms='abc' is not valid"),
    (["report", "{results}", "--sweep", "nope"], 2, "no sweep 'nope' in"),
    (["report", "{results}", "--sweep"], 2,
     "argument --sweep: expected one argument; see python -m projector_bench report --help"),
    (["report", "{empty}"], 2, "no results in"),
    (["report", "{dir_table}"], 2, "runs.jsonl is a directory, not a results table"),
    (["projector=linear", "results_dir={dir_table}"], 1, "runs.jsonl is a directory: the row was not recorded"),
    # caught before any job: what used to fail inside it (exit 1, the key unnamed), or after it, or not at all
    (["shape.grid=[3,5]"], 2, "shape.grid=[3, 5] is not valid: shape: grid 3x5 holds 15 tokens but the input has 16"),
    (["seed=123456789012345678901"], 2,
     "seed=123456789012345678901 is not valid: it must be a non-negative integer below 2**63"),
    (["+projector.bogus=3"], 2, "projector mlp: mlp() got an unexpected keyword argument 'bogus'"),
    (["projector=["], 2, "the override grammar"),
    (["results_dir={a_file}"], 2, "is a file, not a folder"),
    (["results_dir={read_only}"], 2, "is read-only, so no row could be recorded"),
    (["accuracy.training.min_steps=100", "accuracy.training.max_steps=10"], 2, "min_steps=100 is above"),
    (["resume=abc"], 2, "resume=abc goes on with a multirun: add -m"),
    (["budget.deployable=executorch"], 2, "but deploy.runtime=None lowers none there"),
    (["projector.out_dim=200000"], 2, "mostly for the projector mlp (40.00 G parameters"),
    (["encoder=mobilevit_xs", "encoder.img_size=16384"], 2,
     "mostly for the encoder mobilevit_xs at encoder.img_size=16384"),
    (["task=image_folder", "task.root={loop}"], 1, "twice"),
]


def run_cli(monkeypatch, capsys, tmp_path, args):
    """`python -m projector_bench ARGS` in this process: (exit code, stdout, stderr)."""
    report = args[:1] == ["report"]
    extra = [] if report else [*TINY, f"results_dir={tmp_path}/results", f"reports_dir={tmp_path}/reports",
                               f"hydra.run.dir={tmp_path}/hydra/run", f"hydra.sweep.dir={tmp_path}/hydra/multirun"]
    keys = {a.split("=")[0] for a in args}
    r = in_process(monkeypatch, capsys, [*args, *(e for e in extra if e.split("=")[0] not in keys)])
    return r.returncode, r.stdout, r.stderr


@pytest.fixture
def table(tmp_path):
    """A results table with one good row, one torn line and one binary line: none of it may be lost."""
    results = tmp_path / "results"
    results.mkdir()
    path = results / "runs.jsonl"
    path.write_bytes(b'{"run_id": "a", "sweep_id": "s", "projector": "mlp", "status": "ok"}\n{"torn\n\xff\xfe\n')
    return path


@pytest.mark.parametrize("args,code,words", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_hostile_input_is_one_line_a_non_zero_exit_and_nothing_lost(args, code, words, table, tmp_path, monkeypatch,
                                                                     capsys):
    write_image_folder(tmp_path / "one", classes=1, per_class=2, size=8)
    (tmp_path / "empty").mkdir()
    (tmp_path / "dir_table" / "runs.jsonl").mkdir(parents=True)
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "read_only").mkdir(mode=0o555)
    loop = write_image_folder(tmp_path / "loop", classes=2, per_class=4, size=8)
    (loop / "class_0" / "up").symlink_to("..")  # every image again, mislabelled, round the loop
    fill = {"{one_class}": str(tmp_path / "one"), "{empty}": str(tmp_path / "empty"), "{results}": str(table.parent),
            "{dir_table}": str(tmp_path / "dir_table"), "{a_file}": str(tmp_path / "a_file"),
            "{read_only}": str(tmp_path / "read_only"), "{loop}": str(loop)}
    for k, v in fill.items():
        args = [a.replace(k, v) for a in args]
    before = table.read_bytes()
    got, out, err = run_cli(monkeypatch, capsys, tmp_path, args)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert got == code, err
    assert len(errors) == 1 and words in errors[0], err
    assert "Traceback" not in err + out
    after = table.read_bytes()
    assert after.startswith(before)  # appended rows only, each a whole JSON line
    for line in after[len(before):].splitlines():
        assert line.startswith(b'{"run_id": ')


def test_a_killed_multirun_resumes_and_skips_the_jobs_it_recorded(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, ["-m", "projector=linear,pool"])
    assert code == 0, err
    path = tmp_path / "results" / "runs.jsonl"
    first, second = path.read_text().splitlines()
    path.write_text(first + "\n")  # as if killed during the second job
    sweep = json.loads(first)["sweep_id"]
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, ["-m", "projector=linear,pool", f"resume={sweep}"])
    assert code == 0, err
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["projector"] for r in rows] == ["linear", "pool"] and {r["sweep_id"] for r in rows} == {sweep}
    assert rows[0]["run_id"] == json.loads(first)["run_id"]  # linear was not measured again
    stale = dict(rows[0], acc_code_version="other code")  # an accuracy from other code is measured again
    path.write_text(json.dumps(stale) + "\n" + json.dumps(rows[1]) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, ["-m", "projector=linear", f"resume={sweep}"])
    again = [json.loads(line) for line in path.read_text().splitlines()]
    assert code == 0 and len(again) == 3 and again[2]["projector"] == "linear" and again[2]["run_id"] != stale["run_id"]
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, ["-m", "projector=linear", "resume=nope"])
    assert code == 2 and "resume=nope: no sweep 'nope'" in err


def test_resume_matches_jobs_on_their_config_and_refuses_another_commands_sweep(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, ["-m", "projector=linear,pool"])
    assert code == 0, err
    path = tmp_path / "results" / "runs.jsonl"
    linear, pool = (json.loads(line) for line in path.read_text().splitlines())
    linear["config"]["projector"]["out_dim"] = 999  # as if conf/ changed since: the row is stale, not this job's
    path.write_text(json.dumps(linear) + "\n" + json.dumps(pool) + "\n")
    before = path.read_bytes()
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, ["-m", "projector=linear,pool", f"resume={pool['sweep_id']}"])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert code == 0 and path.read_bytes().startswith(before) and (
        [r["projector"] for r in rows] == ["linear", "pool", "linear"])
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, ["-m", "projector=mlp", f"resume={pool['sweep_id']}"])
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "none of sweep" in errors[0] and "Traceback" not in out + err
    assert len(path.read_text().splitlines()) == 3


@pytest.mark.slow
def test_two_resumes_of_one_sweep_at_once_measure_each_job_once(tmp_path):
    import subprocess
    import sys

    from .test_hostile import TINY

    args = [sys.executable, "-m", "projector_bench", "-m", "projector=linear,pool,mlp", *TINY,
            f"results_dir={tmp_path}"]
    assert subprocess.run(args, capture_output=True).returncode == 0
    path = tmp_path / "runs.jsonl"
    first = path.read_text().splitlines()[0]
    path.write_text(first + "\n")  # killed after its first job
    sweep = json.loads(first)["sweep_id"]
    both = [subprocess.Popen([*args, f"resume={sweep}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)]
    assert [p.wait(timeout=600) for p in both] == [0, 0], [p.stderr.read().decode()[-500:] for p in both]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["projector"] for r in rows) == ["linear", "mlp", "pool"] and (
        {r["sweep_id"] for r in rows} == {sweep})


def test_a_damaged_table_does_not_break_report(table, tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, ["projector=linear"])
    assert code == 0, err
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, ["report", str(table.parent), "--sweep", "all",
                                                             f"reports_dir={tmp_path}/reports"])
    assert code == 0 and out.splitlines()[-1].startswith("report: ")
    assert "skipped 2 damaged line(s)" in err and "line 2, 3" in err


def test_ctrl_c_is_one_line_and_exit_130_with_no_torn_row(table, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    before = table.read_bytes()
    monkeypatch.setattr(cli, "run", interrupted)
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, ["projector=linear"])
    assert code == 130 and err.strip().startswith("interrupted: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and table.read_bytes() == before


# Searches: objectives, storage URLs and journals (docs/search.md). The password below must never be printed.
PG_REFUSED = "postgresql+psycopg2://bench:hunter2-secret@127.0.0.1:1/db"  # nothing listens on port 1
SEARCH_CASES = [
    ([*SEARCH, "+search.objectives.bogus_col=minimize"], 2,
     "search.objectives.bogus_col: 'bogus_col' is not a numeric column of the results row; choose from: acc_"),
    ([*SEARCH, "+search.objectives.projector=minimize"], 2, "'projector' is not a numeric column of the results row"),
    ([*SEARCH, f"search.storage={PG_REFUSED}"], 2, "cannot connect to the database server at 127.0.0.1:1"),
    ([*SEARCH, "search.storage=nosuchdb://u:hunter2-secret@host/db"], 2, "is not a usable SQLAlchemy URL"),
    ([*SEARCH, "search.storage=sqlite:////nonexistent/dir/optuna.db"], 2,
     "the SQLite file '/nonexistent/dir/optuna.db' cannot be opened"),
    ([*SEARCH, "search.storage=journal:{empty}"], 2, "is a directory; give a file in it"),
]


@pytest.mark.parametrize("args,code,words", SEARCH_CASES, ids=[" ".join(c[0]) for c in SEARCH_CASES])
def test_hostile_search_input_is_one_line_a_non_zero_exit_and_nothing_lost(args, code, words, table, tmp_path,
                                                                            monkeypatch, capsys):
    test_hostile_input_is_one_line_a_non_zero_exit_and_nothing_lost(args, code, words, table, tmp_path, monkeypatch,
                                                                     capsys)  # the same four checks


def _one_error(code, out, err, want_code, words):
    """The contract's first three checks: the exit code, exactly one `error:` line holding `words`, no traceback."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == want_code, err
    assert len(errors) == 1 and words in errors[0], err
    assert "Traceback" not in err + out


def _kept(table, before):
    """The contract's fourth check: the table holds what it held, plus whole appended rows."""
    after = table.read_bytes()
    assert after.startswith(before)
    assert all(line.startswith(b'{"run_id": ') for line in after[len(before):].splitlines())


@pytest.mark.parametrize("url,shown", [
    (PG_REFUSED, "postgresql+psycopg2://bench:***@127.0.0.1:1/db"),  # the driver's error
    ("nosuchdb://bench:hunter2-secret@host/db", "nosuchdb://bench:***@host/db"),  # SQLAlchemy's error
    ("postgresql://bench:hunter2-secret@host:port/db", "postgresql://bench:***@host:port/db"),  # a URL it cannot parse
], ids=["refused", "unknown dialect", "bad port"])
def test_a_storage_password_is_never_printed(url, shown, table, tmp_path, monkeypatch, capsys):
    before = table.read_bytes()
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, [*SEARCH, f"search.storage={url}"])
    _one_error(code, out, err, 2, f"search.storage '{shown}'")
    assert "hunter2" not in out + err
    _kept(table, before)


def test_a_missing_database_driver_names_the_extra_to_install(table, tmp_path, monkeypatch, capsys):
    import sys

    for driver in ("psycopg", "psycopg2"):  # postgresql:// takes psycopg under SQLAlchemy >= 2.1, psycopg2 before
        monkeypatch.setitem(sys.modules, driver, None)  # as if it were not installed: its import fails
    before = table.read_bytes()
    code, out, err = run_cli(monkeypatch, capsys, tmp_path,
                             [*SEARCH, "search.storage=postgresql://bench:hunter2-secret@127.0.0.1:1/db"])
    _one_error(code, out, err, 2, "which is not installed: install the search extra in the projector_bench clone: "
                                  "pip install -e '.[search]'")
    assert "needs the database driver 'psycopg" in err
    assert "hunter2" not in out + err
    _kept(table, before)


def test_a_failed_trial_is_one_line_and_a_skipped_duplicate_prints_nothing(table, tmp_path, monkeypatch, capsys):
    # one design, and it fails: trial 0 fails, the next 3 draws repeat it (skipped), the 4th is measured and fails
    before = table.read_bytes()
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, [*SEARCH, "search.n_trials=2", "shape.tokens=15",
                                                             "search.space.projector.choices=[ldp]"])
    _one_error(code, out, err, 1, "2 of 2 trials of study projector_space failed")
    failed = [line for line in (out + err).splitlines() if "failed: ldp needs a square token grid" in line]
    assert [line.split(" - ")[-1].split(" failed")[0] for line in failed] == ["trial 0", "trial 4"], out + err
    assert "TrialSkipped" not in out + err and "skipped, not counted" not in out + err  # the 3 skips: silent
    assert "TrialFailed" not in out + err and "Trial " not in out + err  # none of Optuna's own lines
    _kept(table, before)


def _journal(tmp_path, objectives=("minimize",)):
    """A journal holding study projector_space (est_ttft_ms down, as SEARCH's) with one finished trial."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = tmp_path / "study.journal"
    study = optuna.create_study(study_name="projector_space", directions=list(objectives),
                                storage=JournalStorage(JournalFileBackend(str(path))))
    study.add_trial(optuna.trial.create_trial(values=[1.0], user_attrs={"overrides": ["projector=linear"]}))
    return path


def test_a_journal_with_a_torn_last_line_is_mended_and_nothing_recorded_is_lost(table, tmp_path, monkeypatch, capsys):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = _journal(tmp_path)
    whole = path.read_bytes()
    torn = b'{"op_code":4,"worker_id":"killed","study_id":0,"datetime_st'  # a writer killed mid-append
    path.write_bytes(whole + torn)
    before = table.read_bytes()
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, [*SEARCH, f"search.storage=journal:{path}"])
    assert code == 0 and "error:" not in err and "Traceback" not in out + err, err
    assert "its last line was torn" in out + err
    _kept(table, before)
    assert path.read_bytes().startswith(whole)  # every whole line kept, in place
    assert (tmp_path / "study.journal.torn").read_bytes() == torn + b"\n"  # the torn bytes set aside, not deleted
    study = optuna.load_study(study_name="projector_space", storage=JournalStorage(JournalFileBackend(str(path))))
    study.add_trial(optuna.trial.create_trial(values=[2.0]))  # plain Optuna reads and writes it again
    again = optuna.load_study(study_name="projector_space", storage=JournalStorage(JournalFileBackend(str(path))))
    assert [t.values for t in again.trials] == [[1.0], [2.0]]


GARBLED = [b'{"op_code":4,"worker_id":"x","stu{"op_code":6}\n', b"\xff\xfe\x00\n", b"[1, 2]\n"]


@pytest.mark.parametrize("garbage", GARBLED, ids=["glued", "binary", "not an operation"])
def test_a_journal_with_a_garbled_line_is_refused_naming_the_line_and_left_as_it_is(garbage, table, tmp_path,
                                                                                   monkeypatch, capsys):
    path = _journal(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([*lines[:2], garbage, *lines[2:]]))  # line 3 of the file
    damaged, before = path.read_bytes(), table.read_bytes()
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, [*SEARCH, f"search.storage=journal:{path}"])
    _one_error(code, out, err, 2, f"search.storage journal '{path}': line 3 cannot be read")
    assert "journal:NEW_PATH" in err
    _kept(table, before)
    assert path.read_bytes() == damaged and not (tmp_path / "study.journal.torn").exists()


# ---- report and the host cache: hostile tables and folders ----

def assert_refused(got, out, err, code, words, table, before):
    """The four checks of the pattern above: the exit code, exactly one `error:` line holding `words`, no
    traceback, and the table as it was (but for whole appended rows)."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert got == code, err
    assert len(errors) == 1 and words in errors[0], err
    assert "Traceback" not in err + out
    after = table.read_bytes()
    assert after.startswith(before)
    for line in after[len(before):].splitlines():
        assert line.startswith(b'{"run_id": ')


@pytest.mark.parametrize("args", [["report", "{results}"], ["projector=linear"], ["-m", "projector=linear"]])
@pytest.mark.parametrize("cache", ["file", "under_a_file"])
def test_a_host_cache_that_is_not_a_folder_is_refused_before_any_measurement(args, cache, table, tmp_path, monkeypatch,
                                                                             capsys):
    from projector_bench.core.settings import CACHE_ENV
    from projector_bench.costs import roofline

    def calibrated(threads):
        raise AssertionError("the host was calibrated before the host cache was checked")

    monkeypatch.setattr(roofline, "_calibrated", calibrated)
    (tmp_path / "file").write_text("not a folder")
    path = tmp_path / "file" if cache == "file" else tmp_path / "file" / "cache"
    monkeypatch.setenv(CACHE_ENV, str(path))
    before = table.read_bytes()
    args = [a.replace("{results}", str(table.parent)) for a in args]
    got, out, err = run_cli(monkeypatch, capsys, tmp_path, [*args, f"reports_dir={tmp_path}/reports"])
    words = f"{CACHE_ENV}={path} " + ("is a file, not a folder" if cache == "file" else "cannot be created")
    assert_refused(got, out, err, 2, words, table, before)
    assert not (tmp_path / "reports").exists()


LM = {"name": "tiny_lm", "hidden": 64, "layers": 2, "heads": 4, "intermediate": 128, "vocab": 100}


def good_row(projector, sweep="s", **extra):
    """A row the report can price and plot, as a job writes it (the fields the report reads)."""
    return {"run_id": f"r-{projector}", "sweep_id": sweep, "projector": projector, "encoder": "none", "status": "ok",
            "tokens_in": 16, "tokens_out": 16, "params": 108, "macs": 1536, "latency_ms": 0.05, "peak_mem_mb": 0.1,
            "ops": [["matmul", "fp32", 3072, 1712, 1]], "accuracy": 70.0, "accuracy_ci_low": 65.0,
            "accuracy_ci_high": 75.0, "config": {"lm": dict(LM)}, **extra}


def write_rows(path, rows):
    """`rows` (dicts, or raw JSON text for a hand-edited line) as the lines of the table at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def report(monkeypatch, capsys, tmp_path, results, *args):
    """`report RESULTS ARGS` in this process, into tmp_path/reports: exit code, stdout, stderr, reports written."""
    got, out, err = run_cli(monkeypatch, capsys, tmp_path, ["report", str(results), *args,
                                                            f"reports_dir={tmp_path}/reports"])
    return got, out, err, sorted((tmp_path / "reports").glob("*")) if (tmp_path / "reports").exists() else []


def warnings_of(caplog):
    """The package's warnings (the lines a user sees on stderr: pytest takes them from logging's last resort)."""
    import logging

    return [r.getMessage() for r in caplog.records
            if r.name.startswith("projector_bench") and r.levelno >= logging.WARNING]


def no_lm(row):
    row["config"] = {"lm": "mobilellama"}


BAD_ROWS = {  # a row the report cannot use, and the reason its warning gives
    "string accuracy": (lambda r: r.update(accuracy="high"), "accuracy is 'high', not a number"),
    "no projector": (lambda r: r.pop("projector"), "no projector"),
    "no status": (lambda r: r.pop("status"), "no status"),
    "config.lm not a mapping": (no_lm, "config.lm is 'mobilellama', not a mapping"),
    "config.lm without a key": (lambda r: r["config"]["lm"].pop("hidden"), "config.lm has no hidden"),
    "config.lm with a bad value": (lambda r: r["config"]["lm"].update(hidden="big"),
                                   "config.lm cannot be priced: lm.hidden must be a positive integer"),
    "config a string": (lambda r: r.update(config="x"), "config is 'x', not a mapping"),
    "ops not ops": (lambda r: r.update(ops=[["matmul", 3]]), "ops holds ['matmul', 3], not an op"),
    "tokens_out a string": (lambda r: r.update(tokens_out="16"), "tokens_out is '16', not a number"),
    "sweep_id a list": (lambda r: r.update(sweep_id=["s"]), "sweep_id is ['s'], not a string"),
    "trial a string": (lambda r: r.update(trial="one"), "trial is 'one', not a number"),
    "val_curves of numbers": (lambda r: r.update(val_curves=[1, 2]), "val_curves is [1, 2], not a list"),
    "accuracy_by_type of strings": (lambda r: r.update(accuracy_by_type={"count": "x"}), "accuracy_by_type is"),
    "outside ops not names": (lambda r: r.update(xnnpack_outside=[1]), "xnnpack_outside is [1], not a list of op"),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_a_row_the_report_cannot_use_is_skipped_with_one_warning_naming_it(case, tmp_path, monkeypatch, capsys, caplog):
    spoil, why = BAD_ROWS[case]
    bad = good_row("spoilt")
    spoil(bad)
    table = write_rows(tmp_path / "results" / "runs.jsonl", [good_row("mlp"), bad, good_row("ldp")])
    before = table.read_bytes()
    got, out, err, written = report(monkeypatch, capsys, tmp_path, table.parent, "--sweep", "all")
    assert got == 0 and out.splitlines()[-1].startswith("report: ") and len(written) == 1, err
    warned = warnings_of(caplog)
    assert len(warned) == 1 and f"skipped 1 row(s) the report cannot use: line 2 ({why}" in warned[0], warned
    assert "error:" not in err and "Traceback" not in err + out and table.read_bytes() == before
    html = written[0].read_text()
    assert "<td>mlp</td>" in html and "<td>ldp</td>" in html and "spoilt" not in html


def test_when_no_row_can_be_used_report_is_one_line_naming_them(tmp_path, monkeypatch, capsys):
    rows = [good_row("mlp"), good_row("ldp")]
    for r in rows:
        r.pop("projector")
    table = write_rows(tmp_path / "results" / "runs.jsonl", rows)
    before = table.read_bytes()
    got, out, err, written = report(monkeypatch, capsys, tmp_path, table.parent)
    assert_refused(got, out, err, 2, "none of the 2 selected row(s) of", table, before)
    assert "line 1 (no projector), line 2 (no projector)" in err and not written


def test_a_search_row_whose_study_is_not_stored_is_reported_without_study_plots_and_creates_no_storage(
        tmp_path, monkeypatch, capsys, caplog):
    import optuna

    results = tmp_path / "results"
    table = write_rows(results / "runs.jsonl", [good_row("mlp", "gone", trial=0), good_row("ldp", "gone", trial=1)])
    before = table.read_bytes()
    got, out, err, written = report(monkeypatch, capsys, tmp_path, results)
    assert got == 0 and len(written) == 1 and "Traceback" not in err + out and "error:" not in err, err
    assert sorted(p.name for p in results.iterdir()) == ["runs.jsonl"] and table.read_bytes() == before
    note = f"No study plots for gone: its storage {results / 'optuna.db'} does not exist"
    assert len(warnings_of(caplog)) == 1 and warnings_of(caplog)[0].startswith(note)
    assert note in written[0].read_text()
    # a storage that holds other studies: read, not written, and the missing one is named
    db = results / "optuna.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="kept", storage=f"sqlite:///{db}", directions=["minimize"])
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    stored = db.read_bytes()
    caplog.clear()
    got, out, err, written = report(monkeypatch, capsys, tmp_path, results)
    assert got == 0 and "Traceback" not in err + out and db.read_bytes() == stored, err
    assert warnings_of(caplog) == [f"No study plots for gone: not in {db}."]
    assert f"No study plots for gone: not in {db}." in written[-1].read_text()
    # and a study that is there is plotted, still without a write to its storage
    write_rows(table, [good_row("mlp", "kept", trial=0), good_row("ldp", "kept", trial=1)])
    caplog.clear()
    got, out, err, written = report(monkeypatch, capsys, tmp_path, results)
    assert got == 0 and warnings_of(caplog) == [] and db.read_bytes() == stored, err
    assert 'id="plot-history-0"' in written[-1].read_text()


def test_a_full_disk_is_one_line_exit_1_and_leaves_no_partial_report(tmp_path, monkeypatch, capsys):
    """A real write failure, no root needed: a file size limit (RLIMIT_FSIZE) below the report's size makes the
    kernel refuse the write with EFBIG, as a full disk refuses it with ENOSPC."""
    import resource
    import signal

    table = write_rows(tmp_path / "results" / "runs.jsonl", [good_row("mlp"), good_row("ldp")])
    before = table.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel ends the process at the limit
    resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, hard))  # the report is larger: its plots are embedded
    try:
        got, out, err, written = report(monkeypatch, capsys, tmp_path, table.parent)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert_refused(got, out, err, 1, f"the report could not be written in {tmp_path}/reports (File too large)",
                   table, before)
    assert written == []  # neither a truncated report nor its temporary file
    got, out, err, written = report(monkeypatch, capsys, tmp_path, table.parent)
    assert got == 0 and len(written) == 1 and written[0].read_text().rstrip().endswith("</html>")


def test_infinity_and_nan_count_as_missing_never_shown_or_recommended(tmp_path, monkeypatch, capsys):
    import re

    rows = [json.dumps(good_row("mlp", accuracy=float("inf"), accuracy_ci_high=float("inf"))),  # Python writes Infinity
            json.dumps(good_row("ldp", accuracy=60.0, latency_ms=float("nan"))),
            json.dumps(good_row("pool", accuracy=50.0)).replace('"macs": 1536', '"macs": 1e999')]
    table = write_rows(tmp_path / "results" / "runs.jsonl", rows)
    got, out, err, written = report(monkeypatch, capsys, tmp_path, table.parent)
    assert got == 0 and len(written) == 1 and "Traceback" not in err + out, err
    html = written[0].read_text()
    cells = re.findall(r"<td>([^<]*)</td>", html)
    assert not [c for c in cells if "inf" in c.lower() or "nan" in c.lower()], cells
    assert "ldp: " in html and "60.0%, the most accurate" in html and "1 without an accuracy is left out" in html


def test_report_reads_exactly_the_jsonl_it_is_given(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    write_rows(results / "runs.jsonl", [good_row("mlp")])
    other = write_rows(results / "other.jsonl", [good_row("pool")])
    got, out, err, written = report(monkeypatch, capsys, tmp_path, other)
    assert got == 0 and len(written) == 1, err
    html = written[0].read_text()
    assert "<td>pool</td>" in html and "<td>mlp</td>" not in html and str(other) in html


REPORT_CASES = [  # (table rows, report arguments, exit code, words the one error line must hold)
    ([good_row("mlp")], ["{results}/other.jsonl"], 2, "no results table {results}/other.jsonl: the file does not"),
    ([good_row("mlp")], ["{results}/nowhere"], 2, "no results in {results}/nowhere: run a sweep first"),
    ([good_row("mlp", sweep=f"sweep{i:03d}") for i in range(400)], ["{results}", "--sweep", "nope"], 2,
     "choose one of: last, all, sweep395, sweep396, sweep397, sweep398, sweep399 (the last 5 of its 400 sweeps)"),
    ([good_row("mlp")], ["{results}", "reports_dir={file}"], 2, "reports_dir={file} is a file, not a folder"),
    ([good_row("mlp")], ["{results}", "reports_dir={file}/reports"], 2, "reports_dir={file}/reports cannot be created"),
]


@pytest.mark.parametrize("rows,args,code,words", REPORT_CASES, ids=[" ".join(c[1]) for c in REPORT_CASES])
def test_hostile_report_input_is_one_line_a_non_zero_exit_and_nothing_lost(rows, args, code, words, tmp_path,
                                                                           monkeypatch, capsys):
    table = write_rows(tmp_path / "results" / "runs.jsonl", rows)
    (tmp_path / "file").write_text("not a folder")
    fill = {"{results}": str(table.parent), "{file}": str(tmp_path / "file")}
    for k, v in fill.items():
        args, words = [a.replace(k, v) for a in args], words.replace(k, v)
    before = table.read_bytes()
    got, out, err = run_cli(monkeypatch, capsys, tmp_path, ["report", *args])
    assert_refused(got, out, err, code, words, table, before)
    assert len(err) < 1000  # the choices are capped, not every sweep id of the table
