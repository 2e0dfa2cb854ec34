"""The README's Quick start is what CI runs, and what it says exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", text, re.DOTALL).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_quick_start_is_two_commands_and_ci_runs_the_test_one():
    run, test = quick_start()
    assert run.endswith("python -m projector_bench +sweep=ldp_vs_mlp") and test.endswith("pytest")
    assert test in (ROOT / ".ci" / "run").read_text().splitlines()  # then the regression gate


def test_documented_paths_exist():
    for path in ("conf/sweep/ldp_vs_mlp.yaml", "projector_bench/bench.py", "projector_bench/measure.py", "results", "reports"):
        assert (ROOT / path).exists(), path
