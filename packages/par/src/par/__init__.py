"""par: run Python loops in parallel — ``Parallel(n_jobs=2)(delayed(f)(x) for x in data)``.

The public API of joblib's parallel module, assembled from small packages:
``par_api`` (contracts), ``par_scheduler``, ``par_backends_local``,
``par_serialization``, ``par_memmap`` and ``par_threadlimits``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from par_api import (
    AutoBatchingMixin,
    BatchedCalls,
    ParallelBackendBase,
    RemoteTraceback,
    TransportHooks,
    WorkerDiedError,
    cpu_count,
    delayed,
    effective_n_jobs,
    parallel_backend,
    parallel_config,
    register_parallel_backend,
    worker_state,
)
from par_serialization import UnpicklableExceptionError, wrap_non_picklable_objects

from .__about__ import __version__

if TYPE_CHECKING:
    from par_memmap import dump, load
    from par_scheduler import ProgressEvent

    from ._aio import ParallelGenerator
    from .parallel import Parallel

# Imported on first access (PEP 562): a worker process imports this package only to
# unpickle what ``par._forwarding`` sends it, and must not pay for the scheduler, the
# parent-side ``Parallel`` and asyncio (which imports ssl): about a third of what a
# fresh loky worker imported before its first task.
_LAZY = {
    "Parallel": (".parallel", "Parallel"),
    "ParallelGenerator": ("._aio", "ParallelGenerator"),
    "ProgressEvent": ("par_scheduler", "ProgressEvent"),
    "dump": ("par_memmap", "dump"),
    "load": ("par_memmap", "load"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'par' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "AutoBatchingMixin",
    "BatchedCalls",
    "Parallel",
    "ParallelBackendBase",
    "ParallelGenerator",
    "ProgressEvent",
    "RemoteTraceback",
    "TransportHooks",
    "UnpicklableExceptionError",
    "WorkerDiedError",
    "__version__",
    "cpu_count",
    "delayed",
    "dump",
    "effective_n_jobs",
    "load",
    "parallel_backend",
    "parallel_config",
    "register_parallel_backend",
    "worker_state",
    "wrap_non_picklable_objects",
]
