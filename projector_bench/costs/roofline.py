"""Latency on a device from each op's work and bytes moved: a per-op roofline (docs/devices.md).

Ops come from `trace.trace_ops` (every aten op of a forward, as kind, dtype, flops, bytes; re-exported here)
or, for the language model, from `lm.LanguageModel`. `Device.latency_ms(ops)` sums them op by op (not per
model: a memory-bound GELU and a compute-bound GEMM are each limited by their own roof),

    t(op) = op_overhead + max(flops / (peak_flops[dtype] * eff_compute), bytes / (bandwidth * eff_memory))

Target devices are data (`conf/device/*.yaml`, every figure with its source). Their peaks with assumed
efficiencies give the uncalibrated roofline bound; a profile with published measurements (`measured:`) is
calibrated on them (`calibrate.py`: efficiencies and overhead fitted by least squares, checked by
leave-one-out), and `estimate_row` reports both. `host` is this machine, its roofs measured by
micro-benchmarks (`host_device()`), which lets the estimator be checked against measured latency
(`python -m projector_bench.bench` reports the median error over the shipped designs).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cache, partial
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..core.budget import missing
from ..core.env import code_hash, cpu_model
from ..core.errors import ConfigError
from ..core.ops import as_ops
from ..core.settings import read_json_cache, write_json_cache
from ..core.util import torch_threads
from ..models.lm import LanguageModel
from ..models.projectors.int8 import quantize_linear_int8
from .calibrate import calibrate_config
from .kernels import KINDS, Kernel, kernels
from .measure import measure_latency
from .pricing import op_seconds, peak_for
from .trace import trace_ops, trace_timm_on_meta

__all__ = ["Device", "calibrate_host", "device_from_config", "estimate_row", "host_device", "trace_ops",
           "trace_timm_on_meta"]  # the tracers live in `trace`, imported from here too

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Device:
    """A device's roofs: peak throughput per dtype (GFLOP/s), DRAM bandwidth (GB/s), achievable fractions.

    A target calibrated on published measurements (`calibrate.py`) carries fitted fractions and overhead,
    `basis` saying so, and `bound`: the same device with the profile's assumed fractions (the uncalibrated
    roofline)."""

    name: str
    kind: str
    peak_gflops: Mapping[str, float]
    memory_gbps: float
    eff_compute: float = 1.0
    eff_memory: float = 1.0
    op_overhead_us: float = 0.0
    kind_gflops: Mapping[str, float] = field(default_factory=dict)  # measured per-kind roofs (host only)
    # fitted per-dtype fractions (else eff_compute)
    eff_compute_dtype: Mapping[str, float] = field(default_factory=dict)
    basis: str = ""  # "calibrated on ..." when fitted; see `estimate_basis`
    bound: Device | None = None  # a calibrated device's uncalibrated twin
    roofs: Mapping[str, str] = field(default_factory=dict)  # how the host's GEMM roofs were measured (host only)
    cpu_share: float = 1.0  # host only: the share of its fp32 GEMMs' wall time its threads had a core

    def op_seconds(self, kind: str, dtype: str, flops: float, nbytes: float) -> float:
        """One op's time (`pricing.op_seconds`): the slower of its compute and its memory traffic, plus a fixed
        overhead."""
        return float(op_seconds(flops, nbytes, peak_for(dtype, self.peak_gflops, kind, self.kind_gflops),
                                self.memory_gbps, self.eff_compute_dtype.get(dtype, self.eff_compute),
                                self.eff_memory, self.op_overhead_us))

    def latency_ms(self, ops: Iterable[Sequence[Any]]) -> float:
        """Sum of per-op roofline times, in ms (`ops`: `Op`s or their stored lists)."""
        return 1e3 * sum(o.count * self.op_seconds(o.kind, o.dtype, o.flops, o.bytes) for o in as_ops(ops))

    def as_row(self) -> dict[str, Any]:
        return {f"device_{k}": v for k, v in asdict(self).items()}

    def estimate_basis(self) -> str:
        """What this device's estimates are: measured roofs, calibrated on published points, or the bound."""
        if self.kind == "host":
            return "measured roofs (host)" + (", measured on a loaded machine (its threads had a core "
                                              f"{self.cpu_share:.0%} of the time)" if self.cpu_share < QUIET_SHARE
                                              else "")
        return self.basis or "roofline bound (assumed efficiencies; no published points for this device)"


SLOW_CALL_S = 0.25  # one call this long is timed once, not repeated (`_seconds`)
# square GEMMs, smallest first; a size whose call would exceed SLOW_CALL_S is skipped
GEMM_SIZES = (128, 256, 512, 1024, 2048)
HOST_CODE = ("costs/roofline.py", "costs/kernels.py", "costs/measure.py", "core/shapes.py")  # host roofs' key
QUIET_SHARE = 0.8  # a calibration whose threads had a core less of the time than this was taken on a loaded machine


class Timed(NamedTuple):
    """A calibration kernel's median seconds per call, and how many calls that median is of."""

    seconds: float
    calls: int


def _seconds(fn: Callable[[], Any], min_run_time: float = 0.3) -> Timed:
    """Seconds per call of `fn()`, bounded in time rather than in repetitions: a first call is timed, and a call
    slower than `SLOW_CALL_S` is that one measurement (a kernel far slower than the others costs one call, not
    a warm-up and a timed block of them); a faster one is timed as `latency_ms` is (`measure.measure_latency`)."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        fn()
        once = time.perf_counter() - t0
    if once > SLOW_CALL_S:
        return Timed(once, 1)
    lat = measure_latency(fn, threads=torch.get_num_threads(), min_run_time=min_run_time, warmup=1)
    return Timed(lat.median_ms / 1e3, lat.runs)


def _gemm_seconds(n: int, dtype: torch.dtype) -> Timed:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return _seconds(lambda: a @ b)


def _gemm(dtype: torch.dtype, start: int = GEMM_SIZES[0]) -> tuple[float, int, int]:
    """(best GFLOP/s, the size it was reached at, calls timed) of square `dtype` GEMMs, sizes in `GEMM_SIZES`
    order from `start`, stopping before a size whose one call would take longer than `SLOW_CALL_S` (predicted
    from the last size's time by n³): a dtype without a fast kernel here is measured small, and once. A large
    `start` keeps a dtype every CPU runs fast (fp32) off the small sizes, where a loaded machine's scheduling
    delays, not the kernel, would decide the rate and stop the growth."""
    best, at, calls, last = 0.0, 0, 0, None
    torch.ones(32, 32, dtype=dtype) @ torch.ones(32, 32, dtype=dtype)  # the dtype's first call sets its kernels up
    for n in (n for n in GEMM_SIZES if n >= start):
        if last is not None and last[1] * (n / last[0]) ** 3 > SLOW_CALL_S:
            break
        t = _gemm_seconds(n, dtype)
        calls += t.calls
        if (rate := 2 * n**3 / t.seconds / 1e9) > best:
            best, at = rate, n
        last = (n, t.seconds)
    return best, at, calls


def _kind_gflops(table: dict[str, Kernel]) -> dict[str, float]:
    """Achievable fp32 throughput of one kernel of each op kind (`kernels.KINDS`), eager."""
    rates = {}
    for k in KINDS:
        kernel = table[k]
        fn = partial(kernel.make().eval(), *kernel.inputs)
        rates[k] = kernel.work / _seconds(fn).seconds / 1e9
    return rates


def calibrate_host(threads: int) -> Device:
    """Measure this machine's roofs with `threads` threads, bounded in time on any CPU: the best fp32 and bf16
    GEMM throughput over `GEMM_SIZES` (a dtype with no fast kernel here is measured small and once, and its roof
    is then the fp32 one: a deployment would run such ops in fp32), an int8 dynamically quantized Linear, DRAM
    bandwidth (a 256 MiB copy), the fixed cost of one tiny op, and the achievable throughput of one kernel of
    each other op kind. `Device.roofs` says how each GEMM roof was measured."""
    with torch_threads(threads):
        with torch.inference_mode():
            # the load is judged on the fp32 GEMMs alone, which keep every thread busy on a quiet machine (a slow
            # bf16 kernel runs on one thread, a tiny op's timing is serial: counted, they read as a loaded machine)
            wall, cpu = time.perf_counter(), time.process_time()
            fp32, fp32_n, fp32_calls = _gemm(torch.float32, start=1024)
            share = min(1.0, (time.process_time() - cpu) / ((time.perf_counter() - wall) * threads))
            bf16, bf16_n, bf16_calls = _gemm(torch.bfloat16)
            table = kernels()
            gemm = table["int8"]
            q = quantize_linear_int8(gemm.make())  # as an `_int8` design's Linear layers are
            int8 = gemm.work / _seconds(partial(q, *gemm.inputs)).seconds / 1e9
            # eager's own bandwidth and overhead probes: an eager add would time its output's allocation, and
            # a module call Python's call overhead, which a tiny op's time is of the order of
            src, dst = torch.empty(2**26), torch.empty(2**26)  # 256 MiB each
            bandwidth = 2 * src.numel() * src.element_size() / _seconds(lambda: dst.copy_(src)).seconds / 1e9
            one = torch.ones(1)
            overhead = _seconds(lambda: torch.add(one, one)).seconds * 1e6
            kinds = _kind_gflops(table)
    roofs = {"fp32": f"fp32 GEMM {fp32:.1f} GFLOP/s at n={fp32_n} ({fp32_calls} calls)",
             "fp16": f"bf16 GEMM {bf16:.1f} GFLOP/s at n={bf16_n} ({bf16_calls} call{'s' * (bf16_calls > 1)})"
                     + (f", {fp32 / bf16:.0f}x slower than fp32: no fast bf16 kernel here, priced at the fp32 roof"
                        if bf16 < fp32 else "")}
    if share < QUIET_SHARE:
        log.warning("host roofs measured on a loaded machine (its threads had a core %.0f%% of the time): they will be "
                    "measured again, and the quieter measurement kept", 100 * share)
    return Device("host", "host", {"fp32": fp32, "fp16": max(bf16, fp32), "int8": int8}, bandwidth, 1.0, 1.0, overhead,
                  kinds, roofs=roofs, cpu_share=share)


def host_key(threads: int) -> str:
    """The host cache's key for this machine's roofs at `threads`: the CPU, the threads and the code that
    measures them."""
    return f"{cpu_model()}|{threads}|{code_hash(*HOST_CODE)}"


def host_device(threads: int, cache_dir: str | Path | None = None) -> Device:
    """This machine's measured roofs, cached on disk by CPU, thread count and the code that measures them (and
    the torch and timm versions: `env.code_hash`). Roofs measured on a loaded machine are measured again (once
    per process) and the quieter of the two measurements is kept: a busy first run does not fix them for good."""
    key = host_key(threads)
    path = Path(cache_dir) / "host_device.json" if cache_dir else None
    saved = read_json_cache(path)
    cached = None
    if key in saved:
        try:
            cached = Device(**saved[key])
        except TypeError as e:
            log.warning("host cache %s: the entry for this machine could not be read (%s); re-measuring it", path, e)
    if cached is not None and (cached.cpu_share >= QUIET_SHARE or threads in _REMEASURED):
        return cached
    _REMEASURED.add(threads)
    dev = _calibrated(threads)
    if cached is not None and cached.cpu_share >= dev.cpu_share:
        return cached
    if path:
        saved = read_json_cache(path)
        saved[key] = asdict(dev)
        write_json_cache(path, saved)
    return dev


_REMEASURED: set[int] = set()  # thread counts this process has calibrated: a loaded machine is measured again once


@cache
def _calibrated(threads: int) -> Device:
    return calibrate_host(threads)


def device_from_config(dev: Mapping[str, Any], threads: int, cache_dir: str | Path | None = None) -> Device:
    """A `Device` from a `conf/device/*.yaml` mapping: `kind: host` is measured here; a target with published
    points (`measured:`) is calibrated on them (`calibrate.py`) and keeps its uncalibrated twin in `bound`."""
    if dev.get("kind", "host") == "host":
        return host_device(threads, cache_dir)
    peaks = dict(dev.get("peak_gflops") or {})
    if not peaks.get("fp32") or not dev.get("memory_gbps"):
        raise ConfigError(f"device {dev.get('name')!r} needs peak_gflops.fp32 and memory_gbps; add them to "
                          f"conf/device/{dev.get('name')}.yaml")
    eff = dev.get("efficiency") or {}
    bound = Device(dev["name"], dev["kind"], peaks, float(dev["memory_gbps"]), float(eff.get("compute", 1.0)),
                   float(eff.get("memory", 1.0)), float(dev.get("op_overhead_us", 0.0)))
    cal = calibrate_config(dev)
    if cal is None:
        return bound
    f = cal.fitted
    return replace(bound, eff_compute=f.compute, eff_memory=f.memory, op_overhead_us=f.overhead_us,
                   eff_compute_dtype=dict(f.compute_dtype), basis=cal.basis, bound=bound)


def _ops(value: Any) -> list | None:
    return value if isinstance(value, list) and value else None


def _estimates(enc: list | None, proj: list, tokens_out: int, device: Device, lm: LanguageModel) -> dict[str, float]:
    out = {"est_encoder_ms": device.latency_ms(enc) if enc else math.nan, "est_projector_ms": device.latency_ms(proj),
           "est_prefill_ms": device.latency_ms(lm.prefill_ops(tokens_out))}
    out["est_vision_ms"] = out["est_projector_ms"] + (0.0 if math.isnan(out["est_encoder_ms"])
                                                      else out["est_encoder_ms"])
    out["est_ttft_ms"] = out["est_vision_ms"] + out["est_prefill_ms"]
    out["est_decode_tok_s"] = 1e3 / device.latency_ms(lm.decode_ops(tokens_out + lm.prompt_tokens))
    return out


def estimate_row(row: Mapping[str, Any], device: Device, lm: LanguageModel) -> dict[str, Any]:
    """End-to-end estimates of one results row on `device`: the encoder, the projector, the LM's prefill of the
    projector's tokens plus the prompt (their sum is the time to first token), and the decode speed. `est_*`
    is the device's best estimate (calibrated when it has published points), `est_*_bound` the uncalibrated
    roofline (the same numbers when there is nothing to calibrate on), `est_basis` says which `est_*` is."""
    enc, proj = _ops(row.get("encoder_ops")), _ops(row.get("ops"))
    if proj is None:
        return {}
    tokens = int(row["tokens_out"])
    out = _estimates(enc, proj, tokens, device, lm)
    bound = out if device.bound is None else _estimates(enc, proj, tokens, device.bound, lm)
    out |= {f"{k}_bound": v for k, v in bound.items()}
    out["est_basis"] = device.estimate_basis()
    # what `budget.params` and `budget.memory_mb` bound: the projector, plus the encoder when one was measured
    enc_params, enc_mem = row.get("encoder_params"), row.get("encoder_peak_mem_mb")
    out["design_params"] = row.get("params", math.nan) + (0.0 if missing(enc_params) else enc_params)
    out["design_mem_mb"] = row.get("peak_mem_mb", math.nan) + (0.0 if missing(enc_mem) else enc_mem)
    return out
