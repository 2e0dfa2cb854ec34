"""Every registered design against the contract, and the faithful ones against their sources."""
import pytest
import torch
from timm.layers import LayerNormAct2d
from torch import nn
from torchvision.models.mobilenetv3 import InvertedResidual

from projector_bench import ConfigError, create_projector, list_projectors
from projector_bench.costs.measure import count_params
from projector_bench.models.projectors.ldp_seed import LDP as SeedLDP

DESIGNS = list_projectors()
FLOAT_DESIGNS = [n for n in DESIGNS if not n.endswith("int8")]
IN, OUT = 24, 32  # tiny dims: the whole zoo runs in seconds


@pytest.mark.parametrize("name", DESIGNS)
@pytest.mark.parametrize("grid", [(6, 6), (4, 6), (5, 5)])
def test_contract_shapes_and_token_counts(name, grid):
    p = create_projector(name, IN, OUT).eval()
    x = torch.randn(2, grid[0] * grid[1], IN)
    factor = {"pixel_shuffle": 2, "tokenpacker": 2}.get(name.removesuffix("_int8"), 1)  # need whole 2x2 cells
    if grid[0] % factor or grid[1] % factor:
        with pytest.raises(ConfigError, match=f"divisible by {factor}"):
            p.num_tokens_out(grid)  # what the config check calls before any job
        with pytest.raises(ConfigError, match=f"divisible by {factor}"):
            p(x, grid)
        return
    with torch.inference_mode():
        y = p(x, grid)
    assert y.shape == (2, p.num_tokens_out(grid), OUT)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", FLOAT_DESIGNS)
def test_every_parameter_receives_a_gradient(name):
    p = create_projector(name, IN, OUT).train()
    params = dict(p.named_parameters())
    assert params and all(t.requires_grad for t in params.values())
    p(torch.randn(2, 36, IN)).square().mean().backward()
    missing = [n for n, t in params.items() if t.grad is None or not t.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("name", [n for n in DESIGNS if n.endswith("int8")])
def test_int8_designs_are_frozen_and_quantized(name):
    p = create_projector(name, IN, OUT)
    assert not any(t.requires_grad for t in p.parameters())
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in p.modules())
    assert not any(type(m) is nn.Linear for m in p.modules())


def test_int8_output_is_close_to_its_float_twin():
    torch.manual_seed(0)
    f = create_projector("mlp", 64, 64).eval()
    q = create_projector("int8", 64, 64, base="mlp")
    q.model.load_state_dict(torch.ao.quantization.quantize_dynamic(f, {nn.Linear}, dtype=torch.qint8).state_dict())
    x = torch.randn(1, 16, 64)
    with torch.inference_mode():
        err = (q(x) - f(x)).abs().max() / f(x).abs().max()
    assert err < 0.05


def test_int8_of_a_design_without_linear_layers_is_refused():
    with pytest.raises(ConfigError, match="no Linear layer"):
        create_projector("int8", 8, 8, base="ldp_seed")


@pytest.mark.parametrize("name,expected", [("mlp", 6_295_552), ("ldp", 18_936_832), ("ldpv2", 6_316_032)])
def test_official_parameter_counts_at_mobilevlm_1_7b_shapes(name, expected):
    # shared/REFERENCES.md: MobileVLM official code, 1024 -> 2048
    assert sum(t.numel() for t in create_projector(name, 1024, 2048).parameters()) == expected


@pytest.mark.parametrize("name", ["ldp", "ldpv2", "ldp_seed"])
def test_mobilevlm_grid_576_to_144(name):
    p = create_projector(name, 16, 16)
    assert p(torch.randn(1, 576, 16)).shape[1] == 144 == p.num_tokens_out((24, 24))


def test_ldp_structure_matches_the_official_block():
    p = create_projector("ldp", 16, 32)
    assert [type(m) for m in p.mlp] == [nn.Identity, nn.Linear, nn.GELU, nn.Linear]
    b1, b2 = p.mb_block[1], p.mb_block[2]
    assert isinstance(b1, InvertedResidual) and isinstance(b2, InvertedResidual)
    assert b1.use_res_connect and not b2.use_res_connect
    for block, stride in ((b1, 1), (b2, 2)):
        dw, se, pw = block.block  # expand ratio 1: no expansion conv
        assert dw[0].groups == 32 and dw[0].stride == (stride, stride) and dw[0].kernel_size == (3, 3)
        assert isinstance(dw[1], LayerNormAct2d) and isinstance(dw[2], nn.Hardswish)
        assert isinstance(se.scale_activation, nn.Hardsigmoid)
        assert pw[0].kernel_size == (1, 1) and isinstance(pw[1], LayerNormAct2d) and len(pw) == 2
    # official state-dict names (LDPBlock.mlp / LDPBlock.mb_block), so a MobileVLM checkpoint loads
    keys = set(p.state_dict())
    assert {"mlp.1.weight", "mlp.3.weight", "mb_block.1.block.0.0.weight", "mb_block.1.block.1.fc1.weight",
            "mb_block.2.block.2.1.weight"} <= keys


def test_ldpv2_is_mlp_then_pool_then_peg():
    p = create_projector("ldpv2", 8, 16).eval()
    assert set(p.state_dict()) == {"mlp.mlp.0.weight", "mlp.mlp.0.bias", "mlp.mlp.2.weight", "mlp.mlp.2.bias",
                                   "peg.peg.0.weight", "peg.peg.0.bias"}
    assert p.num_tokens_out((24, 24)) == 144 and p.num_tokens_out((8, 8)) == 16
    assert create_projector("ldpv2", 8, 16, pool=(12, 12)).num_tokens_out((8, 8)) == 144
    x = torch.randn(1, 576, 8)
    with torch.no_grad():
        h = p.mlp(x).transpose(1, 2).reshape(1, 16, 24, 24)
        h = nn.functional.adaptive_avg_pool2d(h, (12, 12))
        expected = (p.peg.peg[0](h) + h).flatten(2).transpose(1, 2)
        assert torch.allclose(p(x), expected, atol=1e-6)


def test_ldpv2_peg_ablations_start_as_mlp_then_pool():
    """`peg=zero` starts as `peg=none` (MLP, then pool) and still learns a PEG; `none` has no PEG weights."""
    torch.manual_seed(0)
    zero, none = create_projector("ldpv2", 8, 16, peg="zero"), create_projector("ldpv2", 8, 16, peg="none")
    none.load_state_dict({k: v for k, v in zero.state_dict().items() if not k.startswith("peg.")})
    x = torch.randn(2, 64, 8)
    assert torch.equal(zero(x), none(x)) and not any(k.startswith("peg.") for k in none.state_dict())
    zero(x).square().sum().backward()
    assert zero.peg.peg[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="ldpv2 peg='off' is not one of: default, zero, none"):
        create_projector("ldpv2", 8, 16, peg="off")


def test_ldp_seed_call_from_its_readme():
    assert SeedLDP(in_channels=128, out_channels=128)(torch.randn(1, 128, 64, 64)).shape == (1, 128, 32, 32)


def test_ldp_seed_works_when_channels_differ_and_uses_its_norms():
    ldp = SeedLDP(in_channels=64, out_channels=96)
    assert ldp(torch.randn(1, 64, 24, 24)).shape == (1, 96, 12, 12)
    calls = []
    for norm in (ldp.norm1, ldp.norm2):
        norm.register_forward_hook(lambda *a: calls.append(1))
    ldp(torch.randn(1, 64, 8, 8))
    assert len(calls) == 2


@pytest.mark.parametrize("name", ["ldp", "ldpv2", "ldp_seed", "ldp_int8"])
def test_grid_designs_reject_a_non_square_token_count(name):
    with pytest.raises(ConfigError, match="needs a square token grid but got 575 tokens"):
        create_projector(name, 8, 8)(torch.randn(1, 575, 8))


def test_wrong_grid_and_wrong_in_dim_are_clear_errors():
    p = create_projector("ldp", 8, 8)
    with pytest.raises(ConfigError, match="grid 4x4 holds 16 tokens but the input has 36"):
        p(torch.randn(1, 36, 8), (4, 4))
    with pytest.raises(ConfigError, match=r"expects tokens of shape \(B, N, 8\)"):
        p(torch.randn(1, 36, 9))


def test_mlp_depth_is_configurable_and_matches_llava_layout():
    p = create_projector("mlp", 8, 16, depth=3)
    assert [type(m).__name__ for m in p.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    with pytest.raises(ConfigError, match="depth must be >= 1"):
        create_projector("mlp", 8, 16, depth=0)


@pytest.mark.parametrize("reduce,side24,side8", [(1, 24, 8), (2, 12, 4), (4, 6, 2)])
def test_ldpv2_reduce_keeps_the_same_token_ratio_on_any_grid(reduce, side24, side8):
    p = create_projector("ldpv2", 8, 16, reduce=reduce).eval()
    assert p.num_tokens_out((24, 24)) == side24**2 and p.num_tokens_out((8, 8)) == side8**2
    with torch.no_grad():
        assert p(torch.randn(2, 64, 8)).shape == (2, side8**2, 16)
    assert create_projector("ldpv2_int8", 8, 16, reduce=reduce).num_tokens_out((24, 24)) == side24**2


def test_ldpv2_reduce_must_be_positive():
    with pytest.raises(ConfigError, match="ldpv2 reduce must be positive"):
        create_projector("ldpv2", 8, 16, reduce=0)


# The compressors open VLMs ship: exact sizes at each reference's configuration, 576 tokens of 1024 -> 2048.
@pytest.mark.parametrize("name,kwargs,part,expected", [
    ("c_abstractor", {"num_queries": 144}, None, 22_713_856),   # Honeybee: hidden 1024, depth 3, mlp_depth 2, pos_emb
    ("c_abstractor", {"num_queries": 64}, None, 22_713_856),    # the pool has no weights
    ("resampler", {}, "resampler", 63_019_008),                 # OpenFlamingo: depth 6, 8 x 64 heads, 64 latents, ff 4
    ("pixel_shuffle", {"scale": 0.5}, None, 12_595_200),        # InternVL: LayerNorm(4096), 4096 -> 2048 -> 2048
    ("pixel_shuffle", {"scale": 0.5, "norm": False, "depth": 1, "bias": False}, None, 4096 * 2048),  # Idefics3
    ("tokenpacker", {}, None, 15_747_072),                      # single-level: k/v projections from 1024, not 4 x 1024
    ("avgpool_mlp", {}, None, 6_295_552),                       # mlp2x_gelu's
])
def test_compressors_have_their_reference_sizes(name, kwargs, part, expected):
    p = create_projector(name, 1024, 2048, **kwargs)
    assert count_params(getattr(p, part) if part else p) == expected


def test_qwen_vl_adapter_has_qwen_vls_size_and_names():
    # Qwen-VL: ViT-bigG width 1664, LM 4096, 16x16 queries, 32 heads
    p = create_projector("qwen_vl_adapter", 1664, 4096)
    assert count_params(p) == 91_791_360 and p.num_tokens_out((32, 32)) == 256
    assert {"attn_pool.query", "attn_pool.pos_embed", "attn_pool.kv_proj.weight", "attn_pool.attn.in_proj_weight",
            "attn_pool.attn.out_proj.weight", "attn_pool.ln_q.weight", "attn_pool.ln_kv.weight", "ln_post.weight",
            "proj"} == set(k for k in p.state_dict() if not k.endswith("bias"))


def test_qwen_vl_adapter_positions_are_maes_2d_sincos_and_resampled_for_the_keys():
    import numpy as np

    from projector_bench.models.projectors.qwen_vl_adapter import sincos_2d

    side, dim = 5, 16  # the reference's get_2d_sincos_pos_embed, written out: column half first, then row half
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4))
    col, row = np.meshgrid(np.arange(side), np.arange(side))
    enc = [np.concatenate([np.sin(np.outer(g.ravel(), omega)), np.cos(np.outer(g.ravel(), omega))], 1)
           for g in (col, row)]
    assert np.allclose(sincos_2d(side, dim).numpy(), np.concatenate(enc, 1), atol=1e-6)
    p = create_projector("qwen_vl_adapter", 8, 16, grid_size=3, num_heads=2).eval()
    a, x = p.attn_pool, torch.randn(2, 35, 8)
    assert a.kv_proj.weight.std() < 0.03 and a.attn.out_proj.weight.std() < 0.03  # the reference's init: std 0.02
    with torch.inference_mode():  # any input grid: the table is resampled for the keys, not the values
        table = torch.nn.functional.interpolate(a.pos_embed.reshape(1, 3, 3, 16).permute(0, 3, 1, 2), size=(5, 7),
                                                mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(35, 16)
        kv = a.ln_kv(a.kv_proj(x))
        q = (a.ln_q(a.query) + a.pos_embed).expand(2, -1, -1)
        want = p.ln_post(a.attn(q, kv + table, kv, need_weights=False)[0]) @ p.proj
        assert torch.allclose(p(x, (5, 7)), want, atol=1e-5) and want.shape == (2, 9, 16)


@pytest.mark.parametrize("name,kwargs,tokens", [
    ("c_abstractor", {"num_queries": 144}, 144), ("c_abstractor", {"num_queries": 64}, 64),
    ("resampler", {}, 64), ("resampler", {"num_latents": 144}, 144),
    ("pixel_shuffle", {"scale": 0.5}, 144), ("pixel_shuffle", {"scale": 0.3333}, 64),
    ("pixel_shuffle", {"scale": 0.25}, 36),
    ("tokenpacker", {"scale_factor": 2}, 144), ("tokenpacker", {"scale_factor": 3}, 64),
    ("avgpool_mlp", {"pool": [12, 12]}, 144), ("avgpool_mlp", {"pool": [8, 8], "mode": "bilinear"}, 64),
    ("qwen_vl_adapter", {"grid_size": 12, "num_heads": 4}, 144),
    ("qwen_vl_adapter", {"grid_size": 8, "num_heads": 4}, 64),
])
def test_compressors_reach_the_token_budgets(name, kwargs, tokens):
    p = create_projector(name, 32, 48, **kwargs).eval()
    assert p.num_tokens_out((24, 24)) == tokens
    with torch.inference_mode():
        assert p(torch.randn(1, 576, 32)).shape == (1, tokens, 48)


def test_reference_module_names_so_their_state_dicts_load():
    c = create_projector("c_abstractor", 16, 24, hidden=16)
    assert {"pos_emb", "net.0.b1.conv1.conv.weight", "net.2.b3.conv3.conv.weight", "readout.0.weight",
            "readout.2.weight"} <= set(c.state_dict())
    r = create_projector("resampler", 16, 24, depth=2, heads=2, dim_head=8)
    assert {"latents", "layers.1.0.to_kv.weight", "layers.1.0.norm_media.weight", "layers.1.1.3.weight",
            "norm.weight"} <= set(r.resampler.state_dict())
    t = create_projector("tokenpacker", 16, 24)
    assert {"q_proj_1.weight", "k_proj_1.2.weight", "ln_v_1.weight", "clip_attn.in_proj_weight",
            "mlp.2.weight"} <= set(t.state_dict())


def test_c_abstractor_exports_its_position_resampling_as_the_matrix_timm_resamples_with():
    from timm.layers import resample_abs_pos_embed

    from projector_bench.models.projectors.c_abstractor import resample_matrix

    table = torch.randn(1, 576, 5)  # learned for 24x24
    for grid in [(8, 8), (6, 10), (7, 7), (32, 32)]:
        want = resample_abs_pos_embed(table, list(grid), [24, 24], num_prefix_tokens=0)
        torch.testing.assert_close(torch.from_numpy(resample_matrix((24, 24), grid)) @ table, want, atol=1e-5, rtol=0)
    c = create_projector("c_abstractor", 16, 24, hidden=16).eval()
    x = torch.randn(1, 64, 16)
    exported = torch.export.export(c, (x,))  # no antialiased bicubic op in the graph
    assert not any("upsample" in str(n.target) for n in exported.graph.nodes)
    torch.testing.assert_close(exported.module()(x), c(x), atol=1e-5, rtol=1e-4)


def test_pixel_shuffle_folds_neighbours_in_internvls_order():
    from projector_bench.models.projectors.pixel_shuffle import pixel_shuffle

    x = torch.arange(4 * 4 * 2).reshape(1, 16, 2)  # token (i, j) holds channels [2(4i+j), 2(4i+j)+1]
    out = pixel_shuffle(x, (4, 4), 2)
    # InternVL (ps_version v2) folds neighbouring columns first, then rows: the first output token is the
    # top-left 2x2 block with the channels of (0,0), (0,1), (1,0), (1,1) in turn
    assert out.shape == (1, 4, 8) and out[0, 0].tolist() == [0, 1, 2, 3, 8, 9, 10, 11]


def test_tokenpacker_queries_see_only_their_own_region():
    p = create_projector("tokenpacker", 8, 12).eval()
    x = torch.randn(1, 36, 8)
    y = x.clone()
    y[0, 35] += 5.0  # the bottom-right token: in the last 2x2 region only
    with torch.inference_mode():
        changed = (p(x, (6, 6)) - p(y, (6, 6))).abs().amax(-1)[0]
    assert changed[-1] > 0 and torch.all(changed[:-1] == 0)
