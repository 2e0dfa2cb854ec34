import logging

import pytest
import timm
import torch
from timm.models import build_model_with_cfg
from timm.models.byobnet import ByobNet

from projector_bench import ConfigError
from projector_bench.models.encoders import Variant, create_encoder, list_encoders


def test_family_includes_the_named_variants():
    assert {"mobilevit_xxs", "mobilevit_xs", "mobilevit_s", "mobilevitv2_050",
            "mobilevitv2_200"} <= set(list_encoders())


@pytest.mark.parametrize("name,channels,img,side", [
    ("mobilevit_xxs", 320, 224, 7), ("mobilevit_xxs", 320, 256, 8),
    # v2 blocks resize their input to a multiple of the patch size: 14 -> 16 before the last stride
    ("mobilevitv2_050", 256, 224, 8), ("mobilevitv2_050", 256, 256, 8),
])
def test_224_and_256_give_token_grids(name, channels, img, side):
    enc = create_encoder(name, weights="random").eval()
    tokens, grid = enc(torch.randn(2, 3, img, img))
    assert grid == (side, side) and tokens.shape == (2, side * side, channels) and enc.channels == channels


def test_an_earlier_stage_is_a_finer_grid():
    tokens, grid = create_encoder("mobilevit_xxs", stage=2, weights="random")(torch.randn(1, 3, 256, 256))
    assert grid == (32, 32) and tokens.shape == (1, 1024, 48)


def test_local_checkpoint_is_loaded_through_timm(tmp_path):
    full = timm.create_model("mobilevit_xxs").eval()
    path = tmp_path / "mobilevit_xxs.pth"
    torch.save(full.state_dict(), path)
    enc = create_encoder("mobilevit_xxs", weights=str(path)).eval()
    assert enc.weights_source == f"checkpoint:{path}"
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        tokens, _ = enc(x)
        expected = full.forward_intermediates(x, indices=1, intermediates_only=True)[-1]
    assert torch.allclose(tokens, expected.flatten(2).transpose(1, 2), atol=1e-5)


def test_auto_without_cached_weights_falls_back_to_random_with_a_notice(caplog, monkeypatch):
    monkeypatch.setattr("projector_bench.models.encoders._cached_pretrained_file", lambda name: None)
    monkeypatch.setattr("projector_bench.models.encoders._hub_reachable", lambda: False)
    with caplog.at_level(logging.WARNING):
        enc = create_encoder("mobilevit_xxs", weights="auto")
    assert enc.weights_source == "random"
    assert "no pretrained weights in the local cache" in caplog.text and len(caplog.records) == 1


def test_auto_fetches_when_the_hub_is_reachable(monkeypatch):
    calls = []
    monkeypatch.setattr("projector_bench.models.encoders._cached_pretrained_file", lambda name: None)
    monkeypatch.setattr("projector_bench.models.encoders._hub_reachable", lambda: True)
    real = timm.create_model

    def fake_create(name, pretrained=False, **kw):  # stands in for the download this machine cannot make
        calls.append(pretrained)
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr("projector_bench.models.encoders.timm.create_model", fake_create)
    assert create_encoder("mobilevit_xxs", weights="auto").weights_source == "timm-pretrained" and calls == [True]


def test_auto_uses_cached_weights(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    torch.save(timm.create_model("mobilevit_xxs").state_dict(), path)
    monkeypatch.setattr("projector_bench.models.encoders._cached_pretrained_file", lambda name: str(path))
    assert create_encoder("mobilevit_xxs", weights="auto").weights_source == "timm-pretrained"


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "mobilevit_xxxl"},
     "unknown encoder 'mobilevit_xxxl'; choose one of: none, efficientvit_b1, fastvit_mci0"),
    ({"name": "mobilevit_xxs", "weights": "/no/such.pth"}, "encoder checkpoint '/no/such.pth' does not exist"),
    ({"name": "mobilevit_xxs", "stage": 7, "weights": "random"}, "has no stage 7"),
])
def test_bad_encoder_input_is_a_clear_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        create_encoder(**kwargs)


def test_auto_falls_back_to_random_when_the_fetch_fails(monkeypatch, caplog):
    monkeypatch.setattr("projector_bench.models.encoders._cached_pretrained_file", lambda name: None)
    monkeypatch.setattr("projector_bench.models.encoders._hub_reachable", lambda: True)
    real = timm.create_model

    def failing(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("connection reset")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr("projector_bench.models.encoders.timm.create_model", failing)
    with caplog.at_level(logging.WARNING):
        assert create_encoder("mobilevit_xxs", weights="auto").weights_source == "random"
    assert "could not be fetched (OSError)" in caplog.text
    with pytest.raises(ConfigError, match="could not load weights for encoder mobilevit_xxs"):
        create_encoder("mobilevit_xxs", weights="pretrained")


def _blocks(enc, kind):
    return [m for m in enc.modules() if type(m).__name__ == kind]


@pytest.mark.parametrize("name,block,layer", [("mobilevit_xs", "MobileVitBlock", "Block"),
                                              ("mobilevitv2_050", "MobileVitV2Block", "LinearTransformerBlock")])
def test_a_custom_variant_changes_width_depth_and_patch_through_timms_config(name, block, layer):
    named = create_encoder(name, stage=2, weights="random")
    custom = create_encoder(name, stage=2, weights="random", variant=Variant(width=0.5, depth=2.0, patch_size=4))
    assert custom.name == f"{name}-w0.5-d2-p4" and named.name == name
    assert custom.channels == named.channels // 2  # timm's width_factor on every stage
    # transformer depth of stage 2's block, doubled
    assert len(_blocks(custom, layer)) == 2 * len(_blocks(named, layer))
    [b] = _blocks(custom, block)
    assert tuple(b.patch_size) == (4, 4) and tuple(_blocks(named, block)[0].patch_size) == (2, 2)
    tokens, grid = custom.eval()(torch.randn(2, 3, 64, 64))
    assert grid == (8, 8) and tokens.shape == (2, 64, custom.channels)
    if name == "mobilevit_xs":  # v1 states its transformer width: scaled too (96 -> 48)
        assert b.conv_1x1.out_channels == 48


def test_a_variant_that_builds_the_named_model_is_the_named_model():
    assert Variant.from_config({"name": "mobilevit_xs", "patch_size": 2, "depth": 1.1}) == Variant()
    assert Variant.from_config({"name": "mobilevit_xs", "patch_size": 4}).label("mobilevit_xs") == "mobilevit_xs-p4"
    assert Variant.from_config({"name": "mobilevit_xs", "patch_size": 2, "width": 0.5}).label("mobilevit_xs") == (
        "mobilevit_xs-w0.5")


@pytest.mark.parametrize("bad", [{"width": 0}, {"depth": "deep"}, {"patch_size": 1.5}, {"patch_size": 0}])
def test_a_bad_variant_is_a_clear_error(bad):
    with pytest.raises(ConfigError, match="width and depth are positive multipliers, patch_size a positive integer"):
        Variant.from_config({"name": "mobilevit_xs", **bad})


def test_a_custom_variant_has_no_published_weights_but_loads_its_own_checkpoint(tmp_path):
    v = Variant(width=0.75, patch_size=4)
    assert create_encoder("mobilevit_xxs", weights="auto", variant=v).weights_source == "random"
    with pytest.raises(ConfigError, match="mobilevit_xxs-w0.75-p4 has no pretrained weights"):
        create_encoder("mobilevit_xxs", weights="pretrained", variant=v)
    full = build_model_with_cfg(ByobNet, "mobilevit_xxs", False, model_cfg=v.model_cfg("mobilevit_xxs")).eval()
    path = tmp_path / "custom.pth"
    torch.save(full.state_dict(), path)
    enc = create_encoder("mobilevit_xxs", weights=str(path), variant=v).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        expected = full.forward_intermediates(x, indices=1, intermediates_only=True)[-1]
        assert torch.allclose(enc(x)[0], expected.flatten(2).transpose(1, 2), atol=1e-5)


@pytest.mark.parametrize("stage", [0, 2, -1])
def test_mobilenetv4_at_a_stage_runs_only_what_it_returns_and_counts_what_runs(stage):
    """timm's MobileNetV3Features runs every block for any stage; the encoder keeps only those up to the stage:
    the same tokens as timm's, and the MAC count agrees with torch's own (nothing runs uncounted)."""
    from projector_bench.costs.measure import count_flops

    enc = create_encoder("mobilenetv4_conv_small", stage, "random").eval()
    ref = timm.create_model("mobilenetv4_conv_small", features_only=True, out_indices=(stage,)).eval()
    ref.load_state_dict(enc.model.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        tokens, _ = enc(x)
        fc = count_flops(enc, x)
        assert torch.allclose(tokens, ref(x)[-1].flatten(2).transpose(1, 2))
    assert len(enc.model.blocks) == max(enc.model._stage_out_idx) and fc.torch_flops == 2 * fc.matmul_macs
