"""Fake backends for the scheduler's tests (no dependency on par-backends-local).

- ``ThreadBackend``: a ``ParallelBackendBase`` on a ``concurrent.futures.ThreadPoolExecutor``.
- ``SyncBackend``: runs each batch inside ``submit`` and calls the callback right away.

Both record what the scheduler did to them in ``log`` (start_call, submit sizes,
abort_everything, stop_call) so tests can check the contract.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from par_api import ParallelBackendBase


class RecordingMixin:
    def _init_log(self) -> None:
        self.log: list[Any] = []
        self.batches: list[Any] = []
        self.completed: list[tuple[int, float]] = []
        self.aborts: list[bool] = []
        self._log_lock = threading.Lock()

    def _record(self, item: Any) -> None:
        with self._log_lock:
            self.log.append(item)

    def start_call(self) -> None:
        self._record("start_call")

    def stop_call(self) -> None:
        self._record("stop_call")

    def batch_completed(self, batch_size: int, duration: float) -> None:
        with self._log_lock:
            self.completed.append((batch_size, duration))

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]


class ThreadBackend(RecordingMixin, ParallelBackendBase):
    """Batches run on a thread pool; callbacks fire in the worker threads."""

    uses_threads = True
    supports_sharedmem = True

    def __init__(self, n_jobs: int = 2, auto: bool = True, uses_threads: bool = True) -> None:
        super().__init__()
        self._init_log()
        self.n_jobs = n_jobs
        self.supports_auto_batching = auto
        self.uses_threads = uses_threads
        self.executor: ThreadPoolExecutor | None = ThreadPoolExecutor(n_jobs)

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        return self.n_jobs

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Future[Any]:
        assert self.executor is not None
        with self._log_lock:
            self.batches.append(func)
            self.log.append(("submit", len(func)))  # type: ignore[arg-type]
        fut = self.executor.submit(func)
        if callback is not None:
            fut.add_done_callback(callback)
        return fut

    def abort_everything(self, ensure_ready: bool = True) -> None:
        self._record(("abort", ensure_ready))
        self.aborts.append(ensure_ready)
        executor, self.executor = self.executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        if ensure_ready:
            self.executor = ThreadPoolExecutor(self.n_jobs)

    def terminate(self) -> None:
        executor, self.executor = self.executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


class SyncBackend(RecordingMixin, ParallelBackendBase):
    """Runs each batch inside ``submit`` and calls the callback before returning."""

    def __init__(self, auto: bool = False) -> None:
        super().__init__()
        self._init_log()
        self.supports_auto_batching = auto

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        return 1

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Future[Any]:
        self.batches.append(func)
        self._record(("submit", len(func)))  # type: ignore[arg-type]
        fut: Future[Any] = Future()
        try:
            fut.set_result(func())
        except BaseException as exc:
            fut.set_exception(exc)
        if callback is not None:
            callback(fut)
        return fut

    def abort_everything(self, ensure_ready: bool = True) -> None:
        self._record(("abort", ensure_ready))
        self.aborts.append(ensure_ready)


@pytest.fixture
def thread_backend() -> Iterator[Callable[..., ThreadBackend]]:
    """A factory of ThreadBackend instances, all shut down after the test."""
    made: list[ThreadBackend] = []

    def make(**kwargs: Any) -> ThreadBackend:
        backend = ThreadBackend(**kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.terminate()


@pytest.fixture
def sync_backend() -> Callable[..., SyncBackend]:
    return SyncBackend


class FinishRecorder:
    """An ``on_finish`` callable that records every call."""

    def __init__(self) -> None:
        self.calls: list[BaseException | None] = []

    def __call__(self, error: BaseException | None) -> None:
        self.calls.append(error)


@pytest.fixture
def finish_recorder() -> Callable[[], FinishRecorder]:
    return FinishRecorder
