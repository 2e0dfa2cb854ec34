"""`python -m projector_bench +search=<name>`: a multi-objective Optuna study over designs (docs/search.md).

Optuna 5 directly (the Hydra Optuna sweeper pins optuna<3). Each trial composes the config with its sampled
overrides and runs the ordinary job (`runner.run`); its row is appended to the results table only once
Optuna has marked the trial finished, so a killed worker loses no finished row and leaves none of a trial
that will be retried. Budgets become Optuna constraints. The storage (`studies.storage`) is SQLite, any
SQLAlchemy URL or a journal file; several processes or machines share one study.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import optuna
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .core.budget import Budget, plain
from .core.compat import OPTUNA_TRIAL_LOGGER, heartbeat_storage, trial_id
from .core.errors import ConfigError, OutputError
from .core.studies import storage
from .jobs.results import append_rows, jsonable
from .jobs.runner import run

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat retry, metric names
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
MAX_SKIPS = 3  # a worker skips at most this many designs in a row that a trial has measured or is measuring


class TrialFailed(Exception):
    """The job recorded a failed row; its error is the trial's `error` attribute."""


class TrialSkipped(Exception):
    """The trial drew the design another worker is measuring. It ends FAIL without an `error`: not counted, no
    row, and ignored by TPE, which reads COMPLETE, PRUNED and RUNNING trials. A PRUNED trial without intermediate
    values would join TPE's worse group and steer the search away from the design being measured."""


def suggest(trial: optuna.Trial, space: DictConfig) -> list[str]:
    """Sample `space` into Hydra overrides. A parameter is `{choices: [...]}` or `{low, high[, step, log]}`;
    `if: {key: [values]}` samples it only when an earlier parameter took one of those values."""
    taken: dict[str, Any] = {}
    for key, spec in space.items():
        cond = spec.get("if") or {}
        if any(taken.get(k) not in list(v) for k, v in cond.items()):
            continue
        if "choices" in spec:
            choices = [OmegaConf.to_container(c) if OmegaConf.is_config(c) else c for c in spec.choices]
            idx = trial.suggest_categorical(key, list(range(len(choices)))) \
                if any(isinstance(c, list) for c in choices) else None
            taken[key] = choices[idx] if idx is not None else trial.suggest_categorical(key, choices)
        elif isinstance(spec.low, int) and isinstance(spec.high, int):
            taken[key] = trial.suggest_int(key, spec.low, spec.high, step=spec.get("step") or 1,
                                           log=bool(spec.get("log")))
        else:
            taken[key] = trial.suggest_float(key, spec.low, spec.high, log=bool(spec.get("log")))
    # a group (projector=mlp) is chosen; keys inside it are set or added (++projector.depth=3)
    return [f"{k}={_value(v)}" if "." not in k else f"++{k}={_value(v)}" for k, v in taken.items()]


def _value(v: Any) -> str:
    return ("[" + ",".join(map(str, v)) + "]" if isinstance(v, list)
            else str(v).lower() if isinstance(v, bool) else str(v))


def _objective(cfg: DictConfig, base_overrides: list[str]):
    objectives = dict(cfg.search.objectives)
    budget = Budget.from_config(cfg.budget)
    limits = budget.limits()
    columns = budget.columns()  # the same values a report's budget bounds

    skipped = [0]  # trials skipped in a row as duplicates of running or finished ones

    def objective(trial: optuna.Trial) -> list[float]:
        if beat := _heartbeats(trial.study):  # a first heartbeat before `overrides` marks the trial started
            beat.record_heartbeat(trial_id(trial))  # (Optuna's heartbeat thread records one too, asynchronously)
        overrides = suggest(trial, cfg.search.space)
        trial.set_user_attr("overrides", overrides)
        State = optuna.trial.TrialState
        same = [t for t in trial.study.get_trials(deepcopy=False, states=(State.RUNNING, State.COMPLETE, State.FAIL))
                if t.number != trial.number and t.user_attrs.get("overrides") == overrides
                and (t.state == State.RUNNING or _finished(t))]
        # measured or being measured (TPE repeats its best): sample another, uncounted
        if same and skipped[0] < MAX_SKIPS:
            skipped[0] += 1  # (bounded: a dead worker's trial stays RUNNING on a journal, or until its grace period;
            running = same[0].state == State.RUNNING  # and a small space runs out of new designs)
            log.debug("trial %d skipped: a duplicate of trial %d", trial.number, same[0].number)
            raise TrialSkipped(f"skipped, not counted: {'running' if running else 'finished'} trial {same[0].number} "
                               f"{'measures' if running else 'measured'} this design")
        skipped[0] = 0
        job = compose("config", overrides=base_overrides + overrides)
        row = run(job, extra={"sweep_id": cfg.search.name, "trial": trial.number, "trial_overrides": overrides},
                  record=False)  # recorded by `record_rows` once the trial is finished
        trial.set_user_attr("row", jsonable(row))
        if row["status"] != "ok":
            trial.set_user_attr("error", row["error"])
            raise TrialFailed(row["error"])
        for k, limit in limits.items():  # feasible when <= 0, as Optuna wants
            trial.set_constraint(k, float(row[columns[k]]) - limit)
        missing = [m for m in objectives if row.get(m) is None]
        if missing:
            trial.set_user_attr("error", f"objective {missing[0]!r} is null in the row: accuracy columns need a task, "
                                         "encoder_ columns an encoder, xnnpack columns deploy.runtime=executorch")
            raise TrialFailed(trial.user_attrs["error"])
        return [float(row[m]) for m in objectives]

    return objective


class TrialSeeded(optuna.samplers.BaseSampler):
    """A sampler whose random draws for trial n depend on (seed, n) only.

    One worker reproduces a run; several workers on one storage, all with the same `search.seed`, still
    sample different designs (a sampler seeded once per process would make each worker repeat the others'
    random start-up trials). Each trial gets a fresh `make(seed)`; TPE keeps no state between trials
    that the storage does not hold.
    """

    def __init__(self, make: Any, seed: int | None) -> None:
        self._make, self._seed = make, seed
        self._s: optuna.samplers.BaseSampler = make(seed)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self._seed is not None:
            import numpy as np

            self._s = self._make(int(np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0]))
        self._s.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):  # BaseSampler's signature
        return self._s.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._s.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._s.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values):
        self._s.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._s.reseed_rng()


def _finished(t: optuna.trial.FrozenTrial) -> bool:
    """Completed, or failed by its job (not failed because its process died)."""
    return t.state == optuna.trial.TrialState.COMPLETE or (t.state == optuna.trial.TrialState.FAIL
                                                           and "error" in t.user_attrs)


def _counted(study: optuna.Study) -> int:
    return sum(map(_finished, study.get_trials(deepcopy=False, states=FINISHED)))


@contextmanager
def quiet_trial_failures() -> Iterator[None]:
    """While a search runs, Optuna's warning for each trial whose exception `optimize(catch=...)` catches is
    silenced: it prints the whole traceback of an expected TrialFailed or TrialSkipped. `say_failed` tells a
    failed trial in one line instead; a skipped one is logged at debug level. Only that logger is raised to
    ERROR (Optuna's other warnings still show); an exception `catch` does not hold is raised by `optimize`."""
    optimize_log = logging.getLogger(OPTUNA_TRIAL_LOGGER)  # where Optuna logs "Trial N failed ..."
    level = optimize_log.level
    optimize_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        optimize_log.setLevel(level)


def say_failed(trial: optuna.trial.FrozenTrial) -> None:
    """One line for a trial its job failed (the `error` column says the same); none for a skipped duplicate."""
    if trial.state == optuna.trial.TrialState.FAIL and "error" in trial.user_attrs:
        log.warning("trial %d failed: %s", trial.number, trial.user_attrs["error"])


def record_rows(trials: list[optuna.trial.FrozenTrial], results_dir: str) -> int:
    """Append the rows of the finished `trials` that the results table does not hold yet; returns how many."""
    rows = [t.user_attrs["row"] for t in trials if _finished(t) and "row" in t.user_attrs]
    try:
        return append_rows(results_dir, rows, unique="run_id")
    except (OSError, ValueError) as e:
        raise OutputError("could not record the search's rows (they stay in the study; the next run records them): "
                          f"{e}") from e


def _heartbeats(study: optuna.Study) -> Any:
    """The study's storage if it keeps heartbeats, else None."""
    return heartbeat_storage(study)


def fail_unstarted(study: optuna.Study, grace: float) -> list[int]:
    """Fail, and retry as Optuna retries a stale trial, each running trial that never reached the objective
    (no `overrides`) and started over `grace` s ago; returns their numbers. A process killed between creating a
    trial and its first heartbeat leaves such a trial, and Optuna's heartbeat check skips a trial that has no
    heartbeat, so it would stay RUNNING for good. A trial with `overrides` has a heartbeat (the objective
    records one first), so Optuna's check covers it. This asks a live worker to reach `overrides` (sampling
    included) within `grace` s, as Optuna asks it to beat. Database storages only (journal: no heartbeats)."""
    store = _heartbeats(study)
    if store is None:
        return []
    before = datetime.now() - timedelta(seconds=grace)  # Optuna's datetime_start: local, naive
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if "overrides" in t.user_attrs or t.datetime_start is None or t.datetime_start > before:
            continue
        try:
            if store.set_trial_state_values(trial_id(t), state=optuna.trial.TrialState.FAIL):
                failed.append(t)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
            pass
    retry = store.get_heartbeat_stale_trial_callback()
    for t in failed:
        if retry is not None:
            retry(study, store.get_trial(trial_id(t)))
    return [t.number for t in failed]


def open_study(cfg: DictConfig) -> optuna.Study:
    """Create or load the study `cfg.search.name` in its storage. Its errors (`ConfigError`: the storage cannot
    be opened or read, the study has other objectives) come before any trial runs."""
    s = cfg.search  # checked by validate.py before the search starts
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = TrialSeeded(lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                                                  constant_liar=True),
                          s.seed)  # constraints: TPE reads each trial's set_constraint values itself
    study = optuna.create_study(study_name=s.name,
                                storage=storage(s.storage, cfg.results_dir, s.heartbeat, s.grace_period),
                                directions=list(s.objectives.values()), sampler=sampler, load_if_exists=True)
    if not study.metric_names:
        study.set_metric_names(list(s.objectives))
    if list(study.directions) != [optuna.study.StudyDirection[d.upper()] for d in s.objectives.values()]:
        raise ConfigError(f"study {s.name!r} in this storage has other objectives; set search.name to start a new one")
    return study


def run_search(cfg: DictConfig, study: optuna.Study | None = None) -> optuna.Study:
    """Run trials of `study` (default: `open_study(cfg)`) until `search.n_trials` have finished."""
    s = cfg.search
    study = study or open_study(cfg)
    base = list(HydraConfig.get().overrides.task)  # with +search=<name>: its defaults and interpolations hold in trials

    def record_and_stop(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        say_failed(trial)
        record_rows([trial], cfg.results_dir)  # called after Optuna stored the trial's state
        fail_unstarted(study, s.grace_period)  # another worker's
        if _counted(study) >= s.n_trials:
            study.stop()

    record_rows(study.get_trials(deepcopy=False, states=FINISHED), cfg.results_dir)  # a run killed after a trial's end
    fail_unstarted(study, s.grace_period)  # a run killed before a trial's first heartbeat
    if _heartbeats(study):  # a worker killed mid-trial: Optuna fails its trial only when a new trial starts,
        optuna.storages.fail_stale_trials(study)  # and a run that has no trial left to do starts none
    if _counted(study) < s.n_trials:
        with quiet_trial_failures():  # skipped duplicates are not counted: `record_and_stop` ends it
            study.optimize(_objective(cfg, base), n_trials=(MAX_SKIPS + 1) * s.n_trials, callbacks=[record_and_stop],
                           catch=(TrialFailed, TrialSkipped))
    return study


def front_table(study: optuna.Study) -> str:
    """The study's Pareto front (feasible trials only) as a printable table."""
    import pandas as pd

    names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
    rows = [{"trial": t.number, **dict(zip(names, t.values)), "overrides": " ".join(t.user_attrs.get("overrides", [])),
             "accuracy_warning": ((t.user_attrs.get("row") or {}).get("accuracy_warning") or "").split(": ")[0]}
            for t in sorted(study.best_trials, key=lambda t: t.number)]
    # the column only when a front trial has a warning (its first clause)
    if not any(r["accuracy_warning"] for r in rows):
        rows = [{k: v for k, v in r.items() if k != "accuracy_warning"} for r in rows]
    return pd.DataFrame(rows).to_string(index=False, float_format=plain) if rows else "(no feasible trial)"
