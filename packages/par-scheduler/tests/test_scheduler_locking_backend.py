"""A backend that fires its completion callbacks while holding a non-reentrant lock that
its ``submit`` also takes (issue 16). The scheduler must never call ``submit`` from
inside a callback: with a pump in the callback, the first completion deadlocks."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from par_api import ParallelBackendBase, Task
from par_scheduler import run

pytestmark = pytest.mark.timeout(60)

RETURN_AS = ["list", "generator", "generator_unordered"]
BATCH_SIZES: list[Any] = ["auto", 1]


class LockingBackend(ParallelBackendBase):
    """Worker threads run the batches; each callback fires with ``self.lock`` held, and
    ``submit`` takes ``self.lock`` too. ``inline=True``: ``submit`` runs the batch itself
    and fires the callback before returning, still holding the lock."""

    supports_auto_batching = True

    def __init__(self, n_jobs: int = 2, inline: bool = False) -> None:
        super().__init__()
        self.n_jobs = n_jobs
        self.inline = inline
        self.lock = threading.Lock()  # not an RLock: re-entering it deadlocks
        self.submitted = 0
        self.reentered = 0
        self.in_callback = threading.local()
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        if not inline:
            for _ in range(n_jobs):
                thread = threading.Thread(target=self._work, daemon=True)
                thread.start()
                self._threads.append(thread)

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        return self.n_jobs

    @staticmethod
    def _run(func: Callable[[], Any]) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            fut.set_result(func())
        except BaseException as exc:
            fut.set_exception(exc)
        return fut

    def _fire(self, fut: Future[Any], callback: Callable[[Any], None] | None) -> None:
        # Called with self.lock held.
        if callback is not None:
            self.in_callback.active = True
            try:
                callback(fut)
            finally:
                self.in_callback.active = False

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            func, callback = job
            fut = self._run(func)
            with self.lock:
                self._fire(fut, callback)

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Any:
        if getattr(self.in_callback, "active", False):
            self.reentered += 1  # would deadlock on the lock below
            raise AssertionError("submit called from inside the backend's callback")
        with self.lock:
            self.submitted += 1
            if self.inline:
                fut = self._run(func)
                self._fire(fut, callback)
                return fut
            self._jobs.put((func, callback))
        return None

    def abort_everything(self, ensure_ready: bool = True) -> None:
        pass

    def terminate(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()


def square(i: int) -> int:
    return i * i


def fail_at(i: int, bad: int) -> int:
    if i == bad:
        raise KeyError(f"task {i} failed")
    return i


def tasks(n: int, func: Callable[..., Any] = square, *extra: Any) -> Iterator[Task]:
    return (Task(func, (i, *extra), {}) for i in range(n))


@pytest.fixture(params=[False, True], ids=["worker-threads", "inline"])
def locking_backend(request: pytest.FixtureRequest) -> Iterator[LockingBackend]:
    backend = LockingBackend(inline=request.param)
    yield backend
    backend.terminate()


def collect(out: Any, return_as: str) -> list[Any]:
    return list(out) if return_as != "list" else out  # type: ignore[no-any-return]


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("return_as", RETURN_AS)
def test_scheduler_locking_backend_completes(locking_backend, return_as, batch_size) -> None:
    n = 300
    out = collect(
        run(locking_backend, tasks(n), n_jobs=2, batch_size=batch_size, return_as=return_as), return_as
    )
    if return_as == "generator_unordered":
        out = sorted(out)
    assert out == [square(i) for i in range(n)]
    assert locking_backend.reentered == 0
    assert locking_backend.submitted >= 2


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("return_as", RETURN_AS)
def test_scheduler_locking_backend_task_error(locking_backend, return_as, batch_size) -> None:
    with pytest.raises(KeyError, match="task 37 failed"):
        collect(
            run(
                locking_backend, tasks(200, fail_at, 37), n_jobs=2, batch_size=batch_size, return_as=return_as
            ),
            return_as,
        )
    assert locking_backend.reentered == 0
