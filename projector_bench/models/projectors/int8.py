"""`<design>_int8`: any design with its Linear layers dynamically quantized to int8.

Why `torch.ao.quantization.quantize_dynamic` and not torchao: on this x86 CPU (AVX-512 VNNI) the
fbgemm/x86 kernels behind `quantize_dynamic` run mlp at 576×1024→2048 faster than torchao 0.18's
`Int8DynamicActivationInt8WeightConfig` does in eager mode (it needs `torch.compile` to fuse).
`python -m projector_bench.bench` measures the speed-up over fp32 (docs/results/2026-11-22-bench.md). Weights are
int8 per tensor; activations are quantized per batch at run time; other layers (convs, norms) stay fp32.
Post-training quantization: the result is inference-only, so its parameters are frozen.
"""
import warnings
from functools import partial

import torch
from torch import Tensor, nn

from ...core.errors import ConfigError
from ...core.shapes import MOBILEVLM
from .._registry import create_projector, list_projectors, register_projector
from .base import Grid, Projector


def quantize_linear_int8(model: nn.Module) -> nn.Module:
    """Dynamically quantize every `nn.Linear` of a float model to int8 (a copy; `model` is kept)."""
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated, yet still the fastest on CPU
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8, inplace=False)


class Int8Projector(Projector):
    """`base` quantized; `float_twin` says how to build its float twin (to train it, then quantize)."""

    def __init__(self, base: Projector, float_twin: tuple[str, dict] | None = None) -> None:
        super().__init__(base.in_dim, base.out_dim)
        self.float_twin = float_twin
        if not any(isinstance(m, nn.Linear) for m in base.modules()):
            raise ConfigError(f"{type(base).__name__} has no Linear layer to quantize; "
                              "pick a design with one, e.g. mlp")
        self.needs_grid = base.needs_grid
        meta = any(p.is_meta for p in base.parameters())  # a config check's shapes-only build: nothing to quantize
        self.model = (base if meta else quantize_linear_int8(base)).requires_grad_(False)

    def num_tokens_out(self, grid: Grid) -> int:
        return self.model.num_tokens_out(grid)

    def forward(self, x: Tensor, grid: Grid | None = None) -> Tensor:
        return self.model(x, grid)


@register_projector
def int8(in_dim: int, out_dim: int, base: str = "mlp", **kwargs) -> Int8Projector:
    """Design `base` (built with `kwargs`) with int8 dynamically quantized Linear layers."""
    return Int8Projector(create_projector(base, in_dim, out_dim, **kwargs), (base, kwargs))


def _has_linear(name: str) -> bool:
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = create_projector(name, MOBILEVLM.vision_dim, MOBILEVLM.lm_dim)
    return any(isinstance(m, nn.Linear) for m in model.modules())


def register_int8_twins() -> list[str]:
    """Register `<design>_int8` for every registered float design with a Linear layer, and return those designs:
    in the registry, `int8` with that base; as a config (Hydra's ConfigStore, no file per twin), the design's own
    `conf/projector/<design>.yaml` under the twin's name. `projectors/__init__` calls it once every shipped
    design has registered itself; a design registered later gets its twin by calling it again."""
    from hydra.core.config_store import ConfigStore

    from ...core.settings import config_dir

    names = set(list_projectors())
    bases = [n for n in sorted(names) if n != "int8" and not n.endswith("_int8") and f"{n}_int8" not in names
             and _has_linear(n)]
    for base in bases:
        register_projector(partial(int8, base=base), name=f"{base}_int8")
        if (config_dir() / "projector" / f"{base}.yaml").exists():
            ConfigStore.instance().store(group="projector", name=f"{base}_int8",
                                         node={"defaults": [base, "_self_"], "name": f"{base}_int8"})
    return bases
