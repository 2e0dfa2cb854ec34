"""The Optuna search: sampling the space, rows per trial, resuming, several workers, failures, constraints."""
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import optuna
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from projector_bench.core.errors import ConfigError
from projector_bench.core.settings import config_dir
from projector_bench.core.studies import storage
from projector_bench.jobs.results import COLUMNS, COST_COLUMNS, load_results
from projector_bench.jobs.validate import NOT_NUMERIC, objective_columns
from projector_bench.models.encoders import Variant
from projector_bench.search import (
    MAX_SKIPS,
    TrialFailed,
    TrialSeeded,
    TrialSkipped,
    _counted,
    _finished,
    _objective,
    fail_unstarted,
    front_table,
    record_rows,
    suggest,
)

from .conftest import in_process
from .test_cli import ACC_TINY, TINY, rows

SEARCH = ["+search=projector_space", "encoder.weights=random", "accuracy.encoder.weights=random", "search.heartbeat=1",
          "search.grace_period=10", *ACC_TINY, *[t for t in TINY if not t.startswith("task=")]]


def search(tmp_path, *args, wait=True, space="projector_space"):
    cmd = [sys.executable, "-m", "projector_bench",
           *[f"+search={space}" if a.startswith("+search=") else a for a in SEARCH], *args,
           f"results_dir={tmp_path}/results", f"hydra.run.dir={tmp_path}/hydra/run"]
    p = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, HYDRA_FULL_ERROR="0"))
    if not wait:
        return p
    out, err = p.communicate(timeout=900)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def study(tmp_path, name="projector_space"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/results/optuna.db")


# what the search counts: completed, or failed by the job (not a skipped duplicate, not a dead worker's)
def finished(s):
    return [t for t in s.trials if _finished(t)]


SPACE = OmegaConf.create({
    "projector": {"choices": ["linear", "mlp", "pool"]},
    "projector.depth": {"low": 1, "high": 3, "if": {"projector": ["mlp"]}},
    "projector.pool": {"choices": [[1, 1], [2, 2]], "if": {"projector": ["pool"]}},
    "accuracy.training.lr": {"low": 1e-4, "high": 1e-2, "log": True},
})


def test_the_front_table_shows_a_trials_accuracy_warning_only_when_one_has_it():
    s = optuna.create_study(directions=["maximize", "minimize"])
    s.set_metric_names(["accuracy", "est_ttft_ms"])
    warned = {"accuracy_warning": "accuracy measured at 64 -> 16 tokens (4x), costs at 576 -> 16 (36x): not the cut"}
    for values, overrides, row in (([99.6, 41.0], ["projector=pool", "++projector.pool=[4,4]"], warned),
                                   ([99.7, 56.0], ["projector=ldp"], {"accuracy_warning": None})):
        s.add_trial(optuna.trial.create_trial(values=values, user_attrs={"overrides": overrides, "row": row}))
    lines = front_table(s).splitlines()
    assert "accuracy_warning" in lines[0] and lines[1].rstrip().endswith("costs at 576 -> 16 (36x)")
    assert "projector=ldp" in lines[2] and "tokens" not in lines[2]
    clean = optuna.create_study(directions=["maximize", "minimize"])
    clean.add_trial(optuna.trial.create_trial(values=[99.7, 56.0],
                                              user_attrs={"overrides": ["projector=ldp"], "row": {}}))
    assert "accuracy_warning" not in front_table(clean)


def test_the_space_becomes_overrides_and_conditions_hold():
    t = optuna.trial.FixedTrial({"projector": "mlp", "projector.depth": 3, "accuracy.training.lr": 0.001})
    assert suggest(t, SPACE) == ["projector=mlp", "++projector.depth=3", "++accuracy.training.lr=0.001"]
    t = optuna.trial.FixedTrial({"projector": "pool", "projector.pool": 1, "accuracy.training.lr": 0.01})
    assert suggest(t, SPACE) == ["projector=pool", "++projector.pool=[2,2]", "++accuracy.training.lr=0.01"]


def _first_draws(sampler_for_worker, workers=2):
    storage = optuna.storages.InMemoryStorage()
    studies = [optuna.create_study(study_name="s", storage=storage, load_if_exists=True, sampler=sampler_for_worker())
               for _ in range(workers)]
    return [s.ask().suggest_float("x", 0, 1) for s in studies]


def test_workers_with_one_seed_sample_different_designs_and_one_worker_is_reproducible():
    def tpe(seed):
        return optuna.samplers.TPESampler(seed=seed)

    a, b = _first_draws(lambda: TrialSeeded(tpe, 0))
    assert a != b  # two workers, same search.seed: different start-up designs
    plain = _first_draws(lambda: optuna.samplers.TPESampler(seed=0))
    assert plain[0] == plain[1]  # what TrialSeeded avoids

    def one_worker(seed):
        s = optuna.create_study(sampler=TrialSeeded(tpe, seed))
        s.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=4)
        return [t.params["x"] for t in s.trials]

    assert one_worker(0) == one_worker(0) != one_worker(1)
    assert one_worker(0)[:2] == [a, b]  # trial n draws from (seed, n), whichever worker runs it


def test_a_trials_row_is_recorded_once_and_only_when_optuna_has_finished_the_trial(tmp_path):
    s = optuna.create_study()
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    State = optuna.trial.TrialState

    def trial(state, n, **attrs):
        s.add_trial(optuna.trial.create_trial(state=state, params={"x": 0.5}, distributions=dist,
                                              values=[1.0] if state == State.COMPLETE else None,
                                              user_attrs={"row": {"run_id": f"r{n}", "trial": n}, **attrs}))

    trial(State.COMPLETE, 0)  # finished, then the process died before its row was appended
    trial(State.FAIL, 1, error="DivergedError: training diverged")  # failed by its job: a row with the reason
    trial(State.FAIL, 2)  # failed because its process died: Optuna retries it, so no row
    trial(State.COMPLETE, 3)
    assert record_rows([s.trials[3]], tmp_path) == 1  # the end-of-trial callback
    assert record_rows(s.trials, tmp_path) == 2  # the next run's start: what the table lacks
    assert record_rows(s.trials, tmp_path) == 0  # a worker that catches up later writes nothing twice
    assert sorted(load_results(tmp_path)["trial"]) == [0, 1, 3]


def test_a_design_another_worker_is_measuring_is_skipped_uncounted_and_unseen_by_tpe(tmp_path):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", ["+search=projector_space"])
    s = optuna.create_study(directions=["maximize", "minimize"])
    s.enqueue_trial({"projector": "linear"})
    measuring = s.ask()  # another worker's trial, still running
    measuring.set_user_attr("overrides", suggest(measuring, cfg.search.space))
    s.enqueue_trial({"projector": "linear"})
    # the job would need Hydra: never reached
    s.optimize(_objective(cfg, []), n_trials=1, catch=(TrialFailed, TrialSkipped))
    skipped = s.trials[1]  # FAIL, not PRUNED: TPE reads COMPLETE, PRUNED and RUNNING trials, so it ignores the skip
    assert skipped.state == optuna.trial.TrialState.FAIL and "error" not in skipped.user_attrs
    assert _counted(s) == 0 and record_rows(s.trials, tmp_path) == 0


def test_a_design_a_finished_trial_measured_is_skipped_a_bounded_number_of_times(tmp_path):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", ["+search=projector_space"])
    s = optuna.create_study(directions=["maximize", "minimize"])
    s.enqueue_trial({"projector": "linear"})
    done = s.ask()  # TPE draws its best again and again: a repeat would only re-read the cache
    done.set_user_attr("overrides", suggest(done, cfg.search.space))
    s.tell(done, [99.0, 1.0])
    for _ in range(MAX_SKIPS):
        s.enqueue_trial({"projector": "linear"})
    objective = _objective(cfg, [])  # one worker: its skips in a row are counted across its trials
    s.optimize(objective, n_trials=MAX_SKIPS, catch=(TrialFailed, TrialSkipped))
    assert all(t.state == optuna.trial.TrialState.FAIL and "error" not in t.user_attrs for t in s.trials[1:])
    assert _counted(s) == 1 and record_rows(s.trials[1:], tmp_path) == 0
    s.enqueue_trial({"projector": "linear"})  # a fourth draw in a row is measured: a small space runs out of designs
    with pytest.raises(Exception) as e:  # (the job needs Hydra's config here: reaching it is what this checks)
        s.optimize(objective, n_trials=1)
    assert not isinstance(e.value, TrialSkipped) and "GlobalHydra" in str(e.value)


def test_a_trial_killed_before_its_first_heartbeat_is_failed_and_retried_not_left_running(tmp_path):
    s = optuna.create_study(storage=storage(None, str(tmp_path), 10, 60))
    State = optuna.trial.TrialState

    def trial(state, **attrs):  # the storage stamps datetime_start: now
        s.add_trial(optuna.trial.create_trial(state=state, values=[1.0] if state == State.COMPLETE else None,
                                              user_attrs=attrs))

    trial(State.RUNNING)  # killed inside study.ask(): no heartbeat, so Optuna's check never fails it
    trial(State.RUNNING, overrides=["projector=mlp"])  # reached the objective: a heartbeat, Optuna's to judge
    trial(State.COMPLETE)
    time.sleep(1.5)
    trial(State.RUNNING)  # another worker's, just created
    assert fail_unstarted(s, 1) == [0] and fail_unstarted(s, 1) == []
    assert [t.state for t in s.trials] == [State.FAIL, State.RUNNING, State.COMPLETE, State.RUNNING, State.WAITING]
    assert s.trials[4].system_attrs["failed_trial"] == 0  # the retry, as RetryHeartbeatStaleTrialCallback makes it


@pytest.mark.slow
def test_every_trial_is_a_row_and_a_second_run_resumes(tmp_path):
    r = search(tmp_path, "search.n_trials=2")
    assert r.returncode == 0, r.stderr
    assert "Pareto front" in r.stdout
    first = rows(tmp_path)
    assert sorted(g["trial"] for g in first) == [0, 1] and {g["sweep_id"] for g in first} == {"projector_space"}
    assert all(g["accuracy"] is not None and g["est_ttft_ms"] > 0 for g in first)
    r = search(tmp_path, "search.n_trials=3")  # the same study: one more trial, none repeated
    assert r.returncode == 0, r.stderr
    after = rows(tmp_path)
    assert sorted(g["trial"] for g in after)[:2] == [0, 1] and len(after) == 3 and len(finished(study(tmp_path))) == 3
    assert len({tuple(g["trial_overrides"]) for g in after}) == 3  # a redraw of a measured design is skipped, uncounted


@pytest.mark.slow
def test_two_workers_share_one_study_and_record_each_trial_once(tmp_path):
    workers = [search(tmp_path, "search.n_trials=4", wait=False) for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=900)
        assert w.returncode == 0, err
    s = study(tmp_path)
    done = sorted(t.number for t in finished(s))
    recorded = sorted(g["trial"] for g in rows(tmp_path))
    assert recorded == done and 4 <= len(done) <= 5  # a worker may start one trial before it hears the end
    assert len({tuple(t.user_attrs["overrides"]) for t in finished(s)}) >= 2  # they explored, not repeated one design


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_a_killed_search_resumes_without_repeating_finished_trials(tmp_path, sig):
    """SIGKILL may leave a trial RUNNING with no heartbeat (failed and retried by the next run); SIGTERM is
    handled as Ctrl-C: Optuna fails the interrupted trial at once, without an `error`, so it is not counted."""
    p = search(tmp_path, "search.n_trials=3", wait=False)
    deadline = time.time() + 600
    while len(rows(tmp_path)) < 1 and time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(getattr(signal, sig))  # mid-run
    _, err = p.communicate()
    assert p.returncode == (-signal.SIGKILL if sig == "SIGKILL" else 130), err
    before = {g["trial"] for g in rows(tmp_path)}
    time.sleep(11)  # past the grace period: the dead trial is failed (and retried) by the next run
    r = search(tmp_path, "search.n_trials=3")
    assert r.returncode == 0, r.stderr
    s = study(tmp_path)
    complete = [t.number for t in s.trials if t.state == optuna.trial.TrialState.COMPLETE]
    recorded = [g["trial"] for g in rows(tmp_path)]
    assert len(recorded) == len(set(recorded)) and before <= set(recorded)  # nothing lost, nothing twice
    assert len(complete) == 3 and set(complete) == set(recorded)
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in s.trials)


@pytest.mark.slow
def test_failing_trials_are_recorded_with_their_reason_and_the_study_goes_on(tmp_path):
    r = search(tmp_path, "search.n_trials=2", "accuracy.training.lr=1e30")
    assert r.returncode == 1 and "error: 2 of 2 trials of study projector_space failed" in r.stderr, r.stderr
    s = study(tmp_path)
    assert len(finished(s)) == 2 and all(t.state == optuna.trial.TrialState.FAIL for t in s.trials)
    assert all(t.user_attrs["error"].startswith("DivergedError: training diverged") for t in s.trials)
    assert [g["status"] for g in rows(tmp_path)] == ["failed", "failed"]


@pytest.mark.slow
def test_budgets_are_constraints_and_the_front_holds_feasible_trials_only(tmp_path):
    r = search(tmp_path, "search.n_trials=2", "budget.latency_ms=1")
    assert r.returncode == 0, r.stderr
    s = study(tmp_path)
    assert all(t.constraints["latency_ms"] > 0 for t in s.trials) and s.best_trials == []
    assert "(no feasible trial)" in r.stdout


@pytest.mark.slow
def test_the_encoder_space_searches_mobilevit_variants_beyond_timms_named_ones(tmp_path):
    r = search(tmp_path, "search.n_trials=3", space="encoder_space")
    assert r.returncode == 0, r.stderr
    trials = {t.number: t.params for t in study(tmp_path, "encoder_space").trials}
    got = rows(tmp_path)
    assert len(got) == 3
    for g in got:
        p = trials[g["trial"]]
        label = Variant.from_config({"name": p["encoder"], "width": p["encoder.width"], "depth": p["encoder.depth"],
                                     "patch_size": p["encoder.patch_size"]}).label(p["encoder"])
        assert g["encoder"] == g["acc_encoder"] == label  # costs and accuracy of the same variant
        assert g["img_size"] == 32 and g["encoder_params"] > 0 and (
            g["design_params"] == g["params"] + g["encoder_params"])
        assert g["acc_encoder_source"].startswith("stand-in: ") and g["accuracy"] is not None
    assert any(g["encoder"] not in ("mobilevit_xxs", "mobilevit_xs", "mobilevit_s", "mobilevitv2_050",
                                    "mobilevitv2_100")
               for g in got)  # at least one variant timm does not name


@pytest.mark.slow
def test_workers_started_together_on_a_fresh_sqlite_storage_all_open_it(tmp_path):
    # they race to create the schema (alembic_version: UNIQUE constraint failed); the loser retries
    code = ("import sys; from projector_bench.core.studies import storage; "
            "storage(None, sys.argv[1], 10, 60); print('ok')")
    for i in range(2):
        ps = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / str(i))], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(4)]
        for p in ps:
            out, err = p.communicate(timeout=300)
            assert out.strip() == "ok", err


def _pg_bin(name):
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]
    return found if isinstance(found, str) else (found[0] if found else None)


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on localhost (Debian's `postgresql` package, which `.ci/run` installs)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; .ci/run installs Debian's postgresql package")
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql); CI installs it")
    pytest.importorskip("psycopg2", reason="pip install -e '.[test]' installs psycopg2-binary")
    root = tempfile.mkdtemp(prefix="pb-pg-")
    os.chmod(root, 0o777)
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # the server refuses to run as root
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = f"{root}/data"
    subprocess.run([*as_pg, initdb, "-D", data, "-A", "trust", "-U", "postgres"], check=True, capture_output=True)
    subprocess.run([*as_pg, pg_ctl, "-D", data, "-l", f"{root}/log", "-w", "-o", f"-p {port} -k {root} -h 127.0.0.1",
                    "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_pg, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_three_workers_on_postgres_one_killed_record_every_trial_once(tmp_path, postgres):
    """The multi-machine recipe, on a real PostgreSQL: three workers of one study, one SIGKILLed mid-trial."""
    args = (f"search.storage={postgres}", "search.n_trials=6")
    workers = [search(tmp_path, *args, wait=False) for _ in range(3)]
    deadline = time.time() + 600
    while len(rows(tmp_path)) < 1 and time.time() < deadline:
        time.sleep(0.2)
    workers[0].send_signal(signal.SIGKILL)  # mid-run: its trial is left RUNNING, its heartbeat stops
    for w in workers[1:]:
        _, err = w.communicate(timeout=900)
        assert w.returncode == 0, err
    time.sleep(11)  # past the grace period: a last worker fails (and retries) the dead trial
    r = search(tmp_path, *args)
    assert r.returncode == 0, r.stderr
    s = optuna.load_study(study_name="projector_space", storage=postgres)  # Optuna's own API reads the same study
    complete = sorted(t.number for t in s.trials if t.state == optuna.trial.TrialState.COMPLETE)
    recorded = [g["trial"] for g in rows(tmp_path)]
    assert len(recorded) == len(set(recorded)) and sorted(recorded) == complete  # each trial once, in both
    assert 6 <= len(complete) and all(t.state != optuna.trial.TrialState.RUNNING for t in s.trials)


def test_the_objective_choices_are_exactly_the_numeric_columns_a_row_holds(tmp_path, monkeypatch, capsys):
    known = set(COLUMNS) | {f"encoder_{c}" for c in COST_COLUMNS}
    assert NOT_NUMERIC <= known  # a renamed column is renamed in validate.NOT_NUMERIC too
    r = in_process(monkeypatch, capsys, ["projector=linear", "encoder=mobilevit_xxs", "encoder.weights=random",
                                         "encoder.img_size=64", *TINY, "report=false",
                                         f"results_dir={tmp_path}/results", f"hydra.run.dir={tmp_path}/hydra/run"])
    assert r.returncode == 0, r.stderr
    [row] = rows(tmp_path)
    number = {c for c, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    assert {c for c, v in row.items() if v is not None} & set(objective_columns()) == number  # costs, estimates, load
    assert "encoder_latency_ms" in number  # the encoder's costs are choices too


def test_a_journal_line_garbled_while_a_study_runs_is_one_error_naming_it(tmp_path):
    path = tmp_path / "study.journal"
    s = optuna.create_study(study_name="s", storage=storage(f"journal:{path}", str(tmp_path), 10, 60))
    s.add_trial(optuna.trial.create_trial(values=[1.0]))
    lines = path.read_bytes().splitlines(keepends=True)
    with open(path, "ab") as f:  # another writer garbles a line, and a whole one follows it
        f.write(b"\x00garbled\n" + lines[-1])
    with pytest.raises(ConfigError, match=f"journal '{path}': line {len(lines) + 1} cannot be read"):
        s.ask()  # its append reads the journal again
