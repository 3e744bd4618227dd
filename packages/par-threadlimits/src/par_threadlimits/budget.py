"""The per-worker thread budget and the environment of worker processes.

A par call with ``n_jobs`` workers on a host with ``cpu_count()`` CPUs gives each worker
a *budget* of native threads (OpenMP, BLAS, numexpr): ``max(cpu_count() // n_jobs, 1)``,
or ``inner_max_num_threads`` when the user sets it, so that workers x threads stays
within the CPU count.

Process workers receive the budget through environment variables set before they
start (:func:`worker_env`): the native libraries read them when they are loaded. A
variable the user set in the parent's environment is never overridden. Two more
variables travel with them:

- ``PAR_THREAD_BUDGET``: the budget, read by :func:`nested_budget` to size a
  ``Parallel`` call made inside the worker (so outer x inner workers <= CPUs);
- ``PAR_THREAD_LIMITED_VARS``: the comma-separated names par set itself, so that a
  nested call in the worker can tell par's values (which it replaces with the smaller
  nested budget) from the user's (which it keeps).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from par_api import cpu_count, normalize_n_jobs

#: The environment variables that cap the thread pools of native libraries, in this
#: order: OpenMP (every OpenMP runtime, and BLAS libraries built on it), OpenBLAS, MKL,
#: BLIS, Apple Accelerate/vecLib, numexpr.
THREAD_LIMIT_VARS: tuple[str, ...] = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

#: The budget a worker was given; read by :func:`nested_budget`.
BUDGET_VAR = "PAR_THREAD_BUDGET"
#: The names of THREAD_LIMIT_VARS that par (not the user) set in this process's environment.
LIMITED_VARS_VAR = "PAR_THREAD_LIMITED_VARS"
#: Opt-in for thread backends without ``inner_max_num_threads`` (see :func:`thread_backend_limit`).
THREAD_BACKEND_OPT_IN_VAR = "PAR_LIMIT_THREAD_BACKENDS"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _check_positive_int(value: Any, name: str, *, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        accepted = "a positive int or None" if allow_none else "a positive int"
        raise TypeError(f"{name} must be {accepted}, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


def _check_n_jobs(n_jobs: Any, n_cpus: int) -> int:
    """The number of workers, by ``par_api``'s rules (-1 every CPU, -2 all but one;
    ``ValueError``/``TypeError`` naming ``n_jobs`` for 0 or a non-number)."""
    if n_jobs is None:
        raise TypeError("n_jobs must be an int (the number of workers), got None")
    return normalize_n_jobs(n_jobs, n_cpus)


def thread_budget(n_jobs: int, inner_max_num_threads: int | None = None, n_cpus: int | None = None) -> int:
    """The number of native threads each of ``n_jobs`` workers may use.

    ``inner_max_num_threads`` when given (the user's explicit choice, even above the CPU
    count), else ``max(n_cpus // n_jobs, 1)``. ``n_cpus`` defaults to
    :func:`nested_budget`: ``par_api.cpu_count()`` (CPU affinity and cgroup quotas
    honoured), or, inside a par worker process, the budget that worker was given, so that
    a nested call's workers share their parent worker's threads (outer x inner x threads
    <= CPUs). A negative ``n_jobs`` counts back from ``n_cpus`` (-1: every CPU).

    Raises ``TypeError``/``ValueError`` naming the parameter for a non-int or
    non-positive ``inner_max_num_threads`` or ``n_cpus``, and for ``n_jobs`` 0 or non-int.
    """
    inner = _check_positive_int(inner_max_num_threads, "inner_max_num_threads")
    cpus = _check_positive_int(n_cpus, "n_cpus")
    if cpus is None:
        cpus = nested_budget()
    workers = _check_n_jobs(n_jobs, cpus)
    if inner is not None:
        return inner
    return max(cpus // workers, 1)


def par_set_vars(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The names of :data:`THREAD_LIMIT_VARS` that par itself set in ``environ`` (as
    recorded in ``PAR_THREAD_LIMITED_VARS`` by :func:`worker_env`)."""
    env = os.environ if environ is None else environ
    listed = env.get(LIMITED_VARS_VAR, "")
    return frozenset(name for name in listed.split(",") if name in THREAD_LIMIT_VARS)


def user_set_vars(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The names of :data:`THREAD_LIMIT_VARS` the *user* set in ``environ`` (default
    ``os.environ``): present (even empty) and not recorded as set by par. These win over
    par's budget everywhere (worker environment, worker initializer, parent limits)."""
    env = os.environ if environ is None else environ
    ours = par_set_vars(env)
    return frozenset(name for name in THREAD_LIMIT_VARS if name in env and name not in ours)


def worker_env(
    n_jobs: int,
    inner_max_num_threads: int | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    n_cpus: int | None = None,
) -> dict[str, str]:
    """The environment variables to set in process workers before they start.

    Each of :data:`THREAD_LIMIT_VARS` is set to ``str(thread_budget(n_jobs,
    inner_max_num_threads, n_cpus))``, except those the user set in ``environ`` (default
    ``os.environ``): those are left out, so the worker inherits the user's value.
    ``PAR_THREAD_BUDGET`` (the budget, for :func:`nested_budget`) and
    ``PAR_THREAD_LIMITED_VARS`` (the names set here) are always included. Without
    ``n_cpus``, the CPUs shared out are ``PAR_THREAD_BUDGET`` of ``environ`` (a nested call
    in a worker), else ``par_api.cpu_count()``.

    Inside a worker, the variables par set for the outer call are not the user's: a
    nested call replaces them with its own (smaller) budget. ``environ`` is not modified.
    A different budget gives a different mapping (``TransportHooks.env``), which a
    process backend applies when it starts its workers.
    """
    env = os.environ if environ is None else environ
    if n_cpus is None and inner_max_num_threads is None:
        n_cpus = _budget_in(env) or cpu_count()
    budget = thread_budget(n_jobs, inner_max_num_threads, n_cpus)
    users = user_set_vars(env)
    ours = [name for name in THREAD_LIMIT_VARS if name not in users]
    result = {name: str(budget) for name in ours}
    result[BUDGET_VAR] = str(budget)
    result[LIMITED_VARS_VAR] = ",".join(ours)
    return result


def _budget_in(environ: Mapping[str, str]) -> int | None:
    """``PAR_THREAD_BUDGET`` of ``environ`` if it is a positive integer, else None."""
    raw = environ.get(BUDGET_VAR, "").strip()
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value >= 1 else None


def nested_budget(default_cpus: int | None = None) -> int:
    """The CPUs available to a ``Parallel`` call made from this process.

    Inside a par worker process: the thread budget the worker was given
    (``PAR_THREAD_BUDGET``), so that a nested call sized on it keeps outer x inner
    workers within the CPU count. Elsewhere (or when the variable is not a positive
    integer): ``default_cpus`` if given, else ``par_api.cpu_count()``.

    ``par`` should use it in place of ``cpu_count()`` to size a nested call (``n_jobs=-1``
    means ``nested_budget()`` workers); :func:`thread_budget` and :func:`worker_env`
    already default to it for the nested workers' own budget. Thread workers share the
    process's environment, so inside a thread-backend task this is the process's value.
    """
    default = _check_positive_int(default_cpus, "default_cpus")
    budget = _budget_in(os.environ)
    if budget is not None:
        return budget
    return default if default is not None else cpu_count()


def thread_backend_limit(
    n_jobs: int, inner_max_num_threads: int | None = None, enabled: bool | None = None
) -> int | None:
    """The limit :class:`~par_threadlimits.parent_limits` should apply for a thread
    backend, or ``None`` for no limit (the default).

    Thread workers share the process's native thread pools, so ``n_jobs`` threads each
    calling a BLAS that uses every core over-subscribe the CPUs just like processes.
    Limiting them is opt-in:

    - ``inner_max_num_threads`` given: that limit;
    - else ``enabled=True``, or ``enabled=None`` with the environment variable
      ``PAR_LIMIT_THREAD_BACKENDS`` set to ``1``/``true``/``yes``/``on``:
      ``thread_budget(n_jobs)``;
    - else ``None``.

    Raises ``ValueError`` for an unrecognised ``PAR_LIMIT_THREAD_BACKENDS`` value.
    """
    if inner_max_num_threads is not None:
        return thread_budget(n_jobs, inner_max_num_threads)
    if enabled is None:
        raw = os.environ.get(THREAD_BACKEND_OPT_IN_VAR, "").strip().lower()
        if raw in _TRUE:
            enabled = True
        elif raw in _FALSE:
            enabled = False
        else:
            raise ValueError(
                f"{THREAD_BACKEND_OPT_IN_VAR}={raw!r} is not valid: use one of "
                f"{', '.join(_TRUE)} to limit thread backends, or {', '.join(repr(v) for v in _FALSE)}"
            )
    elif not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True, False or None, got {enabled!r}")
    return thread_budget(n_jobs) if enabled else None
