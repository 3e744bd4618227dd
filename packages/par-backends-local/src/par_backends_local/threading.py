"""The ``threading`` backend: a light pool of threads of the caller's process.

Dispatch is the cost that matters for thread pools running many tiny tasks, so the pool
is minimal: ``n_jobs`` threads started at ``configure`` pull ``(batch, result, callback)``
items from one :class:`queue.SimpleQueue`, and each batch gets a small
:class:`ThreadResult` (no per-task lock or condition unless someone waits on it).

A running thread cannot be killed from outside in Python. When the scheduler's
``timeout`` expires (or a task fails, or Ctrl-C) it raises in the caller and calls
``abort_everything``: the queued batches are dropped, the pool is replaced by a fresh
one, and a thread still running an abandoned task is interrupted if it is executing
Python code: :class:`TaskCancelled` is raised in it (``PyThreadState_SetAsyncExc``), so
a task spinning in a Python loop stops within milliseconds instead of burning a CPU
forever. A thread blocked in C (``time.sleep``, I/O, a lock, a native library) cannot be
interrupted: the request is withdrawn after :data:`CANCEL_GRACE` seconds and that thread
finishes its task, then exits on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FuturesTimeoutError
from queue import Empty, SimpleQueue
from typing import Any

from par_api import ParallelBackendBase, async_raise, bind_worker_state, normalize_n_jobs

from ._common import check_backend_kwargs

_logger = logging.getLogger(__name__)

_PENDING, _OK, _FAILED = 0, 1, 2
_waiter_lock = threading.Lock()

#: Seconds ``abort_everything`` waits for interrupted threads to leave their task
#: before withdrawing the interruption of those blocked in C code.
CANCEL_GRACE = 0.1


class TaskCancelled(BaseException):
    """Raised inside a pool thread whose task was abandoned by an aborted call.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that ``except Exception`` in the
    task does not swallow it. The caller never sees it: the call already failed with
    the error that aborted it.
    """


class ThreadResult:
    """The future-like object of one batch of the threading backend.

    ``result(timeout=None)`` returns the list of results or raises the batch's
    exception; ``done()`` and ``exception()`` behave as for
    :class:`concurrent.futures.Future`. The completion callback receives it.
    """

    __slots__ = ("_state", "_value", "_waiter")

    def __init__(self) -> None:
        self._state = _PENDING
        self._value: Any = None
        self._waiter: threading.Event | None = None

    def _complete(self, state: int, value: Any) -> None:
        self._value = value
        with _waiter_lock:
            self._state = state
            waiter = self._waiter
        if waiter is not None:
            waiter.set()

    def done(self) -> bool:
        return self._state != _PENDING

    def _wait(self, timeout: float | None) -> None:
        if self._state != _PENDING:
            return
        with _waiter_lock:
            if self._state != _PENDING:
                return
            if self._waiter is None:
                self._waiter = threading.Event()
            waiter = self._waiter
        if not waiter.wait(timeout):
            raise FuturesTimeoutError(f"the batch did not finish within {timeout} seconds")

    def result(self, timeout: float | None = None) -> Any:
        """Wait up to ``timeout`` seconds; return the batch's results or raise its error."""
        self._wait(timeout)
        if self._state == _FAILED:
            raise self._value
        return self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._value if self._state == _FAILED else None

    def __repr__(self) -> str:
        state = {_PENDING: "pending", _OK: "finished", _FAILED: "failed"}[self._state]
        return f"<ThreadResult {state}>"


_STOP = None


def _worker_loop(pool: _ThreadPool) -> None:
    queue, running, interrupted = pool.queue, pool.running, pool.interrupted
    get = queue.get
    ident = threading.get_ident()
    bind_worker_state({})  # par_api.worker_state() of this worker thread
    try:
        while True:
            item = get()
            if item is _STOP:
                return
            func, out, callback = item
            running.add(ident)
            timed = pool.task_timeout is not None
            if timed:
                pool.task_started(ident, item)
            try:
                value = func()
            except BaseException as exc:
                running.discard(ident)
                if ident in interrupted:  # an abort targeted this task: see below
                    async_raise(ident, None)
                if timed and not pool.task_ended(ident, item):
                    return  # abandoned on its timeout: a new thread took this one's place
                out._complete(_FAILED, exc)
            else:
                running.discard(ident)
                if ident in interrupted:
                    # The task ended before the abort's exception was delivered: withdraw
                    # it now, before any other code (say, a finalizer that the collector
                    # runs in this thread) can receive it and be cut short.
                    async_raise(ident, None)
                if timed and not pool.task_ended(ident, item):
                    return  # abandoned on its timeout: a new thread took this one's place
                out._complete(_OK, value)
            del func, item
            if callback is not None:
                try:
                    callback(out)
                except TaskCancelled:
                    raise
                except BaseException:  # a failing callback must not kill the worker thread
                    _logger.exception("par threading backend: the completion callback raised")
    except TaskCancelled:
        # Interrupted by an abort just after its task ended: this pool is discarded.
        return
    finally:
        running.discard(ident)


class _ThreadPool:
    """``n`` threads on one queue; ``stop`` sends one stop marker per thread.

    With a per-task timeout (:meth:`set_task_timeout`) a monitor thread answers a batch
    whose task overran with a ``TimeoutError``, interrupts its thread if it runs Python
    code (:class:`TaskCancelled`), abandons it otherwise (it exits once its task
    returns, its result dropped) and starts a new thread in its place, so ``n``
    threads keep working."""

    def __init__(self, n: int) -> None:
        self.queue: SimpleQueue[Any] = SimpleQueue()
        #: idents of the threads running a task now
        self.running: set[int] = set()
        #: idents of the threads that an abort interrupted (this pool is then discarded)
        self.interrupted: set[int] = set()
        self.task_timeout: float | None = None
        self._lock = threading.Lock()
        self._started: dict[int, tuple[float, Any]] = {}  # ident -> (start, item), timed tasks
        self._monitor: threading.Thread | None = None
        self._stopped = threading.Event()
        self._n_started = 0
        self.threads: list[threading.Thread] = []
        for _ in range(n):
            self._add_thread()

    def _add_thread(self) -> threading.Thread:
        thread = threading.Thread(
            target=_worker_loop, args=(self,), name=f"par-threading-{self._n_started}", daemon=True
        )
        self._n_started += 1
        self.threads.append(thread)
        thread.start()
        return thread

    # -- per-task timeouts --------------------------------------------------------------
    def set_task_timeout(self, seconds: float | None) -> None:
        """Tasks taken from now on may run ``seconds`` (None: no limit)."""
        self.task_timeout = seconds
        if seconds is not None and self._monitor is None:
            self._monitor = threading.Thread(target=self._watch, name="par-threading-timeout", daemon=True)
            self._monitor.start()

    def task_started(self, ident: int, item: Any) -> None:
        with self._lock:
            self._started[ident] = (time.monotonic(), item)

    def task_ended(self, ident: int, item: Any) -> bool:
        """Whether the task's thread still owns its batch (False: it timed out and was
        abandoned)."""
        with self._lock:
            entry = self._started.get(ident)
            if entry is None or entry[1] is not item:
                return False
            del self._started[ident]
            return True

    def _watch(self) -> None:
        while not self._stopped.is_set():
            timeout = self.task_timeout
            if timeout is None:
                self._stopped.wait(0.5)
                continue
            now = time.monotonic()
            expired: list[tuple[int, Any]] = []
            wake = now + timeout  # a task started from now on ends no earlier
            with self._lock:
                for ident, (start, item) in list(self._started.items()):
                    if start + timeout <= now:
                        del self._started[ident]
                        expired.append((ident, item))
                    else:
                        wake = min(wake, start + timeout)
            for ident, (_func, out, callback) in expired:
                with self._lock:  # stop() reads the thread list under this lock
                    self.threads = [t for t in self.threads if t.ident != ident]
                    if not self._stopped.is_set():
                        self._add_thread()
                async_raise(ident, TaskCancelled)  # stops it if it runs Python code
                out._complete(
                    _FAILED,
                    TimeoutError(
                        "a thread cannot be stopped: it was abandoned (interrupted if it runs "
                        "Python code) and a new thread took its place"
                    ),
                )
                if callback is not None:
                    try:
                        callback(out)
                    except BaseException:
                        _logger.exception("par threading backend: the completion callback raised")
            self._stopped.wait(max(wake - time.monotonic(), 0.001))

    def drain(self) -> list[tuple[Any, ThreadResult, Any]]:
        """Remove and return the batches not yet picked up by a thread."""
        items: list[tuple[Any, ThreadResult, Any]] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except Empty:
                return items
            if item is not _STOP:
                items.append(item)

    def cancel_running(self, grace: float = CANCEL_GRACE) -> None:
        """Interrupt the threads running a task (:class:`TaskCancelled` at their next Python
        instruction); withdraw the interruption of those still inside their task after
        ``grace`` seconds (blocked in C code, they finish the task normally)."""
        current = threading.get_ident()
        targets = [t.ident for t in self.threads if t.ident in self.running and t.ident != current]
        self.interrupted.update(ident for ident in targets if ident is not None)
        targets = [ident for ident in targets if ident is not None and async_raise(ident, TaskCancelled)]
        if not targets:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(ident in self.running for ident in targets):
            time.sleep(0.0005)
        for ident in targets:
            # Withdraw what is still pending: a thread blocked in C inside its task finishes
            # it normally; a thread whose task ended before the exception was delivered must
            # not get it later in unrelated code (a finalizer run by the collector there
            # would be cut short: "Exception ignored in: <Finalize object>").
            async_raise(ident, None)

    def stop(self, join: bool) -> None:
        with self._lock:  # no replacement thread is added after this: each gets a stop marker
            self._stopped.set()
            threads = list(self.threads)
        for _ in threads:
            self.queue.put(_STOP)
        if join:
            current = threading.current_thread()
            for thread in threads:
                if thread is not current:
                    thread.join()


class ThreadingBackend(ParallelBackendBase):
    """A pool of ``n_jobs`` threads in the caller's process.

    Best for tasks that release the GIL (I/O, native code). The pool is created at
    ``configure`` and reused by every call of a ``with Parallel(...)`` block;
    ``terminate`` stops the threads and joins them.

    Timeouts: ``supports_timeout`` is True because the scheduler enforces ``timeout``
    itself (it raises in the caller). ``abort_everything`` drops the queued batches,
    swaps in a fresh pool and interrupts the threads running a task in Python code
    (:class:`TaskCancelled`); a thread blocked in C keeps running until its task returns.
    """

    uses_threads = True
    #: honoured by par in the parent: threadpoolctl limits for the duration of the call
    supports_inner_max_num_threads = True
    supports_sharedmem = True
    supports_timeout = True
    #: Per-task timeouts (``on_error`` other than ``'raise'``): an overrunning task's
    #: batch fails with a ``TimeoutError`` and its thread is replaced (see ``_ThreadPool``).
    supports_task_timeout = True
    supports_auto_batching = False

    def __init__(self, nesting_level: int | None = None, inner_max_num_threads: int | None = None) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self._pool: _ThreadPool | None = None
        self._n_jobs = 1

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """:func:`par_api.normalize_n_jobs` (``-1`` is every CPU; ``ValueError`` for 0)."""
        return normalize_n_jobs(n_jobs)

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        hooks: Any = None,
        **backend_kwargs: Any,
    ) -> int:
        """Start a pool of ``effective_n_jobs(n_jobs)`` threads (replacing an older pool of
        another size) and return its size. No backend arguments are accepted."""
        check_backend_kwargs("threading", backend_kwargs, ())
        n = self.effective_n_jobs(n_jobs)
        self.parallel = parallel
        self.hooks = hooks
        if self._pool is not None and len(self._pool.threads) != n:
            self._pool.stop(join=True)
            self._pool = None
        if self._pool is None:
            self._pool = _ThreadPool(n)
        self._n_jobs = n
        return n

    def start_call(self) -> None:
        """Apply the call's per-task timeout (``task_timeout``, set by the scheduler)."""
        if self._pool is not None:
            self._pool.set_task_timeout(self.task_timeout)

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> ThreadResult:
        """Queue ``func`` for a pool thread; ``callback(out)`` runs in that thread when done."""
        pool = self._pool
        if pool is None:
            pool = self._pool = _ThreadPool(self._n_jobs)
            pool.set_task_timeout(self.task_timeout)
        out = ThreadResult()
        pool.queue.put((func, out, callback))
        return out

    def retrieve_result_callback(self, out: Any) -> Any:
        """The batch's results, or raise its exception."""
        if type(out) is ThreadResult and out._state != _PENDING:
            if out._state == _FAILED:
                raise out._value
            return out._value
        return out.result()

    def compute_batch_size(self) -> int:
        """One task per batch (a thread pool has little dispatch cost per task)."""
        return 1

    def terminate(self) -> None:
        """Stop the threads once the queued batches are done, and join them."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop(join=True)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Drop the queued batches (their callbacks get a ``CancelledError``) and let the
        threads go; a thread busy with a task finishes that task, then exits. With
        ``ensure_ready`` a fresh pool of the same size is started."""
        pool, self._pool = self._pool, None
        if pool is not None:
            dropped = pool.drain()
            pool.stop(join=False)
            pool.cancel_running()
            for _func, out, callback in dropped:
                out._complete(_FAILED, CancelledError("the batch was cancelled: the call was aborted"))
                if callback is not None:
                    try:
                        callback(out)
                    except BaseException:
                        _logger.exception("par threading backend: the completion callback raised")
        if ensure_ready:
            self._pool = _ThreadPool(self._n_jobs)
            self._pool.set_task_timeout(self.task_timeout)

    def get_nested_backend(self) -> tuple[Any, int | None]:
        """``('sequential', 1)``: a ``Parallel`` inside a thread runs sequentially."""
        return "sequential", 1

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"] = None
        state["parallel"] = None
        return state

    def __repr__(self) -> str:
        return f"ThreadingBackend(n_jobs={self._n_jobs})" if self._pool is not None else "ThreadingBackend()"
