"""Latency on a device from each op's work and bytes moved: a per-op roofline (docs/devices.md).

`trace_ops(module, *inputs)` runs the module once under a `TorchDispatchMode` and records every aten op
as (kind, dtype, flops, bytes). Shapes are all it needs, so a large model can be traced on the `meta`
device without computing anything (CLIP ViT-L/14 in under a second). `Device.latency_ms(ops)` then sums,
op by op (not per model: a memory-bound GELU and a compute-bound GEMM are each limited by their own roof),

    t(op) = op_overhead + max(flops / (peak_flops[dtype] * eff_compute), bytes / (bandwidth * eff_memory))

Target devices are data (`conf/device/*.yaml`, every figure with its source). `host` is this machine,
its roofs measured by micro-benchmarks (`host_device()`), which lets the estimator be checked against
measured latency (`python -m projector_bench.bench` reports the median error over the shipped designs).
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry, sdpa_flop_count

from .budget import missing
from .env import code_hash, cpu_model
from .errors import ConfigError
from .lm import LanguageModel
from .measure import measure_latency
from .ops import Op, as_ops
from .util import atomic_write, torch_threads

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Device:
    """A device's roofs: peak throughput per dtype (GFLOP/s), DRAM bandwidth (GB/s), achievable fractions."""

    name: str
    kind: str
    peak_gflops: Mapping[str, float]
    memory_gbps: float
    eff_compute: float = 1.0
    eff_memory: float = 1.0
    op_overhead_us: float = 0.0
    kind_gflops: Mapping[str, float] = field(default_factory=dict)  # measured per-kind roofs (host only)

    def op_seconds(self, kind: str, dtype: str, flops: float, nbytes: float) -> float:
        """One op's time: the slower of its compute and its memory traffic, plus a fixed overhead."""
        peak = (self.kind_gflops.get(kind) if dtype == "fp32" else None) or self.peak_gflops.get(dtype) or self.peak_gflops["fp32"]
        compute = flops / (peak * 1e9 * self.eff_compute)
        memory = nbytes / (self.memory_gbps * 1e9 * self.eff_memory)
        return self.op_overhead_us * 1e-6 + max(compute, memory)

    def latency_ms(self, ops: Iterable[Sequence[Any]]) -> float:
        """Sum of per-op roofline times, in ms (`ops`: `Op`s or their stored lists)."""
        return 1e3 * sum(o.count * self.op_seconds(o.kind, o.dtype, o.flops, o.bytes) for o in as_ops(ops))

    def as_row(self) -> dict[str, Any]:
        return {f"device_{k}": v for k, v in asdict(self).items()}


def _seconds(fn, min_run_time: float = 0.3) -> float:
    """Median seconds of `fn()`, timed as `latency_ms` is (`measure.measure_latency`)."""
    return measure_latency(fn, threads=torch.get_num_threads(), min_run_time=min_run_time).median_ms / 1e3


def _gemm_gflops(n: int, dtype: torch.dtype) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / _seconds(lambda: a @ b) / 1e9


def _kind_gflops() -> dict[str, float]:
    """Achievable fp32 throughput of single kernels of each op kind, by our counting convention
    (2 per MAC; one op per element for elementwise and reduction ops), on a 1024-channel 24x24 map."""
    import torch.nn.functional as F

    x = torch.randn(1, 1024, 24, 24)
    pw, dw = torch.randn(1024, 1024, 1, 1), torch.randn(1024, 1, 3, 3)
    t = torch.randn(576, 2048)
    q = k = v = torch.randn(1, 8, 576, 64)
    return {
        "conv": 2 * 1024 * 1024 * 576 / _seconds(lambda: F.conv2d(x, pw)) / 1e9,
        "depthwise_conv": 2 * 9 * 1024 * 576 / _seconds(lambda: F.conv2d(x, dw, padding=1, groups=1024)) / 1e9,
        "attention": 4 * 8 * 576 * 576 * 64 / _seconds(lambda: F.scaled_dot_product_attention(q, k, v)) / 1e9,
        "elementwise": t.numel() / _seconds(lambda: F.gelu(t)) / 1e9,
        "reduction": t.numel() / _seconds(lambda: F.layer_norm(t, (2048,))) / 1e9,
    }


def calibrate_host(threads: int) -> Device:
    """Measure this machine's roofs with `threads` threads (about 8 s): the best fp32 and bf16 GEMM
    throughput of two sizes, an int8 dynamically quantized Linear, DRAM bandwidth (a 256 MiB copy), the
    fixed cost of one tiny op, and the achievable throughput of one kernel of each other op kind."""
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    with torch_threads(threads):
        with torch.inference_mode():
            fp32 = max(_gemm_gflops(n, torch.float32) for n in (1024, 2048))
            fp16 = max(_gemm_gflops(n, torch.bfloat16) for n in (1024, 2048))
            q, x = QLinear(2048, 2048), torch.randn(576, 2048)
            int8 = 2 * 576 * 2048 * 2048 / _seconds(lambda: q(x)) / 1e9
            src, dst = torch.empty(2**26), torch.empty(2**26)  # 256 MiB each
            bandwidth = 2 * _nbytes(src) / _seconds(lambda: dst.copy_(src)) / 1e9
            one = torch.ones(1)
            overhead = _seconds(lambda: torch.add(one, one)) * 1e6
            kinds = _kind_gflops()
    return Device("host", "host", {"fp32": fp32, "fp16": max(fp16, fp32), "int8": int8}, bandwidth, 1.0, 1.0, overhead, kinds)


def host_device(threads: int, cache_dir: str | Path | None = None) -> Device:
    """This machine's measured roofs, cached on disk by CPU, thread count and the code that measures them (and
    the torch and timm versions: `env.code_hash`)."""
    key = f"{cpu_model()}|{threads}|{code_hash('roofline.py', 'measure.py')}"
    path = Path(cache_dir) / "host_device.json" if cache_dir else None
    saved = read_json_cache(path)
    if key in saved:
        try:
            return Device(**saved[key])
        except TypeError as e:
            log.warning("host cache %s: the entry for this machine could not be read (%s); re-measuring it", path, e)
    dev = _calibrated(threads)
    if path:
        saved = read_json_cache(path)
        saved[key] = asdict(dev)
        write_json_cache(path, saved)
    return dev


def write_json_cache(path: Path, value: dict[str, Any]) -> None:
    """Replace `path` atomically with `value` as JSON (per-process temporary: workers may write at once)."""
    atomic_write(path, json.dumps(value, indent=1))


def read_json_cache(path: Path | None) -> dict[str, Any]:
    """A JSON object saved in the host cache, or {} (with a warning naming the file) when it is missing or
    cannot be read: the caller measures again and rewrites it."""
    if not path or not path.exists():
        return {}
    try:
        saved = json.loads(path.read_bytes())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
        return saved
    except (OSError, ValueError) as e:
        log.warning("host cache %s could not be read (%s); it is discarded and measured again", path, e)
        return {}


@cache
def _calibrated(threads: int) -> Device:
    return calibrate_host(threads)


def device_from_config(dev: Mapping[str, Any], threads: int, cache_dir: str | Path | None = None) -> Device:
    """A `Device` from a `conf/device/*.yaml` mapping; `kind: host` is measured here."""
    if dev.get("kind", "host") == "host":
        return host_device(threads, cache_dir)
    peaks = dict(dev.get("peak_gflops") or {})
    if not peaks.get("fp32") or not dev.get("memory_gbps"):
        raise ConfigError(f"device {dev.get('name')!r} needs peak_gflops.fp32 and memory_gbps; add them to conf/device/{dev.get('name')}.yaml")
    eff = dev.get("efficiency") or {}
    return Device(dev["name"], dev["kind"], peaks, float(dev["memory_gbps"]), float(eff.get("compute", 1.0)),
                  float(eff.get("memory", 1.0)), float(dev.get("op_overhead_us", 0.0)))


def _ops(value: Any) -> list | None:
    return value if isinstance(value, list) and value else None


def estimate_row(row: Mapping[str, Any], device: Device, lm: LanguageModel) -> dict[str, float]:
    """End-to-end estimates of one results row on `device`: the encoder, the projector, the LM's prefill of the
    projector's tokens plus the prompt (their sum is the time to first token), and the decode speed."""
    enc, proj = _ops(row.get("encoder_ops")), _ops(row.get("ops"))
    if proj is None:
        return {}
    out = {"est_encoder_ms": device.latency_ms(enc) if enc else math.nan, "est_projector_ms": device.latency_ms(proj),
           "est_prefill_ms": device.latency_ms(lm.prefill_ops(int(row["tokens_out"])))}
    out["est_vision_ms"] = out["est_projector_ms"] + (0.0 if math.isnan(out["est_encoder_ms"]) else out["est_encoder_ms"])
    out["est_ttft_ms"] = out["est_vision_ms"] + out["est_prefill_ms"]
    out["est_decode_tok_s"] = 1e3 / device.latency_ms(lm.decode_ops(int(row["tokens_out"]) + lm.prompt_tokens))
    # what `budget.params` and `budget.memory_mb` bound: the projector, plus the encoder when one was measured
    enc_params, enc_mem = row.get("encoder_params"), row.get("encoder_peak_mem_mb")
    out["design_params"] = row.get("params", math.nan) + (0.0 if missing(enc_params) else enc_params)
    out["design_mem_mb"] = row.get("peak_mem_mb", math.nan) + (0.0 if missing(enc_mem) else enc_mem)
    return out

