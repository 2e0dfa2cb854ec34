"""Target-device estimates calibrated on published measurements (docs/devices.md, "Calibration").

A device profile's peaks with assumed efficiencies give a roofline bound, far faster than what llama.cpp
publishes for MobileVLM on the same chips. A profile's `measured:` list holds those published points (CLIP
encode, LM prefill, LM decode, each with its source); here each point's ops are built (CLIP ViT-L/14 at
336 px plus the MobileVLM projector traced on the meta device, or the LM's prefill/decode ops) and the
device's efficiencies (compute, memory, per-op overhead) are fitted by least squares on log time, then
checked by leave-one-out:

    cal = calibrate_config(yaml.safe_load(open("conf/device/snapdragon888_cpu.yaml")))
    cal.fitted, cal.median_loo, cal.basis

Every timing of one workload (two cases of the same doc, MobileVLM and MobileVLM_V2 encodes of the same
CLIP, another source's decode speed of the same LM) forms one group: in the fit every group weighs as much
as one point, and leave-one-out leaves a whole group out, so a point is never predicted from another timing
of the same workload (on Orin, llama.cpp's and MobileVLM's published decode speeds of the same LM would
predict each other almost exactly). A dtype gets its own compute efficiency only when at least two groups
exercise it; otherwise every dtype shares one (no device has such data yet).
A weak prior (`PRIOR_WEIGHT`, in log space) pulls each parameter towards the profile's assumed value, so
a parameter the data cannot see (the memory efficiency when the only decode group is left out) stays
determined. The pricing is `pricing.op_seconds`, the formula `roofline.Device` prices an op with, on arrays.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import torch
import yaml
from scipy.optimize import least_squares

from .. import create_projector
from ..core.errors import ConfigError
from ..core.ops import Op
from ..core.settings import config_dir
from ..core.shapes import MOBILEVLM
from ..models.lm import LanguageModel
from .pricing import op_seconds, peak_for
from .trace import trace_ops, trace_timm_on_meta

WORKLOADS = ("encode", "prefill", "decode")
COMPUTE_BOUND = ("encode", "prefill")  # the workloads that see the compute efficiency
CLIP = ("vit_large_patch14_clip_336", 336)  # MobileVLM's encoder, as llama.cpp's mmproj runs it
BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
PRIOR_WEIGHT = 0.05  # a 10x move away from the assumed value costs as much as a 12% misfit of one workload
EFF_BOUNDS = (1e-4, 1.0)
OVERHEAD_BOUNDS_US = (1e-3, 1e5)


@dataclass(frozen=True)
class Point:
    """One published measurement, as the fit needs it (`conf/device/<name>.yaml`, `measured:`)."""

    workload: str  # encode | prefill | decode
    lm: str  # conf/lm name of the language model
    ms: float  # measured: the whole encode, the whole prefill, or one decode step
    dtype: str  # arithmetic precision, picks the device's peak: fp32 | fp16 | int8
    weight_bits: float = 16  # LM weights as deployed (4.5 = q4_k)
    tokens: int = 0  # prefill: tokens evaluated
    context: int = 0  # decode: positions already cached
    projector: str = ""  # encode: the projector after CLIP (ldp | ldpv2)
    group: str = ""  # every timing of one workload (repeats, other sources) shares a group
    source: str = ""
    case: str = ""

    @property
    def label(self) -> str:
        what = {"encode": f"CLIP+{self.projector}", "prefill": f"{self.lm} {self.tokens} tok",
                "decode": f"{self.lm} @{self.context}"}
        return f"{self.workload} {what[self.workload]} [{self.case}]"


@dataclass(frozen=True)
class Efficiencies:
    """Achievable fractions of the peaks and the fixed cost per op: assumed, or fitted."""

    compute: float
    memory: float
    overhead_us: float
    compute_dtype: tuple[tuple[str, float], ...] = ()  # dtypes with their own compute fraction

    def compute_for(self, dtype: str) -> float:
        return dict(self.compute_dtype).get(dtype, self.compute)


@dataclass(frozen=True)
class PointResult:
    """A point's measured time and what the device predicts for it: fitted on all points, fitted without
    its group (leave-one-out), and the uncalibrated bound."""

    point: Point
    fitted_ms: float
    loo_ms: float
    bound_ms: float

    @property
    def loo_error(self) -> float:
        return relative_error(self.loo_ms, self.point.ms)

    @property
    def bound_error(self) -> float:
        return relative_error(self.bound_ms, self.point.ms)


@dataclass(frozen=True)
class Calibration:
    """A device's fitted efficiencies and each point's leave-one-out and bound errors."""

    fitted: Efficiencies
    assumed: Efficiencies
    results: tuple[PointResult, ...] = field(default_factory=tuple)

    @property
    def groups(self) -> int:
        return len({r.point.group for r in self.results})

    @property
    def median_loo(self) -> float:
        """Median over workloads (groups) of the mean leave-one-out |error| of the group's points."""
        return group_median(self.results, lambda r: r.loo_error)

    @property
    def median_bound(self) -> float:
        return group_median(self.results, lambda r: r.bound_error)

    @property
    def basis(self) -> str:
        loo = "n/a" if math.isnan(self.median_loo) else f"{self.median_loo:.0%}"
        return (f"calibrated on {len(self.results)} published points ({self.groups} workloads; "
                f"median leave-one-out error {loo})")


def relative_error(predicted: float, measured: float) -> float:
    """|predicted − measured| / measured."""
    return abs(predicted - measured) / measured


def group_median(results: Iterable[PointResult], error) -> float:
    """Median over groups of the mean `error(result)` of each group's points (NaN when none is finite)."""
    by_group: dict[str, list[float]] = {}
    for r in results:
        by_group.setdefault(r.point.group, []).append(error(r))
    means = [statistics.fmean(v) for v in by_group.values() if all(math.isfinite(e) for e in v)]
    return statistics.median(means) if means else math.nan


# --- the points and their ops -------------------------------------------------------------------------

_NEEDS = {"encode": ("projector",), "prefill": ("tokens", "weight_bits"), "decode": ("context", "weight_bits")}


def load_points(measured: Iterable[Mapping[str, Any]], device: str = "") -> list[Point]:
    """`Point`s from a profile's `measured:` entries; a missing or bad field is a one-line `ConfigError`.
    `ms` may be given as `tok_s` (prefill: tokens / s; decode: 1 / step); `group` defaults to the workload (for
    prefill and decode, of its LM): two sources' timings of one workload are one group, so that leave-one-out never
    predicts a point from another measurement of the same thing."""
    points = []
    for i, m in enumerate(measured):
        where = f"conf/device/{device}.yaml measured[{i}]"
        workload = m.get("workload")
        if workload not in WORKLOADS:
            raise ConfigError(f"{where}: workload must be one of {', '.join(WORKLOADS)}, got {workload!r}")
        missing = [k for k in ("lm", "dtype", "source", *_NEEDS[workload]) if m.get(k) in (None, "")]
        if m.get("ms") is None and m.get("tok_s") is None:
            missing.append("ms (or tok_s)")
        if missing:
            raise ConfigError(f"{where}: {workload} needs {', '.join(missing)}")
        tokens, context = int(m.get("tokens") or 0), int(m.get("context") or 0)
        ms = (float(m["ms"]) if m.get("ms") is not None
              else 1e3 * (tokens if workload == "prefill" else 1) / float(m["tok_s"]))
        if not ms > 0 or m["dtype"] not in BYTES:
            raise ConfigError(f"{where}: ms must be positive and dtype one of {', '.join(BYTES)}")
        group = m.get("group") or (workload if workload == "encode"
                                   else f"{workload} {m['lm']}")  # encode: CLIP's, any LM
        points.append(Point(workload, str(m["lm"]), ms, str(m["dtype"]), float(m.get("weight_bits") or 16),
                            tokens, context, str(m.get("projector") or ""), str(group), str(m["source"]),
                            str(m.get("case") or "")))
    return points


def at_precision(ops: Iterable[Op], dtype: str) -> list[Op]:
    """`ops` (traced in fp32 or fp16) priced at `dtype`: relabelled, their bytes scaled by the element size."""
    return [Op(o.kind, dtype, o.flops, int(o.bytes * BYTES[dtype] / BYTES[o.dtype]), o.count) if o.dtype in BYTES else o
            for o in ops]


@cache
def encode_ops(projector: str, dtype: str) -> tuple[Op, ...]:
    """CLIP ViT-L/14 at 336 px and `projector` at MobileVLM's shape, traced on the meta device, at `dtype`."""
    with torch.device("meta"):
        proj = create_projector(projector, MOBILEVLM.vision_dim, MOBILEVLM.lm_dim).eval()
        tokens = torch.empty(1, MOBILEVLM.tokens, MOBILEVLM.vision_dim)
    return tuple(at_precision([*trace_timm_on_meta(*CLIP), *trace_ops(proj, tokens)], dtype))


@cache
def language_model(name: str, weight_bits: float, dtype: str) -> LanguageModel:
    """`conf/lm/<name>.yaml` deployed with `weight_bits` and `dtype` arithmetic (no extra prompt)."""
    path = config_dir() / "lm" / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"measured point names lm={name!r}, which is not in conf/lm/")
    cfg = yaml.safe_load(path.read_text())
    return LanguageModel.from_config(cfg | {"weight_bits": weight_bits, "dtype": dtype, "prompt_tokens": 0})


def point_ops(p: Point) -> list[Op]:
    """The ops of one point's workload: CLIP + projector, the LM's prefill of `tokens`, or one decode step."""
    if p.workload == "encode":
        return list(encode_ops(p.projector, p.dtype))
    lm = language_model(p.lm, p.weight_bits, p.dtype)
    return lm.step_ops(p.tokens, 0) if p.workload == "prefill" else lm.step_ops(1, p.context)


# --- the model and the fit ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Work:
    """A point's ops as arrays (count, FLOPs, bytes, the peak each runs at) on a device's DRAM bandwidth."""

    count: np.ndarray
    flops: np.ndarray
    nbytes: np.ndarray
    peak: np.ndarray
    memory_gbps: float
    dtypes: tuple[str, ...]


def work(ops: Sequence[Op], peaks: Mapping[str, float], memory_gbps: float) -> Work:
    """`ops` on a device with `peaks` (GFLOP/s per dtype, fp32's when a dtype has none) and `memory_gbps`."""
    return Work(np.array([o.count for o in ops], dtype=float), np.array([o.flops for o in ops], dtype=float),
                np.array([o.bytes for o in ops], dtype=float),
                np.array([peak_for(o.dtype, peaks) for o in ops], dtype=float), memory_gbps,
                tuple(o.dtype for o in ops))


def predict_ms(w: Work, eff: Efficiencies) -> float:
    """The roofline time of `w` with `eff`, in ms: Σ count · `pricing.op_seconds`."""
    ec = np.array([eff.compute_for(d) for d in w.dtypes])
    return 1e3 * float(np.sum(w.count * op_seconds(w.flops, w.nbytes, w.peak, w.memory_gbps, ec, eff.memory,
                                                   eff.overhead_us)))


def own_dtypes(points: Sequence[Point]) -> list[str]:
    """The dtypes that get their own compute efficiency: those exercised by at least two groups of
    compute-bound points. The most exercised of them stays with the shared efficiency when no other dtype
    is left for it (the shared one also prices dtypes no point used, e.g. an fp32 projector)."""
    groups: dict[str, set[str]] = {}
    for p in points:
        if p.workload in COMPUTE_BOUND:
            groups.setdefault(p.dtype, set()).add(p.group)
    ranked = sorted(groups, key=lambda d: (-len(groups[d]), d))
    own = [d for d in ranked if len(groups[d]) >= 2]
    return own if len(own) < len(ranked) else own[1:]


def _unpack(x: np.ndarray, own: Sequence[str]) -> Efficiencies:
    e = np.exp(x)
    return Efficiencies(float(e[0]), float(e[1]), float(e[2]), tuple((d, float(v)) for d, v in zip(own, e[3:])))


def fit(points: Sequence[Point], works: Sequence[Work], prior: Efficiencies) -> Efficiencies:
    """Efficiencies minimising Σ_points w·(log predicted − log measured)² + the prior's pull, with each
    point weighted 1/√(repeats in its group) so that every group counts once; fractions in [1e-4, 1],
    overhead in [1e-3, 1e5] µs (scipy's least_squares, trust-region reflective: deterministic)."""
    own = own_dtypes(points)
    lo = np.log([EFF_BOUNDS[0], EFF_BOUNDS[0], OVERHEAD_BOUNDS_US[0]] + [EFF_BOUNDS[0]] * len(own))
    hi = np.log([EFF_BOUNDS[1], EFF_BOUNDS[1], OVERHEAD_BOUNDS_US[1]] + [EFF_BOUNDS[1]] * len(own))
    x0 = np.clip(np.log(np.maximum([prior.compute, prior.memory, prior.overhead_us] + [prior.compute] * len(own),
                                   1e-12)), lo, hi)
    sizes = {g: sum(p.group == g for p in points) for g in {p.group for p in points}}
    weight = np.array([1 / math.sqrt(sizes[p.group]) for p in points])
    measured = np.log([p.ms for p in points])

    def residuals(x: np.ndarray) -> np.ndarray:
        eff = _unpack(x, own)
        predicted = np.log([predict_ms(w, eff) for w in works])
        return np.concatenate([weight * (predicted - measured), PRIOR_WEIGHT * (x - x0)])

    start = np.clip(x0, lo + 1e-9, hi - 1e-9)
    return _unpack(least_squares(residuals, start, bounds=(lo, hi), x_scale=1.0).x, own)


def leave_one_out(points: Sequence[Point], works: Sequence[Work], prior: Efficiencies) -> list[float]:
    """Each point's predicted ms from a fit on the other groups' points (NaN when no other group is left)."""
    out = [math.nan] * len(points)
    for g in dict.fromkeys(p.group for p in points):
        keep = [i for i, p in enumerate(points) if p.group != g]
        if not keep:
            continue
        eff = fit([points[i] for i in keep], [works[i] for i in keep], prior)
        for i, p in enumerate(points):
            if p.group == g:
                out[i] = predict_ms(works[i], eff)
    return out


def calibrate(points: Sequence[Point], peaks: Mapping[str, float], memory_gbps: float,
              assumed: Efficiencies) -> Calibration:
    """Fit on all `points`, validate by leave-one-out, and price each point with the `assumed` bound."""
    works = [work(point_ops(p), peaks, memory_gbps) for p in points]
    fitted = fit(points, works, assumed)
    loo = leave_one_out(points, works, assumed)
    results = tuple(PointResult(p, predict_ms(w, fitted), held_out, predict_ms(w, assumed))
                    for p, w, held_out in zip(points, works, loo))
    return Calibration(fitted, assumed, results)


_CACHE: dict[str, Calibration] = {}


def calibrate_config(dev: Mapping[str, Any]) -> Calibration | None:
    """The calibration of a `conf/device/*.yaml` mapping (its peaks, assumed efficiencies and `measured:`
    points), or None when it has no points. Cached per process by its content."""
    measured = dev.get("measured") or []
    if not measured:
        return None
    eff = dev.get("efficiency") or {}
    peaks = {str(k): float(v) for k, v in dict(dev["peak_gflops"]).items()}
    assumed = Efficiencies(float(eff.get("compute", 1.0)), float(eff.get("memory", 1.0)),
                           float(dev.get("op_overhead_us", 0.0)))
    points = load_points(measured, str(dev.get("name", "")))
    key = repr((sorted(peaks.items()), float(dev["memory_gbps"]), assumed, points))
    if key not in _CACHE:
        _CACHE[key] = calibrate(points, peaks, float(dev["memory_gbps"]), assumed)
    return _CACHE[key]
