"""Per-task timeouts on dask: when a task starts on its worker, and stopping it there.

dask tells a client when a task finishes, not when it starts (a task the scheduler
has sent to a worker may still wait there for a free thread). So a timed batch runs
through :func:`run_timed`, which reports its start as a dask event (topic
:data:`TOPIC`, ``{"key": ..., "worker": ...}``) before it runs the batch. The client
subscribes to the topic once (:func:`watch_start`) and the backend counts the batch's
timeout from the moment the event reaches it (a few milliseconds after the start).

A thread cannot be killed: when the backend gives up on a batch, it asks the batch's
worker (``client.run``) to raise :class:`TaskTimedOut` in the batch's thread
(:func:`interrupt`), which ends a task running Python code and frees the worker's
thread; a task blocked in C code (a ``time.sleep``, a socket read) keeps its thread
until that call returns, its result dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import distributed
from par_api import async_raise

from ._pickling import KeepCode
from ._scatter import run_batch

__all__ = ["TOPIC", "TaskTimedOut", "forget", "interrupt", "interrupt_soon", "run_timed", "watch_start"]

#: The dask event topic of the starts of timed par batches (one topic for every par
#: client, so that the scheduler keeps a bounded number of events).
TOPIC = "par-task-start"

_logger = logging.getLogger("par_backends_dask")


class TaskTimedOut(BaseException):
    """Raised in the thread of a batch that ran longer than its per-task timeout, on
    its worker. A ``BaseException`` so that ``except Exception`` in the task does not
    swallow it; the caller never sees it (the batch already failed with a
    ``TimeoutError``)."""


# -- worker side ----------------------------------------------------------------------
_lock = threading.Lock()
_running: dict[str, int] = {}  # key of a timed batch running in this process -> thread
_interrupted: set[str] = set()


def run_timed(key: str, batch: Any, *values: Any) -> list[Any]:
    """Worker side: unpickle batch ``key``, report its start, then run it (as
    :func:`~._scatter.run_batch`). The clock starts after the unpickling, as the
    watchdog of the process backends does (the first batch on a worker imports
    modules)."""
    if isinstance(batch, KeepCode):
        batch = batch.load()
    ident = threading.get_ident()
    with _lock:
        _running[key] = ident
    try:
        worker = distributed.get_worker()
        worker.log_event(TOPIC, {"key": key, "worker": worker.address})
    except ValueError:  # not on a worker (a test calling it directly)
        pass
    try:
        return run_batch(batch, *values)
    finally:
        with _lock:
            _running.pop(key, None)
            if key in _interrupted:
                _interrupted.discard(key)
                async_raise(ident, None)  # withdraw it if it was not delivered yet


def interrupt(key: str) -> bool:
    """Run on the worker by ``client.run``: raise :class:`TaskTimedOut` in the thread of
    batch ``key`` at its next Python instruction. False when the batch is not running
    in this process any more."""
    with _lock:
        ident = _running.get(key)
        if ident is None:
            return False
        _interrupted.add(key)
        return async_raise(ident, TaskTimedOut)


async def interrupt_soon(key: str, tries: int = 20, every: float = 0.5) -> bool:
    """Run on the worker's event loop by ``client.run(..., wait=False)`` (which runs only
    coroutine functions): :func:`interrupt` batch ``key``, again every ``every`` seconds
    while it runs (an exception delivered while the thread runs a callback of the
    garbage collector is swallowed there), at most ``tries`` times. True when the batch
    ended."""
    for _ in range(tries):
        if not interrupt(key):
            return True
        await asyncio.sleep(every)
    return False


# -- client side ----------------------------------------------------------------------
_client_lock = threading.Lock()
# key -> (the id of the client it was submitted through, the backend's on-start)
_handlers: dict[str, tuple[str, Callable[[str | None], None]]] = {}
# id of a client subscribed to TOPIC -> (the client, how many of its keys are awaited);
# unsubscribed when none is, so that neither this dict nor the events that the
# scheduler sends a client grow with the calls and clients of a process
_subscribed: dict[str, tuple[Any, int]] = {}


def watch_start(client: Any, key: str, on_start: Callable[[str | None], None]) -> None:
    """Call ``on_start(worker_address)`` (on the client's event loop) when batch ``key``
    starts on a worker, until :func:`forget`. Call it before submitting the batch."""
    with _client_lock:
        if key in _handlers:  # watched already: only the handler changes
            _handlers[key] = (_handlers[key][0], on_start)
            return
        subscribed = _subscribed.get(client.id)
        if subscribed is None:
            # Sent on the client's stream before the batch itself: the scheduler knows
            # the subscription before the batch can start. Under the lock, so that the
            # (un)subscriptions of a client are sent in the order in which they are
            # counted here.
            client.subscribe_topic(TOPIC, _on_event)
            subscribed = (client, 0)
        _subscribed[client.id] = (subscribed[0], subscribed[1] + 1)
        _handlers[key] = (client.id, on_start)


def forget(key: str) -> None:
    """Stop awaiting the start of ``key`` (idempotent); the last key awaited through a
    client unsubscribes it from :data:`TOPIC`."""
    with _client_lock:
        handler = _handlers.pop(key, None)
        if handler is None:
            return
        client_id = handler[0]
        client, count = _subscribed[client_id]
        if count > 1:
            _subscribed[client_id] = (client, count - 1)
            return
        del _subscribed[client_id]
        with contextlib.suppress(Exception):  # a closed client has no subscription left
            client.unsubscribe_topic(TOPIC)


def _on_event(event: Any) -> None:
    try:
        msg = event[1]
        with _client_lock:
            handler = _handlers.get(msg["key"])
        if handler is not None:
            handler[1](msg.get("worker"))
    except Exception:  # a malformed event must not break the client's loop
        _logger.debug("par: bad task-start event %r", event, exc_info=True)
