"""The README's Quick start is what CI runs, and what the README names exists: its links, paths, config options
and modules. It stays a user's page (at most 8 KB); depth goes to docs/."""
import re
from pathlib import Path

import pytest

from projector_bench import list_projectors
from projector_bench.core.settings import GROUPS, group_choices

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def quick_start() -> list[str]:
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", README, re.DOTALL).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_quick_start_is_two_commands_and_ci_runs_the_test_one():
    run, test = quick_start()
    assert run.endswith("python -m projector_bench +sweep=ldp_vs_mlp") and test.endswith("pytest")
    assert test in (ROOT / ".ci" / "run").read_text().splitlines()  # then the second lane and the regression gate


def test_readme_is_a_users_page():
    assert len(README.encode()) <= 8 * 1024


@pytest.mark.parametrize("link", sorted(set(re.findall(r"\]\(((?:docs|conf|projector_bench|tests)/[^)#]*)", README))))
def test_every_link_resolves(link):
    assert (ROOT / link).exists(), link


@pytest.mark.parametrize(
    "path", sorted(set(re.findall(r"`((?:conf|projector_bench|tests|docs|\.ci)/[\w./-]+)`", README))))
def test_every_path_named_exists(path):
    assert (ROOT / path.rstrip("/")).exists(), path


def test_every_config_option_named_exists():
    named = {(g, v) for g, v in re.findall(rf"\+?({'|'.join(GROUPS)})=([\w.]+)", README)}
    missing = [f"{g}={v}" for g, v in named for v_ in [v] if v_ not in group_choices(g)]
    assert named and not missing, missing


def test_every_design_in_the_designs_table_is_registered_and_back():
    table = re.search(r"## The designs.*?\n(\|.*?)\n\n", README, re.DOTALL).group(1)
    names = {m for row in table.splitlines()[2:] for m in re.findall(r"`([a-z_0-9]+)`", row.split("|")[1])}
    registered = set(list_projectors())
    assert names - {"int8"} <= registered
    assert {n for n in registered if not n.endswith("_int8")} <= names  # every float design has its row
