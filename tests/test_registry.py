import pytest
from torch import nn

import projector_bench as pb
from projector_bench import ConfigError, create_projector, list_projectors, register_projector

REQUIRED = {"linear", "mlp", "mlp_int8", "bottleneck_transformer", "ldp", "ldpv2", "ldp_seed"}


def test_required_designs_are_registered():
    assert REQUIRED <= set(list_projectors())


def test_list_projectors_filters_by_pattern():
    assert list_projectors("ldp*") == ["ldp", "ldp_int8", "ldp_seed", "ldpv2", "ldpv2_int8"]
    assert list_projectors("*_int8") == sorted(n for n in list_projectors() if n.endswith("_int8"))
    assert list_projectors("nothing*") == []


def test_unknown_name_is_one_line_listing_the_choices():
    with pytest.raises(ConfigError) as e:
        create_projector("mpl", 8, 8)
    msg = str(e.value)
    assert "'mpl'" in msg and "mlp" in msg and "ldpv2" in msg and "\n" not in msg


@pytest.mark.parametrize("in_dim,out_dim", [(0, 8), (8, -1), (8.5, 8), (True, 8)])
def test_non_positive_or_non_integer_dims_are_rejected(in_dim, out_dim):
    with pytest.raises(ConfigError, match="must be a positive integer"):
        create_projector("mlp", in_dim, out_dim)


def test_none_kwargs_mean_the_default():
    assert len(create_projector("mlp", 8, 8, depth=None).mlp) == 3  # Linear, GELU, Linear


def test_register_new_design_without_touching_dispatch():
    @register_projector(name="_test_identity_linear")
    def _make(in_dim: int, out_dim: int) -> nn.Module:
        return pb.models.projectors.linear.LinearProjector(in_dim, out_dim)

    try:
        assert "_test_identity_linear" in list_projectors()
        assert create_projector("_test_identity_linear", 4, 6).proj.out_features == 6
        with pytest.raises(ValueError, match="registered twice"):
            register_projector(_make, name="_test_identity_linear")
    finally:
        pb.models._registry._PROJECTORS.pop("_test_identity_linear")


def test_every_module_in_projectors_is_imported():
    import pkgutil
    import sys

    names = {m.name for m in pkgutil.iter_modules(pb.models.projectors.__path__)}
    assert names > {"mlp", "ldp", "int8"} and all(
        f"projector_bench.models.projectors.{n}" in sys.modules for n in names)
