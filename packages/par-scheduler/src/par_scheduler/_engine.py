"""The engine: iterable -> batches -> backend -> results.

One :class:`_Call` per ``run``, built from two small parts: a :class:`BatchSource`
(iterable -> batches) and a :class:`ResultStore` (batches of results, ordered or
unordered). The scheduler owns dispatch: backends' completion callbacks only record
the outcome and wake the scheduler, so ``backend.submit`` is never re-entered from its
own callback. Who calls whom, on which thread::

    caller's thread (run / next(generator))        backend's threads
    ---------------------------------------        -----------------
    _Call.dispatch()  <-- the one place that decides what runs next
      BatchSource.next_batch()  (user's iterable)
      backend.submit(batch, cb) ------------------> runs batch() in a worker
    _Call.wait for a result / room <-- notify ---- cb(out) = _Call._on_done:
      (condition variable, no polling)                retrieve_result_callback(out),
      backend.batch_completed(...)                    ResultStore.put, wake; nothing else
    ResultStore.pop() -> results to the caller

Its data path, top to bottom:

1. **Pull** (``BatchSource.next_batch``): tasks are taken from the user's iterable with
   ``itertools.islice`` into a list buffer and cut into ``BatchedCalls``. Only the
   dispatching thread (the caller's) touches the iterable, lazily: at most ``pre_dispatch``
   batches are pulled ahead of the results (plus, once batches hold several tasks, a
   look-ahead of ``n_jobs`` batches used to detect the end and split the tail). With
   ``n_jobs=1`` the call is a plain loop: one batch is read, run, and only then is the
   next one read (no look-ahead, a window of one batch).
2. **Submit** (``_Call.dispatch``): ``backend.submit(batch, callback)``, in the caller's
   thread, never with the scheduler's lock held, while the window has room. The caller
   dispatches at the start (``'list'`` and, with ``n_jobs > 1``, the generators) and
   each time it wakes up: a completed batch frees room, a consumed result too.
3. **Complete** (``_Call._on_done``): the backend calls the callback once per batch, from
   any thread (even inside ``submit``); under one lock acquisition it stores the results,
   tells the batch size policy the batch's duration, calls the progress listeners and
   wakes the caller. It never dispatches.
4. **Retrieve** (``next_results``/``collect_all``): the caller blocks on a condition
   variable (no polling) for the next batch in submission order (``'generator'``) or in
   completion order (``'generator_unordered'``), raising the first error, or
   ``TimeoutError`` when it waited more than ``timeout`` seconds for a result; each
   time it wakes it first dispatches what the window has room for. For ``'list'``
   the batches are concatenated in order at the end.

The call's life cycle is one :class:`State` with checked transitions (``_TRANSITIONS``).
On any error, timeout, interrupt or early close of a generator the call is aborted:
no more batches are submitted and ``backend.abort_everything(ensure_ready=...)``
cancels what is pending; late callbacks are ignored.
"""

from __future__ import annotations

import enum
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
from ._policy import Policy, exception_group, failed_task
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

#: A task run alone whose batch failed because another task's worker died is run again
#: at most this many times before that failure counts as its own.
MAX_INNOCENT_RERUNS = 5


def _retrieval_context(backend: Any) -> Callable[[], Any] | None:
    """``backend.retrieval_context`` when the backend's class overrides the no-op of
    ``ParallelBackendBase`` (or does not derive from it), else None (nothing to enter)."""
    method = getattr(type(backend), "retrieval_context", None)
    if method is None or method is ParallelBackendBase.retrieval_context:
        return None
    return backend.retrieval_context  # type: ignore[no-any-return]


# -- 1. pull: the batch source ----------------------------------------------------------
class BatchSource:
    """Cuts the user's iterable into ``BatchedCalls``; used by the dispatching thread only.

    ``total`` is the number of tasks once known (``len()`` or the end was reached)."""

    def __init__(
        self,
        iterable: Iterable[TaskTuple],
        sizer: Any,
        *,
        n_jobs: int,
        window: int | None,
        plan: bool,
        peek: bool,
    ) -> None:
        self._sizer = sizer
        self._adaptive = bool(sizer.adaptive) and n_jobs > 1
        self._n_jobs = n_jobs
        self._window = window
        # A short call (all its tasks known at the start, at most one window of them) is
        # cut into at most n_jobs batches of this size, instead of batches of one. Only
        # planned for a list result (``plan``): a generator's caller would see no result
        # before the first planned batch completes. ``peek``: reading one task beyond the
        # window to learn whether the call is short (not when the user set pre_dispatch).
        self._planned = not (plan and self._adaptive)
        self._peek = peek
        self._split_size = 0
        try:
            self.length: int | None = len(iterable)  # type: ignore[arg-type]
        except Exception:
            self.length = None
        self.total: int | None = self.length
        self._iterable: Iterable[TaskTuple] | None = iterable
        self._it: Iterator[TaskTuple] | None = None
        self._buf: list[TaskTuple] = []
        self._pos = 0
        self.exhausted = False
        self._n_cut = 0
        self._nested: Any = None

    def open(self, nested: Any) -> None:
        """Start reading (``pre_dispatch='all'``: the whole iterable now)."""
        self._nested = nested
        iterable, self._iterable = self._iterable, None
        assert iterable is not None
        if self._window is None:
            self._buf = list(iterable)
            self._end(len(self._buf))
        else:
            self._it = iter(iterable)

    def close(self) -> None:
        self._buf = []
        self._it = None
        self._iterable = None

    def _end(self, total: int) -> None:
        self.exhausted = True
        self._it = None
        self.total = total

    def _plan(self) -> None:
        """At the first cut (auto policy, list result): when the whole call is known to hold
        at most one window of tasks, cut it into at most ``n_jobs`` equal batches. The
        window is ``pre_dispatch`` (in tasks, as the first batches hold one task each), or
        ``2 * n_jobs`` for ``pre_dispatch='all'``."""
        self._planned = True
        limit = self._window if self._window is not None else 2 * self._n_jobs
        total: int | None = None
        if self.exhausted:
            total = len(self._buf) - self._pos
        elif self.length is not None:
            total = self.length
        elif self._it is not None:
            want = limit + 1 if self._peek else limit
            self._buf.extend(islice(self._it, want))
            if len(self._buf) < want:
                total = len(self._buf)
                self._end(total)
        if total is not None and 1 < total <= limit:
            self._split_size = -(-total // self._n_jobs)  # ceil

    def next_batch(self) -> BatchedCalls | None:
        """The next batch from the iterable, or None when it is exhausted."""
        if not self._planned:
            self._plan()
        size = self._split_size or self._sizer.next_size()
        buf = self._buf
        avail = len(buf) - self._pos
        if not self.exhausted:
            want = size
            if self._adaptive and size > 1:
                want = size * self._n_jobs if size * self._n_jobs <= LOOKAHEAD_TASKS else size + 1
            if avail < want:
                it = self._it
                if it is None:  # closed meanwhile
                    return None
                if self._pos:
                    buf = self._buf = buf[self._pos :]
                    self._pos = 0
                buf.extend(islice(it, want - avail))
                avail = len(buf)
                if avail < want:
                    self._end(self._n_cut + avail)
        if avail == 0:
            return None
        if self.exhausted and self._adaptive and not self._split_size:
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


# -- 4. retrieve: the result store -------------------------------------------------------
class ResultStore:
    """The batches of results not yet retrieved: by submission order or completion order."""

    def __init__(self, ordered: bool) -> None:
        self.ordered = ordered
        self._by_seq: dict[int, Any] = {}
        self._fifo: deque[Any] = deque()
        self._next_seq = 0
        self._run = 0  # ordered: batches stored from _next_seq on without a gap

    @property
    def available(self) -> int:
        """How many batches ``pop`` would return one after the other now: in order, those
        up to the first batch not completed yet; out of order, all."""
        return self._run if self.ordered else len(self._fifo)

    def put(self, seq: int, results: Any) -> None:
        if self.ordered:
            by_seq = self._by_seq
            by_seq[seq] = results
            if seq == self._next_seq + self._run:  # it closes the gap at the front
                self._run += 1
                while self._next_seq + self._run in by_seq:
                    self._run += 1
        else:
            self._fifo.append(results)

    def pop(self) -> Any:
        """The next batch of results, or ``_MISSING`` when it has not completed yet."""
        if self.ordered:
            results = self._by_seq.pop(self._next_seq, _MISSING)
            if results is not _MISSING:
                self._next_seq += 1
                self._run -= 1
            return results
        return self._fifo.popleft() if self._fifo else _MISSING

    def take_all(self) -> list[Any]:
        """Every result, concatenated in order (all batches completed)."""
        out: list[Any] = []
        by_seq = self._by_seq
        for seq in range(self._next_seq, self._next_seq + len(by_seq)):
            out.extend(by_seq.pop(seq))
        while self._fifo:
            out.extend(self._fifo.popleft())
        self._run = 0
        return out

    def clear(self) -> None:
        self._by_seq.clear()
        self._fifo.clear()
        self._run = 0


# -- the call's life cycle ---------------------------------------------------------------
class State(enum.Enum):
    CREATED = "created"  # nothing started
    RUNNING = "running"  # dispatching
    DRAINED = "drained"  # the source is exhausted; batches may still be running
    COMPLETE = "complete"  # every batch completed (results may still be waiting)
    FAILED = "failed"  # the first error was recorded: nothing more is dispatched
    ABORTED = "aborted"  # abort_everything was (being) called
    CLOSED = "closed"  # stop_call and on_finish done


S = State
_TRANSITIONS: dict[State, frozenset[State]] = {
    S.CREATED: frozenset({S.RUNNING, S.ABORTED, S.CLOSED}),
    S.RUNNING: frozenset({S.DRAINED, S.FAILED, S.ABORTED}),
    S.DRAINED: frozenset({S.COMPLETE, S.FAILED, S.ABORTED}),
    S.COMPLETE: frozenset({S.FAILED, S.ABORTED, S.CLOSED}),
    S.FAILED: frozenset({S.ABORTED, S.CLOSED}),
    S.ABORTED: frozenset({S.CLOSED}),
    S.CLOSED: frozenset(),
}
# tuples, not sets: membership by identity, without Enum.__hash__ (a Python call) at
# each of the few checks per batch
_DISPATCHING = (S.RUNNING,)
_ACCEPTING = (S.RUNNING, S.DRAINED)  # completions are recorded


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
        policy: Policy | None = None,
    ) -> None:
        self._backend = backend
        self._policy = policy if policy is not None and policy.active else None

        self._n_jobs = n_jobs
        self._sizer = make_sizer(batch_size, backend, n_jobs)
        if n_jobs == 1 and window is not None:
            window = 1  # a plain loop: read one batch, run it, then read the next
        self._window = window
        self._source = BatchSource(
            iterable,
            self._sizer,
            n_jobs=n_jobs,
            window=window,
            plan=return_as == "list",
            peek=return_as == "list" and peek_allowed,
        )
        self._store = ResultStore(ordered=return_as != "generator_unordered")
        # In generator modes, results not yet consumed count against the window, so a
        # slow consumer (or a synchronous backend) does not make the call run ahead
        # (see _has_room_locked for results that wait behind a running batch).
        self._backpressure = return_as != "list"
        # With n_jobs=1, a generator is a plain loop: it runs nothing before the first
        # result is asked for, and reads the next batch only when the next is asked for.
        self._plain_loop = n_jobs == 1 and return_as != "list"
        self._timeout = timeout
        self._listeners = tuple(listeners)
        self._ensure_ready = ensure_ready
        self._on_finish = on_finish
        # Wake the caller at every completed batch once the source is exhausted only when
        # it consumes batch by batch (a generator, or a timeout to watch).
        self._wake_per_batch = return_as != "list" or timeout is not None
        self._retrieval: Callable[[], Any] | None = _retrieval_context(backend)

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._state = S.CREATED
        self._started = False  # backend.start_call() returned: stop_call is owed
        self._error: BaseException | None = None
        # Counters, under the lock.
        self._in_flight = 0
        self._unconsumed = 0
        self._n_batches = 0
        self._n_dispatched = 0
        self._n_completed = 0
        self._n_done_batches = 0
        self._n_retrieved = 0
        self._durations: list[tuple[int, float]] = []  # for backend.batch_completed
        # Failure policy (only with on_error != 'raise' or retries): tasks of a batch that
        # failed as a whole, to run again one by one: (seq, position, batch, attempts);
        # the slots of such batches, filled as their tasks complete.
        self._rerun: deque[tuple[int, int, BatchedCalls, int]] = deque()
        self._pieces: dict[int, tuple[int, list[Any]]] = {}
        self._innocent: dict[tuple[int, int], int] = {}
        self.failures: list[BaseException] = []
        self._n_failed = 0
        self._n_retried = 0
        self._n_timed_out = 0
        # Dispatcher side (the caller's thread only): batches cut, not yet submitted.
        self._ready: deque[BatchedCalls] = deque()
        self._source_empty = False
        self._recent_done: deque[float] = deque(maxlen=n_jobs)
        self._t0 = _now()

    # -- life cycle -------------------------------------------------------------------
    def _to_locked(self, state: State) -> None:
        if state not in _TRANSITIONS[self._state]:
            raise RuntimeError(f"par_scheduler: invalid call transition {self._state.value} -> {state.value}")
        self._state = state

    def start(self) -> None:
        """``start_call``, the ``'start'`` event, then the first batches (in this thread)."""
        self._t0 = _now()
        backend = self._backend
        if getattr(backend, "supports_task_timeout", False):
            backend.task_timeout = None if self._policy is None else self._policy.task_timeout
        backend.start_call()
        self._started = True
        self._source.open(backend.get_nested_backend())
        with self._lock:
            self._to_locked(S.RUNNING)
            self._emit_locked("start", 0)
        if not self._plain_loop:
            self.dispatch()

    def abort_and_finish(self, exc: BaseException) -> None:
        """End the call abnormally: stop dispatching, cancel what is pending, clean up."""
        with self._lock:
            if self._state in (S.ABORTED, S.CLOSED):
                aborting = False
            else:
                aborting = True
                self._to_locked(S.ABORTED)
                self._emit_locked("aborted", 0)
        try:
            if aborting and self._started:
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
            if self._state is S.CLOSED:
                return
            self._to_locked(S.CLOSED)
            self._store.clear()
            self._ready.clear()
        self._source.close()
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

    # -- 2. submit: the dispatcher ----------------------------------------------------
    def _has_room_locked(self) -> bool:
        if self._window is None:
            return not self._ready
        used = self._in_flight + len(self._ready)
        if self._backpressure:
            # Results the consumer could take now count in full: a consumer that does not
            # take them stops the dispatch within one window. Results that completed out
            # of order behind a batch still running (an ordered generator) count only
            # beyond one more window: the consumer is waiting, not slow, and counting
            # them idled the other workers while one long task ran (1.01-1.06x joblib on
            # 40 sleeps of 0-100 ms). At most about two windows of results are held.
            available = self._store.available
            used += available + max(self._unconsumed - available - self._window, 0)
        return used < self._window

    def dispatch(self) -> None:
        """Pull and submit batches while the window has room (the caller's thread).

        The one place that decides what runs next. ``submit`` is called without the
        lock held, so a callback fired inside it (or from a thread holding a lock that
        ``submit`` takes) only records its outcome. The cyclic garbage collector is
        paused meanwhile: pulling a batch allocates a tuple or two per task, which the
        backend's ``submit`` (pickling) frees again, so a collection in between would
        only walk them; for 10^6 trivial tasks the collections cost more than the rest
        of the dispatch. Cycles made by the user's generator meanwhile are collected
        after it."""
        if self._durations:
            self._report_durations()
        if self._rerun:
            self._dispatch_reruns()
        if self._state not in _DISPATCHING or not (
            self._ready or self._has_room_locked()
        ):  # rechecked under the lock
            return
        if not gc.isenabled():  # disabled by the user
            self._dispatch_batches()
            return
        gc.disable()
        try:
            self._dispatch_batches()
        finally:
            gc.enable()

    def _dispatch_batches(self) -> None:
        """Cut batches until the window is full, then submit them one by one (so with
        ``pre_dispatch=k`` the first ``k`` batches are read before the first one runs)."""
        source = self._source
        ready = self._ready
        submit = self._backend.submit
        on_done = self._on_done
        try:
            while True:
                while (
                    not self._source_empty and self._has_room_locked()
                ):  # a stale read errs on the safe side
                    batch = source.next_batch()  # the user's iterable: outside the lock
                    if batch is None:
                        self._source_empty = True
                        break
                    ready.append(batch)
                with self._lock:
                    if self._state not in _DISPATCHING:
                        return
                    if not ready:
                        if self._source_empty:
                            self._to_locked(S.DRAINED)
                            self._check_complete_locked()
                            self._cond.notify_all()
                            return
                        if self._has_room_locked():
                            continue  # a batch completed meanwhile
                        return
                    batch = ready.popleft()
                    seq = self._n_batches
                    size = len(batch.tasks)
                    self._n_batches = seq + 1
                    self._n_dispatched += size
                    self._in_flight += 1
                    if self._listeners:
                        self._emit_locked("dispatched", size)
                if self._policy is None:
                    submit(batch, callback=partial(on_done, seq, size, _now()))
                else:  # the batch is kept until it completes: it may have to run again
                    batch = self._policy.guarded(batch)
                    kept = self._policy.keep(batch)
                    submit(batch, callback=partial(self._on_guarded_done, seq, size, _now(), kept))
                    del kept
                del batch
        except BaseException as exc:  # the iterable or submit failed (or Ctrl-C)
            with self._lock:
                self._fail_locked(exc)

    def _report_durations(self) -> None:
        """``backend.batch_completed`` for the batches completed since the last call, from
        the scheduler's thread (never from the backend's callback)."""
        with self._lock:
            done, self._durations = self._durations, []
        for size, duration in done:
            self._backend.batch_completed(size, duration)

    # -- 3. complete ------------------------------------------------------------------
    def _on_done(self, seq: int, size: int, t_submit: float, out: Any) -> None:
        """The completion callback of batch ``seq`` (any thread, once per batch): record
        the outcome and wake the caller, nothing more."""
        try:
            results = self._backend.retrieve_result_callback(out)
            error: BaseException | None = None
        except BaseException as exc:
            results, error = None, exc
        now = _now()
        with self._lock:
            if self._state not in _ACCEPTING:
                return
            self._in_flight -= 1
            if error is not None:
                self._fail_locked(error)
                return
            self._record_locked(seq, size, t_submit, now, results)

    def _record_locked(self, seq: int, size: int, t_submit: float, now: float, results: Any) -> None:
        """Store a completed batch's results, feed the size policy, wake the caller."""
        # The batch started when it was submitted or, when all workers were busy,
        # when a worker became free: about n_jobs completions ago.
        recent = self._recent_done
        start = t_submit
        if len(recent) == recent.maxlen and recent[0] > start:
            start = recent[0]
        recent.append(now)
        duration = now - start
        self._sizer.record(size, duration)
        self._durations.append((size, duration))
        self._n_completed += size
        self._n_done_batches += 1
        self._unconsumed += 1
        self._store.put(seq, results)
        if self._listeners:
            self._emit_locked("completed", size)
        if self._state is S.DRAINED:
            self._check_complete_locked()
            if self._wake_per_batch:
                self._cond.notify()
        else:
            self._cond.notify()  # results to hand over, or room to dispatch into

    def _on_guarded_done(self, seq: int, size: int, t_submit: float, kept: Any, out: Any) -> None:
        """The completion callback of batch ``seq`` under a failure policy: the tasks'
        failures come back as envelopes (opened here); a batch that failed as a whole
        (its worker died) is queued to run again task by task, on fresh workers
        (``kept``: what ``Policy.keep`` kept of the batch)."""
        try:
            results = self._backend.retrieve_result_callback(out)
            error: BaseException | None = None
        except BaseException as exc:
            results, error = None, exc
        now = _now()
        with self._lock:
            if self._state not in _ACCEPTING:
                return
            self._in_flight -= 1
            if error is not None:
                if not isinstance(error, Exception):  # KeyboardInterrupt and the like
                    self._fail_locked(error)
                    return
                batch = Policy.restore(kept)
                self._pieces[seq] = (batch.index, [_MISSING] * size)
                tasks = batch.tasks
                if size == 1:
                    self._lone_failed_locked(seq, 0, batch, 0, error)
                else:
                    for pos, task in enumerate(tasks):
                        piece = type(batch)([task], batch.nested, batch.index + pos)
                        self._rerun.append((seq, pos, piece, 0))
                self._cond.notify_all()
                return
            self._complete_guarded_locked(seq, size, t_submit, now, results, kept.index, True)

    def _complete_guarded_locked(
        self, seq: int, size: int, t_submit: float, now: float, results: Any, first_index: int, sent: bool
    ) -> None:
        """``sent``: ``results`` are a batch's, as its worker returned them (envelopes
        listed at their end); else the slots of a batch whose tasks ran one by one."""
        assert self._policy is not None
        policy = self._policy
        if sent:
            results, failed, n_retried = policy.open(results, first_index)
        else:
            results, failed, n_retried = policy.unpack(results, first_index)
        self._n_retried += n_retried
        if failed:
            self._n_failed += len(failed)
            if policy.on_error == "raise":
                self._fail_locked(failed[0])
                return
            if policy.on_error == "collect":
                self.failures.extend(failed)
        self._record_locked(seq, size, t_submit, now, results)

    def _lone_failed_locked(
        self, seq: int, pos: int, piece: BatchedCalls, attempts: int, error: BaseException
    ) -> None:
        """A task run alone failed as a whole: run it again on a fresh worker while its
        retries last, else its exception (e.g. ``WorkerDiedError``) takes its place."""
        assert self._policy is not None
        if (
            self._policy.innocent(error, piece.index)
            and self._innocent.get((seq, pos), 0) < MAX_INNOCENT_RERUNS
        ):
            # Its worker pool broke because *another* task killed a worker (loky fails
            # every pending future then): run it again, without spending its retries.
            self._innocent[(seq, pos)] = self._innocent.get((seq, pos), 0) + 1
            self._rerun.append((seq, pos, piece, attempts))
            return
        if self._policy.retry_death(attempts):
            self._n_retried += 1
            self._rerun.append((seq, pos, piece, attempts + 1))
            return
        func = piece.tasks[0][0]
        if self._policy.timed_out(error):  # its worker ended itself: the task overran
            self._n_timed_out += 1
            error = self._policy.timeout_error(piece.index, func, error)
        self._fill_piece_locked(seq, pos, failed_task(error, func, attempts))

    def _fill_piece_locked(self, seq: int, pos: int, value: Any) -> None:
        first_index, slots = self._pieces[seq]
        slots[pos] = value
        if _MISSING not in slots:
            del self._pieces[seq]
            now = _now()
            self._complete_guarded_locked(seq, len(slots), now, now, slots, first_index, False)

    def _dispatch_reruns(self) -> None:
        """Submit the tasks queued to run again alone (the caller's thread)."""
        submit = self._backend.submit
        while True:
            with self._lock:
                if self._state not in _ACCEPTING or not self._rerun:
                    return
                seq, pos, piece, attempts = self._rerun.popleft()
                self._in_flight += 1
            try:
                submit(piece, callback=partial(self._on_piece_done, seq, pos, piece, attempts))
            except BaseException as exc:
                with self._lock:
                    self._fail_locked(exc)
                return

    def _on_piece_done(self, seq: int, pos: int, piece: BatchedCalls, attempts: int, out: Any) -> None:
        """The completion callback of one task run alone after its batch failed."""
        try:
            results = self._backend.retrieve_result_callback(out)
            error: BaseException | None = None
        except BaseException as exc:
            results, error = None, exc
        with self._lock:
            if self._state not in _ACCEPTING:
                return
            self._in_flight -= 1
            if error is not None:
                if not isinstance(error, Exception):
                    self._fail_locked(error)
                    return
                self._lone_failed_locked(seq, pos, piece, attempts, error)
                self._cond.notify_all()
                return
            self._fill_piece_locked(seq, pos, results[0])
            self._cond.notify_all()

    # -- 4. retrieve ------------------------------------------------------------------
    def next_results(self) -> list[Any] | None:
        """The next batch of results (caller's thread), None when all were returned.

        Dispatches whenever the window has room. When it has to block, the backend's
        ``retrieval_context()`` is entered (outside the lock) around the waiting, and
        left before returning."""
        timeout = self._timeout
        deadline: float | None = None
        entered = False
        outer: Any = _NO_CONTEXT if self._retrieval is None else ExitStack()
        with outer:
            while True:
                self.dispatch()
                with self._lock:
                    if self._error is not None:
                        error, self._error = self._error, None
                        raise error
                    results = self._store.pop()
                    if results is not _MISSING:
                        self._n_retrieved += 1
                        self._unconsumed -= 1
                        break
                    if self._state is S.COMPLETE and self._n_retrieved == self._n_batches:
                        return None
                    if self._state in (S.FAILED, S.ABORTED, S.CLOSED):  # the error was already raised
                        raise RuntimeError("this parallel call has already failed")
                    if self._state is S.RUNNING and self._has_room_locked():
                        continue  # room was made meanwhile: dispatch first
                    remaining: float | None = None
                    if timeout is not None:
                        if deadline is None:
                            deadline = _now() + timeout
                        remaining = deadline - _now()
                        if remaining <= 0:
                            raise TimeoutError(self._timeout_message())
                    if not entered and self._retrieval is not None:
                        entered = True
                    else:
                        self._cond.wait(remaining)
                        continue
                # Enter the backend's context without the lock (it may block), then look again.
                outer.enter_context(self._retrieval())
        if self._backpressure and not self._plain_loop:
            self.dispatch()  # the consumed result made room: keep the workers busy
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
        if self._timeout is not None:  # watch the wait for each batch
            out: list[Any] = []
            while (results := self.next_results()) is not None:
                out.extend(results)
            return out
        while True:
            self.dispatch()
            with self._lock:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                if self._state is S.COMPLETE:
                    break
                if self._state is S.RUNNING and self._has_room_locked():
                    continue
                if self._state not in _ACCEPTING:
                    raise RuntimeError("this parallel call has already failed")
                self._cond.wait()
        with self._lock:
            self._n_retrieved = self._n_batches
            return self._store.take_all()

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
        if self._state not in (S.RUNNING, S.DRAINED, S.COMPLETE):
            return
        self._to_locked(S.FAILED)
        self._error = exc
        self._cond.notify_all()

    def _check_complete_locked(self) -> None:
        if self._state is S.DRAINED and self._n_done_batches == self._n_batches:
            self._to_locked(S.COMPLETE)
            self._emit_locked("finished", 0)
            self._cond.notify_all()

    def _emit_locked(self, kind: str, batch_size: int) -> None:
        if not self._listeners:
            return
        elapsed = _now() - self._t0
        total = self._source.total
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
            self._source.length,
            self._n_batches,
            self._state in (S.DRAINED, S.COMPLETE),
            self._window or 0,
            self._n_failed,
            self._n_retried,
            self._n_timed_out,
        )
        for listener in self._listeners:
            try:
                listener(event)
            except Exception as exc:
                self._fail_locked(exc)


def _generate(call: _Call, collect: bool = False) -> Iterator[Any]:
    owner = threading.get_ident()
    n_tasks = 0
    try:
        call.start()
        yield None  # primed by run(): dispatching starts at call time
        while True:
            results = call.next_results()
            if results is None:
                break
            n_tasks += len(results)
            if collect and call.failures:
                # on_error='collect': the failures are raised together at the end
                failed = {id(e) for e in call.failures}
                results = [r for r in results if id(r) not in failed]
            yield from results
        if collect and call.failures:
            group = exception_group(list(call.failures), n_tasks, None)
            call.finish(None)
            raise group
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
    on_error: str = "raise",
    retries: int = 0,
    retry_on: tuple[type[BaseException], ...] = (),
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

    - ``on_error``: ``'raise'`` (the default): the first task error is re-raised as is
      (its type, traceback and ``__cause__`` chain); pending batches are cancelled and
      no further tasks start. ``'return'``: the exception takes the task's place in the
      results and the call goes on. ``'collect'``: the call goes on to its end, then
      raises an ``ExceptionGroup`` of the failures (``exceptiongroup`` on Python 3.10)
      whose ``results`` attribute is the list of results with the exceptions in the
      failed tasks' places (None for the generators, which yielded the successes).
      Every failure carries a note ``par: task <index> (<function>) failed``. With a
      policy other than ``'raise'``, a batch whose worker died is run again task by task
      on fresh workers: only a task that kills its worker again fails (its
      ``WorkerDiedError`` in its place).
    - ``retries``: a failed task is run again up to this many more times before its
      failure counts: when its worker died (on a fresh worker), or when it raised an
      exception of a type in ``retry_on`` (in the same worker).
    """
    policy = Policy(on_error, retries, retry_on)
    n_jobs = check_n_jobs_effective(n_jobs)
    batch_size = check_batch_size(batch_size)
    return_as = check_return_as(return_as)
    timeout = check_timeout(timeout)
    if policy.take_timeout(timeout, backend):
        # Per-task timeouts, enforced in the workers: one task per batch, so a task that
        # overruns takes no other task's result with its worker.
        timeout, batch_size = None, 1
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
        policy=policy,
    )
    collect = policy.on_error == "collect"
    if return_as != "list":
        gen = _generate(call, collect)
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
    if collect and call.failures:
        raise exception_group(list(call.failures), len(out), out)
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
