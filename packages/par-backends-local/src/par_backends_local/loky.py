"""The ``loky`` backend (par's default): worker processes of loky's reusable executor.

The executor returned by :func:`loky.get_reusable_executor` is kept alive between
calls (idle workers exit after ``idle_worker_timeout`` seconds) and reused as long as
the worker set-up is the same: loky itself replaces the workers when the environment,
initializer or reducers change, and resizes the pool when ``n_jobs`` changes.

``terminate()`` at the end of a call keeps the executor for the next call; only
``abort_everything`` (first error, timeout, Ctrl-C) kills the workers, so that a stuck
task does not keep a worker busy.

Worker death (``os._exit``, a signal such as SIGKILL from the out-of-memory killer, a
segfault) makes loky fail the pending futures with ``TerminatedWorkerError``; this
backend re-raises it as :class:`par_api.WorkerDiedError` (message from
:mod:`par_backends_local._crash`, loky's exception as ``__cause__``) and the next
submit gets a fresh executor.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import BrokenExecutor, Future
from concurrent.futures import wait as wait_futures
from typing import Any

from par_api import TransportHooks, WorkerDiedError, check_initializer

from . import _crash, _recycling, _tracking
from ._common import (
    adopt_remote_traceback,
    check_backend_kwargs,
    check_process_backend_available,
    hand_over,
    init_steps,
    run_initializers,
)
from ._process import ProcessBackendBase

#: Seconds an idle worker of the reusable executor waits before exiting.
DEFAULT_IDLE_WORKER_TIMEOUT = 300.0

#: How much nicer than this process the resource trackers started with the first
#: workers run (see :func:`_start_workers`).
TRACKER_NICENESS = 10

_BACKEND_KWARGS = ("initializer", "initargs", "idle_worker_timeout")


def _loky_processes(executor: Any) -> Mapping[int, Any] | None:
    """loky's live table pid -> process object of the executor's current workers, or
    None when this loky has none.

    The one place that reads loky internals (``ProcessPoolExecutor._processes``). It is
    only used to name the pid of a worker that died, so a missing attribute just means
    the pid is not reported.
    """
    processes = getattr(executor, "_processes", None)
    return processes if isinstance(processes, Mapping) else None


def _worker_processes(executor: Any) -> dict[int, Any]:
    """A copy of :func:`_loky_processes`' table (empty when there is none)."""
    processes = _loky_processes(executor)
    if processes is None:
        return {}
    try:
        return dict(processes)
    except RuntimeError:  # resized concurrently
        return {}


def _all_known(executor: Any, known: Mapping[int, Any]) -> bool:
    """Whether every current worker of the executor is in ``known`` (no copy of loky's
    table: this runs at every submit)."""
    processes = _loky_processes(executor)
    if processes is None:
        return True
    try:
        return processes.keys() <= known.keys()
    except RuntimeError:  # resized concurrently
        return False


class LokyBackend(ProcessBackendBase):
    """Worker processes from loky's reusable executor (the default backend).

    Parameters (also accepted by ``configure`` as backend arguments, which win):
    ``initializer``/``initargs`` run once in each new worker (after the transport
    hooks' initializer), ``idle_worker_timeout`` seconds before an idle worker exits.
    """

    nesting_label = "Loky"

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        idle_worker_timeout: float = DEFAULT_IDLE_WORKER_TIMEOUT,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self._init_user_kwargs(initializer, initargs)
        if idle_worker_timeout != DEFAULT_IDLE_WORKER_TIMEOUT:
            self._user_kwargs["idle_worker_timeout"] = _check_timeout(idle_worker_timeout)
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        self._executor: Any = None
        self._executor_args: dict[str, Any] | None = None
        self._recycles = False
        self._n_jobs: int | None = None
        self._workers: dict[int, Any] = {}
        # token -> batch submitted and not finished, described only if a worker dies
        self._batches: dict[int, Any] = {}
        self._lock = threading.Lock()

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        hooks: TransportHooks | None = None,
        **backend_kwargs: Any,
    ) -> int:
        """Get (or reuse) loky's executor with ``effective_n_jobs(n_jobs)`` workers set up
        by ``hooks`` and the ``initializer``/``initargs``/``idle_worker_timeout`` backend
        arguments. Raises :class:`par_api.BackendNotAvailableError` without multiprocessing."""
        check_backend_kwargs("loky", backend_kwargs, _BACKEND_KWARGS)
        check_process_backend_available("loky")
        if hooks is not None and not isinstance(hooks, TransportHooks):
            raise TypeError(f"hooks must be a par_api.TransportHooks or None, got {type(hooks).__name__}")
        n = self.effective_n_jobs(n_jobs)
        merged = {**self._user_kwargs, **backend_kwargs}
        user_init, user_initargs = check_initializer(merged.get("initializer"), merged.get("initargs", ()))
        timeout = _check_timeout(merged.get("idle_worker_timeout", DEFAULT_IDLE_WORKER_TIMEOUT))

        recycling = _recycling.worker_steps(hooks)
        self._recycles = bool(recycling)
        steps = init_steps(
            *_tracking.worker_steps(),
            (_recycling.init_task_timeout, ()),
            *recycling,
            (hooks.initializer, hooks.initargs) if hooks is not None else (None, ()),
            (user_init, user_initargs),
        )
        env = dict(hooks.env) if hooks is not None and hooks.env else None
        self._executor_args = {
            "max_workers": n,
            "timeout": timeout,
            "initializer": run_initializers if steps else None,
            "initargs": steps,
            "env": env,
        }
        self.parallel = parallel
        self.hooks = hooks
        self._n_jobs = n
        trackers = _tracker_pids()
        _start_workers(self._get_executor(), n)
        # the trackers this executor's creation (its locks) and workers started
        _lower_priority(_tracker_pids() - trackers)
        return n

    def _get_executor(self) -> Any:
        from loky import get_reusable_executor

        if self._executor_args is None:
            raise RuntimeError("LokyBackend.configure(...) must be called before submit()")
        # A worker start begun by an earlier configure and not finished (no batch ran
        # since, e.g. an empty call): wait for it here, as loky would before resizing the
        # executor or replacing it, but without loky's warning about running jobs.
        wait_futures(_starting)
        _starting.clear()
        executor = get_reusable_executor(reuse="auto", **self._executor_args)
        with self._lock:
            if executor is not self._executor:
                self._workers = {}
            self._executor = executor
        return executor

    # -- running --------------------------------------------------------------------
    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Future[Any]:
        """Send ``func`` (through ``hooks.serialize_batch`` when set, in this thread: its
        pickling errors propagate) to a worker; return a future that the callback gets."""
        payload, token, info, took = self._prepare(func)
        batches = self._batches
        batches[token] = info
        executor = self._executor if self._executor is not None else self._get_executor()
        try:
            loky_future = executor.submit(payload)
        except (BrokenExecutor, RuntimeError):
            # The executor broke (a worker died) or was shut down by an abort: start afresh.
            executor = self._get_executor()
            loky_future = executor.submit(payload)
        if self._recycles or self.task_timeout is not None:  # restarts the user asked for
            _recycling.quiet_loky_recycling(executor)
        if not _all_known(executor, self._workers):
            with self._lock:
                self._workers.update(_worker_processes(executor))
        known_workers = self._workers

        out: Future[Any] = Future()

        def on_done(done: Any) -> None:
            try:
                value = done.result()
            except BaseException as exc:
                error = self._translate(exc, known_workers, batches)
                if not isinstance(error, WorkerDiedError):
                    batches.pop(token, None)
                # (after a worker death the descriptions stay until the end of the call:
                # every pending batch fails, each error names the dead worker's task)
                out.set_exception(error)
            else:
                batches.pop(token, None)
                out.set_result(value)
            if callback is not None:
                callback(out)

        loky_future.add_done_callback(on_done)
        hand_over(took)
        return out

    @staticmethod
    def _translate(
        exc: BaseException, workers: Mapping[int, Any], batches: Mapping[int, Any] | None = None
    ) -> BaseException:
        from loky.process_executor import TerminatedWorkerError

        if isinstance(exc, TerminatedWorkerError):
            return LokyBackend.worker_death(_crash.abnormal_exits(workers), batches or {}, cause=exc)()
        return adopt_remote_traceback(exc)

    # -- life cycle -----------------------------------------------------------------
    def terminate(self) -> None:
        """End of a call: forget the executor but keep its workers for the next call."""
        with self._lock:
            self._executor = None
            self._workers = {}
            self._batches = {}

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Kill the workers (a stuck task stops) and fail the pending batches; with
        ``ensure_ready`` a fresh executor is ready for the next submit."""
        executor = self._executor
        if executor is not None:
            # wait=True: the kill is done when this returns. (With wait=False, the
            # shutdown(kill_workers=False) that get_reusable_executor performs on a shut-down
            # executor could reset loky's kill flag before its manager thread acts on it,
            # leaving the stuck worker running.)
            executor.shutdown(wait=True, kill_workers=True)
        with self._lock:
            self._executor = None
            self._workers = {}
            self._batches = {}
        if ensure_ready and self._executor_args is not None:
            self._get_executor()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_executor", "_workers", "_batches", "_lock", "parallel", "hooks", "_executor_args"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_runtime()
        self._n_jobs = state.get("_n_jobs")
        self.parallel = None
        self.hooks = None

    def __repr__(self) -> str:
        return f"LokyBackend(n_jobs={self._n_jobs})" if self._n_jobs is not None else "LokyBackend()"


def _start_workers(executor: Any, n: int) -> None:
    """Start the executor's missing workers now rather than at the first batch.

    loky starts workers in ``submit``; a new executor (or one whose idle workers
    exited, or that grew) would start them only once the first batch is serialized,
    after the caller's remaining set-up (serializer, output forwarding, the first
    batches). Submitting a trivial call (``int()``, a builtin: nothing for the worker to
    import) starts them at ``configure``, so that this set-up runs while the workers
    start. The workers are the executor's like any other: reused by later calls, ended
    by ``abort_everything`` or after ``idle_worker_timeout``.
    """
    if len(_worker_processes(executor)) >= n:
        return
    try:
        _starting.append(executor.submit(int))
    except (BrokenExecutor, RuntimeError):
        pass  # the first submit starts a fresh executor, as it does today


#: The trivial calls of :func:`_start_workers` (loky's reusable executor is one per
#: process), awaited before the executor is asked for again; a forked child has no
#: executor thread to finish them.
_starting: list[Future[Any]] = []
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_starting.clear)


def _tracker_pids() -> set[int]:
    """The pids of loky's and multiprocessing's resource trackers that are running (the
    ``_pid`` of their ``_resource_tracker`` singletons: private, so read defensively)."""
    pids = set()
    for module in ("loky.backend.resource_tracker", "multiprocessing.resource_tracker"):
        pid = getattr(getattr(sys.modules.get(module), "_resource_tracker", None), "_pid", None)
        if isinstance(pid, int) and pid > 0:
            pids.add(pid)
    return pids


def _lower_priority(pids: set[int]) -> None:
    """Make ``pids`` :data:`TRACKER_NICENESS` nicer than this process (at most 19), where
    the OS has ``setpriority``; a failure (the process is gone) changes nothing.

    Used for the resource trackers. The first spawn of the process also starts loky's
    and multiprocessing's (two more interpreters: ~0.16 s of CPU together, as much as one
    and a half workers, and not needed before something is registered with them, which
    goes through a pipe). ``configure`` makes those started by the executor's creation
    and its workers' start (:func:`_start_workers`) run nicer than this process, so that
    on a machine with few CPUs the workers, not the trackers' start, get the CPUs first:
    the first results come when a worker is ready.
    """
    if not pids or not hasattr(os, "setpriority"):
        return
    try:
        niceness = min(os.getpriority(os.PRIO_PROCESS, 0) + TRACKER_NICENESS, 19)
        for pid in pids:
            os.setpriority(os.PRIO_PROCESS, pid, niceness)
    except OSError:
        pass


def _check_timeout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"idle_worker_timeout must be a positive number of seconds, got {value!r}")
    return float(value)
