"""Per-task timeouts against the contract alone: a backend with
``supports_task_timeout`` reports a task that overran as a ``WorkerDiedError`` with
exit code ``TASK_TIMEOUT_EXIT_CODE`` (its worker ended itself); the scheduler puts a
``TimeoutError`` in the task's place, retries it when asked, and runs one task per
batch so that no other task shares the ended worker."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import par_scheduler
from par_api import TASK_TIMEOUT_EXIT_CODE, WorkerDiedError
from par_api.task import delayed

from .conftest import SyncBackend


def hang(i: int) -> int:  # never run: the fake backend reports it as overrunning
    raise AssertionError("the fake backend runs no hanging task")


def ok(i: int) -> int:
    return i * 10


class EndingBackend(SyncBackend):
    """Like a process backend whose worker ends itself on a task timeout."""

    supports_task_timeout = True

    def __init__(self, hang_first: int | None = None) -> None:
        super().__init__(auto=True)
        self.hang_first = hang_first  # the hanging task overruns only this many times
        self.seen_timeout: list[float | None] = []

    def start_call(self) -> None:
        self.seen_timeout.append(self.task_timeout)
        super().start_call()

    def submit(self, func: Any, callback: Any = None) -> Future[Any]:
        if any(task[0] is hang for task in func.tasks):
            if self.hang_first is None or self.hang_first > 0:
                if self.hang_first is not None:
                    self.hang_first -= 1
                self.batches.append(func)
                fut: Future[Any] = Future()
                fut.set_exception(WorkerDiedError("ended", exitcode=TASK_TIMEOUT_EXIT_CODE, pid=1))
                if callback is not None:
                    callback(fut)
                return fut
            func.tasks[:] = [(ok, args, kwargs) for _, args, kwargs in func.tasks]
        return super().submit(func, callback)


def test_an_overrunning_task_gets_a_timeout_error_in_its_place() -> None:
    backend = EndingBackend()
    tasks = [delayed(hang if i in (1, 4) else ok)(i) for i in range(6)]
    out = par_scheduler.run(backend, tasks, n_jobs=2, timeout=30, on_error="return")
    assert [o for i, o in enumerate(out) if i not in (1, 4)] == [0, 20, 30, 50]
    for i in (1, 4):
        assert type(out[i]) is TimeoutError
        assert f"task {i} (" in str(out[i]) and "timeout=30 seconds" in str(out[i])
    assert backend.seen_timeout == [30]
    assert set(backend.sizes) == {1}  # one task per batch


def test_a_timed_out_task_is_retried() -> None:
    backend = EndingBackend(hang_first=1)
    events: list[Any] = []
    out = par_scheduler.run(
        backend, [delayed(hang)(0), delayed(ok)(1)], n_jobs=2, timeout=30, on_error="return",
        retries=1, listeners=[events.append],
    )
    assert out == [0, 10]
    assert events[-1].n_retried == 1 and events[-1].n_timed_out == 0


def test_progress_counts_the_timeouts() -> None:
    events: list[Any] = []
    par_scheduler.run(
        EndingBackend(), [delayed(hang)(0), delayed(ok)(1)], n_jobs=2, timeout=30,
        on_error="return", listeners=[events.append],
    )
    assert events[-1].n_timed_out == 1 and events[-1].n_failed == 1


def test_with_on_error_raise_the_timeout_stays_the_calls() -> None:
    backend = EndingBackend()
    par_scheduler.run(backend, [delayed(ok)(i) for i in range(20)], n_jobs=2, timeout=30, on_error="raise")
    assert backend.seen_timeout == [None]


def test_a_backend_without_task_timeouts_keeps_the_call_level_timeout() -> None:
    backend = SyncBackend(auto=True)
    out = par_scheduler.run(backend, [delayed(ok)(i) for i in range(20)], n_jobs=1, timeout=30, on_error="return")
    assert out == [i * 10 for i in range(20)]
    assert backend.task_timeout is None


class WatchingBackend(EndingBackend):
    """A process backend that watches the timeout itself (as ``ray`` does): it fails an
    overrunning batch with a ``TimeoutError``; its workers must run no watchdog."""

    watches_task_timeout = True

    def submit(self, func: Any, callback: Any = None) -> Future[Any]:
        self.nested.append(func.nested)
        if any(task[0] is hang for task in func.tasks):
            fut: Future[Any] = Future()
            fut.set_exception(TimeoutError("its task was cancelled by the fake backend"))
            if callback is not None:
                callback(fut)
            return fut
        return super().submit(func, callback)

    nested: list[Any]


def test_a_backend_that_watches_the_timeout_gets_batches_without_a_worker_deadline() -> None:
    backend = WatchingBackend()
    backend.nested = []
    out = par_scheduler.run(
        backend, [delayed(hang if i == 1 else ok)(i) for i in range(4)], n_jobs=2, timeout=30, on_error="return"
    )
    assert out[0] == 0 and out[2:] == [20, 30]
    assert type(out[1]) is TimeoutError and "cancelled by the fake backend" in str(out[1])
    assert backend.seen_timeout == [30]
    # GuardedBatch.nested is (nested, retries, retry_on, task_timeout in the worker)
    assert {n[3] for n in backend.nested} == {None}
    ending = EndingBackend()
    ending_nested: list[Any] = []
    original = ending.submit
    ending.submit = lambda func, callback=None: (ending_nested.append(func.nested), original(func, callback))[1]  # type: ignore[method-assign]
    par_scheduler.run(ending, [delayed(ok)(i) for i in range(2)], n_jobs=2, timeout=30, on_error="return")
    assert {n[3] for n in ending_nested} == {30}  # process workers without it do end themselves
