"""The private APIs of the libraries the package builds on, each behind one function here and pinned by one test
(tests/test_compat.py): an upgrade that moves one breaks here and in its test, not inside a job. Each library is
imported when its function is called (Optuna, ExecuTorch and the launchers are optional or heavy)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

OPTUNA_TRIAL_LOGGER = "optuna.study._optimize"  # the logger Optuna's optimize() reports a caught trial failure on


def basic_sweeper() -> type:
    """Hydra's default sweeper class, whose `split_arguments` composes a multirun's jobs (Hydra keeps it
    internal; `validate.job_configs` checks every job with it before the first runs)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return BasicSweeper


def heartbeat_storage(study: Any) -> Any:
    """The study's storage if it keeps heartbeats (as `optuna.storages.fail_stale_trials` finds it), else None."""
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    store = study._storage
    return store if isinstance(store, BaseHeartbeat) and is_heartbeat_enabled(store) else None


def trial_id(trial: Any) -> int:
    """A trial's id in its storage (Optuna's storage API takes ids; a `Trial` shows only its number)."""
    return trial._trial_id


def pool_processes(pool: Any) -> list[Any]:
    """The worker processes of a `multiprocessing` pool (a pool replaces a worker that dies, but the task it
    held never ends: the caller watches them)."""
    return list(pool._pool)


def executorch_backends() -> list[str]:
    """The backends this ExecuTorch build's runtime has registered."""
    from executorch.extension.pybindings import portable_lib

    return list(portable_lib._get_registered_backend_names())


def executorch_threads(threads: int) -> None:
    """Size ExecuTorch's XNNPACK thread pool (one pool per process), if it is not that size already."""
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)


def lowering_memos() -> list[Callable[[], None]]:
    """The `cache_clear` of each unbounded memo that keeps a lowered graph and its weights alive: ExecuTorch's
    `is_same_node` (keyed by fx nodes), torch.ao's and torchao's `assert_and_get_unique_device` (keyed by the
    int8 path's modules), FakeTensorMode's dispatch cache (its keys hold the lowered delegate modules)."""
    from executorch.exir.backend.utils import is_same_node
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.ao.quantization.fx.utils import assert_and_get_unique_device
    from torchao.utils import _assert_and_get_unique_device

    return [m.cache_clear for m in (is_same_node, assert_and_get_unique_device, _assert_and_get_unique_device,
                                    FakeTensorMode)]
