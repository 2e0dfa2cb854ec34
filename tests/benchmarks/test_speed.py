"""pytest-benchmark suite: every shipped design's forward at MobileVLM 1.7B's shape (576 tokens of 1024 -> 2048),
every MobileViT encoder at 256 px, and the reference GEMM they are compared against.

    pytest tests/benchmarks/test_speed.py --benchmark-enable --benchmark-autosave   # then: pytest-benchmark compare

Raw times between runs on a shared machine drift (README: "Regression checks"); the CI gate is
`python -m projector_bench.regress`, which times each case against the reference kernel in the same run.
"""
import pytest
import torch

from projector_bench.core.util import torch_threads
from projector_bench.regress import case_names, cases, reference_kernel


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def test_reference_gemm(benchmark):
    benchmark.group = "reference"
    benchmark(reference_kernel())


@pytest.mark.parametrize("name", case_names())
def test_forward(benchmark, name):
    benchmark.group = name.split("/")[0]
    fn = cases([name])[name].fn
    with torch.inference_mode():
        benchmark(fn)
