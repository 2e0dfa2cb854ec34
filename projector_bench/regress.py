"""Regression checks for CI that do not cry wolf: `python -m projector_bench.regress [golden|time|all] [--update]`.

`golden` compares parameters, MACs and output tokens of every shipped design and encoder exactly with
`projector_bench/gate/golden.json`; `time` compares each forward's time, as a ratio to a reference GEMM timed
alongside, with the baseline recorded for this machine class in `projector_bench/gate/baseline.json`, and
fails only on a slowdown a sign test confirms, on a tree whose timed code is not the baseline's (`timed_code`).
How and why: docs/regression.md.
"""
from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, NamedTuple

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from scipy.stats import binomtest

from .core.env import code_hash, cpu_id
from .core.errors import ArgumentParser, ConfigError, exit_code
from .core.settings import config_dir, group_choices
from .core.shapes import MOBILEVLM
from .core.util import atomic_write, torch_threads
from .costs.measure import Paired, count_flops, count_params, paired, reference_kernel
from .jobs.runner import build_projector
from .models.encoders import Variant, create_encoder
from .models.projectors.base import token_grid

GATE = Path(__file__).resolve().parent / "gate"  # shipped with the package: the gate runs from a wheel too
GOLDEN, BASELINE = GATE / "golden.json", GATE / "baseline.json"
RECORD_PASSES = 5  # `time --update` measures this many passes


def _configs(group: str, names: list[str] | None = None) -> dict[str, DictConfig]:
    """The full config with `group=<name>` for each shipped option of `group` (or each of `names`)."""
    names = names if names is not None else [n.split("/", 1)[1] for n in case_names() if n.startswith(f"{group}/")]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return {n: compose("config", [f"{group}={n}", "task=none"]) for n in names}


@dataclass
class Case:
    """One timed forward: `fn()`, and what `golden` records of it."""

    fn: Callable[[], Any]
    facts: Callable[[], dict[str, int]]


def _projector_case(cfg: DictConfig) -> Case:
    tokens, in_dim = MOBILEVLM.tokens, MOBILEVLM.vision_dim
    torch.manual_seed(0)
    x = torch.randn(1, tokens, in_dim)
    p = build_projector(cfg.projector, in_dim)
    grid = token_grid(tokens, None, cfg.projector.name) if p.needs_grid else None

    def facts() -> dict[str, int]:
        with torch.inference_mode():
            out = p(x, grid)
        return {"params": count_params(p), "macs": count_flops(p, x, grid=grid).macs, "tokens_in": tokens,
                "tokens_out": out.shape[1], "out_dim": out.shape[-1]}

    return Case(lambda: p(x, grid), facts)


def _encoder_case(cfg: DictConfig) -> Case:
    e = cfg.encoder
    torch.manual_seed(0)
    enc = create_encoder(e.name, e.stage, "random", Variant.from_config(e)).eval()
    images = torch.randn(1, 3, e.img_size, e.img_size)

    def facts() -> dict[str, int]:
        with torch.inference_mode():
            tokens, _ = enc(images)
        return {"params": count_params(enc), "macs": count_flops(enc.model, images).macs, "img_size": e.img_size,
                "tokens_out": tokens.shape[1], "out_dim": tokens.shape[-1]}

    return Case(lambda: enc(images), facts)


def case_names() -> list[str]:
    """`projector/<name>` for every `conf/projector/*.yaml`; `encoder/<name>` for every `conf/encoder/*.yaml`
    but `none`."""
    return [f"{g}/{n}" for g in ("projector", "encoder") for n in group_choices(g) if (g, n) != ("encoder", "none")]


def cases(only: list[str] | None = None) -> dict[str, Case]:
    """Every case of `case_names()`, or those named in `only`, built."""
    out: dict[str, Case] = {}
    for group, make in (("projector", _projector_case), ("encoder", _encoder_case)):
        for name, cfg in _configs(group, [n.split("/", 1)[1] for n in only if n.startswith(f"{group}/")]
                                  if only else None).items():
            out[f"{group}/{name}"] = make(cfg)
    return out


def machine(threads: int) -> str:
    """The machine class a timing baseline is valid for: CPU model (with family/model/stepping numbers), threads,
    torch version."""
    return f"{cpu_id()} | {threads} thread{'s' * (threads > 1)} | torch {torch.__version__.split('+')[0]}"


TIMED_CODE = ("models/projectors", "models/_registry.py", "models/encoders.py", "costs/measure.py", "core/util.py",
              "regress.py")  # what a case runs


def timed_code() -> str:
    """Hash of everything the timed cases run or are built from (`TIMED_CODE`, every config under `conf/`) and of
    the torch and timm versions. A tree with the baseline's hash cannot have caused a slowdown: the machine did."""
    return f"{code_hash(*TIMED_CODE)[:8]}{code_hash('.', root=config_dir(), pattern='*.yaml')[:8]}"


def time_ratios(selected: dict[str, Case], rounds: int, threads: int) -> dict[str, Paired]:
    """`paired` of every case against the reference kernel."""
    ref = reference_kernel()
    with torch_threads(threads):
        return {name: paired(c.fn, ref, rounds, threads) for name, c in selected.items()}


def compare_golden(got: dict[str, dict[str, int]], want: dict[str, dict[str, int]]) -> list[str]:
    """One line per difference between measured facts and the golden table (empty: identical)."""
    lines = [f"{n}: not in the golden table" for n in got if n not in want]
    lines += [f"{n}: in the golden table but not shipped any more" for n in want if n not in got]
    for n in sorted(set(got) & set(want)):
        lines += [f"{n}: {k} {want[n].get(k)} -> {v}" for k, v in got[n].items() if want[n].get(k) != v]
    return lines


def limits(names: Iterable[str], tolerance: float, noise: dict[str, float] | None = None) -> dict[str, float]:
    """Each case's allowed growth: `tolerance`, or twice its noise between the baseline's passes when larger."""
    return {n: max(tolerance, 2 * (noise or {}).get(n, 0.0)) for n in names}


def regressions(now: dict[str, float], base: dict[str, float], limit: dict[str, float]) -> dict[str, float]:
    """Cases whose median ratio grew over the baseline by more than their limit: name -> now / baseline."""
    return {n: r / base[n] for n, r in now.items() if n in base and r / base[n] > 1 + limit[n]}


def rounds_over(p: Paired, limit: float) -> int:
    """How many of `p`'s rounds have a ratio over `limit`."""
    return sum(r > limit for r in p.ratios)


def sign_test(p: Paired, limit: float, alpha: float = 0.05) -> bool:
    """True when so many rounds exceed `limit` that a true median at or below it would give as many with
    probability under `alpha` (one-sided sign test): the slowdown stands out of this run's own noise."""
    return binomtest(rounds_over(p, limit), len(p.ratios), 0.5, alternative="greater").pvalue < alpha


class Verdict(NamedTuple):
    """`confirmed_regressions`' result: first-pass suspects and confirmed cases (name -> now / baseline), and
    the second pass's timings of the suspects."""

    suspects: dict[str, float]
    confirmed: dict[str, float]
    second: dict[str, Paired]


def confirmed_regressions(now: dict[str, Paired], base: dict[str, float], rounds: int, threads: int,
                          limit: dict[str, float]) -> Verdict:
    """Cases whose median ratio is over their limit in `now` (suspects), and those of them that a second pass of
    twice the rounds confirms: so many of its rounds over the limit (which puts its median over it too) that
    this run's noise is an unlikely cause (`sign_test`). A burst of load rarely lands twice on one case, nor on
    most of its rounds; a real slowdown does. The second pass times freshly built suspects (the caller still
    holds the first ones, so their memory is new): one built int8 model can stay a few % slower or faster for
    as long as it lives, which a second pass of the same one would confirm rather than re-draw."""
    suspects = regressions({n: p.median for n, p in now.items()}, base, limit)
    again = time_ratios(cases(list(suspects)), 2 * rounds, threads) if suspects else {}
    return Verdict(suspects, {n: p.median / base[n] for n, p in again.items()
                              if sign_test(p, base[n] * (1 + limit[n]))}, again)


def _second(p: Paired, base: float, limit: float) -> str:
    return f"{p.median / base - 1:+.0%}, {rounds_over(p, base * (1 + limit))}/{len(p.ratios)} rounds over"


def summary(history: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, float]]:
    """(ratios, noise) of recorded passes: each case's median, and its passes' largest deviation from it."""
    ratios = {n: statistics.median(h) for n, h in history.items()}
    return ratios, {n: max(abs(r / ratios[n] - 1) for r in h) for n, h in history.items()}


def _kind(value: Any) -> str:
    """`value`'s type and a short excerpt, for a message about a misshapen file: "a list ([])", "an int (5)"."""
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name} ({json.dumps(value)[:40]})"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def golden_problem(data: Any) -> str | None:
    """What keeps `data` from being a golden table (case -> field -> integer), or None."""
    if not isinstance(data, dict):
        return f"it holds {_kind(data)}, not a mapping of case -> facts"
    for name, facts in data.items():
        if not isinstance(facts, dict):
            return f"its entry {name!r} is {_kind(facts)}, not a mapping of field -> count"
        if bad := next((k for k, v in facts.items() if type(v) is not int), None):
            return f"its entry {name!r} has {bad}={facts[bad]!r}, not an integer"
    return None


def baseline_problem(data: Any) -> str | None:
    """What keeps `data` from being a timing baseline (`machines`: class -> {`history`: case -> recorded ratios,
    `ms`: case -> clock -> ms, ...}) that `run_time` and `append_logged` can read, or None."""
    if not isinstance(data, dict):
        return f"it holds {_kind(data)}, not a mapping with 'machines'"
    machines = data.get("machines", {})
    if not isinstance(machines, dict):
        return f"its 'machines' is {_kind(machines)}, not a mapping of machine class -> baseline"
    for key, m in machines.items():
        if not isinstance(m, dict) or not isinstance(m.get("history"), dict):
            what = _kind(m) if not isinstance(m, dict) else "a mapping without a 'history' mapping"
            return f"machine class {key!r} is {what}, not a mapping with a 'history' of case -> ratios"
        for n, h in m["history"].items():  # a median of none, or a ratio of 0, is no baseline
            if not isinstance(h, list) or not h or not all(_number(r) and r > 0 for r in h):
                return (f"machine class {key!r}: the history of {n!r} is {json.dumps(h)[:40]}, "
                        "not a list of positive ratios")
        ms = m.get("ms", {})
        if not isinstance(ms, dict):
            return f"machine class {key!r}: its 'ms' is {_kind(ms)}, not a mapping of case -> times"
        for n, t in ms.items():
            if not isinstance(t, dict) or not all(_number(v) for v in t.values()):
                return f"machine class {key!r}: the 'ms' of {n!r} is {_kind(t)}, not a mapping of clock -> ms"
    return None


def _fix(path: Path) -> str:
    """How to get a good gate file back: the committed ones from git, another baseline by recording it again."""
    if path.resolve() in (GOLDEN, BASELINE):
        return f"restore it from git (git checkout -- {path})"
    if not path.parent.is_dir():
        return "give the path of a recorded baseline"
    return ("give the path of a recorded baseline, or record one there with "
            f"python -m projector_bench.regress time --update --baseline {path}")


def _load(path: Path, problem: Callable[[Any], str | None], what: str, missing_ok: bool = False) -> dict[str, Any]:
    """The gate file at `path` (`what`: "golden table" or "timing baseline"), checked by `problem`; empty when
    it does not exist and `missing_ok`. `ConfigError` naming the file, the fault and the fix otherwise."""
    if not path.exists():
        if missing_ok:
            return {}
        raise ConfigError(f"{path} does not exist: {_fix(path)}")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder: give the path of a {what} file")
    try:
        data = json.loads(path.read_bytes())
    except OSError as e:
        raise ConfigError(f"{path} cannot be read ({e.strerror or e}); {_fix(path)}") from None
    except ValueError as e:  # JSONDecodeError, or bytes that are not text
        raise ConfigError(f"{path} is not valid JSON ({e}); {_fix(path)}") from None
    if (wrong := problem(data)) is not None:
        raise ConfigError(f"{path} is not a {what}: {wrong}; {_fix(path)}")
    return data


def _load_golden() -> dict[str, Any]:
    return _load(GOLDEN, golden_problem, "golden table")


def _load_baseline(path: Path, missing_ok: bool = False) -> dict[str, Any]:
    return _load(path, baseline_problem, "timing baseline", missing_ok)


def check_gate_files(what: str, update: bool, baseline: Path, from_log: Path | None = None) -> None:
    """`ConfigError` for a gate file the command would read or write but cannot, found before any work runs:
    a misshapen file is never rewritten, and a mistyped baseline path does not pass the gate by comparing nothing."""
    if what in ("golden", "all") and not update:  # `golden --update` writes the table from scratch
        _load_golden()
    if what not in ("time", "all"):
        return
    if update and from_log is None and not baseline.parent.is_dir():  # else minutes of timing are lost at the end
        raise ConfigError(f"--baseline {baseline}: the folder {baseline.parent} does not exist; create it, or give a "
                          "path in an existing folder")
    _load_baseline(baseline, missing_ok=update and from_log is None)  # recording may start a file; a log adds to one


_LOG_HEAD = re.compile(r"^time: (?P<key>.+?); ratio = ")
_LOG_CODE = re.compile(r"^time: timed code (\w+),")
_LOG_ROW = re.compile(r"^\s+(?P<case>(?:projector|encoder)/\S+)\s+(?:nan|[\d.]+)\s+->\s+(?P<now>[\d.]+) \(IQR")


def logged_pass(text: str) -> tuple[str, dict[str, float], str | None]:
    """(machine class, case -> first-pass median ratio, timed code if printed) from the output of a `regress time`
    check, e.g. a hosted CI's log; `ValueError` naming what is missing when `text` holds no such table."""
    keys = [m["key"] for line in text.splitlines() if (m := _LOG_HEAD.match(line))]
    if len(keys) != 1:
        raise ValueError(f"{'no' if not keys else len(keys)} 'time: <machine class>; ratio = ...' header line(s) "
                         "where one is needed: pass the output of one `python -m projector_bench.regress time` run")
    rows = {m["case"]: float(m["now"]) for line in text.splitlines() if (m := _LOG_ROW.match(line))}
    if not rows:
        raise ValueError("no timed cases under its header: pass the whole output of `regress time`")
    codes = [m[1] for line in text.splitlines() if (m := _LOG_CODE.match(line))]
    return keys[0], rows, codes[0] if codes else None


def append_logged(log: Path, baseline: Path) -> int:
    """Add the pass a `regress time` check printed (`log`) to its machine class's baseline, for the cases that have
    recorded passes (a case needs several occasions before it is compared, so new cases are left out)."""
    try:
        key, rows, code = logged_pass(log.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{log} is not a `regress time` log: {e}") from None
    data = _load_baseline(baseline)
    base = data.get("machines", {}).get(key)
    if base is None:
        raise ConfigError(f"{log} was timed on {key!r}, which {baseline} has no baseline for: record one there "
                          "with `regress time --update`")
    if code is not None and code != base.get("code"):
        raise ConfigError(f"{log} timed other code ({code}) than {baseline}'s ({base.get('code')}), so its slowdowns "
                          "may be that change's: add only a log of a run with the baseline's code")
    added = sorted(n for n in rows if n in base["history"])
    for n in added:
        base["history"][n].append(round(rows[n], 4))
    _write(baseline, data)
    skipped = sorted(set(rows) - set(added))
    print(f"time: added one pass of {len(added)} cases from {log} to {key} in {baseline}"
          + (f"; left out {len(skipped)} without recorded passes ({', '.join(skipped)})" if skipped else "")
          + ("; the log does not say which code it timed: make sure it was the baseline's" if code is None else ""))
    return 0


def _write(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def run_golden(update: bool) -> int:
    """Check (or with `update`, rewrite) the golden table; 0 when it holds."""
    want = {} if update else _load_golden()  # read before measuring: a broken table is found before any work
    got = {n: c.facts() for n, c in cases().items()}
    if update:
        _write(GOLDEN, got)
        print(f"golden: wrote {len(got)} designs and encoders to "
              f"{GOLDEN.relative_to(Path.cwd()) if GOLDEN.is_relative_to(Path.cwd()) else GOLDEN}")
        return 0
    diff = compare_golden(got, want)
    for line in diff:
        print(f"golden: {line}")
    if diff:
        print("golden: FAILED. If the change is deliberate: python -m projector_bench.regress golden --update, "
              "and commit projector_bench/gate/golden.json")
        return 1
    print(f"golden: {len(got)} designs and encoders match exactly (params, MACs, tokens)")
    return 0


def run_time(update: bool, rounds: int, threads: int, tolerance: float, only: list[str] | None,
             baseline: Path = BASELINE, passes: int = RECORD_PASSES, append: bool = False) -> int:
    """Check (or with `update`, record) this machine class's ratios in `baseline`; 0 when none regressed.
    Recording times `passes` passes, each of freshly built cases, which replace theirs, or with `append` join
    them (passes taken on other occasions widen the noise estimate to what those occasions saw)."""
    key = machine(threads)
    data = _load_baseline(baseline, missing_ok=update)
    if update:  # several passes, each of freshly built cases: the median is the baseline, their spread the noise
        timed: list[dict[str, Paired]] = []
        held: dict[str, Case] = {}
        for _ in range(passes):  # the last pass's cases are held while the next ones are built: new memory
            held = cases(only)
            timed.append(time_ratios(held, rounds, threads))
        selected = held
        old = data.get("machines", {}).get(key, {})
        history = dict(old.get("history", {}))  # cases not timed now keep theirs
        for n in selected:
            history[n] = history.get(n, []) * append + [round(t[n].median, 4) for t in timed]
        data.setdefault("machines", {})[key] = {
            "recorded": date.today().isoformat(), "rounds": rounds, "history": history, "code": timed_code(),
            "ms": old.get("ms", {}) | {n: {k: round(v, 3) for k, v in timed[-1][n].ms.items()} for n in selected}}
        _write(baseline, data)
        print(f"time: recorded {len(selected)} ratios "
              f"({passes} passes{', added to the earlier ones' if append and old else ''}) "
              f"for {key} in {baseline}")
        return 0
    base = data.get("machines", {}).get(key)
    if base is None:  # nothing to compare with: time nothing
        known = "; ".join(data.get("machines", {})) or "none"
        print(f"time: no baseline for this machine class ({key}); recorded classes: {known}. Ratios depend on the CPU, "
              "so none is compared: record one here with python -m projector_bench.regress time --update "
              f"--baseline {baseline}")
        return 0
    selected = cases(only)  # held until the second pass has built its own
    now = time_ratios(selected, rounds, threads)
    ratios, noise = summary(base["history"])
    limit = limits(now, tolerance, noise)
    suspects, confirmed, second = confirmed_regressions(now, ratios, rounds, threads, limit)
    code = timed_code()
    same = base.get("code") == code
    print(f"time: {key}; ratio = time / reference GEMM, median of {rounds} interleaved rounds; "
          f"tolerance +{tolerance:.0%}")
    print(f"time: timed code {code}, the baseline's {base.get('code', 'not recorded')}"
          f"{': the same, so a slowdown here is the machine, not this tree' if same else ''}")
    print(f"  {'case':34s} {'ratio: baseline -> now':>27s} {'change':>7s} {'limit':>5s}  "
          f"{'wall ms: baseline -> now':>24s} "
          f"{'change':>7s}  {'cpu ms':>7s}  verdict")
    over: dict[str, int] = {"wall": 0, "cpu": 0}
    for n, p in now.items():
        r, iqr, ms = p.median, p.iqr, p.ms
        b, bms = ratios.get(n), base.get("ms", {}).get(n, {})
        verdict = "new (no baseline)" if b is None else "REGRESSED" if n in confirmed else \
            f"ok (second pass: {_second(second[n], b, limit[n])})" if n in suspects else \
            "faster: --update to keep" if r / b < 1 - limit[n] else "ok"
        raw = {k: ms[k] / bms[k] - 1 if bms.get(k) else math.nan for k in ("wall", "cpu")}
        for k, v in raw.items():
            over[k] += v > tolerance
        print(f"  {n:34s} {b if b is not None else math.nan:8.3f} -> {r:7.3f} (IQR {iqr:5.3f}) "
              f"{(r / b - 1) * 100 if b else 0:+6.1f}% {limit[n]:5.0%}  "
              f"{bms.get('wall', math.nan):9.2f} -> {ms['wall']:9.2f}  "
              f"{raw['wall'] * 100:+6.1f}%  {raw['cpu'] * 100:+6.1f}%  {verdict}")
    print(f"time: over +{tolerance:.0%}: {len(suspects)} case(s) by ratio in the first pass, "
          f"{len(confirmed)} confirmed by the "
          "second; comparing raw times with the baseline's instead would have flagged "
          f"{over['wall']} (wall) and {over['cpu']} (cpu)")
    if confirmed and same:
        print("time: slower than the baseline in two passes, with the baseline's own code (" +
              "; ".join(f"{n}: {_second(second[n], ratios[n], limit[n])}" for n in confirmed) + "): noise of this "
              "occasion, not failed. Save this output and add the occasion: "
              "regress time --update --append --from-log LOG")
        return 0
    if confirmed:
        print("time: FAILED: " + ", ".join(f"{n} {v - 1:+.0%}" for n, v in confirmed.items()) +
              " slower than the baseline in two passes (" +
              "; ".join(f"{n}: {_second(second[n], ratios[n], limit[n])}" for n in confirmed) + ")")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """`golden`, `time` or `all` (both); `--update` records instead of checking. Bad input (arguments, a gate file
    missing or misshapen) is one `error:` line and exit 2, before any work runs."""
    return exit_code(_main, argv)


def _main(argv: list[str] | None) -> int:
    ap = ArgumentParser(prog="python -m projector_bench.regress", description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("golden", "time", "all"), nargs="?", default="all")
    ap.add_argument("--update", action="store_true", help="record the golden table / this machine's timing baseline")
    ap.add_argument("--passes", type=int, default=RECORD_PASSES, help="passes --update times (time)")
    ap.add_argument("--append", action="store_true",
                    help="with --update: add the passes to this machine class's recorded ones "
                         "(record on several occasions)")
    ap.add_argument("--from-log", type=Path, metavar="LOG",
                    help="with --update --append: add the pass a `regress time` check printed (a hosted CI's log, say) "
                         "instead of timing here")
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds per case (time)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tolerance", type=float, default=0.10, help="allowed growth of a ratio (0.10: 10%%)")
    ap.add_argument("--only", nargs="*", help="cases to time, e.g. projector/mlp encoder/mobilevit_xs")
    ap.add_argument("--baseline", type=Path, default=BASELINE,
                    help="timing baseline file (default: the committed one); "
                         "e.g. one --update wrote from the base branch")
    args = ap.parse_args(argv)
    if args.rounds < 3 or args.threads < 1 or args.passes < 1 or not 0 < args.tolerance < 1:
        raise ConfigError("--rounds must be >= 3, --threads >= 1, --passes >= 1 and 0 < --tolerance < 1")
    if args.append and not args.update:
        raise ConfigError("--append adds passes to a recorded baseline: use it with --update")
    if args.from_log and not (args.append and args.what == "time"):
        raise ConfigError("--from-log adds a logged pass to a recorded baseline: use it as "
                          "time --update --append --from-log LOG")
    check_gate_files(args.what, args.update, args.baseline, args.from_log)
    if args.from_log:
        return append_logged(args.from_log, args.baseline)
    unknown = sorted(set(args.only or []) - set(case_names()))
    if unknown:
        raise ConfigError(f"unknown case {unknown[0]!r}; choose from: {', '.join(case_names())}")
    status = 0
    if args.what in ("golden", "all"):
        status |= run_golden(args.update)
    if args.what in ("time", "all"):
        status |= run_time(args.update, args.rounds, args.threads, args.tolerance, args.only, args.baseline,
                           args.passes, args.append)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
