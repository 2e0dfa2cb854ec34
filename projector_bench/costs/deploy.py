"""Deployability on a phone's runtime: a design exported with `torch.export`, lowered to ExecuTorch's XNNPACK
backend (the CPU runtime PyTorch ships for Android and iOS) in fp32 and int8, and run by ExecuTorch's Python
runtime on this host (docs/deploy.md).

The extra is optional: `python -m projector_bench.costs.deploy install` (ExecuTorch's own requirements pin packages
that keep pip's resolver busy for many minutes, so it installs `executorch` and `torchao` without their
dependency lists, then the pure-Python packages they import). Without it every deploy column is empty and
`exports` says why.

int8 is XNNPACK's static scheme through the PT2E flow (`XNNPACKQuantizer`, symmetric, weights per output
channel), calibrated on the example inputs: a latency, not an accuracy (the `<design>_int8` designs measure
what int8 costs in accuracy). The dynamic scheme failed on `ldp` and `c_abstractor` here (XNNPACK rejected the
quantized convolutions' shapes), the static one lowers every design. Ops the quantizer does not cover stay fp32.
A `<design>_int8` design is lowered from its float twin.
"""
from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from ..core.compat import executorch_backends, executorch_threads, lowering_memos
from ..core.errors import ArgumentParser, JobFailed, exit_code, first_line
from .kernels import KINDS, kernels
from .measure import Latency, _Call, float_design, measure_latency
from .roofline import Device

log = logging.getLogger(__name__)

RUNTIME = "executorch"
INSTALL = "python -m projector_bench.costs.deploy install"
PINNED = ("executorch==1.5.1", "torchao==0.18.0")  # the pair that imports beside torch 2.14.1
PRECISIONS = ("fp32", "int8")
MATMULS = ("addmm", "mm", "bmm", "convolution", "linear")  # an `_outside` op of these: a matmul on reference kernels


@cache
def unavailable() -> str | None:
    """None when ExecuTorch and its XNNPACK backend import here, else why not (one line, with the fix)."""
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao registers an Enum: a warning per import
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
        from executorch.extension.pybindings import portable_lib  # noqa: F401
    except Exception as e:  # ImportError, or a binary built for another torch
        return (f"executorch is not installed ({first_line(e, typed=True)}); "
                f"{INSTALL}")
    if "XnnpackBackend" not in executorch_backends():
        return "this executorch build has no XNNPACK backend; reinstall it: " + INSTALL
    return None


@dataclass(frozen=True)
class Program:
    """A lowered program: the .pte bytes and the ops XNNPACK did not take (they run as portable kernels)."""

    buffer: bytes
    outside: tuple[str, ...]


def _quantize_int8(module: nn.Module, inputs: tuple[Tensor, ...]) -> nn.Module:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    class PostTraining(XNNPACKQuantizer):
        # The conv+batch-norm patterns match a training-mode batch norm (quantization-aware training); this
        # post-training path folds every batch norm into its conv before annotating, so they never match, yet
        # building them traces a dozen pattern graphs with dynamo on every call.
        SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if not p.is_qat]

    quantizer = PostTraining().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(module, inputs).module(), quantizer)
    prepared(*inputs)  # calibration: the example inputs set the activations' scales (enough for timing)
    return convert_pt2e(prepared)


def lower(module: nn.Module, inputs: tuple[Tensor, ...], precision: str = "fp32", **kwargs: Any) -> Program:
    """`module(*inputs, **kwargs)` exported with `torch.export` (static shapes) and lowered to XNNPACK."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    model = _Call(float_design(module), **kwargs).eval()
    if precision == "int8":
        model = _quantize_int8(model, inputs)
    try:
        edge = to_edge_transform_and_lower(torch.export.export(model, inputs), partitioner=[XnnpackPartitioner()])
        names = (getattr(n.target, "__name__", str(n.target)) for n in edge.exported_program().graph.nodes
                 if n.op == "call_function")
        outside = sorted({n.removeprefix("aten.").removesuffix(".default") for n in names
                          if n not in ("executorch_call_delegate", "getitem")})
        return Program(edge.to_executorch().buffer, tuple(outside))
    finally:  # memos without a bound, keyed by graph nodes and modules: else each lowering's graphs and
        release_lowered_graphs()  # weights stay alive in the process (docs/results/2026-12-06-token-budget.md)


def release_lowered_graphs() -> None:
    """Empty the unbounded memos that hold every lowered graph and its weights: ExecuTorch's `is_same_node`
    (keyed by fx nodes), the `assert_and_get_unique_device` of torchao and torch.ao (keyed by the int8 path's
    modules), and FakeTensorMode's dispatch cache (whose keys hold the lowered delegate modules)."""
    for clear in lowering_memos():
        clear()


def _is_dynamic_int8(module: nn.Module) -> bool:
    return any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in module.modules())


def load(program: Program, threads: int) -> Callable[[tuple[Tensor, ...]], list[Tensor]]:
    """The program's `forward`, loaded in ExecuTorch's runtime with an XNNPACK thread pool of `threads`."""
    from executorch.runtime import Runtime

    executorch_threads(threads)
    loaded = Runtime.get().load_program(program.buffer)  # the method points into it: keep it alive with the method
    method = loaded.load_method("forward")
    return lambda inputs, _program=loaded: method.execute(inputs)


def _short(e: Exception) -> str:
    line = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {line[:160]}"


def deploy_costs(prefix: str, module: nn.Module, inputs: tuple[Tensor, ...], threads: int, min_run_time: float,
                 warmup: int, precisions: tuple[str, ...] = PRECISIONS, float_module: nn.Module | None = None,
                 **kwargs: Any) -> dict[str, Any]:
    """Row columns: `{prefix}exports` — `"executorch"`: the verdict ("ok" or the first error, one line) of the
    design's own precision (int8 for a `<design>_int8` design, else fp32), which `budget.deployable` reads, and
    `"executorch_<precision>"` for each precision tried — and per precision that ran,
    `{prefix}xnnpack[_int8]_latency_ms`, `_latency_iqr_ms`, `_rel_err` (relative L2 distance of the program's
    output from the eager float design's), `_pte_mb`, `_outside` (ops left to ExecuTorch's portable kernels)
    and `_lower_s`. Programs are lowered from `float_module` (default: `measure.float_design(module)`)."""
    if (why := unavailable()) is not None:
        return {f"{prefix}exports": {RUNTIME: f"not measured: {why}"}}
    inputs = tuple(t.contiguous() for t in inputs)  # the runtime takes dense inputs (an encoder's tokens are a view)
    own = "int8" if _is_dynamic_int8(module) else "fp32"
    base = float_module if float_module is not None else float_design(module)  # what the programs are lowered from
    with torch.no_grad():  # a timm feature model returns a list
        ref = tree_leaves(_Call(base, **kwargs).eval()(*inputs))
    out: dict[str, Any] = {f"{prefix}xnnpack_threads": threads}
    verdicts: dict[str, str] = {}
    for precision in precisions:
        col = f"{prefix}xnnpack{'' if precision == 'fp32' else '_' + precision}"
        try:
            start = time.perf_counter()
            program = lower(base, inputs, precision, **kwargs)
            lowered_s = time.perf_counter() - start
            run = load(program, threads)
            first = time.perf_counter()
            got = run(inputs)  # also the first warm-up call; a program slower than min_run_time needs no more
            warm = 0 if time.perf_counter() - first > min_run_time else warmup
            if len(got) != len(ref) or any(g.shape != r.shape for g, r in zip(got, ref)):
                raise RuntimeError(f"the program returned {[tuple(g.shape) for g in got]}, "
                                   f"eager {[tuple(r.shape) for r in ref]}")
            err = max(((g - r).norm() / r.norm().clamp_min(1e-12)).item() for g, r in zip(got, ref))
            lat: Latency = measure_latency(lambda: run(inputs), threads=threads, min_run_time=min_run_time, warmup=warm)
        except Exception as e:  # the row says why; the eager columns are unaffected
            log.debug("lowering to XNNPACK (%s) failed", precision, exc_info=True)
            verdicts[precision] = f"{precision}: {_short(e)}"
            continue
        verdicts[precision] = "ok"
        out |= {f"{col}_latency_ms": lat.median_ms, f"{col}_latency_iqr_ms": lat.iqr_ms, f"{col}_rel_err": err,
                f"{col}_pte_mb": len(program.buffer) / 2**20, f"{col}_outside": list(program.outside),
                f"{col}_lower_s": lowered_s}
    main = verdicts.get(own) or f"{own}: not tried (deploy.precisions={list(precisions)})"
    return out | {f"{prefix}exports": {RUNTIME: main} | {f"{RUNTIME}_{p}": v for p, v in verdicts.items()}}


class _Chain(nn.Module):
    """`n` fresh copies of `make()` applied one after another to the first input (the others passed along)."""

    def __init__(self, make: Callable[[], nn.Module], n: int) -> None:
        super().__init__()
        self.steps = nn.ModuleList(make().eval() for _ in range(n))

    def forward(self, x: Tensor, *rest: Tensor) -> Tensor:
        for step in self.steps:
            x = step(x, *rest)
        return x


def min_times(programs: dict[Any, tuple[Program, tuple[Tensor, ...]]], threads: int, rounds: int,
              min_run_time: float = 0.3) -> dict[Any, float]:
    """Each program's fastest median ms over `rounds` interleaved rounds (every program timed once per round), so
    that programs compared with each other are timed under the same spells of a shared machine's load."""
    runs = {k: (load(p, threads), inputs) for k, (p, inputs) in programs.items()}
    best: dict[Any, float] = {}
    for _ in range(rounds):
        for k, (run, inputs) in runs.items():
            ms = measure_latency(partial(run, inputs), threads=threads, min_run_time=min_run_time).median_ms
            best[k] = min(ms, best.get(k, float("inf")))
    return best


def calibrate_xnnpack(threads: int, designs: dict[str, tuple[nn.Module, tuple[Tensor, ...]]] | None = None,
                      rounds: int = 1) -> tuple[Device, dict[str, float]]:
    """This machine's roofs under ExecuTorch's XNNPACK backend, and the fp32 programs of `designs` timed with them.

    A roof is a kernel's throughput inside a program — (time of n + 1 chained kernels - time of 1) / n, which
    leaves out what a call costs once — for each kernel of `kernels.kernels()`, the table the eager calibration
    (`roofline.calibrate_host`) times too: the op kinds, the GEMMs, DRAM bandwidth from streaming adds and the
    fixed cost of a kernel from tiny adds. Roof programs and designs are timed in the same interleaved rounds,
    each at its fastest (`min_times`): estimates and the times they are checked against see the machine alike."""
    table = kernels()
    programs = {(k, m): (lower(_Chain(kn.make, m), kn.inputs, kn.precision), kn.inputs)
                for k, kn in table.items() for m in (1, kn.chain + 1)}
    programs |= {(name, 0): (lower(module, inputs), inputs) for name, (module, inputs) in (designs or {}).items()}
    ms = min_times(programs, threads, rounds)
    kernel_ms: dict[str, float] = {}
    for k, kn in table.items():
        n = kn.chain
        one, diff = ms[k, 1], ms[k, n + 1] - ms[k, 1]
        if diff <= 0:  # noise larger than n kernels: not a throughput; the one-kernel program's time is an upper bound
            log.warning("XNNPACK roof %s: %d chained kernels timed no slower than one (%.3f ms); "
                        "using the one-kernel time", k, n + 1, one)
        kernel_ms[k] = diff / n if diff > 0 else one
    rate = {k: kn.work / kernel_ms[k] / 1e6 for k, kn in table.items()}  # per ms -> GFLOP/s (GB/s: bandwidth)
    kinds = {k: rate[k] for k in KINDS}
    host = Device("host_xnnpack", "host", {"fp32": rate["fp32"], "fp16": rate["fp32"], "int8": rate["int8"]},
                  rate["bandwidth"], 1.0, 1.0, kernel_ms["overhead"] * 1e3, kinds)
    return host, {name: ms[name, 0] for name in designs or {}}


def install() -> int:
    """Install the deploy extra into this Python: executorch and torchao without their dependency lists, then
    the pure-Python packages they import (one command; pip's resolver alone stalls on executorch's pins).
    0 when ExecuTorch with XNNPACK then loads; else `JobFailed` (pip's own output is above its line)."""
    from importlib.metadata import PackageNotFoundError, requires

    # the `deploy` extra of pyproject.toml: what executorch and torchao import (their own metadata also pins
    # coremltools, the Apple backend's converter, which XNNPACK does not use)
    try:
        wanted = requires("projector_bench") or []
    except PackageNotFoundError:
        wanted = []
    extra = [r.split(";")[0].strip() for r in wanted if re.search(r"extra\s*==\s*['\"]deploy['\"]", r)]
    if not extra:  # pip with no requirement fails, and the installed metadata is where the extra's list lives
        raise JobFailed("the installed projector_bench lists no `deploy` extra: install the package first "
                        "(pip install -e . in its checkout), then run this again")
    pip = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check"]
    for cmd in (pip + ["--no-deps", *PINNED], pip + extra):
        print("+", " ".join(cmd[2:]), flush=True)
        if (rc := subprocess.call(cmd)) != 0:
            raise JobFailed(f"pip failed (exit {rc}) installing "
                            f"{' '.join(a for a in cmd[4:] if not a.startswith('-'))}; its output above says why")
    unavailable.cache_clear()
    if why := unavailable():
        raise JobFailed(f"installed, but ExecuTorch with XNNPACK still does not load: {why}")
    print("ExecuTorch with XNNPACK: ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`install`: the deploy extra into this Python. Bad arguments are one `error:` line and exit 2."""
    return exit_code(_main, argv)


def _main(argv: list[str] | None) -> int:
    ap = ArgumentParser(prog="python -m projector_bench.costs.deploy",
                        description="The optional deploy extra: ExecuTorch with its XNNPACK backend (docs/deploy.md).")
    ap.add_argument("command", choices=("install",),
                    help="install: add ExecuTorch and torchao (the deploy extra) to this Python")
    ap.parse_args(argv)
    return install()


if __name__ == "__main__":
    raise SystemExit(main())
