"""The one table of roof kernels: for each roof a device model holds, the kernel that measures it on MobileVLM's
shape, with its work by the roofline's counting convention (2 per MAC; one op per element for elementwise and
reduction ops; bytes moved for `bandwidth`). The eager host calibration (`roofline.calibrate_host`) and the
XNNPACK one (`deploy.calibrate_xnnpack`) time the same kernels."""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.shapes import MOBILEVLM

KINDS = ("conv", "depthwise_conv", "attention", "elementwise", "reduction")  # `Device.kind_gflops`' op kinds
HEADS, HEAD_DIM = 8, 64  # an attention probe as wide as a projector's


class Fn(nn.Module):
    """A function as a module (what `torch.export` lowers)."""

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *x: Tensor) -> Tensor:
        return self.fn(*x)


class Kernel(NamedTuple):
    """One roof's probe: `make()` builds the kernel as a module, applied to `inputs` at `precision`; a lowered
    program chains `chain` of them (cheap kernels a longer chain); `work` is FLOPs, or bytes for `bandwidth`."""

    make: Callable[[], nn.Module]
    inputs: tuple[Tensor, ...]
    precision: str
    chain: int
    work: float


def _self_attention(a: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(a, a, a)


def kernels() -> dict[str, Kernel]:
    """Every roof's kernel, its inputs freshly drawn."""
    s = MOBILEVLM
    x, t = torch.randn(1, s.vision_dim, s.grid, s.grid), torch.randn(s.tokens, s.lm_dim)
    q = torch.randn(1, HEADS, s.tokens, HEAD_DIM)
    big = torch.randn(2**24)  # 64 MiB: a streaming add reads two and writes one
    lin = partial(nn.Linear, s.lm_dim, s.lm_dim, bias=False)
    gemm = 2 * s.tokens * s.lm_dim * s.lm_dim
    c = s.vision_dim
    return {
        "fp32": Kernel(lin, (t,), "fp32", 4, gemm),
        "int8": Kernel(lin, (t,), "int8", 4, gemm),
        "conv": Kernel(partial(nn.Conv2d, c, c, 1, bias=False), (x,), "fp32", 4, 2 * c * c * s.tokens),
        "depthwise_conv": Kernel(partial(nn.Conv2d, c, c, 3, padding=1, groups=c, bias=False), (x,), "fp32", 4,
                                 2 * 9 * c * s.tokens),
        "attention": Kernel(partial(Fn, _self_attention), (q,), "fp32", 4, 4 * HEADS * s.tokens**2 * HEAD_DIM),
        "elementwise": Kernel(nn.GELU, (t,), "fp32", 16, t.numel()),
        "reduction": Kernel(partial(nn.LayerNorm, s.lm_dim), (t,), "fp32", 16, t.numel()),
        "bandwidth": Kernel(partial(Fn, torch.add), (big, big), "fp32", 4, 3 * big.numel() * big.element_size()),
        "overhead": Kernel(partial(Fn, torch.add), (torch.ones(1), torch.ones(1)), "fp32", 16, 0.0),  # time is the roof
    }
