"""Per-task timeouts on Ray: the driver watches the clock and cancels overrunning tasks.

With a per-task timeout (``task_timeout``, set by the par scheduler under ``on_error``
other than ``'raise'`` with ``timeout=``; it forces one task per batch), each batch runs
as a Ray *generator* task (:func:`par_backends_ray._task.run_batch_timed`) that yields a
marker as soon as it starts on its worker, then the batch's results. One thread per
backend (``par-ray-timeout``) waits in ``ray.wait`` on the generators of the batches in
flight: when a marker arrives the batch's clock starts (so a task queued by Ray, waiting
for a CPU, does not use up its time); when the results arrive the batch completes as
usual; when a batch runs past its deadline the thread cancels its Ray task with
``ray.cancel(..., force=True)``, which ends the worker process running it (Ray starts
another; a cancelled task is never retried by Ray), and fails the batch with a
``TimeoutError`` (the scheduler puts it in the task's place, and re-runs the task when
``retries`` allow). The thread ends when nothing is left to watch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

from ._task import STARTED

_logger = logging.getLogger(__name__)

__all__ = ["Monitor"]

#: Longest sleep of the monitor between two looks at new batches and deadlines (a
#: batch's start and end wake it earlier, through ``ray.wait``).
_POLL = 0.05


class Watched:
    """A batch in flight under a per-task timeout."""

    __slots__ = ("deadline", "entry", "gen")

    def __init__(self, entry: Any, gen: Any) -> None:
        self.entry = entry
        self.gen = gen
        self.deadline: float | None = None  # set when the task starts on its worker


class Monitor:
    """Watches the generator tasks of one backend; ``on_result(entry, ref)`` gets the
    ObjectRef of a batch's results (or of its failure), ``cancel(entry)`` ends the task
    of a batch that overran (``ray.cancel(force=True)``; an actor is restarted), then
    ``on_timeout(entry, seconds)`` fails it. ``on_error(entry, exc)`` fails a batch when
    watching it failed (an unexpected error of ``ray.wait``, e.g. the runtime went away, or
    of the callbacks): every batch watched then gets it, so that no call waits forever
    for a batch nobody watches any more."""

    def __init__(
        self,
        on_result: Callable[[Any, Any], None],
        on_timeout: Callable[[Any, float], None],
        cancel: Callable[[Any], None],
        on_error: Callable[[Any, BaseException], None],
    ) -> None:
        self._on_result = on_result
        self._on_timeout = on_timeout
        self._cancel = cancel
        self._on_error = on_error
        self._lock = threading.Lock()
        self._watched: dict[int, Watched] = {}
        self._thread: threading.Thread | None = None

    def watch(self, entry: Any, gen: Any, seconds: float) -> None:
        """Watch ``gen`` (the batch ``entry``'s generator task) with a timeout of
        ``seconds`` from its start."""
        with self._lock:
            self._watched[id(entry)] = Watched(entry, gen)
            entry.timeout = seconds
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="par-ray-timeout", daemon=True)
                self._thread.start()

    def forget(self, entry: Any) -> None:
        """Stop watching ``entry`` (cancelled by an abort)."""
        with self._lock:
            self._watched.pop(id(entry), None)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread (it ends once nothing is watched)."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._lock:
                watched = list(self._watched.values())
                if not watched:
                    self._thread = None
                    return
            try:
                self._step(watched)
            except Exception as exc:  # the runtime went away, or a bug: never hang the call
                _logger.debug("par ray timeout watch failed", exc_info=True)
                self._fail_all(exc)

    def _step(self, watched: list[Watched]) -> None:
        now = time.monotonic()
        wake = now + _POLL
        for item in watched:
            if item.deadline is None:
                continue
            if now >= item.deadline:
                self._expire(item)
            else:
                wake = min(wake, item.deadline)
        with self._lock:
            gens = [w.gen for w in self._watched.values()]
        if not gens:
            return
        ready, _ = ray.wait(gens, num_returns=1, timeout=max(wake - time.monotonic(), 0), fetch_local=False)
        for gen in ready:
            self._advance(gen)

    def _fail_all(self, exc: BaseException) -> None:
        """Fail every watched batch with ``exc`` (the watch itself failed)."""
        with self._lock:
            items = list(self._watched.values())
            self._watched.clear()
        for item in items:
            with contextlib.suppress(Exception):
                self._on_error(item.entry, exc)

    def _find(self, gen: Any) -> Watched | None:
        with self._lock:
            for item in self._watched.values():
                if item.gen is gen:
                    return item
        return None

    def _advance(self, gen: Any) -> None:
        """The next object of ``gen`` is ready: the start marker, or the results."""
        item = self._find(gen)
        if item is None:
            return
        try:
            ref = next(gen)  # at once: ray.wait said it is ready
        except StopIteration:  # pragma: no cover - run_batch_timed always yields twice
            return
        if item.deadline is None:
            try:
                started = ray.get(ref, timeout=10) == STARTED
            except Exception:  # the task failed before it started (worker died, cancelled)
                started = False
            if started:
                item.deadline = time.monotonic() + item.entry.timeout
                return
        with self._lock:
            if self._watched.pop(id(item.entry), None) is None:
                return
        try:
            self._on_result(item.entry, ref)
        except Exception as exc:  # no longer watched: it must not be left without an outcome
            self._on_error(item.entry, exc)

    def _expire(self, item: Watched) -> None:
        with self._lock:
            if self._watched.pop(id(item.entry), None) is None:
                return
        with contextlib.suppress(Exception):
            self._cancel(item.entry)
        try:
            self._on_timeout(item.entry, item.entry.timeout)
        except Exception as exc:  # no longer watched: it must not be left without an outcome
            self._on_error(item.entry, exc)
