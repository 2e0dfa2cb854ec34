"""The roofline's price of an op: the one formula the device model (`roofline.Device`, op by op) and the
calibration fit (`calibrate`, over arrays of a point's ops) both use.

    t(op) = overhead + max(flops / (peak[dtype] · eff_compute), bytes / (bandwidth · eff_memory))
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import numpy as np

T = TypeVar("T", float, np.ndarray)


def peak_for(dtype: str, peaks: Mapping[str, float], kind: str = "",
             kind_gflops: Mapping[str, float] | None = None) -> float:
    """The GFLOP/s an op runs at: its kind's measured fp32 roof when there is one (the host), else its dtype's
    peak, else fp32's (a dtype the device has no fast path for runs in fp32)."""
    return ((kind_gflops or {}).get(kind) if dtype == "fp32" else None) or peaks.get(dtype) or peaks["fp32"]


def op_seconds(flops: T, nbytes: T, peak_gflops: T, memory_gbps: float, eff_compute: T | float = 1.0,
               eff_memory: float = 1.0, overhead_us: float = 0.0) -> T:
    """Seconds of one op (or of each, on arrays): the slower of its compute and its memory traffic, plus the
    fixed cost of an op."""
    compute = flops / (peak_gflops * 1e9 * eff_compute)
    memory = nbytes / (memory_gbps * 1e9 * eff_memory)
    return overhead_us * 1e-6 + np.maximum(compute, memory)
