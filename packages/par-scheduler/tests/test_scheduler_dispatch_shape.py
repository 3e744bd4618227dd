"""How the scheduler shapes dispatch: auto-batching of thread backends, short calls cut
into one batch per worker, and the backend's retrieval_context around the waits."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from par_api import Task
from par_scheduler import TARGET_BATCH_DURATION, THREAD_TARGET_BATCH_DURATION, AutoBatcher, run
from par_scheduler._batching import BackendSizer, make_sizer


def tasks(n: int) -> Iterator[Task]:
    return (Task(abs, (-i,), {}) for i in range(n))


# -- sizing policy --------------------------------------------------------------------
def test_scheduler_thread_backend_with_several_workers_is_auto_batched(thread_backend) -> None:
    sizer = make_sizer("auto", thread_backend(auto=False), 2)
    assert isinstance(sizer, AutoBatcher)
    assert sizer.target == THREAD_TARGET_BATCH_DURATION < TARGET_BATCH_DURATION


def test_scheduler_single_thread_backend_keeps_its_own_batch_size(sync_backend) -> None:
    backend = sync_backend(auto=False)
    backend.uses_threads = True  # the sequential backend: one worker, in the caller's thread
    assert isinstance(make_sizer("auto", backend, 1), BackendSizer)


def test_scheduler_process_backend_policies_unchanged(thread_backend) -> None:
    auto = make_sizer("auto", thread_backend(auto=True, uses_threads=False), 2)
    assert isinstance(auto, AutoBatcher) and auto.target == TARGET_BATCH_DURATION
    assert isinstance(make_sizer("auto", thread_backend(auto=False, uses_threads=False), 2), BackendSizer)
    assert make_sizer(3, thread_backend(), 2).next_size() == 3


def test_scheduler_trivial_tasks_on_threads_run_in_growing_batches(thread_backend) -> None:
    backend = thread_backend(auto=False)  # a thread backend that does not ask for auto-batching
    out = run(backend, tasks(3000), n_jobs=2)
    assert out == list(range(3000))
    assert sum(backend.sizes) == 3000
    assert backend.sizes[0] == 1
    assert max(backend.sizes) > 1
    assert len(backend.sizes) < 3000


# -- short calls ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "expected"),
    [(4, [2, 2]), (3, [2, 1]), (2, [1, 1]), (1, [1])],
)
def test_scheduler_short_generator_is_cut_into_one_batch_per_worker(thread_backend, n, expected) -> None:
    backend = thread_backend(auto=True, uses_threads=False)
    assert run(backend, tasks(n), n_jobs=2) == list(range(n))
    assert sorted(backend.sizes, reverse=True) == expected


def test_scheduler_short_list_is_cut_into_one_batch_per_worker(thread_backend) -> None:
    backend = thread_backend(auto=True, uses_threads=False)
    assert run(backend, list(tasks(4)), n_jobs=2) == [0, 1, 2, 3]
    assert backend.sizes == [2, 2]


def test_scheduler_short_call_with_pre_dispatch_all(thread_backend) -> None:
    backend = thread_backend(auto=True, uses_threads=False)
    assert run(backend, tasks(4), n_jobs=2, pre_dispatch="all") == [0, 1, 2, 3]
    assert backend.sizes == [2, 2]


def test_scheduler_long_call_still_starts_with_batches_of_one(thread_backend) -> None:
    backend = thread_backend(auto=True, uses_threads=False)
    assert run(backend, tasks(5), n_jobs=2) == list(range(5))  # one more than the window (4)
    assert backend.sizes[:4] == [1, 1, 1, 1]


@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_scheduler_short_call_streams_one_task_per_batch_for_generators(thread_backend, return_as) -> None:
    backend = thread_backend(auto=True, uses_threads=False)
    assert sorted(run(backend, tasks(4), n_jobs=2, return_as=return_as)) == [0, 1, 2, 3]
    assert backend.sizes == [1, 1, 1, 1]


def test_scheduler_short_call_keeps_fixed_and_backend_batch_sizes(thread_backend, sync_backend) -> None:
    fixed = thread_backend(auto=True, uses_threads=False)
    assert run(fixed, tasks(4), n_jobs=2, batch_size=1) == [0, 1, 2, 3]
    assert fixed.sizes == [1, 1, 1, 1]
    own = sync_backend(auto=False)
    assert run(own, tasks(4), n_jobs=2) == [0, 1, 2, 3]
    assert own.sizes == [1, 1, 1, 1]


def test_scheduler_short_call_error_in_the_iterable_is_raised(thread_backend) -> None:
    def broken() -> Iterator[Task]:
        yield Task(abs, (-1,), {})
        raise KeyError("from the iterable")

    with pytest.raises(KeyError, match="from the iterable"):
        run(thread_backend(auto=True, uses_threads=False), broken(), n_jobs=2)


# -- retrieval_context ------------------------------------------------------------------
@pytest.fixture
def context_backend(thread_backend) -> Any:
    base = type(thread_backend())  # the ThreadBackend of conftest

    class Backend(base):  # type: ignore[misc,valid-type]
        @contextlib.contextmanager
        def retrieval_context(self) -> Iterator[None]:
            self.context_log.append("enter")
            try:
                yield
            finally:
                self.context_log.append("exit")

    backend = Backend()
    backend.context_log = []
    yield backend
    backend.terminate()


def slow_tasks(n: int, release: threading.Event) -> Iterator[Task]:
    return (Task(lambda i: release.wait(5) and i, (i,), {}) for i in range(n))


def test_scheduler_retrieval_context_entered_once_for_a_list(context_backend) -> None:
    release = threading.Event()
    threading.Timer(0.05, release.set).start()
    assert run(context_backend, slow_tasks(40, release), n_jobs=2, batch_size=1) == list(range(40))
    assert context_backend.context_log == ["enter", "exit"]


def test_scheduler_retrieval_context_entered_once_for_a_list_with_timeout(context_backend) -> None:
    release = threading.Event()
    threading.Timer(0.05, release.set).start()
    out = run(context_backend, slow_tasks(20, release), n_jobs=2, batch_size=1, timeout=30)
    assert out == list(range(20))
    assert context_backend.context_log == ["enter", "exit"]


def test_scheduler_retrieval_context_around_generator_waits(context_backend) -> None:
    release = threading.Event()
    gen = run(context_backend, slow_tasks(6, release), n_jobs=2, batch_size=1, return_as="generator")
    threading.Timer(0.05, release.set).start()
    assert next(gen) == 0  # had to wait: the context was entered, then left
    assert context_backend.context_log[:2] == ["enter", "exit"]
    assert list(gen) == [1, 2, 3, 4, 5]
    log = context_backend.context_log
    assert log.count("enter") == log.count("exit") <= 6
    assert all(log[i] == "enter" and log[i + 1] == "exit" for i in range(0, len(log), 2))


def test_scheduler_retrieval_context_left_on_error(context_backend) -> None:
    def fail() -> None:
        raise ValueError("task failed")

    with pytest.raises(ValueError, match="task failed"):
        run(context_backend, [Task(fail, (), {})] * 3, n_jobs=2, batch_size=1)
    assert context_backend.context_log.count("enter") == context_backend.context_log.count("exit") == 1


def test_scheduler_default_retrieval_context_is_not_entered(thread_backend, monkeypatch) -> None:
    from par_api import ParallelBackendBase

    entered: list[int] = []

    @contextlib.contextmanager
    def spy(self: Any) -> Iterator[None]:
        entered.append(1)
        yield

    backend = thread_backend()
    assert run(backend, tasks(10), n_jobs=2) == list(range(10))
    # the base class's no-op is recognised and skipped (no per-call context cost)
    monkeypatch.setattr(ParallelBackendBase, "retrieval_context", spy)
    assert run(backend, tasks(10), n_jobs=2) == list(range(10))
    assert entered == []
