"""Every aten op of one forward, as (kind, dtype, FLOPs, bytes moved): what the roofline prices (docs/devices.md).

`trace_ops(module, *inputs)` runs the module once under a `TorchDispatchMode` and records every aten op;
shapes are all it needs, so a large model can be traced on the `meta` device without computing anything
(`trace_timm_on_meta`: CLIP ViT-L/14 in about a second). Identical ops are folded into one `ops.Op`.
"""
from __future__ import annotations

import math
from collections import Counter
from functools import cache
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry, sdpa_flop_count

from ..core.ops import Op

_ATTENTION = {"_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
              "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"}
_REDUCTION = {"mean", "sum", "amax", "amin", "var_mean", "_softmax", "_safe_softmax", "softmax", "native_layer_norm",
              "_adaptive_avg_pool2d", "avg_pool2d", "_log_softmax"}
_FREE = {torch.ops.aten._unsafe_view, torch.ops.aten.detach}  # views that are not flagged as views


def _dtype(tensors: list[Tensor], quantized: bool) -> str:
    if quantized:
        return "int8"
    for t in tensors:
        if t.is_floating_point():
            return "fp16" if t.dtype in (torch.float16, torch.bfloat16) else "fp32"
    return "fp32"


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _flops_and_kind(name: str, func: Any, args: tuple, kwargs: dict, out: Any, tensors_in: list[Tensor],
                    tensors_out: list[Tensor]) -> tuple[str, int]:
    out_shape = tensors_out[0].shape if tensors_out else None
    if name == "linear_dynamic":  # quantized::linear_dynamic(x, packed_weight): 2 ops per int8 MAC
        return "matmul", 2 * math.prod(args[0].shape) * out_shape[-1]
    if name in _ATTENTION:
        return "attention", sdpa_flop_count(*(a.shape for a in args[:3]))
    if func.overloadpacket in flop_registry:  # torch's own formulas: matmuls and convolutions, 2 per MAC
        flops = int(flop_registry[func.overloadpacket](*args, out_val=out, **kwargs))
        if name in ("convolution", "_convolution"):
            return ("depthwise_conv" if args[8] > 1 else "conv"), flops
        return "matmul", flops
    if name in _REDUCTION:
        return "reduction", tensors_in[0].numel() if tensors_in else 0
    return "elementwise", math.prod(out_shape) if out_shape is not None else 0


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "is_view", False) or func.overloadpacket in _FREE:
            return out  # metadata only: no work, no bytes
        name = func.overloadpacket.__name__
        tensors_in = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, Tensor)]
        tensors_out = [o for o in tree_flatten(out)[0] if isinstance(o, Tensor)]
        quantized = func.namespace == "quantized"
        kind, flops = _flops_and_kind(name, func, args, kwargs, out, tensors_in, tensors_out)
        moved = sum(_nbytes(t) for t in {id(t): t for t in tensors_in + tensors_out}.values())
        if quantized and name == "linear_dynamic":  # the packed int8 weight is a ScriptObject: add its bytes
            moved += args[0].shape[-1] * tensors_out[0].shape[-1]
        self.ops[(kind, _dtype(tensors_in, quantized), int(flops), int(moved))] += 1
        return out


def trace_ops(module: nn.Module, *inputs: Tensor, **kwargs: Any) -> list[Op]:
    """Every aten op of one inference forward, identical ops folded into one `Op` (views are free)."""
    rec = _Recorder()
    with torch.no_grad(), rec:  # not inference_mode: there composite ops (linear, conv2d) would not decompose
        module(*inputs, **kwargs)
    return [Op(k, d, f, b, n) for (k, d, f, b), n in sorted(rec.ops.items(), key=lambda kv: -kv[0][2])]


@cache
def trace_timm_on_meta(name: str, img_size: int) -> tuple[Op, ...]:
    """Ops of a timm model's `forward_features` at `img_size`, traced on the meta device (no weights, no compute)."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, img_size=img_size).eval()
        images = torch.empty(1, 3, img_size, img_size)
    return tuple(trace_ops(model.forward_features, images))
