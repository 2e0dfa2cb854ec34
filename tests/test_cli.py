"""`python -m projector_bench` end to end, at tiny shapes: rows, sweeps, and one-line errors."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from projector_bench import create_projector
from projector_bench.accuracy import evaluate as accuracy
from projector_bench.core.settings import DEFAULT_THREADS, config_dir
from projector_bench.costs.measure import count_flops, count_params
from projector_bench.jobs.results import unknown_columns

from .conftest import in_process

# deploy.runtime=null: lowering to ExecuTorch takes seconds a job; tests/test_deploy.py runs it through the CLI
TINY = ["shape.tokens=16", "shape.in_dim=8", "shape.out_dim=12", "device.min_run_time=0.01", "device.warmup=1",
        "task=none", "deploy.runtime=null"]


def _args(tmp_path, args) -> list[str]:
    """`args`, then the TINY settings that `args` does not set, then this test's folders."""
    keys = {a.split("=")[0] for a in args}
    return [*args, *(t for t in TINY if t.split("=")[0] not in keys), f"results_dir={tmp_path}/results",
            f"hydra.run.dir={tmp_path}/hydra/run", f"hydra.sweep.dir={tmp_path}/hydra/multirun"]


def cli_subprocess(tmp_path, *args):
    """`python -m projector_bench` in a fresh Python, in `tmp_path`: where the process itself is the subject."""
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    return subprocess.run([sys.executable, "-m", "projector_bench", *_args(tmp_path, args)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def cli(monkeypatch, capsys, tmp_path):
    """`cli(tmp_path, *args)`: the command line in this process (Hydra's `main` as `python -m` runs it), in
    `tmp_path`, with the TINY settings `args` does not set. `report` is `cli(tmp_path, "report", ...)`."""
    monkeypatch.chdir(tmp_path)

    def run(folder, *args):
        return in_process(monkeypatch, capsys, list(args) if args[:1] == ("report",) else _args(folder, args))

    return run


def rows(tmp_path):
    """The rows in `tmp_path/results`; every column they hold must be described in `results.COLUMNS`."""
    path = tmp_path / "results" / "runs.jsonl"
    out = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    for r in out:
        assert not unknown_columns(r), f"columns missing from results.COLUMNS: {unknown_columns(r)}"
    return out


def test_single_run_appends_a_complete_row(tmp_path):
    r = cli_subprocess(tmp_path, "projector=ldp")  # `python -m projector_bench` itself
    assert r.returncode == 0, r.stderr
    [row] = rows(tmp_path)
    assert row["status"] == "ok" and row["projector"] == "ldp" and row["tokens_in"] == 16 and row["tokens_out"] == 4
    ldp = create_projector("ldp", 8, 12)  # TINY: 16 tokens of 8 -> 12, batch 1
    assert row["params"] == count_params(ldp) and row["macs"] == count_flops(ldp, torch.randn(1, 16, 8)).macs
    assert row["flops"] == 2 * row["macs"] and row["uncounted_ops"] == {}
    # fp32 weights + the file's framing
    assert 4 * row["params"] / 1e6 <= row["size_mb"] <= 4 * row["params"] / 1e6 + 0.05
    assert row["latency_ms"] > 0 and row["latency_iqr_ms"] >= 0 and row["peak_mem_mb"] > 0
    assert row["threads"] >= 1 and row["batch"] == 1
    assert row["config"]["projector"]["name"] == "ldp" and row["env_torch"] and row["env_cpu"] and row["timestamp"]
    assert "ldp" in r.stdout  # the row is printed


@pytest.mark.slow
def test_sweep_records_every_design_and_prints_its_table(cli, tmp_path):
    r = cli(tmp_path, "+sweep=ldp_vs_mlp")
    assert r.returncode == 0, r.stderr
    got = rows(tmp_path)
    swept = next(line.split(": ")[1] for line in (config_dir() / "sweep" / "ldp_vs_mlp.yaml").read_text().splitlines()
             if line.strip().startswith("projector:")).split(",")
    assert sorted(g["projector"] for g in got) == sorted(swept)  # one row per design
    assert {"linear", "mlp", "mlp_int8", "ldp", "ldpv2"} <= set(swept)
    assert all(g["status"] == "ok" for g in got) and len({g["sweep_id"] for g in got}) == 1
    for name in ("mlp_int8", "ldpv2", "bottleneck_transformer"):
        assert name in r.stdout


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_sweep_goes_on(cli, tmp_path):
    assert cli(tmp_path, "projector=mlp").returncode == 0
    r = cli(tmp_path, "-m", "projector=ldp,mlp", "shape.tokens=15")
    assert r.returncode == 1 and "1 of 2 jobs failed" in r.stderr
    before, ldp, mlp = rows(tmp_path)
    assert before["status"] == "ok"  # what was recorded before is kept
    assert ldp["status"] == "failed" and "square token grid" in ldp["error"] and "macs" not in ldp
    assert mlp["status"] == "ok" and mlp["tokens_in"] == 15


@pytest.mark.parametrize("args,message,code", [
    (["projector=mpl"], "unknown projector 'mpl'; choose one of:", 2),
    (["-m", "projector=mlp,nope"], "unknown projector 'nope'", 2),
    (["encoder=mobilevit_xxxs"], "unknown encoder 'mobilevit_xxxs'; choose one of:", 2),
    (["projector.name=nope"], "unknown projector 'nope'", 2),
    (["projector=ldp", "shape.tokens=15"], "ldp needs a square token grid but got 15 tokens", 1),
    (["projector.out_dim=0"], "projector.out_dim=0 is not valid: it must be a positive integer", 2),
    (["shape.tokens=0"], "shape.tokens=0 is not valid: it must be a positive integer", 2),
    (["shape.batch=0"], "shape.batch=0 is not valid", 2),
    (["shape.in_dim=-2"], "shape.in_dim=-2 is not valid", 2),
    (["shape.grid=[3,5]"], "grid 3x5 holds 15 tokens but the input has 16", 2),
    (["shape.grid=[3]"], "grid must be a pair [h, w]", 2),
    (["device.threads=-1"], "device.threads=-1 is not valid: it must be a positive integer or null", 2),
    (["encoder.name=nope"], "unknown encoder 'nope'; choose one of: none, efficientvit_b1, fastvit_mci0", 2),
    (["encoder=mobilevit_xxs", "encoder.img_size=0"], "encoder.img_size=0 is not valid", 2),
    (["projector=ldp", "projector.kernel=4"], "ldp kernel must be odd and positive", 2),
    (["projector=ldpv2", "projector.pool=[0,0]"], "ldpv2 pool must be positive, got [0, 0]", 2),
    (["-m", "projector=linear", "budget.latency=gpu"],
     "budget.latency='gpu' is not one of: ttft, vision, projector", 2),
    (["-m", "projector=linear", "budget.params=0"], "budget.params=0 is not valid", 2),
    (["encoder=mobilevit_xxs", "encoder.weights=random", "projector.in_dim=1024"],
     "projector.in_dim=1024 does not match the token source (mobilevit_xxs: 320 channels)", 1),
])
def test_bad_input_is_one_line_and_a_non_zero_exit(cli, tmp_path, args, message, code):
    r = cli(tmp_path, *args)
    assert r.returncode == code, r.stderr
    assert r.returncode == code
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_sweeps_are_told_apart_and_glob_sweeps_work(cli, tmp_path):
    assert cli(tmp_path, "-m", "projector=ldp,mlp", "shape.tokens=15").returncode == 1
    r = cli(tmp_path, "-m", "projector=glob(linear*)")  # same sweep dir as the failed sweep
    assert r.returncode == 0, r.stderr
    assert "linear_int8" in r.stdout and "ldp" not in r.stdout and len(rows(tmp_path)) == 4


def test_thread_count_does_not_leak_between_jobs(cli, tmp_path):
    r = cli(tmp_path, "-m", "device.threads=1,null")
    assert r.returncode == 0, r.stderr
    one, default = rows(tmp_path)  # and `in_process` checks that torch's count is back to what it was
    assert one["threads"] == 1 and default["threads"] == DEFAULT_THREADS


ACC_TINY = ["task=shapes_vqa", "task.num_images=60", "task.img_size=32", "accuracy.standin.images=40",
            "accuracy.standin.min_steps=2", "accuracy.standin.max_steps=2", "accuracy.standin.eval_every=2",
            "accuracy.encoder_training.min_steps=2", "accuracy.encoder_training.max_steps=2",
            "accuracy.encoder_training.eval_every=2",
            "accuracy.training.min_steps=2", "accuracy.training.max_steps=2",
            "accuracy.training.eval_every=2", "accuracy.workers=1", "accuracy.seeds=1",
            "accuracy.training.width=16", "accuracy.training.layers=1", "accuracy.training.heads=2", "quiet=true"]


@pytest.mark.slow
def test_mobilevit_variants_sweep_end_to_end(cli, tmp_path):
    r = cli(tmp_path, "+sweep=mobilevit_variants", "encoder=mobilevit_xxs,mobilevitv2_050",
            "encoder.weights=random", *ACC_TINY)
    assert r.returncode == 0, r.stderr
    got = rows(tmp_path)
    assert {(g["encoder"], g["projector"]) for g in got} == {(e, p) for e in ("mobilevit_xxs", "mobilevitv2_050")
                                                             for p in ("mlp", "ldp")}
    for g in got:
        assert g["encoder_macs"] > 0 and g["macs"] > 0 and 0 <= g["accuracy"] <= 100 and (
            g["acc_encoder"] == g["encoder"])
        assert g["encoder_weights"] == "random" and g["acc_encoder_source"].startswith("stand-in: ")
    assert "accuracy % on held-out questions" in r.stdout


@pytest.mark.slow
def test_a_diverging_training_fails_its_row_and_keeps_its_costs(cli, tmp_path, monkeypatch):
    # divergence itself is detected by `fit` (tests/test_accuracy.py); here, what the job and the sweep do with it
    real_fit = accuracy.fit

    def diverged(model, loss_on, validate, batches, t, lr, label, quiet):
        if label.startswith("encoder"):  # the encoder's own training (shared by every design) goes as usual
            return real_fit(model, loss_on, validate, batches, t, lr, label, quiet)
        raise accuracy.DivergedError(f"training diverged: loss is nan at step 1 (lr={lr:g}); "
                                     "lower accuracy.training.lr")

    monkeypatch.setattr(accuracy, "fit", diverged)
    r = cli(tmp_path, "-m", "projector=mlp,linear", "accuracy.training.lr=1e30", *ACC_TINY)
    assert r.returncode == 1 and "2 of 2 jobs failed" in r.stderr, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    for g in rows(tmp_path):
        assert g["status"] == "failed" and g["error"].startswith("DivergedError: training diverged") and g["macs"] > 0


def test_an_accuracy_taken_at_another_compression_than_the_costs_says_so(cli, tmp_path):
    # 8x8 cost tokens, a 4x4 accuracy grid: `pool` to a fixed 2x2 cuts 16x there and 4x here; `ldp` 4x on both
    for args in (["projector=pool", "projector.pool=[2,2]"], ["projector=ldp"]):
        r = cli(tmp_path, *args, "shape.tokens=64", *ACC_TINY)
        assert r.returncode == 0, r.stderr
    pool, ldp = rows(tmp_path)
    assert (pool["tokens_in"], pool["tokens_out"], pool["acc_tokens_in"], pool["acc_tokens_out"]) == (64, 4, 16, 4)
    assert ("accuracy measured at 16 -> 4 tokens (4x), costs at 64 -> 4 (16x): not the cut its costs are priced at "
            "(match them with accuracy.projector") in pool["accuracy_warning"]
    assert (ldp["tokens_out"], ldp["acc_tokens_out"]) == (16, 4) and (
        "accuracy measured at" not in (ldp["accuracy_warning"] or ""))


@pytest.mark.slow
def test_a_sweep_ends_with_a_report_and_report_redraws_it_for_another_device_and_budget(cli, tmp_path):
    r = cli(tmp_path, "-m", "projector=mlp,ldp", "device=snapdragon888_cpu")
    assert r.returncode == 0, r.stderr
    reports = list((tmp_path / "reports").glob("report-*.html"))
    # a failed end-of-sweep callback is only a warning
    assert len(reports) == 1, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    first = reports[0]
    assert "report: reports/report-" in r.stdout and "snapdragon888_cpu" in first.read_text()
    for g in rows(tmp_path):
        assert g["device"] == "snapdragon888_cpu" and g["e2e_encoder"] == "vit_large_patch14_clip_336"
        assert g["est_ttft_ms"] == pytest.approx(g["est_encoder_ms"] + g["est_projector_ms"] + g["est_prefill_ms"])
    r = cli(tmp_path, "report", "results", "device=raspberry_pi5", "budget.latency_ms=1", "reports_dir=other")
    assert r.returncode == 0, r.stderr
    [html] = (tmp_path / "other").glob("report-*.html")
    text = html.read_text()
    assert "raspberry_pi5" in text and "no design fits ttft ≤ 1 ms on raspberry_pi5; the closest is" in text


@pytest.mark.parametrize("args,message", [
    (["nowhere"], "no results in nowhere: run a sweep first"),
    (["results", "--sweep", "nope"], "no sweep 'nope' in results; choose one of: last, all,"),
    (["results", "budget.latency=gpu"], "budget.latency='gpu' is not one of: ttft, vision, projector"),
    (["results", "device=phone"], "unknown device 'phone'; choose one of:"),
])
def test_report_errors_are_one_line(cli, tmp_path, args, message):
    assert cli(tmp_path, "projector=linear").returncode == 0
    r = cli(tmp_path, "report", *args)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and message in errors[0], r.stderr
    assert "Traceback" not in r.stderr and len(rows(tmp_path)) == 1


def _ppid(pid: int) -> int | None:
    """The parent of a live process (None when it is gone or a zombie), from /proc."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    return None if state == "Z" else int(ppid)


def _outlived(workers: list[int], within: float = 10.0) -> list[str]:
    """The workers still alive after `within` seconds (a process whose pipes are closed may still be exiting),
    each with its state and command line."""
    import time

    deadline = time.time() + within
    while (alive := [w for w in workers if _ppid(w) is not None]) and time.time() < deadline:
        time.sleep(0.2)

    def described(pid: int) -> str:
        try:
            return open(f"/proc/{pid}/stat").read()[:80] + open(f"/proc/{pid}/cmdline").read().replace("\0", " ")[:200]
        except OSError:
            return ""  # gone since

    return [d for d in map(described, alive) if d]


def _training(tmp_path) -> tuple[subprocess.Popen, list[int]]:
    """A job whose two training workers train (far from done), and their pids."""
    import glob
    import time

    keys = {a.split("=")[0] for a in ACC_TINY}
    args = [*[a for a in ACC_TINY
              if a.split("=")[0] not in ("accuracy.workers", "accuracy.seeds", "accuracy.training.min_steps",
                                         "accuracy.training.max_steps")],
            "accuracy.workers=2", "accuracy.seeds=2", "accuracy.training.min_steps=100000",
            "accuracy.training.max_steps=100000",
            *[t for t in TINY if t.split("=")[0] not in keys | {"task"}], f"results_dir={tmp_path}/results",
            f"hydra.run.dir={tmp_path}/hydra/run"]
    p = subprocess.Popen([sys.executable, "-m", "projector_bench", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not glob.glob(f"{tmp_path}/results/cache/features/*.pt") and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(15)  # the workers have started and are training
    workers = [int(d) for d in os.listdir("/proc") if d.isdigit() and _ppid(int(d)) == p.pid]
    assert len(workers) >= 2, "the training workers had not started"
    return p, workers


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_kill_while_workers_train_is_one_line_and_exit_130(tmp_path, sig):
    """Ctrl-C reaches every process of the group; the training workers ignore it and the parent ends them.
    `kill` (SIGTERM) reaches the parent alone: it is handled as Ctrl-C, so the workers do not live on, orphaned."""
    import signal

    p, workers = _training(tmp_path)
    p.send_signal(getattr(signal, sig))
    _, err = p.communicate(timeout=120)
    assert _outlived(workers) == [], "training workers outlived their parent"
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[")]  # Hydra's log lines
    assert p.returncode == 130 and lines == ["interrupted: the rows recorded so far are kept; run the same command "
                                             "again to go on"], err
    assert rows(tmp_path) == []  # the job had not finished: no row, and no torn one


@pytest.mark.slow
def test_kill_9_while_workers_train_leaves_no_worker_training(tmp_path):
    """SIGKILL cannot be handled: the training workers see their parent gone and exit within seconds, instead
    of training on, orphaned, for minutes (and holding the parent's output pipes open)."""
    import signal

    p, workers = _training(tmp_path)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=30)  # returns once no orphan holds the pipes
    assert p.returncode == -signal.SIGKILL
    assert _outlived(workers) == [], "training workers outlived their parent"
    assert rows(tmp_path) == []


@pytest.fixture
def cli_main(monkeypatch):
    """`cli.main` with the job `_main` replaced; the signal handlers it installs are put back afterwards."""
    from projector_bench import cli

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    monkeypatch.setattr(cli, "_signalled", [])
    monkeypatch.setattr(cli, "check_group_choices", lambda argv: None)

    def run(job) -> int:
        monkeypatch.setattr(cli, "_main", job)
        with pytest.raises(SystemExit) as e:
            cli.main()
        return e.value.code

    yield run
    for s, h in handlers.items():
        signal.signal(s, h)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_an_error_an_interrupt_caused_still_exits_as_interrupted(cli_main, capsys, sig):
    """A signal's KeyboardInterrupt that a library turns into another error (Hydra then exits 1) ends the run as
    interrupted: exit 130 and its one line, not a failed job's exit 1."""
    import time

    def job() -> None:
        try:
            os.kill(os.getpid(), getattr(signal, sig))
            time.sleep(5)
        except KeyboardInterrupt:
            raise SystemExit(1)  # as Hydra's run_and_report exits on an exception raised while the interrupt unwound

    assert cli_main(job) == 130 and capsys.readouterr().err.startswith("interrupted: ")


def test_a_failed_job_without_a_signal_still_exits_1(cli_main):
    def job() -> None:
        raise SystemExit(1)

    assert cli_main(job) == 1
