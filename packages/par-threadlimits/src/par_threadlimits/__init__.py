"""par_threadlimits: no over-subscription of CPUs by native thread pools.

A par call with ``n_jobs`` workers gives each worker a budget of
``max(cpu_count() // n_jobs, 1)`` native threads, or ``inner_max_num_threads``:

- process workers: :func:`worker_env` (environment variables set before they start)
  and :func:`worker_initializer` (threadpoolctl for libraries already loaded);
- thread backends (opt-in): :class:`parent_limits` around the call, with the limit from
  :func:`thread_backend_limit`;
- nested calls in a worker: :func:`nested_budget` is the CPU count they size themselves on.

A thread-limit variable the user set in the parent's environment always wins.
"""

from .__about__ import __version__
from .budget import (
    BUDGET_VAR,
    LIMITED_VARS_VAR,
    THREAD_BACKEND_OPT_IN_VAR,
    THREAD_LIMIT_VARS,
    nested_budget,
    par_set_vars,
    thread_backend_limit,
    thread_budget,
    user_set_vars,
    worker_env,
)
from .limits import current_parent_limit, parent_limits, threadpool_report, worker_initializer

__all__ = [
    "BUDGET_VAR",
    "LIMITED_VARS_VAR",
    "THREAD_BACKEND_OPT_IN_VAR",
    "THREAD_LIMIT_VARS",
    "__version__",
    "current_parent_limit",
    "nested_budget",
    "par_set_vars",
    "parent_limits",
    "thread_backend_limit",
    "thread_budget",
    "threadpool_report",
    "user_set_vars",
    "worker_env",
    "worker_initializer",
]
