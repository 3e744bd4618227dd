"""par-api: the contracts every par package codes against (standard library only)."""

from .__about__ import __version__
from .arguments import CallArguments, Slot, fill_slots
from .backend import AutoBatchingMixin, ParallelBackendBase, TransportHooks, default_effective_n_jobs
from .code import keep_code_filename
from .config import (
    DEFAULTS,
    ActiveConfig,
    active_backend,
    backend_instance,
    check_inner_max_num_threads_supported,
    check_mmap_mode,
    check_temp_folder,
    check_verbose,
    default,
    effective_n_jobs,
    get_active_config,
    is_default,
    parallel_backend,
    parallel_config,
    parse_nbytes,
)
from .cpu import cpu_count, cpu_count_report
from .exceptions import BackendNotAvailableError, RemoteTraceback, WorkerDiedError
from .njobs import check_n_jobs, check_prefer, check_prefer_require, check_require, normalize_n_jobs
from .policy import ON_ERROR_VALUES, TASK_TIMEOUT_EXIT_CODE, check_on_error, check_retries, check_retry_on
from .process_local import ProcessLocal
from .registry import (
    ENTRY_POINT_GROUP,
    available_backends,
    backend_providers,
    default_backend_name,
    get_backend_factory,
    make_backend,
    multiprocessing_available,
    register_parallel_backend,
)
from .shm import SHM_FOLDER, shm_folder
from .task import BatchedCalls, BatchInfo, SingleArgTasks, Task, TaskTuple, delayed
from .threads import async_raise
from .worker import (
    bind_worker_state,
    check_forward_output,
    check_initializer,
    check_max_tasks_per_child,
    check_max_worker_memory,
    set_task_timeout_handler,
    task_timeout_handler,
    worker_state,
)

__all__ = [
    "ProcessLocal",
    "SHM_FOLDER",
    "shm_folder",
    "CallArguments",
    "SingleArgTasks",
    "Slot",
    "fill_slots",
    "ON_ERROR_VALUES",
    "TASK_TIMEOUT_EXIT_CODE",
    "check_on_error",
    "check_retries",
    "check_retry_on",
    "DEFAULTS",
    "ENTRY_POINT_GROUP",
    "ActiveConfig",
    "AutoBatchingMixin",
    "BackendNotAvailableError",
    "BatchedCalls",
    "BatchInfo",
    "ParallelBackendBase",
    "RemoteTraceback",
    "Task",
    "TaskTuple",
    "TransportHooks",
    "WorkerDiedError",
    "__version__",
    "active_backend",
    "async_raise",
    "available_backends",
    "backend_instance",
    "backend_providers",
    "bind_worker_state",
    "check_forward_output",
    "check_initializer",
    "check_max_tasks_per_child",
    "check_max_worker_memory",
    "check_inner_max_num_threads_supported",
    "check_mmap_mode",
    "check_temp_folder",
    "check_verbose",
    "check_n_jobs",
    "check_prefer",
    "check_prefer_require",
    "check_require",
    "cpu_count",
    "cpu_count_report",
    "default",
    "default_backend_name",
    "default_effective_n_jobs",
    "delayed",
    "effective_n_jobs",
    "get_active_config",
    "get_backend_factory",
    "is_default",
    "keep_code_filename",
    "make_backend",
    "multiprocessing_available",
    "normalize_n_jobs",
    "parallel_backend",
    "parallel_config",
    "parse_nbytes",
    "register_parallel_backend",
    "set_task_timeout_handler",
    "task_timeout_handler",
    "worker_state",
]
