"""Compose the real configs: every group option, every projector config against the registry."""
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from projector_bench import create_projector, list_projectors
from projector_bench.core.settings import config_dir, group_choices
from projector_bench.core.util import projector_kwargs
from projector_bench.models.encoders import list_encoders

CONF = config_dir()


def options(group: str) -> list[str]:
    return group_choices(group)


def compose_cfg(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def test_config_dir_is_the_repo_conf():
    """From a source checkout (editable install, as here and in CI) the configs are the repository's own."""
    assert CONF == Path(__file__).resolve().parent.parent / "conf" and (CONF / "config.yaml").is_file()


def test_every_registered_projector_has_one_config_and_back():
    assert options("projector") == list_projectors()


@pytest.mark.parametrize("name", options("projector"))
def test_every_projector_config_builds_its_design(name):
    cfg = compose_cfg(f"projector={name}", "shape.out_dim=24")
    assert cfg.projector.name == name and cfg.projector.out_dim == 24
    p = create_projector(name, 16, cfg.projector.out_dim, **projector_kwargs(cfg.projector))
    assert p(torch.randn(1, 36, 16)).shape[-1] == 24


@pytest.mark.parametrize("name", [o for o in options("encoder") if o != "none"])
def test_every_encoder_config_names_a_timm_model(name):
    cfg = compose_cfg(f"encoder={name}")
    assert cfg.encoder.name == name and name in list_encoders()


def test_every_shape_and_device_composes():
    for shape in options("shape"):
        cfg = compose_cfg(f"shape={shape}")
        assert cfg.shape.tokens > 0 and cfg.projector.out_dim == cfg.shape.out_dim
    for device in options("device"):
        assert compose_cfg(f"device={device}").device.min_run_time > 0


def test_ordinary_overrides_work():
    cfg = compose_cfg("projector=ldp", "projector.out_dim=2560")
    assert cfg.projector.name == "ldp" and cfg.projector.out_dim == 2560 and cfg.projector.kernel == 3
    assert compose_cfg("shape=mobilevlm_3b").projector.out_dim == 2560


def test_ldp_vs_mlp_sweep_is_a_multirun_over_the_designs():
    cfg = compose_cfg("+sweep=ldp_vs_mlp", hydra=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    swept = cfg.hydra.sweeper.params.projector.split(",")
    assert {"linear", "mlp", "mlp_int8", "ldp", "ldpv2"} <= set(swept) and set(swept) <= set(list_projectors())
    assert cfg.shape.tokens == 576 and cfg.shape.in_dim == 1024 and cfg.shape.out_dim == 2048


def test_mobilevit_variants_sweep_measures_costs_where_accuracy_is_taken():
    cfg = compose_cfg("+sweep=mobilevit_variants", "encoder=mobilevit_xs", hydra=True)
    params = cfg.hydra.sweeper.params
    assert set(params.encoder.split(",")) >= {"mobilevit_xxs", "mobilevit_xs", "mobilevit_s", "mobilevitv2_050",
                                              "mobilevitv2_100"}
    assert set(params.projector.split(",")) == {"mlp", "ldp"} and cfg.task._target_.endswith("shapes_vqa")
    assert cfg.accuracy.encoder.name == "mobilevit_xs" and cfg.encoder.stage == cfg.accuracy.encoder.stage
    assert cfg.encoder.img_size == cfg.task.img_size


def test_shared_keys_are_written_once():
    """Encoder options set only their name over `shared/encoder.yaml`; an int8 twin only its name over its float
    design (one registration, no file); the encoder-to-accuracy coupling is one file that the sweep and the
    search include."""
    for name in options("encoder"):
        spec = OmegaConf.load(CONF / "encoder" / f"{name}.yaml")
        assert list(spec.defaults) == ["/shared/encoder@_here_", "_self_"] and (
            set(spec) <= {"defaults", "name", "img_size"}), name
    for name in [o for o in options("projector") if o.endswith("_int8")]:  # no file: each is its float design's
        base = name.removesuffix("_int8")
        assert not (CONF / "projector" / f"{name}.yaml").exists(), name
        twin, float_ = compose_cfg(f"projector={name}").projector, compose_cfg(f"projector={base}").projector
        assert {**twin, "name": base} == dict(float_) and twin.name == name, name
    for path in ("sweep/mobilevit_variants.yaml", "search/encoder_space.yaml"):
        spec = OmegaConf.load(CONF / path)
        assert "/shared/encoder_at_accuracy" in spec.defaults and "accuracy" not in spec, path


@pytest.mark.parametrize("name", options("at_budget"))
def test_every_token_budget_job_keeps_its_ratio_on_both_grids(name):
    """`+sweep=token_budget`: each job's design makes 576, 144 or 64 tokens from CLIP's 24x24 and the same
    ratio from the 12x12 accuracy grid (shapes_vqa at 96 px), counts fixed for accuracy included."""
    from projector_bench.core.util import accuracy_projector_kwargs
    from projector_bench.jobs.validate import validate

    cfg = compose_cfg("+sweep=token_budget", f"+at_budget={name}")
    validate(cfg)
    assert cfg.task.img_size == 96 and cfg.encoder.name is None  # encoder none: synthetic tokens of the shape
    alone = compose_cfg(f"+at_budget={name}")  # the file alone is the same job as in the sweep
    assert OmegaConf.to_container(alone, resolve=True) == OmegaConf.to_container(cfg, resolve=True)
    cost = create_projector(cfg.projector.name, 32, 16, **projector_kwargs(cfg.projector)).num_tokens_out((24, 24))
    acc = create_projector(cfg.projector.name, 48, 16, **accuracy_projector_kwargs(cfg)).num_tokens_out((12, 12))
    assert cost in (576, 144, 64) and name.endswith(f"_{cost}") and cost == 4 * acc and cfg.token_budget == cost


def test_peg_ablation_sweeps_ldpv2s_peg_on_independent_and_related_scenes():
    """`+sweep=peg_ablation`: the token-budget job of `ldpv2` at 144, its PEG three ways, on two kinds of scene;
    each job validates and builds the PEG it names."""
    from projector_bench.jobs.validate import validate

    params = compose_cfg("+sweep=peg_ablation", hydra=True).hydra.sweeper.params
    assert params["+at_budget"] == "ldpv2_144" and params["projector.peg"].split(",") == ["default", "zero", "none"]
    for peg in ("default", "zero", "none"):
        cfg = compose_cfg("+sweep=peg_ablation", "+at_budget=ldpv2_144", f"projector.peg={peg}", "task.related=0.75")
        validate(cfg)
        p = create_projector(cfg.projector.name, 32, 16, **projector_kwargs(cfg.projector))
        assert cfg.token_budget == 144 and cfg.task.related == 0.75 and (p.peg is None) == (peg == "none")
        assert peg != "zero" or not p.peg.peg[0].weight.any()


def test_encoder_sweep_takes_every_efficient_encoder_at_stride_8_for_accuracy():
    from projector_bench.jobs.validate import validate
    from projector_bench.models.encoders import EFFICIENT

    sweep = OmegaConf.load(CONF / "sweep" / "encoders.yaml").hydra.sweeper.params
    assert set(EFFICIENT) <= set(sweep.encoder.split(",")) and (
        sweep.projector.split(",") == ["mlp", "ldpv2", "c_abstractor"])
    for enc in sweep.encoder.split(","):
        cfg = compose_cfg("+sweep=encoders", f"encoder={enc}", "projector=c_abstractor")
        validate(cfg)  # the accuracy grid is checked too: stage -3 of 64 px images is 8x8 for every one
        assert cfg.accuracy.encoder.name == enc and cfg.accuracy.encoder.stage == -3


def test_every_design_with_a_linear_layer_has_an_int8_twin_and_no_other_does():
    """`<design>_int8` is registered, with its config, for exactly the float designs that have a Linear layer to
    quantize; a design registered after the shipped ones gets its twin by `register_int8_twins()`."""
    from torch import nn

    from projector_bench import register_projector
    from projector_bench.models._registry import _PROJECTORS
    from projector_bench.models.projectors.int8 import register_int8_twins

    floats = [n for n in list_projectors() if n != "int8" and not n.endswith("_int8")]
    for name in floats:
        linear = any(isinstance(m, nn.Linear) for m in create_projector(name, 16, 24).modules())
        assert (f"{name}_int8" in list_projectors()) == linear == (f"{name}_int8" in options("projector")), name
    assert "ldp_seed_int8" not in list_projectors() and "mlp_int8" in list_projectors()  # convs only / a Linear
    register_projector(lambda in_dim, out_dim: nn.Linear(in_dim, out_dim), name="plugin_linear")
    try:
        assert register_int8_twins() == ["plugin_linear"] and "plugin_linear_int8" in list_projectors()
        assert register_int8_twins() == []  # registered once
    finally:
        _PROJECTORS.pop("plugin_linear"), _PROJECTORS.pop("plugin_linear_int8")
