"""Worker side: what one Ray task of par runs.

A batch (``par_api.BatchedCalls``) runs in a Ray task as :func:`run_batch`. Arguments put
into the object store by the driver (:mod:`par_backends_ray._arguments`) arrive as
top-level arguments of the task, which Ray resolves to their values before the task
starts; ``par_api.arguments.Slot`` placeholders in the batch's tasks name them.

**Nested calls.** Ray gives back the CPU of a task only while the task's *own thread*
is blocked in ``ray.get``/``ray.wait``; a task waiting in any other way (the par
scheduler waits on a condition variable) keeps its CPU, so parents waiting for their
children could hold every CPU of the cluster while the children queue (a deadlock).
So the batch runs in a thread of the task (``par-ray-batch``), and the task's own thread
waits for it: while a ``Parallel`` call made by the batch on Ray has batches pending,
the task's thread waits for them in ``ray.wait`` (Ray releases the task's CPU for that
time, and the children run on it); otherwise it waits for the batch thread on an event
(the CPU is in use). ``ray.cancel`` of a running task interrupts the task's thread
(``KeyboardInterrupt``); it is passed on to the batch thread
(``PyThreadState_SetAsyncExc``, at its next Python instruction).
"""

from __future__ import annotations

import threading
from typing import Any

import ray
from par_api import async_raise, fill_slots

__all__ = ["STARTED", "Waiter", "current_waiter", "run_batch", "run_batch_timed"]

#: How long the task's thread waits before it looks again at what the batch waits for
#: (a new nested call, or the batch's end, wake it earlier through an event).
_LOOK_AGAIN = 0.5


class Waiter:
    """The ObjectRefs that nested par calls of the running batch wait for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[Any, None] = {}
        self.changed = threading.Event()
        self.done = threading.Event()

    def add(self, ref: Any) -> None:
        with self._lock:
            self._refs[ref] = None
        self.changed.set()

    def discard(self, refs: Any) -> None:
        with self._lock:
            for ref in refs:
                self._refs.pop(ref, None)

    def pending(self) -> list[Any]:
        with self._lock:
            return list(self._refs)


#: The waiter of the batch running in this worker process (a Ray worker runs one task
#: at a time), None outside a par task.
_current: Waiter | None = None


def current_waiter() -> Waiter | None:
    """The waiter of the par batch running in this process, if any."""
    return _current


def _interrupt(thread: threading.Thread) -> None:
    """Raise ``KeyboardInterrupt`` in ``thread`` at its next Python instruction."""
    if thread.ident is not None:
        async_raise(thread.ident, KeyboardInterrupt)


def run_batch(batch: Any, *values: Any) -> list[Any]:
    """Run ``batch`` (with its placeholders filled) in a thread; wait for it as the
    module docstring says. Returns the batch's results or raises its exception."""
    global _current
    batch = fill_slots(batch, values)
    waiter = Waiter()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["results"] = batch()
        except BaseException as exc:  # re-raised in the task's thread
            outcome["error"] = exc
        finally:
            waiter.done.set()
            waiter.changed.set()

    previous, _current = _current, waiter
    thread = threading.Thread(target=target, name="par-ray-batch", daemon=True)
    try:
        thread.start()
        while not waiter.done.is_set():
            waiter.changed.clear()
            refs = waiter.pending()
            if refs:
                # blocked here, Ray lends this task's CPU to the nested batches
                ready, _ = ray.wait(refs, num_returns=1, timeout=_LOOK_AGAIN, fetch_local=False)
                waiter.discard(ready)
            else:
                waiter.changed.wait(_LOOK_AGAIN)
    except BaseException:  # ray.cancel (KeyboardInterrupt) or a worker shutting down
        _interrupt(thread)
        thread.join(10)
        raise
    finally:
        _current = previous
    thread.join()
    if "error" in outcome:
        error = outcome.pop("error")
        try:
            raise error
        finally:
            del error
    results: list[Any] = outcome["results"]
    return results


#: What :func:`run_batch_timed` yields first: the batch has started on its worker.
STARTED = "par-started"


def run_batch_timed(batch: Any, *values: Any) -> Any:
    """:func:`run_batch` as a Ray generator task, for calls with a per-task timeout: it
    yields :data:`STARTED` as soon as it runs on its worker (the driver starts the
    task's clock when it sees it), then the batch's results (or raises its exception)."""
    yield STARTED
    yield run_batch(batch, *values)
