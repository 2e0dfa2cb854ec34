"""The regression gate's exact half (golden table) and its decision rules; the timing itself is exercised by
tests/benchmarks/test_regression.py and by `python -m projector_bench.regress` in .ci/run."""
import json
from pathlib import Path

import pytest

from projector_bench.costs.measure import Paired
from projector_bench.regress import (
    GOLDEN,
    case_names,
    cases,
    compare_golden,
    limits,
    machine,
    regressions,
    sign_test,
)
from projector_bench.regress import (
    main as regress_main,
)


def test_every_shipped_design_and_encoder_is_a_case_and_in_the_golden_table():
    names = case_names()
    assert {"projector/mlp", "projector/ldp", "projector/ldpv2_int8", "encoder/mobilevit_xxs"} <= set(names)
    assert sorted(json.loads(GOLDEN.read_text())) == sorted(names)


@pytest.mark.parametrize("name", ["projector/mlp", "projector/ldp", "projector/pool"])
def test_the_golden_rows_hold_exactly(name):
    want = json.loads(GOLDEN.read_text())
    assert compare_golden({name: cases([name])[name].facts()}, {name: want[name]}) == []


def test_golden_differences_name_the_design_and_the_field():
    want = {"projector/mlp": {"params": 6, "macs": 3}, "projector/old": {"params": 1}}
    got = {"projector/mlp": {"params": 6, "macs": 4}, "projector/new": {"params": 2}}
    assert compare_golden(got, want) == ["projector/new: not in the golden table",
                                         "projector/old: in the golden table but not shipped any more",
                                         "projector/mlp: macs 3 -> 4"]


def test_a_case_regresses_only_beyond_the_tolerance():
    base = {"a": 2.0, "b": 2.0, "c": 2.0}
    now = {"a": 2.19, "b": 2.21, "c": 1.0, "d": 9.0}  # d: no baseline, not judged
    assert regressions(now, base, limits(now, 0.10)) == {"b": pytest.approx(1.105)}
    # a case that varied 6% between passes: limit 12%
    assert regressions(now, base, limits(now, 0.10, noise={"b": 0.06})) == {}


def test_a_second_pass_confirms_only_when_most_rounds_are_over_the_limit():
    def rounds(*r):
        return Paired(0.0, 0.0, {}, list(r))

    # 18 rounds: 13 or more over the limit is a median over it with p < 0.05 (sign test); 12 is not
    assert sign_test(rounds(*[1.2] * 13, *[1.0] * 5), 1.1) and not sign_test(rounds(*[1.2] * 12, *[1.0] * 6), 1.1)
    # a noisy pass whose median is over the limit by a little: 10 of 18 over, not confirmed
    assert not sign_test(rounds(*[1.12] * 10, *[1.0] * 8), 1.1)


def test_the_machine_class_names_cpu_threads_and_torch():
    m = machine(1)
    assert (" | 1 thread | torch " in m and (" model " in m or not Path("/proc/cpuinfo").exists())
            and machine(2).endswith(m.rsplit("|", 1)[1]) and "2 threads" in machine(2))


@pytest.mark.parametrize("args,message", [
    (["time", "--only", "projector/nope"], "error: unknown case 'projector/nope'; choose from: projector/"),
    (["time", "--rounds", "1"], "error: --rounds must be >= 3"),
    (["time", "--append"], "error: --append adds passes to a recorded baseline: use it with --update"),
    (["time", "--update", "--from-log", "ci.log"], "error: --from-log adds a logged pass to a recorded baseline"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    code = regress_main(args)  # `python -m projector_bench.regress` exits with what main returns
    err = capsys.readouterr().err
    assert code == 2 and err.strip().startswith(message) and len(err.strip().splitlines()) == 1


def test_recording_keeps_every_pass_and_append_adds_an_occasion(tmp_path, monkeypatch):
    from projector_bench import regress
    from projector_bench.costs.measure import Paired

    draws = iter([1.0, 2.0, 1.1, 2.0, 1.2, 2.0, 1.5, 2.4])  # a, b per pass
    monkeypatch.setattr(regress, "cases", lambda only=None: {n: None for n in only or ["projector/a", "projector/b"]})
    monkeypatch.setattr(regress, "time_ratios", lambda selected, rounds, threads: {
        n: Paired(next(draws), 0.0, {"wall": 1.0}, []) for n in selected})
    path = tmp_path / "baseline.json"
    assert regress.run_time(True, 9, 1, 0.1, None, path, passes=3) == 0
    m = json.loads(path.read_text())["machines"][machine(1)]
    assert m["history"] == {"projector/a": [1.0, 1.1, 1.2], "projector/b": [2.0, 2.0, 2.0]}
    ratios, noise = regress.summary(m["history"])
    assert ratios == {"projector/a": 1.1, "projector/b": 2.0} and noise["projector/b"] == 0
    # another occasion, appended: the median moves and the noise widens to what that occasion saw
    assert regress.run_time(True, 9, 1, 0.1, None, path, passes=1, append=True) == 0
    m = json.loads(path.read_text())["machines"][machine(1)]
    ratios, noise = regress.summary(m["history"])
    assert m["history"]["projector/a"] == [1.0, 1.1, 1.2, 1.5] and ratios["projector/b"] == 2.0
    assert noise["projector/b"] == pytest.approx(0.2) and ratios["projector/a"] == pytest.approx(1.15)
    # re-recording one case replaces its passes and keeps the others'
    draws = iter([3.0])
    assert regress.run_time(True, 9, 1, 0.1, ["projector/a"], path, passes=1) == 0
    m = json.loads(path.read_text())["machines"][machine(1)]
    assert m["history"] == {"projector/a": [3.0], "projector/b": [2.0, 2.0, 2.0, 2.4]}


def test_a_pass_another_machine_printed_is_added_from_its_log_to_cases_with_recorded_passes(tmp_path, monkeypatch,
                                                                                           capsys):
    """A hosted CI's runner cannot be timed again by hand: its printed `regress time` table is the pass to add."""
    from projector_bench import regress
    from projector_bench.costs.measure import Paired

    monkeypatch.setattr(regress, "cases", lambda only=None: {n: None for n in only or ["projector/a", "projector/b"]})
    # two recorded passes of a and b, a check of a, b, c, b again
    draws = iter([1.0, 2.0, 1.1, 2.1, 1.06, 2.6, 9.9, 2.6])
    monkeypatch.setattr(regress, "time_ratios", lambda selected, rounds, threads: {
        n: Paired(next(draws), 0.0, {"wall": 1.0}, [1.0] * 9) for n in selected})
    path = tmp_path / "baseline.json"
    assert regress.run_time(True, 9, 1, 0.1, None, path, passes=2) == 0
    monkeypatch.setattr(regress, "cases",
                        lambda only=None: {n: None for n in only or ["projector/a", "projector/b", "projector/c"]})
    capsys.readouterr()
    regress.run_time(False, 9, 1, 0.1, None, path)  # what CI prints: b is +26% (over 10%), c has no baseline
    log = tmp_path / "ci.log"
    log.write_text("pytest said things\n" + capsys.readouterr().out + "more\n")
    before = path.read_text()
    assert regress_main(["time", "--update", "--append", "--from-log", str(log), "--baseline", str(path)]) == 0
    history = json.loads(path.read_text())["machines"][machine(1)]["history"]
    # c: one pass is no noise estimate
    assert history == {"projector/a": [1.0, 1.1, 1.06], "projector/b": [2.0, 2.1, 2.6]}
    assert "left out 1 without recorded passes (projector/c)" in capsys.readouterr().out
    # a log of another machine class, or no table at all: one line, exit 2, the baseline untouched
    after = path.read_text()
    assert after != before
    for text, message in [(log.read_text().replace(machine(1), "Other CPU | 1 thread | torch 0"), "which"),
                          ("golden: 41 designs match\n", "not a `regress time` log: no 'time: <machine class>")]:
        log.write_text(text)
        assert regress_main(["time", "--update", "--append", "--from-log", str(log), "--baseline", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and path.read_text() == after


def test_a_confirmed_slowdown_fails_only_when_the_timed_code_is_not_the_baselines(tmp_path, monkeypatch, capsys):
    """The same slowdown, confirmed by the sign test: a tree that changed the timed code (a projector, a config,
    the timing code, torch or timm) fails; a tree with the baseline's code passes, saying it was the machine."""
    from projector_bench import regress
    from projector_bench.costs.measure import Paired

    monkeypatch.setattr(regress, "cases", lambda only=None: {n: None for n in only or ["projector/a", "projector/b"]})
    slow = {"projector/a": 1.0, "projector/b": 2.0}
    monkeypatch.setattr(regress, "time_ratios", lambda selected, rounds, threads: {
        n: Paired(slow[n], 0.0, {"wall": 1.0}, [slow[n]] * rounds) for n in selected})
    path = tmp_path / "baseline.json"
    assert regress.run_time(True, 9, 1, 0.1, None, path, passes=2) == 0
    assert json.loads(path.read_text())["machines"][machine(1)]["code"] == regress.timed_code()
    slow["projector/b"] = 2.5  # +25%, every round over its 10% limit
    capsys.readouterr()
    assert regress.run_time(False, 9, 1, 0.1, None, path) == 0
    out = capsys.readouterr().out
    assert "the same, so a slowdown here is the machine" in out and "projector/b: +25%, 18/18 rounds over" in out
    assert "not failed" in out and "FAILED" not in out
    monkeypatch.setattr(regress, "timed_code", lambda: "changed")
    assert regress.run_time(False, 9, 1, 0.1, None, path) == 1
    out = capsys.readouterr().out
    assert "time: FAILED: projector/b +25%" in out and "the machine" not in out
    # that run's log timed other code: it is not noise to add to the baseline
    log = tmp_path / "ci.log"
    log.write_text(out)
    before = path.read_text()
    assert regress_main(["time", "--update", "--append", "--from-log", str(log), "--baseline", str(path)]) == 2
    assert "timed other code (changed)" in capsys.readouterr().err and path.read_text() == before


def test_the_timed_code_hash_follows_projectors_and_configs_not_the_rest(tmp_path, monkeypatch):
    """Edits to what a case runs or is built from change `timed_code`; edits elsewhere (a report, the search) do not."""
    import shutil

    from projector_bench import regress
    from projector_bench.core import env, settings
    pkg, conf = tmp_path / "projector_bench", tmp_path / "conf"
    shutil.copytree(env.PACKAGE, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(settings.config_dir(), conf)
    # regress imported it by name
    monkeypatch.setattr(env.code_hash, "__kwdefaults__", {"root": pkg, "pattern": "*.py"})
    monkeypatch.setattr(regress, "config_dir", lambda: conf)
    first = regress.timed_code()
    (pkg / "analysis" / "report.py").write_text((pkg / "analysis" / "report.py").read_text() + "\n# a report change\n")
    (pkg / "search.py").write_text((pkg / "search.py").read_text() + "\n# a search change\n")
    assert regress.timed_code() == first
    for edited in (pkg / "models" / "projectors" / "ldpv2.py", conf / "projector" / "ldpv2.yaml",
                   pkg / "costs" / "measure.py"):
        text = edited.read_text()
        edited.write_text(text + "\n# edited\n")
        assert regress.timed_code() != first, edited
        edited.write_text(text)
    assert regress.timed_code() == first


def test_a_machine_class_without_a_baseline_is_said_and_not_timed(tmp_path, monkeypatch, capsys):
    from projector_bench import regress

    monkeypatch.setattr(regress, "cases", lambda only=None: {"projector/a": None})
    monkeypatch.setattr(regress, "time_ratios", lambda *a: pytest.fail("timed with nothing to compare it with"))
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"machines": {"Other CPU | 1 thread | torch 0": {"history": {}}}}))
    assert regress.run_time(False, 9, 1, 0.1, None, path) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"time: no baseline for this machine class ({machine(1)}); recorded classes: Other CPU")


def test_each_recorded_pass_and_the_second_pass_time_freshly_built_cases(tmp_path, monkeypatch):
    """One built int8 model can stay slower for as long as it lives (docs/results/2026-12-05-gate-new-cases.md):
    every recorded pass builds its cases anew, and the second pass times newly built suspects, not the first's."""
    from projector_bench import regress
    from projector_bench.costs.measure import Paired

    built: list[tuple[str, ...]] = []

    def cases(only=None):
        names = tuple(only or ["projector/a", "projector/b"])
        built.append(names)
        return {n: (n, len(built)) for n in names}  # a case tagged with the build it came from

    slow = {"projector/a": 1.0, "projector/b": 2.0}
    timed_builds: list[set[int]] = []

    def time_ratios(selected, rounds, threads):
        timed_builds.append({b for _, b in selected.values()})
        return {n: Paired(slow[n], 0.0, {"wall": 1.0}, [slow[n]] * rounds) for n in selected}

    monkeypatch.setattr(regress, "cases", cases)
    monkeypatch.setattr(regress, "time_ratios", time_ratios)
    path = tmp_path / "baseline.json"
    assert regress.run_time(True, 9, 1, 0.1, None, path, passes=3) == 0
    assert len(built) == 3 and timed_builds == [{1}, {2}, {3}]
    built.clear()
    timed_builds.clear()
    slow["projector/b"] = 2.5  # a suspect, confirmed by its second pass
    monkeypatch.setattr(regress, "timed_code", lambda: "changed")
    assert regress.run_time(False, 9, 1, 0.1, None, path) == 1
    assert built == [("projector/a", "projector/b"), ("projector/b",)] and timed_builds == [{1}, {2}]


def _refuse_work(*_a, **_k):
    raise AssertionError("the gate started timing or measuring before it had checked its input")


# (arguments, a gate file's content or None, exit code, words the one error line must hold); {file} is a gate file
# in tmp_path holding the content (a dict or list: its JSON; bytes: as is), {dir} a folder that does not exist,
# {tmp} tmp_path
GATE_CASES = [
    (["time", "--baseline", "{dir}/base.json"], None, 2, "{dir}/base.json does not exist"),
    (["all", "--baseline", "{dir}/base.json"], None, 2, "{dir}/base.json does not exist"),
    (["time", "--update", "--baseline", "{dir}/base.json"], None, 2, "the folder {dir} does not exist"),
    (["time", "--update", "--append", "--from-log", "{file}", "--baseline", "{dir}/base.json"], b"time: x\n", 2,
     "{dir}/base.json does not exist"),
    (["time", "--baseline", "{file}"], [], 2, "is not a timing baseline: it holds a list"),
    (["time", "--update", "--baseline", "{file}"], [], 2, "is not a timing baseline: it holds a list"),
    (["time", "--baseline", "{file}"], {"machines": []}, 2, "its 'machines' is a list"),
    (["time", "--baseline", "{file}"], {"machines": {"m": 5}}, 2, "machine class 'm' is an int"),
    (["time", "--baseline", "{file}"], {"machines": {"m": {"history": {"projector/a": []}}}}, 2,
     "'projector/a' is [], not a list of positive ratios"),
    (["time", "--baseline", "{file}"], {"machines": {"m": {"history": {}, "ms": {"projector/a": 3}}}}, 2,
     "'ms' of 'projector/a' is an int"),
    (["time", "--baseline", "{file}"], b"\xff\xfe", 2, "is not valid JSON"),
    (["time", "--update", "--baseline", "{tmp}"], None, 2, "is a folder: give the path of a timing baseline file"),
    (["time", "--baseline", "{file}"], b"{", 2, "is not valid JSON"),
    (["golden"], [], 2, "is not a golden table: it holds a list"),
    (["all"], {"projector/mlp": 5}, 2, "its entry 'projector/mlp' is an int (5), not a mapping"),
    (["golden"], {"projector/mlp": {"params": "6"}}, 2, "'projector/mlp' has params='6', not an integer"),
    (["bogus"], None, 2, "invalid choice: 'bogus'"),
    (["time", "--rounds", "abc"], None, 2, "argument --rounds: invalid int value: 'abc'"),
    (["time", "--frobnicate"], None, 2, "unrecognized arguments: --frobnicate"),
]


@pytest.mark.parametrize("args,content,code,words", GATE_CASES, ids=[c[3] for c in GATE_CASES])
def test_a_missing_or_misshapen_gate_file_is_one_line_exit_2_and_nothing_is_rewritten(
        args, content, code, words, tmp_path, monkeypatch, capsys):
    from projector_bench import regress

    monkeypatch.setattr(regress, "cases", _refuse_work)
    monkeypatch.setattr(regress, "time_ratios", _refuse_work)
    gate = tmp_path / "gate.json"
    if content is not None:
        gate.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
        if "--baseline" not in args and "--from-log" not in args:  # a golden table's case: the file is the golden one
            monkeypatch.setattr(regress, "GOLDEN", gate)
    fill = {"{file}": str(gate), "{dir}": str(tmp_path / "nonexistent"), "{tmp}": str(tmp_path)}
    for k, v in fill.items():
        args, words = [a.replace(k, v) for a in args], words.replace(k, v)
    before = {p: p.read_bytes() for p in (regress.GOLDEN, regress.BASELINE, gate) if p.exists()}
    got = regress_main(args)
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert got == code, err
    assert len(errors) == 1 and words in errors[0], err
    assert "Traceback" not in out + err
    assert {p: p.read_bytes() for p in before} == before and not (tmp_path / "nonexistent").exists()


def test_a_broken_gate_file_names_git_as_the_fix_and_a_mistyped_baseline_the_path(tmp_path, monkeypatch, capsys):
    from projector_bench import regress

    monkeypatch.setattr(regress, "cases", _refuse_work)
    golden = tmp_path / "golden.json"
    golden.write_text("[]")
    monkeypatch.setattr(regress, "GOLDEN", golden)
    assert regress_main(["golden"]) == 2
    assert f"restore it from git (git checkout -- {golden})" in capsys.readouterr().err
    golden.unlink()
    assert regress_main(["golden"]) == 2
    assert f"{golden} does not exist: restore it from git" in capsys.readouterr().err
    assert regress_main(["time", "--baseline", str(tmp_path / "base.json")]) == 2
    assert f"record one there with python -m projector_bench.regress time --update --baseline {tmp_path}" \
        in capsys.readouterr().err


def test_a_mistyped_baseline_path_fails_the_gate_from_the_command_line(tmp_path):
    """The exit code CI sees: `python -m projector_bench.regress` itself, not only `main`."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "projector_bench.regress", "time", "--baseline", str(tmp_path / "base.json")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stdout + r.stderr and "does not exist" in r.stderr
