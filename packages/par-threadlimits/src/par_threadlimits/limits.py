"""threadpoolctl limits for libraries already loaded: in worker processes (the worker
initializer) and in the parent for thread backends (:class:`parent_limits`).

Environment variables only reach a native library when it is loaded. A worker that
was forked, or reused after a change of the limit, may already hold a BLAS/OpenMP
runtime with its own pool size: threadpoolctl changes that at run time.

Which library a user's environment variable protects (their setting wins over par's
budget): OpenMP runtimes ``OMP_NUM_THREADS``, OpenBLAS ``OPENBLAS_NUM_THREADS``, MKL
``MKL_NUM_THREADS``, BLIS ``BLIS_NUM_THREADS``, numexpr ``NUMEXPR_NUM_THREADS``; any other
library threadpoolctl controls (e.g. FlexiBLAS) is governed by ``OMP_NUM_THREADS``.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .budget import (
    BUDGET_VAR,
    LIMITED_VARS_VAR,
    THREAD_LIMIT_VARS,
    _check_positive_int,
    user_set_vars,
)

if TYPE_CHECKING:
    from threadpoolctl import ThreadpoolController

# threadpoolctl (and ctypes, ~3 ms) is imported where a limit is applied or reported,
# not with this module: the parent of a process backend imports this package for the
# budget and the worker environment, and applies no limit itself.

#: threadpoolctl ``internal_api`` -> the environment variable that governs it.
_API_VARS: dict[str, str] = {
    "openmp": "OMP_NUM_THREADS",
    "openblas": "OPENBLAS_NUM_THREADS",
    "mkl": "MKL_NUM_THREADS",
    "blis": "BLIS_NUM_THREADS",
}
_DEFAULT_API_VAR = "OMP_NUM_THREADS"


def _governed(controller: ThreadpoolController, users: Iterable[str]) -> ThreadpoolController:
    """The libraries of ``controller`` whose governing variable the user did not set."""
    users = frozenset(users)
    apis = sorted(
        {
            info["internal_api"]
            for info in controller.info()
            if _API_VARS.get(info["internal_api"], _DEFAULT_API_VAR) not in users
        }
    )
    return controller.select(internal_api=apis)


def _without_thread_ownership(controller: ThreadpoolController) -> Any:
    """A no-op ``with`` block after which this thread no longer "controls" OpenBLAS.

    threadpoolctl >= 3.8 lets only one Python thread at a time change a process-wide
    (pthreads) OpenBLAS pool, the first to call ``set_num_threads``, until its outermost
    ``with threadpool_limits`` block ends. par's limits outlive the block that sets them
    (a worker's lifetime, or a call spanning threads), so each change is made inside an
    empty limiter's ``with`` block: on exit it restores nothing (no libraries selected)
    and hands control back, so that other threads and later calls can still set limits.
    """
    return controller.select(internal_api=[]).limit(limits=None)


class _Applied:
    """A limit applied to the selected libraries; :meth:`restore` undoes it."""

    def __init__(self, controller: ThreadpoolController, limit: int) -> None:
        self.controller = controller
        with _without_thread_ownership(controller):
            self.limiter = controller.limit(limits=limit)

    def restore(self) -> None:
        with _without_thread_ownership(self.controller):
            self.limiter.restore_original_limits()


def _apply(limit: int) -> _Applied:
    """Limit the loaded libraries not protected by a user's variable (in ``os.environ``)."""
    from threadpoolctl import ThreadpoolController

    return _Applied(_governed(ThreadpoolController(), user_set_vars()), limit)


# --------------------------------------------------------------------------- workers


def _started_with(values: dict[str, str]) -> bool:
    """Whether this process was started with ``values`` in its environment. Read from
    ``/proc/self/environ`` (Linux): the environment the process was started with (by a
    fork, its parent's), whatever ``os.environ`` became since; False where it is not
    available."""
    try:
        with open("/proc/self/environ", "rb") as f:
            data = f.read()
    except OSError:
        return False
    start = dict(item.split(b"=", 1) for item in data.split(b"\0") if b"=" in item)
    return all(start.get(name.encode()) == value.encode() for name, value in values.items())

_WORKER_LIMITER: _Applied | None = None


def worker_initializer(limit: int | None) -> None:
    """Give this worker process a thread budget of ``limit`` (``None``: do nothing).

    Meant as the ``initializer`` of a process pool (a module-level function, so it
    pickles by reference), with ``initargs=(budget,)``. It:

    1. sets each of :data:`THREAD_LIMIT_VARS` the user did not set to ``str(limit)`` in
       ``os.environ``, with ``PAR_THREAD_BUDGET`` and ``PAR_THREAD_LIMITED_VARS``, for
       libraries loaded later and for ``Parallel`` calls nested in this worker;
    2. limits, with threadpoolctl, the thread pools of libraries already loaded (a forked
       or reused worker), except those whose variable the user set; the limit stays in
       place for the worker's lifetime (the limiter is kept in this module). Skipped when
       the process was started with this budget in its environment (``PAR_THREAD_BUDGET``
       and each variable par sets equal to ``limit``, as loky starts par's workers; read
       from ``/proc/self/environ`` on Linux): every library loaded since read it;
    3. calls ``numexpr.set_num_threads(limit)`` if numexpr is already imported and
       ``NUMEXPR_NUM_THREADS`` is not the user's.

    "The user's" is judged as in :func:`user_set_vars`: present in the worker's
    environment and not recorded by par in ``PAR_THREAD_LIMITED_VARS``. When threadpoolctl
    finds no library, step 2 costs one scan of the loaded shared objects. OpenMP limits
    set here apply to the calling thread (the worker's main thread, where pool workers
    run their tasks); the environment variable covers the other threads.
    """
    global _WORKER_LIMITER
    if limit is None:
        return
    limit = _check_positive_int(limit, "limit", allow_none=False)
    assert limit is not None
    users = user_set_vars()
    ours = [name for name in THREAD_LIMIT_VARS if name not in users]
    value = str(limit)
    wanted = {name: value for name in (*ours, BUDGET_VAR)}
    # Started with this budget in its environment (a loky worker: the pool passes
    # worker_env() to the new process), every library loaded since read its variable:
    # then step 2 has nothing to change, and threadpoolctl, with its scan of the loaded
    # libraries (~4 ms of each worker's start), is not needed. Not so in a pool that sets
    # the variables in its initializer (multiprocessing: a forked worker holds the
    # parent's libraries, loaded before).
    preset = all(os.environ.get(name) == v for name, v in wanted.items()) and _started_with(wanted)
    for name in ours:
        os.environ[name] = value
    os.environ[BUDGET_VAR] = value
    os.environ[LIMITED_VARS_VAR] = ",".join(ours)

    numexpr = sys.modules.get("numexpr")
    if numexpr is not None and "NUMEXPR_NUM_THREADS" not in users:
        set_num_threads = getattr(numexpr, "set_num_threads", None)
        if callable(set_num_threads):
            set_num_threads(limit)

    if not preset:
        _WORKER_LIMITER = _apply(limit)


# --------------------------------------------------------------------------- parent


class _ProcessLimits:
    """The process-wide state behind :class:`parent_limits`.

    Native thread pools are process-wide, so concurrent and nested ``parent_limits``
    blocks (from any thread) share one state: while any is active, the loaded libraries
    are limited to the *smallest* active limit; when the last ends, every library is
    back to the value it had before the first began. A stack of threadpoolctl limiters
    with strictly decreasing limits implements it: a stricter block pushes one, and when
    the smallest active limit rises again the stricter limiters are undone in reverse
    order (and one for the new minimum pushed if needed).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: Counter[int] = Counter()
        self._stack: list[tuple[int, _Applied]] = []

    def current(self) -> int | None:
        with self._lock:
            return min(self._active) if self._active else None

    def acquire(self, limit: int) -> None:
        with self._lock:
            self._active[limit] += 1
            self._sync()

    def release(self, limit: int) -> None:
        with self._lock:
            self._active[limit] -= 1
            if self._active[limit] <= 0:
                del self._active[limit]
            self._sync()

    def _sync(self) -> None:
        target = min(self._active) if self._active else None
        try:
            while self._stack and (target is None or self._stack[-1][0] < target):
                _, applied = self._stack.pop()
                applied.restore()
            if target is not None and (not self._stack or self._stack[-1][0] > target):
                self._stack.append((target, _apply(target)))
        except Exception as exc:  # pragma: no cover - depends on the native libraries
            # Limits are an optimisation: never fail the user's call because of them.
            warnings.warn(
                f"par_threadlimits: could not change thread limits: {exc!r}", RuntimeWarning, stacklevel=4
            )

    def _after_fork(self) -> None:
        # The child has a single thread: a lock held by another thread of the parent
        # at fork time would never be released.
        self._lock = threading.Lock()


_PROCESS_LIMITS = _ProcessLimits()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_PROCESS_LIMITS._after_fork)


class parent_limits:
    """Limit the native thread pools of this process for the duration of a ``with`` block.

    For thread backends: their ``n_jobs`` worker threads share the process's BLAS/OpenMP
    pools, so ``with parent_limits(thread_backend_limit(n_jobs, inner)):`` around the call
    gives them the same budget process workers get. ``limit=None`` does nothing.

    - Libraries already loaded are limited with threadpoolctl, except those whose
      environment variable the user set (see :func:`user_set_vars`).
    - On exit, also on an exception, they return to the value they had before.
    - Nesting-safe and re-entrant: blocks may nest, overlap across threads, and one
      instance may be entered several times; while several are active the smallest
      limit applies, and the original values come back when the last one exits.
    - Process-wide pools (OpenBLAS with pthreads, as in numpy's wheels; MKL; BLIS) are
      limited for every thread. OpenMP runtimes keep a limit per thread: the limit
      reaches only the thread that entered the block, not pool threads already running.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = _check_positive_int(limit, "limit")

    def __enter__(self) -> parent_limits:
        if self.limit is not None:
            _PROCESS_LIMITS.acquire(self.limit)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.limit is not None:
            _PROCESS_LIMITS.release(self.limit)

    def __repr__(self) -> str:
        return f"parent_limits(limit={self.limit!r})"


def current_parent_limit() -> int | None:
    """The limit active :class:`parent_limits` blocks impose now (the smallest), or None."""
    return _PROCESS_LIMITS.current()


def threadpool_report() -> list[dict[str, Any]]:
    """``threadpoolctl.threadpool_info()``: one dict per native thread pool loaded in this
    process (``user_api``, ``internal_api``, ``num_threads``, ``filepath``, ``version``,
    ...), for diagnostics, e.g. from inside a task to check a worker's limits."""
    from threadpoolctl import threadpool_info

    return list(threadpool_info())
