"""asyncio support: the generators of ``Parallel`` are also async iterators.

A call's synchronous generator (``par_scheduler.run``) blocks the thread that asks for
the next result. To keep an event loop responsive, one *driver* thread per call owns
that generator: it starts the call (reading the first tasks of the iterable and
submitting them), advances it when asked and closes it. Every operation on the
generator happens in that one thread, so the scheduler's rule "the consumer's thread
cleans up" holds, and the loop's thread never reads the user's iterable.

Results reach the loop through ``concurrent.futures.Future`` objects wrapped with
``asyncio.wrap_future`` (delivered with ``call_soon_threadsafe``; nothing polls).

Cancellation (``task.cancel()``, ``asyncio.timeout``, ``asyncio.run`` ending): the
waiting coroutine calls ``par_scheduler.interrupt`` (the driver, blocked waiting for a
result, wakes up and the call is aborted as on a task error: pending batches cancelled,
``abort_everything`` on the backend), asks the driver to close the generator, waits
(through further cancellations) until the driver is done, then re-raises
``CancelledError``. A generator dropped without being exhausted or closed is closed
by its finalizer; drivers still alive at interpreter exit are closed and joined.
"""

from __future__ import annotations

import asyncio
import atexit
import queue
import threading
import weakref
from collections.abc import Callable, Generator
from concurrent.futures import Future
from typing import Any

import par_scheduler

__all__ = ["ParallelGenerator", "loop_running_here"]

_Gen = Generator[Any, None, None]
_END: Any = object()
_NEXT, _COLLECT, _CLOSE = "next", "collect", "close"

#: How long interpreter exit waits for each still-running call to be aborted.
EXIT_JOIN_TIMEOUT = 30.0


def loop_running_here() -> bool:
    """True when an asyncio event loop is running in the calling thread (a coroutine,
    or a Jupyter cell)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _deliver(fut: Future[Any], value: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():  # cancelled before it ran
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


class _Driver:
    """The thread that owns one call's synchronous generator."""

    def __init__(self, start: Callable[[], _Gen]) -> None:
        self._requests: queue.SimpleQueue[tuple[str, Future[Any]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._done = False
        self._gen: _Gen | None = None
        self.finished: Future[None] = Future()
        self._thread = threading.Thread(target=self._main, args=(start,), name="par-aio-driver", daemon=True)
        _DRIVERS.add(self)
        self._thread.start()

    # -- any thread -----------------------------------------------------------------
    def request(self, kind: str) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._lock:
            if not self._done:
                self._requests.put((kind, fut))
                return fut
        fut.set_result(_END if kind == _NEXT else [] if kind == _COLLECT else None)
        return fut

    def interrupt(self, exc: BaseException) -> None:
        """Wake the driver if it waits for a result: the call fails with ``exc``."""
        gen = self._gen
        if gen is not None:
            par_scheduler.interrupt(gen, exc)

    async def wait_finished(self) -> None:
        """Wait, without blocking the loop and through cancellations, until the driver
        is done (the call over and cleaned up); then its thread has ended."""
        await _wait_through_cancel(self.finished)
        self._thread.join()  # it returns right after setting ``finished``

    def close_and_join(self, timeout: float | None = None) -> None:
        self.request(_CLOSE)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- the driver thread ------------------------------------------------------------
    def _main(self, start: Callable[[], _Gen]) -> None:
        gen: _Gen | None = None
        start_error: BaseException | None = None
        try:
            try:
                gen = start()
            except BaseException as exc:  # delivered to the first request
                start_error = exc
            self._gen = gen
            while True:
                kind, fut = self._requests.get()
                if kind == _CLOSE:
                    if gen is not None:
                        gen.close()  # owner thread: the scheduler aborts in this thread
                    _deliver(fut)
                    break
                if not fut.set_running_or_notify_cancel():
                    continue
                if start_error is not None:
                    _deliver(fut, exc=start_error)
                    break
                assert gen is not None
                try:
                    value = list(gen) if kind == _COLLECT else next(gen)
                except StopIteration:
                    _deliver(fut, _END)
                    break
                except BaseException as exc:  # the call is over (aborted by the scheduler)
                    _deliver(fut, exc=exc)
                    break
                _deliver(fut, value)
                if kind == _COLLECT:
                    break
        finally:
            try:
                if gen is not None:
                    gen.close()
            finally:
                self._gen = None
                with self._lock:
                    self._done = True
                while True:  # answer what arrived meanwhile
                    try:
                        kind, fut = self._requests.get_nowait()
                    except queue.Empty:
                        break
                    if fut.set_running_or_notify_cancel():
                        fut.set_result(_END if kind == _NEXT else [] if kind == _COLLECT else None)
                _DRIVERS.discard(self)
                self.finished.set_result(None)


_DRIVERS: weakref.WeakSet[_Driver] = weakref.WeakSet()


@atexit.register
def _close_drivers() -> None:
    """Interpreter exit: abort the calls whose generators were left running."""
    for driver in list(_DRIVERS):
        driver.close_and_join(EXIT_JOIN_TIMEOUT)


async def _wait_through_cancel(fut: Future[Any]) -> None:
    """Wait for ``fut`` even if the waiting task is cancelled again meanwhile."""
    waiter = asyncio.wrap_future(fut)
    while not waiter.done():
        try:
            await asyncio.shield(waiter)
        except asyncio.CancelledError:
            if waiter.cancelled():
                return
            continue


class ParallelGenerator(Generator[Any, None, None]):
    """The results of ``Parallel(return_as='generator' | 'generator_unordered')(...)``.

    A generator (``next``, ``for``, ``close``) and an async iterator (``async for``,
    ``aclose``). ``Parallel`` returns one when called in a thread where an event loop
    runs (a coroutine, a Jupyter cell): the call runs in a driver thread of its own from
    the start, so neither the iteration nor the reading of the tasks ever blocks the
    loop. Called elsewhere, ``Parallel`` returns the plain generator (joblib's type);
    ``ParallelGenerator(gen)`` wraps such a generator, and a driver thread takes it over
    at the first ``async for`` step.
    """

    __slots__ = ("__weakref__", "_driver", "_finalizer", "_gen")

    def __init__(self, gen: _Gen | None = None, start: Callable[[], _Gen] | None = None) -> None:
        self._gen = gen
        self._driver: _Driver | None = None
        self._finalizer: Any = None
        if start is not None:
            self._start_driver(start)

    def _start_driver(self, start: Callable[[], _Gen]) -> _Driver:
        driver = self._driver = _Driver(start)
        self._gen = None  # owned by the driver from now on
        # Dropped unfinished: close the call without blocking the collecting thread.
        self._finalizer = weakref.finalize(self, driver.request, _CLOSE)
        self._finalizer.atexit = False
        return driver

    def _ensure_driver(self) -> _Driver:
        if self._driver is not None:
            return self._driver
        gen = self._gen
        assert gen is not None
        return self._start_driver(lambda: gen)

    # -- synchronous generator protocol ------------------------------------------------
    def send(self, value: None) -> Any:
        if self._driver is None:
            assert self._gen is not None
            return self._gen.send(value) if value is not None else next(self._gen)
        if value is not None:
            raise TypeError("can't send non-None value to a ParallelGenerator")
        fut = self._driver.request(_NEXT)
        try:
            result = fut.result()
        except BaseException as exc:
            if not fut.done():  # interrupted while waiting (Ctrl-C): abort the call
                self._abort(exc)
            raise
        if result is _END:
            raise StopIteration
        return result

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if self._driver is None:
            assert self._gen is not None
            return self._gen.throw(typ, val, tb)
        exc = typ if isinstance(typ, BaseException) else typ() if val is None else val
        self._abort(exc)
        raise exc

    def close(self) -> None:
        if self._driver is None:
            if self._gen is not None:
                self._gen.close()
            return
        self._driver.close_and_join()

    def _abort(self, exc: BaseException) -> None:
        driver = self._driver
        assert driver is not None
        driver.interrupt(exc)
        driver.close_and_join()

    # -- asynchronous iteration -------------------------------------------------------
    def __aiter__(self) -> ParallelGenerator:
        return self

    async def __anext__(self) -> Any:
        value = await self._await(_NEXT)
        if value is _END:
            raise StopAsyncIteration
        return value

    async def aclose(self) -> None:
        """Abort the call if unfinished (as ``close()``), without blocking the loop."""
        if self._driver is None and self._gen is None:
            return
        driver = self._ensure_driver()
        driver.request(_CLOSE)
        await driver.wait_finished()

    async def _await(self, kind: str) -> Any:
        driver = self._ensure_driver()
        fut = driver.request(kind)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError as exc:
            driver.interrupt(exc)
            driver.request(_CLOSE)
            await driver.wait_finished()
            raise

    async def collect(self) -> list[Any]:
        """All the remaining results as a list; the driver ends with the call."""
        out = await self._await(_COLLECT)
        if self._driver is not None:
            await self._driver.wait_finished()
        return out  # type: ignore[no-any-return]
