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
    (["report", "{empty}"], 2, "no results in"),
    (["report", "{dir_table}"], 2, "runs.jsonl is a directory, not a results table"),
    (["projector=linear", "results_dir={dir_table}"], 1, "runs.jsonl is a directory: the row was not recorded"),
    # caught before any job: what used to fail inside it (exit 1, the key unnamed), or after it, or not at all
    (["shape.grid=[3,5]"], 2, "shape.grid=[3, 5] is not valid: shape: grid 3x5 holds 15 tokens but the input has 16"),
    (["seed=123456789012345678901"], 2, "seed=123456789012345678901 is not valid: it must be a non-negative integer below 2**63"),
    (["+projector.bogus=3"], 2, "projector mlp: mlp() got an unexpected keyword argument 'bogus'"),
    (["projector=["], 2, "the override grammar"),
    (["results_dir={a_file}"], 2, "is a file, not a folder"),
    (["results_dir={read_only}"], 2, "is read-only, so no row could be recorded"),
    (["accuracy.training.min_steps=100", "accuracy.training.max_steps=10"], 2, "min_steps=100 is above"),
    (["resume=abc"], 2, "resume=abc goes on with a multirun: add -m"),
    (["budget.deployable=executorch"], 2, "but deploy.runtime=None lowers none there"),
    (["projector.out_dim=200000"], 2, "mostly for the projector mlp (40.00 G parameters"),
    (["encoder=mobilevit_xs", "encoder.img_size=16384"], 2, "mostly for the encoder mobilevit_xs at encoder.img_size=16384"),
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
def test_hostile_input_is_one_line_a_non_zero_exit_and_nothing_lost(args, code, words, table, tmp_path, monkeypatch, capsys):
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


def test_a_damaged_table_does_not_break_report(table, tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, ["projector=linear"])
    assert code == 0, err
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, ["report", str(table.parent), "--sweep", "all",
                                                             f"reports_dir={tmp_path}/reports"])
    assert code == 0 and out.startswith("report: ") and "skipped 2 damaged line(s)" in err and "line 2, 3" in err


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
