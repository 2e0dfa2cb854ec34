"""Cost metrics of any module: MACs/FLOPs, parameters, size, latency, peak memory (docs/costs.md).

MACs come from fvcore with handles for what it skips or crashes on (scaled dot-product attention,
dynamically quantized Linear layers, elementwise ops), cross-checked against torch's `FlopCounterMode`
with its CPU attention hole filled; `uncounted_ops` names anything still unpriced. Latency is
`torch.utils.benchmark` (median and IQR); `paired` times two callables interleaved for noise-robust ratios;
`load_check` flags a loaded machine from a reference GEMM.
"""
from __future__ import annotations

import copy
import io
import logging
import math
import statistics
import time
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

with warnings.catch_warnings():  # fvcore (2022) scripts a loss at import; torch now warns on torch.jit.script
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import elementwise_flop_counter, get_shape
from torch.ao.nn.quantized import dynamic as nnqd
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..core.env import code_hash, cpu_model
from ..core.settings import host_cache, read_json_cache, write_json_cache
from ..core.shapes import MOBILEVLM
from ..core.util import torch_threads

# torch.utils.benchmark imports cpp_extension, which warns "No CUDA runtime is found" on CUDA builds
# running on a CPU-only machine (as here); it says nothing about the CPU timings we take.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils.benchmark import Timer  # noqa: E402 (after the logger above is quiet)

log = logging.getLogger(__name__)

# Ops whose MACs torch's FlopCounterMode also counts (2 flops per MAC): the cross-check compares these.
MATMUL_OPS = frozenset({"linear", "matmul", "mm", "addmm", "bmm", "einsum", "conv", "scaled_dot_product_attention"})

_ELEMENTWISE = [
    "gelu", "silu", "silu_", "relu", "relu_", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_",
    "sigmoid", "sigmoid_", "tanh", "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "softmax",
]
_REDUCTIONS = ["mean", "sum"]  # one op per input element
_FREE = ["expand_as", "unflatten", "pad", "repeat"]  # data movement, like fvcore's own ignore list
# resampling (a position embedding to another grid): taps per output element, as fvcore counts bilinear (4)
_INTERPOLATE = {"upsample_bicubic2d": 16, "_upsample_bicubic2d_aa": 16, "_upsample_bilinear2d_aa": 4}


def _sdpa_handle(inputs: list[Any], outputs: list[Any]) -> Counter:
    """Q·Kᵀ and A·V of `aten::scaled_dot_product_attention` (MACs), plus one op per softmax element."""
    q, k, v = (get_shape(i) for i in inputs[:3])
    batch = math.prod(q[:-2])
    scores = batch * q[-2] * k[-2]
    return Counter({"scaled_dot_product_attention": scores * (q[-1] + v[-1]), "attention_softmax": scores})


def _handles() -> dict[str, Any]:
    h: dict[str, Any] = {"aten::scaled_dot_product_attention": _sdpa_handle}
    h |= {f"aten::{n}": elementwise_flop_counter(0, 1) for n in _ELEMENTWISE}
    h |= {f"aten::{n}": elementwise_flop_counter(1, 0) for n in _REDUCTIONS}
    h |= {f"aten::{n}": None for n in _FREE}
    h |= {f"aten::{n}": elementwise_flop_counter(0, taps) for n, taps in _INTERPOLATE.items()}
    return h


def _qlinear_flop(x_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * math.prod(x_shape) * out_shape[-1]


def _cpu_sdpa_flop(q_shape, k_shape, v_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(q_shape, k_shape, v_shape)


_TORCH_EXTRA = {  # keyed by op packet, as FlopCounterMode's own registry is
    torch.ops.quantized.linear_dynamic: _qlinear_flop,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop,
}


@dataclass(frozen=True)
class FlopCount:
    """MACs by op (fvcore convention), ops left uncounted, and torch's own count for the cross-check."""

    macs: int
    by_op: dict[str, int]
    uncounted_ops: dict[str, int]
    torch_flops: int = field(default=0)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def matmul_macs(self) -> int:
        """The part torch's FlopCounterMode also counts: matmuls, convolutions, attention."""
        return sum(v for k, v in self.by_op.items() if k in MATMUL_OPS)


def _quantized_linears(module: nn.Module) -> Iterator[tuple[str, nnqd.Linear]]:
    return ((n, m) for n, m in module.named_modules() if isinstance(m, nnqd.Linear))


def float_twin(module: nn.Module) -> nn.Module:
    """A copy of `module` with each dynamically quantized Linear replaced by a float Linear of its shape."""
    twin = copy.deepcopy(module)
    for name, q in list(_quantized_linears(twin)):
        w, b = q.weight().dequantize(), q.bias()
        lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        with torch.no_grad():
            lin.weight.copy_(w)
            if b is not None:
                lin.bias.copy_(b)
        parent, _, leaf = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, leaf, lin)
    return twin


class _Call(nn.Module):
    """Binds non-tensor arguments so that fvcore's tracer sees a module of tensors only."""

    def __init__(self, module: nn.Module, **kwargs: Any) -> None:
        super().__init__()
        self.module, self.kwargs = module, kwargs

    def forward(self, *inputs: Tensor) -> Any:
        return self.module(*inputs, **self.kwargs)


def float_design(module: nn.Module) -> nn.Module:
    """`module` itself, or the float twin of a design with dynamically quantized Linear layers: what its MACs are
    counted on and what a runtime lowers (build it once per design and pass it to both)."""
    return float_twin(module) if any(True for _ in _quantized_linears(module)) else module


def count_flops(module: nn.Module, *inputs: Tensor, float_module: nn.Module | None = None,
                **kwargs: Any) -> FlopCount:
    """Count MACs of `module(*inputs, **kwargs)` with fvcore and our handles; cross-check with torch.

    fvcore traces `float_module` (default: `float_design(module)`); non-tensor `kwargs` (such as a projector's
    `grid`) are bound before tracing.
    """
    was_training = module.training
    module.eval()
    try:
        traced = float_module if float_module is not None else float_design(module)
        analysis = FlopCountAnalysis(_Call(traced, **kwargs), inputs).set_op_handle(**_handles())
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            by_op = {k: int(v) for k, v in analysis.by_operator().items()}
            uncounted = dict(analysis.unsupported_ops())
        counter = FlopCounterMode(display=False, custom_mapping=_TORCH_EXTRA)
        with torch.inference_mode(), counter:
            module(*inputs, **kwargs)
    finally:
        module.train(was_training)
    return FlopCount(sum(by_op.values()), by_op, uncounted, int(counter.get_total_flops()))


def count_params(module: nn.Module) -> int:
    """Parameters, counting the int8 weights and biases of quantized Linear layers too."""
    n = sum(p.numel() for p in module.parameters())
    for _, q in _quantized_linears(module):
        n += q.weight().numel() + (q.bias().numel() if q.bias() is not None else 0)
    return n


def _packed_bytes(module: nn.Module) -> int:
    return sum(q.weight().nbytes + (q.bias().nbytes if q.bias() is not None else 0)
               for _, q in _quantized_linears(module))


def size_mb(module: nn.Module) -> float:
    """Size of the serialized state dict (`torch.save`), in MiB."""
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getbuffer().nbytes / 2**20


def peak_memory_mb(module: nn.Module, *inputs: Tensor, **kwargs: Any) -> float:
    """Peak memory of one inference forward (weights, inputs, activations), in MiB.

    torch's `MemTracker` follows every tensor allocated on the CPU; it cannot see the packed weights
    of quantized Linear layers, which are added from their int8 sizes.
    """
    from torch.distributed._tools.mem_tracker import MemTracker

    frozen = [p for p in module.parameters() if not p.requires_grad]
    for p in frozen:  # MemTracker hooks every parameter's grad, which a frozen one refuses
        p.requires_grad_(True)
    try:
        tracker = MemTracker()
        tracker.track_external(module, *inputs)
        with torch.inference_mode(), tracker:
            module(*inputs, **kwargs)
    finally:
        for p in frozen:
            p.requires_grad_(False)
    peak = sum(dev["Total"] for dev in tracker.get_tracker_snapshot("peak").values())
    return (peak + _packed_bytes(module)) / 2**20


class _LivePeak(TorchDispatchMode):
    """Follows the bytes of every tensor an op makes until it is freed, and keeps the peak of their sum."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, Tensor) and t._base is None:  # a view shares its base's storage
                n = t.untyped_storage().nbytes()
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, n)
        return out

    def _free(self, n: int) -> None:
        self.live -= n


def meta_footprint(module: nn.Module, *inputs: Tensor, **kwargs: Any) -> tuple[int, int]:
    """(weight bytes, peak activation bytes) of one inference forward of a module built on the meta device: what
    a real forward would need, known before any memory is allocated (a config check of a huge design)."""
    weights = sum(p.numel() * p.element_size() for p in module.parameters()) + sum(b.nbytes for b in module.buffers())
    live = _LivePeak()
    with torch.inference_mode(), live:
        module(*inputs, **kwargs)
    return weights, live.peak + sum(x.nbytes for x in inputs)


@dataclass(frozen=True)
class Latency:
    median_ms: float
    iqr_ms: float
    runs: int
    threads: int


def measure_latency(fn: Callable[[], Any], threads: int, min_run_time: float = 1.0, warmup: int = 3) -> Latency:
    """Median and IQR of `fn()` under `torch.inference_mode` after `warmup` calls (torch.utils.benchmark)."""
    with torch_threads(threads), torch.inference_mode():
        for _ in range(warmup):
            fn()
        m = Timer("fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(min_run_time=min_run_time)
    return Latency(m.median * 1e3, m.iqr * 1e3, len(m.times), threads)


class Paired(NamedTuple):
    """`paired`'s result: median and IQR of the per-round ratios, the case's own median ms, the ratios."""

    median: float
    iqr: float
    ms: dict[str, float]
    ratios: list[float]


def paired(case: Callable[[], Any], ref: Callable[[], Any], rounds: int, threads: int, repeat: int = 3) -> Paired:
    """(median, IQR) over `rounds` of time(case) / time(ref), the case's own median times in ms (`wall`, and
    `cpu` when one thread: what comparing raw times between runs would use), and the ratios of every round.

    Each round times the two back to back, in alternating order, each as the best of `repeat` calls. With one
    thread the clock is the thread's CPU time, so time spent descheduled (a neighbour holding the core) is
    not counted; the ratio then cancels what remains (clock speed, cache and memory contention).
    `threads` is torch's thread count, which the caller sets once around all its pairs: switching it per
    pair leaves OpenMP workers spinning on the sibling core, which slows the timed thread.
    """
    assert torch.get_num_threads() == threads, "set torch.set_num_threads(threads) around the timing"
    clock = time.thread_time if threads == 1 else time.perf_counter
    ratios, wall, cpu = _paired_rounds(case, ref, rounds, repeat, clock)
    q = statistics.quantiles(ratios, n=4)
    own = {"wall": statistics.median(wall) * 1e3} | ({"cpu": statistics.median(cpu) * 1e3} if threads == 1 else {})
    return Paired(statistics.median(ratios), q[2] - q[0], own, ratios)


def _paired_rounds(case: Callable[[], Any], ref: Callable[[], Any], rounds: int, repeat: int,
                   clock: Callable[[], float]) -> tuple[list[float], list[float], list[float]]:
    ratios, wall, cpu = [], [], []
    with torch.inference_mode():
        case(), ref()
        for r in range(rounds):
            t, w = {}, math.inf
            for f in (case, ref) if r % 2 == 0 else (ref, case):
                best = math.inf
                for _ in range(repeat):
                    t0, w0 = clock(), time.perf_counter()
                    f()
                    best = min(best, clock() - t0)
                    w = min(w, time.perf_counter() - w0) if f is case else w
                t[f] = best
            ratios.append(t[case] / t[ref])
            wall.append(w)
            cpu.append(t[case])
    return ratios, wall, cpu


REFERENCE_SHAPE = (MOBILEVLM.tokens, MOBILEVLM.vision_dim, MOBILEVLM.lm_dim)  # a linear projector's GEMM there
LOAD_LIMIT = 1.25  # latencies inflated this much or more by other work on the machine: the row gets a load_warning


def reference_kernel() -> Callable[[], Any]:
    """The fixed kernel timings are compared against: a linear projector's fp32 GEMM at MobileVLM's shape."""
    g = torch.Generator().manual_seed(0)
    m, k, n = REFERENCE_SHAPE
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    return lambda: a @ b


class Best(NamedTuple):
    """The fastest this machine has timed the reference kernel at a thread count, over how many probes, since when."""

    ms: float
    probes: int
    since: str


def load_check(threads: int, best: Best | None) -> dict[str, Any]:
    """Time the reference kernel now and judge how much other work on the machine inflates latencies, by two
    signals: the share of the wall time its threads got a core (process CPU time / (wall × threads)): other
    processes or the hypervisor holding the cores, seen from the first probe on, with no history; and its time
    against `best`, the fastest seen here (contention that slows a running core: a busy sibling thread, shared
    caches). `load_ratio` is the larger, `load_basis` says both, above `LOAD_LIMIT` the row gets a `load_warning`."""
    fn = reference_kernel()
    with torch_threads(threads), torch.inference_mode():
        fn()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        ms = measure_latency(fn, threads, min_run_time=0.2, warmup=0).median_ms
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    share = min(1.0, cpu / (wall * threads))
    held = 1 / max(share, 1e-3)
    slower = ms / min(ms, best.ms) if best else 1.0
    ratio = max(held, slower)
    basis = (f"its threads had a core {share:.0%} of the time ({held:.2f}x); "
             + (f"{slower:.2f}x the best of {best.probes} probes here since {best.since}" if best
                else "the first probe at this thread count here (no best time yet)"))
    warning = (f"timed on a loaded machine: latencies inflated about {ratio:.2f}x ({basis}); "
               "re-run when the machine is quiet"
               if ratio > LOAD_LIMIT else None)
    return {"reference_ms": ms, "load_ratio": ratio, "load_cpu_share": share, "load_basis": basis,
            "load_warning": warning}


def host_load(threads: int) -> dict[str, Any]:
    """`load_check` against the fastest reference time this machine has recorded at `threads` (the host cache
    keeps it with its count of probes and the date of the first)."""
    path = host_cache() / "reference_kernel.json"
    key = f"{cpu_model()}|{threads}|{code_hash('costs/measure.py', 'core/shapes.py')}"  # the kernel's code and shape
    saved = read_json_cache(path)
    entry = saved.get(key)
    try:
        best = Best(**entry) if isinstance(entry, dict) else None
    except TypeError:
        best = None
    out = load_check(threads, best)
    ms = out["reference_ms"] if best is None else min(best.ms, out["reference_ms"])
    since = best.since if best else datetime.now(timezone.utc).date().isoformat()
    write_json_cache(path, saved | {key: Best(ms, (best.probes if best else 0) + 1, since)._asdict()})
    if out["load_warning"]:
        log.warning(out["load_warning"])
    return out
