"""Worker recycling: ``max_tasks_per_child`` and ``max_worker_memory``.

A process worker counts the tasks it ran (from each batch's ``n_tasks``) and, after
each batch, compares that count with ``max_tasks_per_child`` and its resident memory
(RSS) with ``max_worker_memory``: it leaves when its RSS is over the limit, or when one
more batch growing it as much as the last one did would take it over (a worker leaking
a steady amount per task is replaced before it passes the limit, not after). Past a limit it asks to leave: it returns the batch's
results normally and then exits *between* two batches, the way each pool already
retires workers, so that no batch is lost and the pool starts a replacement:

- ``multiprocessing.Pool``: the pool's worker loop runs while ``completed <
  maxtasks``; the backend passes a :class:`PoolBudget` (an ``int`` subclass) as
  ``maxtasksperchild``, whose comparison is false once this worker asked to leave. The
  pool then replaces the worker as it does for its own ``maxtasksperchild``.
- ``loky``: the worker loop of ``loky.process_executor`` exits cleanly when it reads
  ``None`` from its call queue (the shutdown sentinel): it tells the executor's manager
  (which starts a replacement when work is pending, or at the next submit) and exits.
  The worker initializer finds that loop's call queue (the ``call_queue`` variable of
  ``_process_worker``, the one loky internal relied on) and, when the worker asks to
  leave, makes *this process's* next read of it return ``None``. The pid sent back is
  loky's ``_RecycledWorkerPid`` (a recycling the executor decided), so loky does not
  warn that a worker stopped unexpectedly.

Counting is per batch: a worker finishes the batch it is running, so with batches of
several tasks it may run a few more than ``max_tasks_per_child`` (``batch_size=1``
makes the count exact).
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from par_api import set_task_timeout_handler

__all__ = [
    "PoolBudget",
    "after_batch",
    "init_worker",
    "pool_maxtasks",
    "answer_and_retire",
    "init_task_timeout",
    "quiet_loky_recycling",
    "rss",
    "worker_steps",
]

_max_tasks: int | None = None
_max_memory: int | None = None
_done = 0
_leaving = False
_loky_call_queue: Any = None
_loky_result_queue: Any = None
_last_rss: int | None = None
#: Set in the worker by init_worker: after_batch has something to check.
active = False


def rss() -> int | None:
    """This process's resident memory in bytes (``/proc/self/statm`` on Linux, else
    psutil when installed), or None when it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:  # pragma: no cover - not Linux: psutil when the user installed it (optional,
        # not a dependency of this package; without it max_worker_memory never triggers)
        import importlib

        psutil = importlib.import_module("psutil")
        return int(psutil.Process().memory_info().rss)
    except Exception:  # pragma: no cover
        return None


def _find_loky_loop() -> None:
    """Remember the call and result queues of the loky worker loop running us (called
    from the worker initializer, which ``_process_worker`` calls)."""
    global _loky_call_queue, _loky_result_queue
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_process_worker" and "loky" in code.co_filename:
            local = frame.f_locals
            _loky_call_queue = local.get("call_queue")
            _loky_result_queue = local.get("result_queue")
            return
        frame = frame.f_back  # type: ignore[assignment]


def init_worker(max_tasks: int | None, max_memory: int | None) -> None:
    """Worker initializer step: the limits of this worker."""
    global _max_tasks, _max_memory, _done, _leaving, active, _last_rss
    _max_tasks, _max_memory, _done, _leaving = max_tasks, max_memory, 0, False
    _last_rss = rss() if max_memory is not None else None
    active = max_tasks is not None or max_memory is not None
    _find_loky_loop()


def _leave() -> None:
    """Ask to leave once the running batch's results are sent."""
    global _leaving
    if _leaving:
        return
    _leaving = True
    queue, results = _loky_call_queue, _loky_result_queue
    if queue is None:
        return  # multiprocessing: PoolBudget ends the pool's worker loop
    try:
        from loky.process_executor import _RecycledWorkerPid
    except ImportError:  # pragma: no cover - older loky
        _RecycledWorkerPid = int
    pid = os.getpid()

    def get(*args: Any, **kwargs: Any) -> None:
        return None  # loky's shutdown sentinel: this worker exits cleanly

    queue.get = get
    if results is not None and _RecycledWorkerPid is not int:
        put = results.put

        def put_recycled(obj: Any) -> Any:
            if type(obj) is int and obj == pid:
                obj = _RecycledWorkerPid(obj)
            return put(obj)

        results.put = put_recycled


def _running_work_id() -> Any:
    """The work id of the call item loky's worker loop is running (in the main thread,
    stuck in the task)."""
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_process_worker" and "loky" in code.co_filename:
            item = frame.f_locals.get("call_item")
            return getattr(item, "work_id", None)
        frame = frame.f_back
    return None


def answer_and_retire(error: BaseException) -> None:
    """Task-timeout handler of a loky worker (``par_api.set_task_timeout_handler``):
    the running batch gets ``error`` as its result, and the worker retires the way a
    recycled one does (``_RecycledWorkerPid``), so loky starts a replacement instead of
    breaking the executor and failing every other running batch. The caller then ends
    the process."""
    results = _loky_result_queue
    work_id = _running_work_id()
    if results is None or work_id is None:
        return
    try:
        from loky.process_executor import _RecycledWorkerPid, _ResultItem
    except ImportError:  # pragma: no cover - older loky: the executor breaks instead
        return
    results.put(_ResultItem(work_id, exception=error))
    results.put(_RecycledWorkerPid(os.getpid()))


def init_task_timeout() -> None:
    """loky worker initializer step: answer a stuck batch before a task timeout ends
    this worker (:func:`answer_and_retire`)."""
    _find_loky_loop()
    set_task_timeout_handler(answer_and_retire)


def after_batch(n_tasks: int) -> None:
    """Count a finished batch's tasks; leave past ``max_tasks_per_child`` or
    ``max_worker_memory``."""
    global _done
    _done += n_tasks
    if _max_tasks is not None and _done >= _max_tasks:
        _leave()
        return
    if _max_memory is not None:
        global _last_rss
        used = rss()
        if used is None:
            return
        # The batch grew the worker by this much: one more like it would pass the limit.
        growth = max(used - _last_rss, 0) if _last_rss is not None else 0
        _last_rss = used
        if used + growth > _max_memory:
            gc.collect()  # garbage in reference cycles is not a reason to leave
            used = rss()
            if used is not None and (used > _max_memory or used + growth > _max_memory):
                _leave()


def leaving() -> bool:
    """Whether this worker asked to leave."""
    return _leaving


class PoolBudget(int):
    """``maxtasksperchild`` of a ``multiprocessing.Pool`` whose workers recycle
    themselves: the pool's worker loop compares ``completed < maxtasks`` before taking
    a batch, which is false once this worker asked to leave (the value itself is the
    user's own ``maxtasksperchild``, counted in batches, or a huge number)."""

    def __gt__(self, completed: Any) -> bool:
        if _leaving:
            return False
        return int(self) > completed

    def __reduce__(self) -> tuple[Any, ...]:
        return (PoolBudget, (int(self),))


_NO_LIMIT = 2**62


def pool_maxtasks(maxtasksperchild: int | None, hooks: Any) -> int | None:
    """The ``maxtasksperchild`` to give ``multiprocessing.Pool``: a :class:`PoolBudget`
    when ``hooks`` set a limit, else ``maxtasksperchild`` unchanged."""
    if _limits(hooks) == (None, None):
        return maxtasksperchild
    return PoolBudget(maxtasksperchild if maxtasksperchild is not None else _NO_LIMIT)


def _limits(hooks: Any) -> tuple[int | None, int | None]:
    if hooks is None:
        return None, None
    return getattr(hooks, "max_tasks_per_child", None), getattr(hooks, "max_worker_memory", None)


def worker_steps(hooks: Any) -> tuple[tuple[Callable[..., Any], tuple[Any, ...]], ...]:
    """The initializer step applying ``hooks``' limits in each worker (none without)."""
    limits = _limits(hooks)
    if limits == (None, None):
        return ()
    return ((init_worker, limits),)


def quiet_loky_recycling(executor: Any) -> None:
    """Tell loky's manager thread of ``executor`` that its restart warning was given:
    loky warns once per executor that a worker "was using more than 300 MB more memory"
    when it recycles one while jobs are pending, which is wrong for a restart that the
    user asked for with par's limits. (``recycling_warned`` exists in loky >= 3.5;
    elsewhere this does nothing.)"""
    manager = getattr(executor, "_executor_manager_thread", None)
    if manager is not None and getattr(manager, "recycling_warned", True) is False:
        manager.recycling_warned = True
