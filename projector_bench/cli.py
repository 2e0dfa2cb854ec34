"""The command line: `python -m projector_bench [overrides]` measures designs as Hydra composes them from
`conf/`; `python -m projector_bench report` writes the HTML report of recorded rows. Also the Hydra callback
that gives a multirun its id and prints its tables at the end. The top layer: only `__main__` imports it.

    python -m projector_bench +sweep=ldp_vs_mlp          # the MobileVLM-shape sweep
    python -m projector_bench projector=ldp projector.out_dim=2560
    python -m projector_bench -m projector=mlp,ldp encoder=mobilevit_xs
    python -m projector_bench report results device=snapdragon888_cpu budget.latency_ms=5000
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from .analysis.choose import token_budgets
from .analysis.tables import accuracy_table, summary
from .core.errors import INTERRUPTED, ArgumentParser, ConfigError, JobFailed, exit_codes, first_line
from .core.settings import (
    DEFAULT_THREADS,
    GROUPS,
    LAUNCHER_ENV,
    SWEEP_ENV,
    THREADS_ENV,
    config_dir,
    folder_problem,
    group_choices,
)
from .jobs.results import TABLE, load_results, merge_job_rows, read_sweep, table_path
from .jobs.runner import job_identity, run
from .jobs.validate import job_configs, validate


def check_group_choices(args: list[str]) -> None:
    """Fail fast, in one line, on a config-group option that has no file in `conf/<group>/`."""
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    except HydraException as e:  # Hydra's own report is several lines, without `error:`
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("See ")]
        raise ConfigError(f"{'; '.join(lines[:2])} (the override grammar: "
                          "https://hydra.cc/docs/advanced/override_grammar/basic/)") from None
    for o in overrides:
        group = o.key_or_group
        if group not in GROUPS or o.is_delete():
            continue
        try:
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        except HydraException:
            continue  # glob() needs the config loader: Hydra expands and checks it itself
        choices = group_choices(group)
        for v in values:
            if v not in choices:
                raise ConfigError(f"unknown {group} {v!r}; choose one of: {', '.join(choices)} "
                                  f"(files in conf/{group}/)")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _main(cfg: DictConfig) -> None:
    with exit_codes():  # Hydra would print a traceback
        _job(cfg)


def _job(cfg: DictConfig) -> None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if not multirun:  # a multirun's jobs are all checked by PrintSweepTable before the first one
        if cfg.get("resume") and not cfg.get("search"):
            raise ConfigError(f"resume={cfg.resume} goes on with a multirun: add -m (or the +sweep= it ran with) "
                              "to the command it ran with")
        validate(cfg)
    if cfg.get("search"):
        return _search(cfg)
    try:
        row = run(cfg)
    except JobFailed:  # the row could not be written (the sweep ends here)
        for name in (SWEEP_ENV, THREADS_ENV, LAUNCHER_ENV):  # Hydra will not reach on_multirun_end, which pops them
            os.environ.pop(name, None)
        raise
    if multirun:
        return  # PrintSweepTable prints the sweep's table at the end
    if row["status"] != "ok":
        raise JobFailed(row["error"])
    df = pd.DataFrame([row])
    print(summary(df))
    if acc := accuracy_table(df):
        print(acc)


def _search(cfg: DictConfig) -> None:
    """`+search=...`: an Optuna study's trials; its front, the report, and exit 1 if a trial of this run failed."""
    from .analysis.report import report_at_end
    from .search import front_table, open_study, run_search

    before = load_results(cfg.results_dir)
    seen = set(before["run_id"]) if "run_id" in before else set()
    study = open_study(cfg)  # its storage or study: bad input, found before any trial runs
    try:
        study = run_search(cfg, study)
    except ConfigError as e:  # found after trials ran: the search failed
        raise JobFailed(str(e)) from None
    print(f"study {study.study_name}: {len(study.trials)} trials; Pareto front (feasible trials):\n"
          f"{front_table(study)}")
    df = load_results(cfg.results_dir)
    df = df[df["sweep_id"] == study.study_name] if "sweep_id" in df else df.iloc[0:0]
    if cfg.report and len(df):
        report_at_end(df, cfg, " ".join(["python -m projector_bench", *sys.argv[1:]]))
    new = df[~df["run_id"].isin(seen)] if len(df) else df
    failed = new[new["status"] != "ok"] if len(new) else new
    if len(failed):
        raise JobFailed(f"{len(failed)} of {len(new)} trials of study {study.study_name} failed; see the `error` "
                        f"column in {cfg.results_dir}/runs.jsonl")


def _table(arg: str | None, results_dir: str) -> tuple[Path, Path]:
    """The results table `report` reads, and what to call it in messages: RESULTS itself when it is a file or
    names a .jsonl, else the table of the folder RESULTS (default: results_dir). A missing table is refused."""
    src = Path(arg or results_dir)
    if src.suffix == ".jsonl" or src.is_file():
        if not src.exists():
            raise ConfigError(f"no results table {src}: the file does not exist; give a results folder or its "
                              ".jsonl file")
        return src, src
    if not table_path(src).exists():
        raise ConfigError(f"no results in {src}: run a sweep first (python -m projector_bench +sweep=ldp_vs_mlp), or "
                          f"give the folder it wrote to (the one holding {TABLE})")
    return table_path(src), src


def _no_sweep(sweep: str, where: Path, sweeps: list[str], shown: int = 5, width: int = 40) -> str:
    """The error for an unknown --sweep: its choices, of a long list only the last few (a table may hold
    thousands of sweeps, and a hand-edited id may be long)."""
    ids = [i if len(i) <= width else i[:width - 3] + "..." for i in sweeps[-shown:]]
    more = f" (the last {shown} of its {len(sweeps)} sweeps)" if len(sweeps) > shown else ""
    return f"no sweep {sweep!r} in {where}; choose one of: {', '.join(['last', 'all', *ids])}{more}"


def _check_reports_dir(reports_dir: str) -> None:
    if problem := folder_problem(Path(reports_dir)):
        raise ConfigError(f"reports_dir={reports_dir} {problem}; set reports_dir=<a folder you can write in>")


def report_main(argv: list[str]) -> Path:
    """`report [RESULTS] [--sweep ID|last|all] [overrides]`: the HTML report of recorded rows (device, budget, lm
    and the other config keys as overrides)."""
    from .analysis.report import build_report, reportable

    ap = ArgumentParser(prog="python -m projector_bench report", description=report_main.__doc__)
    ap.add_argument("results", nargs="?", help="a results folder or its runs.jsonl (default: results_dir)")
    ap.add_argument("--sweep", default="last", help="the sweep id to report, `last` (default) or `all`")
    args, overrides = ap.parse_known_args(argv)
    check_group_choices(overrides)
    if unknown := [o for o in overrides if o.startswith("-")]:
        raise ConfigError(f"unknown option {unknown[0]!r}; report takes [RESULTS] [--sweep ID|last|all] "
                          "[key=value ...]")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        try:
            cfg = compose("config", overrides=overrides)
        except HydraException as e:
            raise ConfigError(f"bad override: {str(e).splitlines()[0]}") from None
    validate(cfg, jobs=False)
    _check_reports_dir(cfg.reports_dir)
    table, name = _table(args.results, cfg.results_dir)
    selected = read_sweep(table, args.sweep)  # only the sweep's rows are kept: a large table stays cheap to report
    if not selected.total:
        raise ConfigError(f"no results in {name}: run a sweep first (python -m projector_bench +sweep=ldp_vs_mlp)")
    if not selected.rows:
        raise ConfigError(_no_sweep(args.sweep, name, selected.sweeps))
    df = reportable(selected.rows, table)
    return build_report(df, cfg, cfg.reports_dir, {"command": " ".join(["python -m projector_bench report", *argv]),
                                                   "results": str(table)}, table.parent)


_signalled: list[int] = []


def _terminated(signum: int, frame: Any) -> None:
    _signalled.append(signum)
    raise KeyboardInterrupt  # `kill` ends a run as Ctrl-C does: else its training workers live on, orphaned


def main() -> None:
    """Console entry point: Hydra runs and sweeps, or `report`. SIGTERM is handled as Ctrl-C. An interrupt raised
    where a library turns it into another error (a database session cut mid-commit, say, which Hydra then
    reports as a failed job) still ends the run as interrupted: exit 130, not 1."""
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGINT, _terminated)
    try:
        with exit_codes():
            if sys.argv[1:2] == ["report"]:
                print(f"report: {report_main(sys.argv[2:])}")
                return
            check_group_choices(sys.argv[1:])
            try:
                _main()
            except OSError as e:  # Hydra's own files before any job (its run folder, in a read-only results folder)
                raise ConfigError(f"{e.strerror or e}: {e.filename or ''}: Hydra could not write its run folder; "
                                  "make it writable or set results_dir=<another folder>") from None
    except SystemExit as e:
        if not _signalled or e.code in (0, None, 130):
            raise
        print(INTERRUPTED, file=sys.stderr)
        raise SystemExit(130) from None


def _check_resume(sweep: str, results_dir: str, jobs: list[DictConfig]) -> None:
    """`resume=<sweep>` must name a sweep of the table that this command ran: one of its rows at least was
    measured from one of the command's job configs (another command's sweep would get this one's jobs added)."""
    df = load_results(results_dir)
    if not len(df) or "sweep_id" not in df or sweep not in set(df["sweep_id"]):
        raise ConfigError(f"resume={sweep}: no sweep {sweep!r} in {results_dir}/runs.jsonl; give the sweep_id of "
                          "its rows")
    ids = [job_identity(j) for j in jobs]
    configs = df.loc[df["sweep_id"] == sweep, "config"] if "config" in df else []
    if not any(isinstance(c, dict) and job_identity(c) in ids for c in configs):
        raise ConfigError(f"resume={sweep}: none of sweep {sweep}'s rows was measured from a job of this command "
                          "(it ran another command, or its configs changed since): resume it with its own command, "
                          "or drop resume=")


class PrintSweepTable(Callback):
    """Gives a multirun its id; at its end prints its rows and exits 1 if any job failed."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with exit_codes():  # Hydra would log an exception as a warning and run the jobs unchecked, without an id
            try:  # every job's config, before the first job runs
                jobs = job_configs(config)
                for job in jobs:
                    validate(job)
                if resume := config.get("resume"):
                    _check_resume(resume, config.results_dir, jobs)
            except (ConfigError, JobFailed):
                raise
            except Exception as e:
                raise JobFailed(f"the sweep could not be checked before its first job: {first_line(e, typed=True)}") \
                    from None
        os.environ[SWEEP_ENV] = resume or uuid.uuid4().hex[:12]  # inherited by jobs, in-process or launched
        os.environ[THREADS_ENV] = f"{socket.gethostname()}:{DEFAULT_THREADS}"  # a launcher's workers time as this one
        os.environ[LAUNCHER_ENV] = f"{socket.gethostname()}:{os.getpid()}"  # jobs elsewhere write their rows apart

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = os.environ.pop(SWEEP_ENV, None)
        os.environ.pop(THREADS_ENV, None)
        os.environ.pop(LAUNCHER_ENV, None)
        table = f"{config.results_dir}/runs.jsonl"
        with exit_codes():  # Hydra turns an exception here into a warning and exit 0: every failure is an exit 1
            try:
                df = self._end(config, sweep, table)
            except (ConfigError, JobFailed) as e:  # the jobs ran: nothing here is the input's fault
                raise JobFailed(str(e)) from None
            except Exception as e:
                raise JobFailed(f"the sweep's rows are in {table}, but its summary or report failed: "
                                f"{first_line(e, typed=True)}") from None
            failed = df[df["status"] != "ok"]
            if len(failed):
                raise JobFailed(f"{len(failed)} of {len(df)} jobs failed; see the `error` column in {table}")

    @staticmethod
    def _end(config: DictConfig, sweep: str | None, table: str) -> pd.DataFrame:
        merge_job_rows(config.results_dir)  # the rows of jobs launched elsewhere, into the table by one writer
        df = load_results(config.results_dir)
        df = df[df["sweep_id"] == sweep] if len(df) and "sweep_id" in df else df.iloc[0:0]
        if not len(df):
            raise JobFailed(f"no row of this sweep is in {table}")
        print(summary(df))
        if acc := accuracy_table(df):
            print(acc)
        for b in token_budgets(df):
            print(b["verdict"])
        if config.get("report"):
            from .analysis.report import report_at_end

            report_at_end(df, config, " ".join(["python -m projector_bench", *sys.argv[1:]]))
        return df
