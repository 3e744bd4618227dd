"""The ``multiprocessing`` backend: a :class:`multiprocessing.pool.Pool` per call.

Start method, in order: the ``context`` parameter (a multiprocessing context, e.g.
``multiprocessing.get_context('spawn')``, or a start-method name), else the
``PAR_START_METHOD`` environment variable, else ``JOBLIB_START_METHOD``, else the
platform default.

A plain ``multiprocessing.Pool`` waits forever for the task of a worker that died (it
silently starts a replacement). This backend watches the workers instead: a small
thread waits on their process sentinels and, when one exits while the pool is in use,
fails every pending batch with :class:`par_api.WorkerDiedError` (exit code or signal,
pid, likely cause) and discards the pool; the next submit starts a new one.

``Pool.terminate`` can hang for ever (CPython gh-96995, open): a worker it kills while
the worker writes a result keeps the result queue's lock, and ``terminate`` waits for
that lock. :func:`terminate_pool` frees it.

Workers started by fork are started one at a time across par's pools (:func:`_pool_class`):
after a worker death the old pool's own thread forks a replacement while the caller's
thread starts the next pool, and two threads forking at once fail with filelock >= 4.3
imported (``import ray`` imports it) on Python >= 3.12: its audit hook raises
``RuntimeError: os.fork is unsafe while filelock is changing descriptor ownership`` in
a thread that forks while another thread is forking.

The Pool internals relied on: ``Pool._pool`` (its list of worker processes, read in
:func:`_pool_processes`) and ``Pool._outqueue._wlock`` (the result queue's write lock,
in :func:`terminate_pool`), both unchanged since Python 3.4, and ``Pool.Process`` (the
hook that makes each worker process, in :func:`_pool_class`), unchanged since Python 3.8.

Transport hooks: ``serialize_batch`` is applied to each batch, ``env`` is applied by the
worker initializer (``os.environ.update``) before the hooks' and the user's
initializers run.
"""

from __future__ import annotations

import functools
import itertools
import logging
import multiprocessing
import multiprocessing.context
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import Any

from par_api import ProcessLocal, TransportHooks, WorkerDiedError, check_initializer

from . import _recycling, _tracking
from ._common import (
    adopt_remote_traceback,
    check_backend_kwargs,
    check_process_backend_available,
    hand_over,
    init_steps,
    setup_worker,
)
from ._process import ProcessBackendBase

_logger = logging.getLogger(__name__)

START_METHOD_ENV_VARS = ("PAR_START_METHOD", "JOBLIB_START_METHOD")
_BACKEND_KWARGS = ("initializer", "initargs", "maxtasksperchild")


def _pool_processes(pool: Any) -> list[Any]:
    """The worker processes of a ``multiprocessing.pool.Pool``.

    The one place that reads Pool internals: ``Pool._pool`` is the list of its worker
    :class:`multiprocessing.Process` objects (stable since Python 3.0).
    """
    return list(getattr(pool, "_pool", ()))


#: Held while one of par's pools forks a worker (a new lock in a forked child).
_FORK_LOCK: ProcessLocal[threading.Lock] = ProcessLocal(threading.Lock)


def _start_alone(start: Callable[[], None]) -> None:
    with _FORK_LOCK.get():
        start()


def _process(ctx: Any, *args: Any, **kwds: Any) -> Any:
    """``Pool.Process`` of :func:`_pool_class`: a worker process whose ``start`` holds
    :data:`_FORK_LOCK` when it forks."""
    proc = ctx.Process(*args, **kwds)
    if ctx.get_start_method() == "fork":
        # an instance attribute: a forked worker is never pickled, unlike a spawned one
        proc.start = functools.partial(_start_alone, proc.start)
    return proc


@functools.cache
def _pool_class() -> type:
    """A ``multiprocessing.pool.Pool`` whose workers, when forked, are started one at a
    time across par's pools (see the module's docstring): the pool's own thread
    replacing a dead worker waits while another pool of the process forks, and the
    other way round. Other start methods fork no Python process here. Made on first
    use: ``multiprocessing.pool`` needs ``_multiprocessing``, which importing this
    module must not (``PAR_MULTIPROCESSING=0``, Pyodide)."""
    import multiprocessing.pool

    return type("_Pool", (multiprocessing.pool.Pool,), {"Process": staticmethod(_process)})


def _make_pool(ctx: Any, **kwargs: Any) -> Any:
    """``ctx.Pool(**kwargs)``, as a :func:`_pool_class` pool for a standard context."""
    if isinstance(ctx, multiprocessing.context.BaseContext):
        return _pool_class()(context=ctx.get_context(), **kwargs)
    return ctx.Pool(**kwargs)


#: How long :func:`terminate_pool` lets ``Pool.terminate`` run before it looks for the
#: result queue's lock held by a worker (seconds).
TERMINATE_PATIENCE = 1.0


def terminate_pool(pool: Any, patience: float = TERMINATE_PATIENCE) -> None:
    """``pool.terminate()``, without CPython's hang gh-96995.

    ``terminate`` writes a sentinel into the result queue, kills the workers and joins
    the pool's task handler, which writes one more; both writes take the result queue's
    write lock. A worker that holds that lock (killed while writing its result, or stuck
    writing a large result nobody reads any more) makes ``terminate`` wait for ever, and
    so does an idle worker that holds the task queue's read lock waiting for the
    sentinel the stuck handler never sends. ``terminate`` runs in a thread here. While
    it has not returned after ``patience`` seconds and the result queue's lock cannot be
    taken within 0.2 s (the parent's own writers hold it for microseconds), a worker
    holds it: the workers still alive are killed (as ``terminate`` would), and then the
    two locks, whose holders are dead, are released.
    """
    runner = threading.Thread(target=pool.terminate, name="par-mp-terminate", daemon=True)
    runner.start()
    while True:
        runner.join(patience)
        if not runner.is_alive():
            return
        result_lock = getattr(getattr(pool, "_outqueue", None), "_wlock", None)
        task_lock = getattr(getattr(pool, "_inqueue", None), "_rlock", None)
        if result_lock is None or task_lock is None:
            continue
        if result_lock.acquire(timeout=0.2):
            result_lock.release()  # free: terminate is slow for another reason; keep waiting
            continue
        for proc in _pool_processes(pool):
            if _exitcode(proc, patience=0) is None:
                proc.kill()
        for proc in _pool_processes(pool):
            proc.join(5)
        _logger.debug("multiprocessing pool: releasing the queue locks killed workers held")
        for lock in (result_lock, task_lock):
            # Only dead workers and terminate itself (which takes the task queue's read
            # lock for good) can hold them now: a release wakes terminate, or does nothing.
            if lock.acquire(timeout=0.2):
                lock.release()
                continue
            try:
                lock.release()
            except ValueError:  # released meanwhile
                pass


def resolve_context(context: Any = None) -> Any:
    """The multiprocessing context for ``context`` (a context, a start-method name or
    None: then ``PAR_START_METHOD``, ``JOBLIB_START_METHOD``, the platform default)."""
    if context is not None and not isinstance(context, str):
        if hasattr(context, "get_start_method") and hasattr(context, "Pool"):
            return context
        raise TypeError(
            f"context must be a multiprocessing context (multiprocessing.get_context('spawn')), a "
            f"start-method name or None; got {type(context).__name__} {context!r}"
        )
    source = "context"
    if context is None:
        for var in START_METHOD_ENV_VARS:
            value = os.environ.get(var, "").strip()
            if value:
                context, source = value, var
                break
    if context is None:
        return multiprocessing.get_context()
    methods = multiprocessing.get_all_start_methods()
    if context not in methods:
        raise ValueError(
            f"{source}={context!r} is not a start method available here; use one of "
            f"{', '.join(repr(m) for m in methods)}."
        )
    return multiprocessing.get_context(context)


class _PoolState:
    """One ``multiprocessing.Pool`` with its pending batches and its death watcher."""

    def __init__(self, n: int, ctx: Any, initializer: Any, initargs: tuple[Any, ...], maxtasksperchild: Any):
        self.pool = _make_pool(
            ctx,
            processes=n,
            initializer=initializer,
            initargs=initargs,
            maxtasksperchild=maxtasksperchild,
        )
        self.lock = threading.Lock()
        self.pending: dict[int, tuple[Future[Any], Callable[[Any], None] | None]] = {}
        # tracking token -> batch not finished, described only if a worker dies
        self.batches: dict[int, Any] = {}
        self.counter = itertools.count()
        self.broken: WorkerDiedError | None = None
        self.closing = False
        self._closed = False
        self._close_lock = threading.Lock()
        self.processes = {p.pid: p for p in _pool_processes(self.pool)}
        self.recycles_workers = maxtasksperchild is not None
        # Wake-up pipe of the watcher (a multiprocessing Connection works with wait()).
        self._wake_r, self._wake_w = ctx.Pipe(duplex=False)
        self.watcher = threading.Thread(target=self._watch, name="par-mp-worker-watcher", daemon=True)
        self.watcher.start()

    # -- completion ---------------------------------------------------------------
    def finish(self, key: int, ok: bool, value: Any, token: int = 0) -> None:
        with self.lock:
            entry = self.pending.pop(key, None)
            self.batches.pop(token, None)
        if entry is None:  # already failed by the watcher or an abort
            return
        future, callback = entry
        if ok:
            future.set_result(value)
        else:
            future.set_exception(adopt_remote_traceback(value) if isinstance(value, BaseException) else value)
        _run_callback(callback, future)

    def fail_all(self, make_error: Callable[[], BaseException]) -> None:
        with self.lock:
            entries = list(self.pending.values())
            self.pending.clear()
        for future, callback in entries:
            future.set_exception(make_error())
            _run_callback(callback, future)

    # -- worker-death watcher -------------------------------------------------------
    def _watch(self) -> None:
        from multiprocessing.connection import wait

        while True:
            if self.recycles_workers:
                # Workers are replaced when they reach maxtasksperchild: follow the list.
                for proc in _pool_processes(self.pool):
                    self.processes.setdefault(proc.pid, proc)
            # A worker may already be gone when this loop comes round: it died before this
            # thread first ran (a task that dies at once in a new pool) or between two
            # rounds. Reading ``exitcode`` reaps it here, or the pool's own thread did, and
            # its sentinel is then never waited on: it must count as dead now.
            dead, sentinels = self._exited_workers()
            if not dead:
                try:
                    ready = wait([self._wake_r, *sentinels], timeout=0.5 if self.recycles_workers else None)
                except OSError:  # pipe closed under us at shutdown
                    return
                if self.closing:
                    return
                dead = [sentinels[s] for s in ready if s in sentinels]
                if self.recycles_workers:
                    # (_exitcode waits a moment: the pool's own thread may be reaping it)
                    dead = [p for p in dead if _exitcode(p) != 0]
            if not dead:
                continue
            if self.closing:
                return
            with self.lock:
                batches = dict(self.batches)
            make_error = ProcessBackendBase.worker_death([(p.pid, _exitcode(p)) for p in dead], batches)
            with self.lock:  # from now on submit() starts a new pool instead
                self.broken = make_error()
            self.fail_all(make_error)
            # The pool would replace the worker but never finish its task: discard it.
            self.shutdown(kill=True, from_watcher=True)
            return

    def _exited_workers(self) -> tuple[list[Any], dict[Any, Any]]:
        """The workers that already died, and the sentinels of those still running. A
        worker that exited with code 0 died only if the pool does not recycle workers (a
        recycled one is forgotten here)."""
        dead: list[Any] = []
        sentinels: dict[Any, Any] = {}
        for pid, proc in list(self.processes.items()):
            try:
                code = proc.exitcode
            except ValueError:  # process object closed by the pool
                code = 0
            if code is None:
                sentinels[proc.sentinel] = proc
            elif code != 0 or not self.recycles_workers:
                dead.append(proc)
            else:
                del self.processes[pid]
        return dead, sentinels

    # -- shutdown ---------------------------------------------------------------------
    def shutdown(
        self,
        kill: bool,
        from_watcher: bool = False,
        error: Callable[[], BaseException] = lambda: RuntimeError(
            "the multiprocessing pool was shut down before this batch finished"
        ),
    ) -> None:
        """Stop the watcher, then close and join the pool: gracefully (workers finish the
        queued batches and exit) unless ``kill`` or batches are still pending, in which case
        the workers are terminated and the pending batches fail with ``error()``. Safe to
        call more than once, from any thread."""
        with self.lock:
            first = not self.closing
            self.closing = True
            pending = bool(self.pending)
        if not from_watcher:
            if first:
                try:
                    self._wake_w.send_bytes(b"x")
                except OSError:  # the watcher already closed the pipe
                    pass
            self.watcher.join()
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            if kill or pending:
                terminate_pool(self.pool)
            else:
                self.pool.close()
            self.pool.join()
            self._wake_r.close()
            self._wake_w.close()
        self.fail_all(error)  # nothing is left waiting on a pool that is gone


def _exitcode(proc: Any, patience: float = 1.0) -> int | None:
    """The exit code of a worker whose sentinel fired. The pool's own maintenance thread
    reaps dead workers concurrently, so the code can take a moment to show up here."""
    deadline = time.monotonic() + patience
    while True:
        try:
            code = proc.exitcode
        except ValueError:  # process object closed
            return None
        if code is not None or time.monotonic() > deadline:
            return code  # type: ignore[no-any-return]
        time.sleep(0.01)


def _run_callback(callback: Callable[[Any], None] | None, future: Future[Any]) -> None:
    if callback is None:
        return
    try:
        callback(future)
    except BaseException:  # must not kill the pool's result thread or the watcher
        _logger.exception("par multiprocessing backend: the completion callback raised")


class MultiprocessingBackend(ProcessBackendBase):
    """Worker processes of a :class:`multiprocessing.pool.Pool` (joblib's legacy backend).

    ``context``: a multiprocessing context or a start-method name (else
    ``PAR_START_METHOD``/``JOBLIB_START_METHOD``, else the platform default).
    ``initializer``/``initargs`` run once in each worker (after the transport hooks'
    environment and initializer); ``maxtasksperchild`` is passed to the pool. The pool
    is started at ``configure`` and closed and joined at ``terminate``.
    """

    nesting_label = "Multiprocessing"

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        context: Any = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        maxtasksperchild: int | None = None,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        if context is not None:
            resolve_context(context)  # validate now, with a clear error
        self._context = context
        self._init_user_kwargs(initializer, initargs)
        if maxtasksperchild is not None:
            self._user_kwargs["maxtasksperchild"] = _check_maxtasks(maxtasksperchild)
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        self._state_lock = threading.Lock()  # replacing the pool
        self._state: _PoolState | None = None
        self._pool_args: tuple[Any, ...] | None = None
        self._n_jobs: int | None = None

    @property
    def context(self) -> Any:
        """The multiprocessing context the pool is started with."""
        return resolve_context(self._context)

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        hooks: TransportHooks | None = None,
        **backend_kwargs: Any,
    ) -> int:
        """Start a pool of ``effective_n_jobs(n_jobs)`` workers and return that number.

        Raises :class:`par_api.BackendNotAvailableError` without multiprocessing, or inside
        a daemonic process (a pool worker cannot have children)."""
        check_backend_kwargs("multiprocessing", backend_kwargs, _BACKEND_KWARGS)
        check_process_backend_available("multiprocessing")
        if hooks is not None and not isinstance(hooks, TransportHooks):
            raise TypeError(f"hooks must be a par_api.TransportHooks or None, got {type(hooks).__name__}")
        if multiprocessing.current_process().daemon:
            from par_api import BackendNotAvailableError

            raise BackendNotAvailableError(
                "backend='multiprocessing' cannot start worker processes from inside a daemonic "
                "process (such as a multiprocessing pool worker). Use backend='threading' or "
                "'sequential' for nested calls."
            )
        n = self.effective_n_jobs(n_jobs)
        merged = {**self._user_kwargs, **backend_kwargs}
        user_init, user_initargs = check_initializer(merged.get("initializer"), merged.get("initargs", ()))
        maxtasks = merged.get("maxtasksperchild")
        if maxtasks is not None:
            maxtasks = _check_maxtasks(maxtasks)
        ctx = resolve_context(self._context)
        maxtasks = _recycling.pool_maxtasks(maxtasks, hooks)
        steps = init_steps(
            *_tracking.worker_steps(),
            *_recycling.worker_steps(hooks),
            (hooks.initializer, hooks.initargs) if hooks is not None else (None, ()),
            (user_init, user_initargs),
        )
        env = dict(hooks.env) if hooks is not None and hooks.env else {}
        initializer, initargs = setup_worker, (env, *steps)
        pool_args = (n, ctx, initializer, initargs, maxtasks)
        if self._state is not None:
            self._state.shutdown(kill=False)
            self._state = None
        self._pool_args = pool_args
        self.parallel = parallel
        self.hooks = hooks
        self._n_jobs = n
        self._state = _PoolState(*pool_args)
        return n

    def _ready_state(self) -> _PoolState:
        state = self._state
        if state is not None and state.broken is None and not state.closing:
            return state
        with self._state_lock:
            state = self._state
            if state is not None and state.broken is None and not state.closing:
                return state
            if self._pool_args is None:
                raise RuntimeError("MultiprocessingBackend.configure(...) must be called before submit()")
            # A broken pool is shut down by its watcher, a closing one by whoever closes it;
            # not here: this may run in the old pool's result thread (a completion callback
            # that submits the next batch), which that shutdown joins, while the watcher
            # doing it would be joined by us: a deadlock.
            self._state = state = _PoolState(*self._pool_args)
            return state

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Future[Any]:
        """Send ``func`` (through ``hooks.serialize_batch`` when set, in this thread) to a
        worker; return a future that ``callback`` receives once, on success or failure."""
        payload, token, info, took = self._prepare(func)
        future: Future[Any] = Future()
        for _attempt in range(3):
            state = self._ready_state()
            key = next(state.counter)
            with state.lock:
                # Registered only while the pool is usable: the watcher sets ``broken``
                # under this lock, then fails everything registered so far.
                if state.broken is None and not state.closing:
                    state.pending[key] = (future, callback)
                    state.batches[token] = info
                    break
        else:  # pragma: no cover - workers dying as fast as pools start
            raise RuntimeError("could not start a working multiprocessing pool: its workers keep dying")
        try:
            state.pool.apply_async(
                payload,
                callback=lambda value: state.finish(key, True, value, token),
                error_callback=lambda exc: state.finish(key, False, exc, token),
            )
        except BaseException:
            with state.lock:
                entry = state.pending.pop(key, None)
                state.batches.pop(token, None)
            if entry is not None:
                raise
            # The pool broke meanwhile and the future already carries that error.
        hand_over(took)
        return future

    def terminate(self) -> None:
        """Close the pool and join its workers (queued batches finish first)."""
        with self._state_lock:
            state, self._state = self._state, None
        if state is not None:
            state.shutdown(kill=False)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Terminate the workers (a stuck task stops), fail the pending batches with
        ``CancelledError``; with ``ensure_ready`` start a fresh pool."""
        with self._state_lock:
            state, self._state = self._state, None
        if state is not None:
            state.shutdown(
                kill=True, error=lambda: CancelledError("the batch was cancelled: the call was aborted")
            )
        # A completion callback that raced with the abort may have started a pool meanwhile.
        with self._state_lock:
            raced, self._state = self._state, None
            if ensure_ready and self._pool_args is not None:
                self._state = _PoolState(*self._pool_args)
        if raced is not None:
            raced.shutdown(kill=True)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_state", "_state_lock", "_pool_args", "parallel", "hooks"):
            state.pop(key, None)
        context = state.get("_context")
        if context is not None and not isinstance(context, str):
            state["_context"] = context.get_start_method()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        n_jobs = state.get("_n_jobs")
        self._reset_runtime()
        self._n_jobs = n_jobs
        self.parallel = None
        self.hooks = None

    def __repr__(self) -> str:
        method = self._context if isinstance(self._context, str) else None
        if self._context is not None and method is None:
            method = self._context.get_start_method()
        parts = []
        if method:
            parts.append(f"context={method!r}")
        if self._n_jobs is not None:
            parts.append(f"n_jobs={self._n_jobs}")
        return f"MultiprocessingBackend({', '.join(parts)})"


def _check_maxtasks(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"maxtasksperchild must be a positive int or None, got {value!r}")
    return value
