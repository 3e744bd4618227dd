"""The engine: iterable -> batches -> backend -> results.

One :class:`_Call` per ``run``. Its data path, top to bottom:

1. **Pull** (``_cut_batch``): tasks are taken from the user's iterable with
   ``itertools.islice`` into a list buffer and cut into ``BatchedCalls``. Only the
   thread holding the *pump role* (``_pumping``, taken under the lock) touches the
   iterable, so it is consumed by one thread at a time, lazily: at most ``pre_dispatch``
   batches are pulled ahead of the results (plus, once batches hold several tasks, a
   look-ahead of ``n_jobs`` batches used to detect the end and split the tail).
2. **Submit** (``_pump``): ``backend.submit(batch, callback)``. The pump role is taken by
   whichever thread finds room in the window: the caller at the start, then the
   completion callbacks (a worker or result thread), or the consumer of a generator.
3. **Complete** (``_on_done``): the backend calls the callback once per batch, from any
   thread; under one lock acquisition per batch the results are stored, the batch size
   policy is told the batch's duration, progress listeners are called and the caller is
   woken; then the callback pumps the next batches if the window has room.
4. **Retrieve** (``next_results``/``collect_all``): the caller blocks on a condition
   variable (no polling) for the next batch in submission order (``'generator'``) or in
   completion order (``'generator_unordered'``), raising the first error, or
   ``TimeoutError`` when it waited more than ``timeout`` seconds for a result. For
   ``'list'`` without timeout the caller is only woken at the end or on the first error,
   then concatenates the batches in order.

On any error, timeout, interrupt or early close of a generator the call is aborted:
no more batches are submitted and ``backend.abort_everything(ensure_ready=...)``
cancels what is pending; late callbacks are ignored.
"""

from __future__ import annotations

import gc
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, nullcontext
from functools import partial
from itertools import islice
from typing import Any

from par_api import BatchedCalls, ParallelBackendBase, TaskTuple

from ._batching import make_sizer, tail_batch_size
from ._predispatch import parse_pre_dispatch
from ._progress import ProgressEvent
from ._validate import check_batch_size, check_n_jobs_effective, check_return_as, check_timeout

__all__ = ["run"]

_now = time.perf_counter

Listener = Callable[[ProgressEvent], None]

_MISSING: Any = object()
_NO_CONTEXT = nullcontext()

#: The auto policy looks ahead ``n_jobs`` batches in the iterable (to find its end and
#: split the tail over all workers) while that is at most this many tasks; beyond it,
#: one task. Batches that large hold tasks of a few microseconds, whose tail needs no
#: splitting, and tasks held back across batches would outlive the cyclic garbage
#: collector's young generations: each full collection then walks them all.
LOOKAHEAD_TASKS = 10_000


def _retrieval_context(backend: Any) -> Callable[[], Any] | None:
    """``backend.retrieval_context`` when the backend's class overrides the no-op of
    ``ParallelBackendBase`` (or does not derive from it), else None (nothing to enter)."""
    method = getattr(type(backend), "retrieval_context", None)
    if method is None or method is ParallelBackendBase.retrieval_context:
        return None
    return backend.retrieval_context  # type: ignore[no-any-return]


class _Call:
    """The state of one ``run``: see the module docstring for the data path."""

    def __init__(
        self,
        backend: ParallelBackendBase,
        iterable: Iterable[TaskTuple],
        *,
        n_jobs: int,
        batch_size: int | str,
        window: int | None,
        return_as: str,
        timeout: float | None,
        listeners: Sequence[Listener],
        ensure_ready: bool,
        on_finish: Callable[[BaseException | None], None] | None,
        peek_allowed: bool = True,
    ) -> None:
        self._backend = backend
        self._n_jobs = n_jobs
        self._sizer = make_sizer(batch_size, backend, n_jobs)
        self._adaptive = self._sizer.adaptive
        # A short call (all its tasks known at the start, at most one window of them) is
        # cut into at most n_jobs batches of this size, instead of batches of one.
        self._split_size = 0
        # Only for a list result: the caller sees no result before the end, so batches of
        # several tasks delay nothing; and reading one task beyond the window at the start
        # (to learn whether the call is short) is not observable either.
        self._planned = not (self._adaptive and return_as == "list")
        # ... except when the user set pre_dispatch: then the iterable is read exactly
        # as far as the window, as the spec's producer example shows.
        self._peek = return_as == "list" and peek_allowed
        self._window = window
        self._ordered = return_as != "generator_unordered"
        # In generator modes, results not yet consumed count against the window, so a
        # slow consumer (or a synchronous backend) does not make the call run ahead.
        self._backpressure = return_as != "list"
        self._timeout = timeout
        self._listeners = tuple(listeners)
        self._ensure_ready = ensure_ready
        self._on_finish = on_finish
        try:
            self._length: int | None = len(iterable)  # type: ignore[arg-type]
        except Exception:
            self._length = None
        self._iterable: Iterable[TaskTuple] | None = iterable

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)

        # Source side: touched only by the thread holding the pump role.
        self._it: Iterator[TaskTuple] | None = None
        self._buf: list[TaskTuple] = []
        self._pos = 0
        self._source_done = False
        self._ready: deque[BatchedCalls] = deque()
        self._n_cut = 0
        self._nested: Any = None

        # Shared state, under the lock.
        self._pumping = False
        self._in_flight = 0
        self._unconsumed = 0
        self._n_batches = 0
        self._n_dispatched = 0
        self._n_completed = 0
        self._n_done_batches = 0
        self._n_retrieved = 0
        self._total: int | None = self._length
        self._dispatch_done = False
        self._results: Any = {} if self._ordered else deque()
        self._next_seq = 0
        self._error: BaseException | None = None
        self._failed = False
        self._aborting = False
        self._closed = False
        self._finished_event = False
        self._waiting = False
        # Wake the caller at every completed batch, except for a list without timeout:
        # then it only needs to wake at the end (or on the first error).
        self._wake_per_batch = return_as != "list" or timeout is not None
        # The backend's retrieval_context() (e.g. dask leaves its worker's thread pool
        # while waiting), entered around the caller's waits when the backend overrides it.
        self._retrieval: Callable[[], Any] | None = _retrieval_context(backend)
        self._recent_done: deque[float] = deque(maxlen=n_jobs)
        self._t0 = _now()

        self._started = False
        self._over = False

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> None:
        """``start_call``, the ``'start'`` event, then the first batches (in this thread)."""
        self._t0 = _now()
        backend = self._backend
        backend.start_call()
        self._started = True
        self._nested = backend.get_nested_backend()
        iterable, self._iterable = self._iterable, None
        assert iterable is not None
        if self._window is None:
            # pre_dispatch='all': the whole iterable is consumed at once.
            self._buf = list(iterable)
            self._source_done = True
            self._total = len(self._buf)
        else:
            self._it = iter(iterable)
        with self._lock:
            self._emit_locked("start", 0)
            self._pumping = True
        self._pump()

    def abort_and_finish(self, exc: BaseException) -> None:
        """End the call abnormally: stop dispatching, cancel what is pending, clean up."""
        with self._lock:
            self._aborting = True
            self._emit_locked("aborted", 0)
        try:
            if self._started:
                try:
                    self._backend.abort_everything(ensure_ready=self._ensure_ready)
                except Exception as abort_exc:
                    warnings.warn(
                        f"backend.abort_everything() failed while aborting the call ({abort_exc!r})",
                        RuntimeWarning,
                        stacklevel=2,
                    )
        finally:
            self.finish(exc)

    def finish(self, exc: BaseException | None) -> None:
        """``stop_call`` then ``on_finish(exc)``, exactly once per call."""
        with self._lock:
            if self._over:
                return
            self._over = True
            self._closed = True
            self._results = None
            self._ready.clear()
        self._buf = []
        self._it = None
        try:
            if self._started:
                try:
                    self._backend.stop_call()
                except Exception as stop_exc:
                    if exc is None:
                        raise
                    # Do not hide the error that ended the call.
                    warnings.warn(
                        f"backend.stop_call() failed after the call failed ({stop_exc!r})",
                        RuntimeWarning,
                        stacklevel=2,
                    )
        finally:
            if self._on_finish is not None:
                self._on_finish(exc)

    # -- 1. pull ----------------------------------------------------------------------
    def _plan(self) -> None:
        """At the first cut (auto policy): when the whole call is known to hold at most one
        window of tasks, cut it into at most ``n_jobs`` equal batches (one submission per
        worker instead of one per task). The window is ``pre_dispatch`` (in tasks, as the
        first batches hold one task each), or ``2 * n_jobs`` for ``pre_dispatch='all'``."""
        self._planned = True
        limit = self._window if self._window is not None else 2 * self._n_jobs
        total: int | None = None
        if self._source_done:
            total = len(self._buf) - self._pos
        elif self._length is not None:
            total = self._length
        elif self._it is not None:
            want = limit + 1 if self._peek else limit
            self._buf.extend(islice(self._it, want))
            if len(self._buf) < want:
                total = len(self._buf)
                self._source_done = True
                self._it = None
                with self._lock:
                    self._total = total
        if total is not None and 1 < total <= limit:
            self._split_size = -(-total // self._n_jobs)  # ceil

    def _cut_batch(self) -> BatchedCalls | None:
        """The next batch from the iterable, or None when it is exhausted (pump role)."""
        if not self._planned:
            self._plan()
        size = self._split_size or self._sizer.next_size()
        buf = self._buf
        avail = len(buf) - self._pos
        if not self._source_done:
            want = size
            if self._adaptive and size > 1:
                want = size * self._n_jobs if size * self._n_jobs <= LOOKAHEAD_TASKS else size + 1
            if avail < want:
                it = self._it
                if it is None:  # the call was closed meanwhile
                    return None
                if self._pos:
                    buf = self._buf = buf[self._pos :]
                    self._pos = 0
                buf.extend(islice(it, want - avail))
                avail = len(buf)
                if avail < want:
                    self._source_done = True
                    self._it = None
                    with self._lock:
                        self._total = self._n_cut + avail
        if avail == 0:
            return None
        if self._source_done and self._adaptive and not self._split_size:
            size = tail_batch_size(size, avail, self._n_jobs)
        pos = self._pos
        tasks = buf[pos : pos + size]
        pos += len(tasks)
        if len(buf) - pos <= pos:
            # Drop the buffer's references to the tasks cut (amortised O(1) per task), so
            # that they are freed once the batch is pickled, not at the next pull.
            del buf[:pos]
            pos = 0
        self._pos = pos
        batch = BatchedCalls(tasks, self._nested, self._n_cut)
        self._n_cut += len(tasks)
        return batch

    def _has_room_locked(self) -> bool:
        if self._window is None:
            return not self._ready
        used = self._in_flight + len(self._ready)
        if self._backpressure:
            used += self._unconsumed
        return used < self._window

    # -- 2. submit --------------------------------------------------------------------
    def _pump(self) -> None:
        """Pull batches while the window has room, submitting each after the window is
        filled. Runs in the one thread that took the pump role; gives it back on exit.

        The cyclic garbage collector is paused meanwhile: pulling a batch allocates a
        tuple or two per task, which the backend's ``submit`` (pickling) frees again, so
        a collection in between would only walk them; for 10^6 trivial tasks the
        collections cost more than the rest of the dispatch. Nothing is lost: cycles made
        by the user's generator meanwhile are collected after the pump."""
        if not gc.isenabled():  # paused by an outer pump, or disabled by the user
            self._pump_batches()
            return
        gc.disable()
        try:
            self._pump_batches()
        finally:
            gc.enable()

    def _pump_batches(self) -> None:
        ready = self._ready
        submit = self._backend.submit
        on_done = self._on_done
        try:
            while True:
                while self._has_room_locked():  # a stale read only errs on the safe side
                    batch = self._cut_batch()
                    if batch is None:
                        break
                    ready.append(batch)
                with self._lock:
                    if self._aborting or self._closed:
                        self._pumping = False
                        return
                    if not ready:
                        if self._source_done and self._pos >= len(self._buf):
                            self._dispatch_done = True
                            self._check_finished_locked()
                            self._cond.notify_all()
                        elif self._has_room_locked():
                            continue  # a batch completed meanwhile
                        self._pumping = False
                        return
                    batch = ready.popleft()
                    seq = self._n_batches
                    size = len(batch.tasks)
                    self._n_batches = seq + 1
                    self._n_dispatched += size
                    self._in_flight += 1
                    if self._listeners:
                        self._emit_locked("dispatched", size)
                submit(batch, callback=partial(on_done, seq, size, _now()))
        except BaseException as exc:  # the iterable or submit failed (or Ctrl-C in the caller)
            with self._lock:
                self._pumping = False
                self._fail_locked(exc)

    # -- 3. complete ------------------------------------------------------------------
    def _on_done(self, seq: int, size: int, t_submit: float, out: Any) -> None:
        """The completion callback of batch ``seq`` (any thread, once per batch)."""
        try:
            results = self._backend.retrieve_result_callback(out)
            error: BaseException | None = None
        except BaseException as exc:
            results, error = None, exc
        now = _now()
        with self._lock:
            if self._closed:
                return
            self._in_flight -= 1
            if error is not None:
                self._fail_locked(error)
                return
            if self._aborting:
                return
            # The batch started when it was submitted or, when all workers were busy,
            # when a worker became free: about n_jobs completions ago.
            recent = self._recent_done
            start = t_submit
            if len(recent) == recent.maxlen and recent[0] > start:
                start = recent[0]
            recent.append(now)
            duration = now - start
            self._sizer.record(size, duration)
            self._n_completed += size
            self._n_done_batches += 1
            self._unconsumed += 1
            if self._ordered:
                self._results[seq] = results
            else:
                self._results.append(results)
            if self._listeners:
                self._emit_locked("completed", size)
            if self._dispatch_done:
                self._check_finished_locked()
            if self._waiting and self._wake_per_batch:
                self._cond.notify()
            pump = not self._pumping and not self._dispatch_done and self._has_room_locked()
            if pump:
                self._pumping = True
        self._backend.batch_completed(size, duration)
        if pump:
            self._pump()

    # -- 4. retrieve ------------------------------------------------------------------
    def next_results(self) -> list[Any] | None:
        """The next batch of results (caller's thread), None when all were returned.

        When it has to block, the backend's ``retrieval_context()`` is entered (outside
        the lock) around the waiting, and left before returning."""
        timeout = self._timeout
        deadline: float | None = None
        context: Any = None
        outer: Any = _NO_CONTEXT if self._retrieval is None else ExitStack()
        with outer, self._lock:
            while True:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                if self._ordered:
                    results = self._results.pop(self._next_seq, _MISSING)
                    if results is not _MISSING:
                        self._next_seq += 1
                        break
                elif self._results:
                    results = self._results.popleft()
                    break
                if self._dispatch_done and self._n_retrieved == self._n_batches:
                    return None
                if self._failed:  # the error was already raised once
                    raise RuntimeError("this parallel call has already failed")
                if timeout is None:
                    remaining = None
                else:
                    if deadline is None:
                        deadline = _now() + timeout
                    remaining = deadline - _now()
                    if remaining <= 0:
                        raise TimeoutError(self._timeout_message())
                if context is None and self._retrieval is not None:
                    # Enter the backend's context without holding the lock (it may block,
                    # and completion callbacks need the lock), then look again.
                    context = outer
                    self._lock.release()
                    try:
                        outer.enter_context(self._retrieval())
                    finally:
                        self._lock.acquire()
                    continue
                self._waiting = True
                try:
                    self._cond.wait(remaining)
                finally:
                    self._waiting = False
            self._n_retrieved += 1
            self._unconsumed -= 1
            pump = (
                self._backpressure
                and not self._pumping
                and not self._aborting
                and not self._dispatch_done
                and self._has_room_locked()
            )
            if pump:
                self._pumping = True
        if pump:
            self._pump()
        return results  # type: ignore[no-any-return]

    def collect_all(self) -> list[Any]:
        """All results in submission order (caller's thread, ``return_as='list'``).

        The backend's ``retrieval_context()`` is entered once around the whole wait."""
        retrieval, self._retrieval = self._retrieval, None
        if retrieval is None:
            return self._collect_all()
        with retrieval():
            return self._collect_all()

    def _collect_all(self) -> list[Any]:
        out: list[Any] = []
        if self._wake_per_batch:  # with a timeout: watch the wait for each batch
            while True:
                results = self.next_results()
                if results is None:
                    return out
                out.extend(results)
        with self._lock:
            while True:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                if self._finished_event:
                    break
                self._waiting = True
                try:
                    self._cond.wait()
                finally:
                    self._waiting = False
            batches, self._results = self._results, {}
            self._n_retrieved = self._next_seq = self._n_batches
        for seq in range(len(batches)):
            out.extend(batches[seq])
        return out

    def _timeout_message(self) -> str:
        msg = (
            f"No task result arrived within timeout={self._timeout:g} seconds: a task took too "
            f"long, so the call was aborted."
        )
        if getattr(self._backend, "uses_threads", False):
            msg += (
                " Note: the backend runs tasks in threads, which cannot be stopped: the running "
                "task keeps running in the background until it returns."
            )
        return msg

    def interrupt(self, exc: BaseException) -> None:
        """Fail the call with ``exc`` from any thread: the consumer waiting for a result
        is woken and raises ``exc``, which aborts the call as a task error does."""
        with self._lock:
            self._fail_locked(exc)

    # -- helpers (lock held) ----------------------------------------------------------
    def _fail_locked(self, exc: BaseException) -> None:
        """Record the first error and stop dispatching; later errors are dropped."""
        if self._failed or self._aborting or self._closed:
            return
        self._failed = True
        self._error = exc
        self._aborting = True
        self._cond.notify_all()

    def _check_finished_locked(self) -> None:
        if (
            not self._finished_event
            and self._dispatch_done
            and self._n_done_batches == self._n_batches
            and not self._aborting
        ):
            self._finished_event = True
            self._emit_locked("finished", 0)
            self._cond.notify_all()

    def _emit_locked(self, kind: str, batch_size: int) -> None:
        if not self._listeners:
            return
        elapsed = _now() - self._t0
        total = self._total
        done = self._n_completed
        eta = elapsed / done * (total - done) if total is not None and done else None
        event = ProgressEvent(
            kind,
            self._n_dispatched,
            done,
            total,
            elapsed,
            batch_size,
            eta,
            self._length,
            self._n_batches,
            self._dispatch_done,
            self._window or 0,
        )
        for listener in self._listeners:
            try:
                listener(event)
            except Exception as exc:
                self._fail_locked(exc)


def _generate(call: _Call) -> Iterator[Any]:
    owner = threading.get_ident()
    try:
        call.start()
        yield None  # primed by run(): dispatching starts at call time
        while True:
            results = call.next_results()
            if results is None:
                break
            yield from results
    except GeneratorExit as exc:
        # Closed, or garbage-collected, before the end. If that happens in another
        # thread (possibly one of the backend's), clean up from a fresh thread so that
        # the backend never has to join the thread it is running in.
        if threading.get_ident() == owner:
            call.abort_and_finish(exc)
        else:
            threading.Thread(target=call.abort_and_finish, args=(exc,), name="par-scheduler-abort").start()
        raise
    except BaseException as exc:
        call.abort_and_finish(exc)
        raise
    call.finish(None)


def run(
    backend: ParallelBackendBase,
    iterable: Iterable[TaskTuple],
    *,
    n_jobs: int,
    batch_size: int | str = "auto",
    pre_dispatch: int | str = "2 * n_jobs",
    return_as: str = "list",
    timeout: float | None = None,
    listeners: Sequence[Listener] = (),
    ensure_ready: bool = False,
    on_finish: Callable[[BaseException | None], None] | None = None,
) -> list[Any] | Iterator[Any]:
    """Run the tasks of ``iterable`` on ``backend`` and return their results.

    ``backend`` is configured for ``n_jobs`` workers; ``run`` calls its ``start_call()``
    before the first ``submit`` and ``stop_call()`` when the call is over, then
    ``on_finish(error)`` exactly once (``error`` is None on success; the exception, or
    ``GeneratorExit`` for a generator closed or dropped early, otherwise).

    - ``batch_size``: an int, or ``'auto'`` (the scheduler sizes batches when
      ``backend.supports_auto_batching``, else ``backend.compute_batch_size()``).
    - ``pre_dispatch``: the batches that may be pulled from the iterable ahead of the
      results (see :func:`parse_pre_dispatch`); ``'all'`` consumes it at once.
    - ``return_as``: ``'list'`` returns the list of results in submission order;
      ``'generator'`` yields them in that order, ``'generator_unordered'`` as they
      complete. Dispatching starts at call time in every mode.
    - ``timeout``: waiting more than this many seconds for the next result raises the
      built-in ``TimeoutError`` and aborts the backend.
    - ``listeners``: called with a :class:`ProgressEvent` at each step.
    - ``ensure_ready``: passed to ``backend.abort_everything`` on abort (True when the
      backend must stay usable, as inside ``with Parallel(...)``).

    The first task error is re-raised as is (its type, traceback and ``__cause__``
    chain); pending batches are cancelled and no further tasks start.
    """
    n_jobs = check_n_jobs_effective(n_jobs)
    batch_size = check_batch_size(batch_size)
    return_as = check_return_as(return_as)
    timeout = check_timeout(timeout)
    window = parse_pre_dispatch(pre_dispatch, n_jobs)
    if return_as != "list" and not getattr(backend, "supports_return_generator", True):
        raise ValueError(
            f"return_as={return_as!r} is not supported by the backend {type(backend).__name__}: use return_as='list'."
        )
    call = _Call(
        backend,
        iterable,
        n_jobs=n_jobs,
        batch_size=batch_size,
        window=window,
        peek_allowed=isinstance(pre_dispatch, str) and pre_dispatch.replace(" ", "") == "2*n_jobs",
        return_as=return_as,
        timeout=timeout,
        listeners=listeners,
        ensure_ready=ensure_ready,
        on_finish=on_finish,
    )
    if return_as != "list":
        gen = _generate(call)
        _INTERRUPTS[gen] = call.interrupt
        next(gen)
        return gen
    try:
        call.start()
        out = call.collect_all()
    except BaseException as exc:
        call.abort_and_finish(exc)
        raise
    call.finish(None)
    return out


# -- interrupt: a separate addition used by par's asyncio support ------------------------
_INTERRUPTS: weakref.WeakKeyDictionary[Any, Callable[[BaseException], None]] = weakref.WeakKeyDictionary()


def interrupt(generator: Iterator[Any], exc: BaseException) -> bool:
    """Abort, from any thread, a call whose generator another thread is consuming.

    ``generator`` is one returned by :func:`run` (``return_as='generator'`` or
    ``'generator_unordered'``). The thread blocked in ``next(generator)`` is woken and
    ``next`` raises ``exc``; the call is aborted as on a task error (pending batches
    cancelled, ``abort_everything`` called from the consuming thread). ``close()`` cannot
    do this, since a generator cannot be closed while another thread runs it. A task
    running in the consuming thread (sequential backend) ends first. Returns False when
    ``generator`` is not such a generator (or the call is over: then it does nothing).
    """
    try:
        hook = _INTERRUPTS.get(generator)
    except TypeError:  # not weak-referenceable: not one of ours
        return False
    if hook is None:
        return False
    hook(exc)
    return True
