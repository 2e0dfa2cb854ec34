"""`python -m projector_bench [overrides]`: measure designs as composed by Hydra from `conf/`.

    python -m projector_bench +sweep=ldp_vs_mlp          # the MobileVLM-shape sweep
    python -m projector_bench projector=ldp projector.out_dim=2560
    python -m projector_bench -m projector=mlp,ldp encoder=mobilevit_xs
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from .errors import ConfigError
from .runner import accuracy_table, run, summary


def config_dir() -> Path:
    """`conf/`: inside the installed wheel, or at the top of the source tree (editable install)."""
    packaged = Path(__file__).parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "conf"


GROUPS = ("projector", "encoder", "lm", "shape", "device", "sweep")


def check_group_choices(args: list[str]) -> None:
    """Fail fast, in one line, on a config-group option that has no file in `conf/<group>/`."""
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    except HydraException:
        return  # Hydra reports malformed overrides itself
    for o in overrides:
        group = o.key_or_group
        if group not in GROUPS or o.is_delete():
            continue
        try:
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        except HydraException:
            continue  # glob() needs the config loader: Hydra expands and checks it itself
        choices = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
        for v in values:
            if v not in choices:
                raise ConfigError(f"unknown {group} {v!r}; choose one of: {', '.join(choices)} (files in conf/{group}/)")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _main(cfg: DictConfig) -> None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        row = run(cfg)
    except ConfigError as e:  # the row could not be written: say so in one line
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if multirun:
        return  # PrintSweepTable prints the sweep's table at the end
    if row["status"] != "ok":
        print(f"error: {row['error']}", file=sys.stderr)
        raise SystemExit(1)
    df = pd.DataFrame([row])
    print(summary(df))
    if acc := accuracy_table(df):
        print(acc)


def main() -> None:
    """Console entry point."""
    try:
        check_group_choices(sys.argv[1:])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    _main()


if __name__ == "__main__":
    main()
