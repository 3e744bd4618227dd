"""par: run Python loops in parallel — ``Parallel(n_jobs=2)(delayed(f)(x) for x in data)``.

The public API of joblib's parallel module, assembled from small packages:
``par_api`` (contracts), ``par_scheduler``, ``par_backends_local``,
``par_serialization``, ``par_memmap`` and ``par_threadlimits``.
"""

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
from par_memmap import dump, load
from par_scheduler import ProgressEvent
from par_serialization import UnpicklableExceptionError, wrap_non_picklable_objects

from .__about__ import __version__
from ._aio import ParallelGenerator
from .parallel import Parallel

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
