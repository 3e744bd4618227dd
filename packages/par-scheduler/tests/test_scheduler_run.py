"""run(): ordering, generators, lazy consumption, errors, timeouts, early close, life cycle."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
import traceback
import types
from collections.abc import Iterator
from typing import Any

import pytest
from par_api import Task, delayed
from par_scheduler import ProgressEvent, run

# Generous bound for "does not hang" checks (the machine is shared and noisy).
MARGIN = 10.0


def square(x: int) -> int:
    return x * x


def sleep_then(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x


class Counter:
    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self, i: int, fail_at: int | None = None, wait: threading.Event | None = None) -> int:
        with self.lock:
            self.n += 1
        if wait is not None:
            wait.wait(MARGIN)
        if i == fail_at:
            raise ValueError(f"task {i} failed")
        return i


# -- results ---------------------------------------------------------------------------
@pytest.mark.parametrize("auto", [True, False])
@pytest.mark.parametrize("batch_size", ["auto", 1, 3])
def test_scheduler_list_keeps_submission_order(thread_backend, auto: bool, batch_size: Any) -> None:
    backend = thread_backend(auto=auto)
    # Earlier tasks sleep longer, so they complete after later ones.
    tasks = (delayed(sleep_then)(i, 0.002 * ((20 - i) % 5)) for i in range(20))
    assert run(backend, tasks, n_jobs=2, batch_size=batch_size) == list(range(20))


def test_scheduler_list_of_many_tasks(thread_backend, sync_backend) -> None:
    expected = [i * i for i in range(3000)]
    assert run(thread_backend(), (delayed(square)(i) for i in range(3000)), n_jobs=2) == expected
    assert run(sync_backend(auto=True), [delayed(square)(i) for i in range(3000)], n_jobs=2) == expected


def test_scheduler_generator_yields_in_order(thread_backend) -> None:
    gen = run(thread_backend(), (delayed(square)(i) for i in range(10)), n_jobs=2, return_as="generator")
    assert isinstance(gen, types.GeneratorType)
    assert next(gen) == 0
    assert next(gen) == 1
    assert list(gen) == [square(i) for i in range(2, 10)]


def test_scheduler_generator_unordered_yields_fast_task_first(thread_backend) -> None:
    release = threading.Event()
    counter = Counter()
    tasks = [Task(counter, (0,), {"wait": release}), Task(counter, (1,), {})]
    gen = run(thread_backend(), tasks, n_jobs=2, batch_size=1, return_as="generator_unordered")
    assert next(gen) == 1  # the fast task submitted second comes first
    release.set()
    assert list(gen) == [0]


def test_scheduler_ordered_generator_waits_for_the_slow_first_task(thread_backend) -> None:
    release = threading.Event()
    counter = Counter()
    tasks = [Task(counter, (0,), {"wait": release}), Task(counter, (1,), {})]
    gen = run(thread_backend(), tasks, n_jobs=2, batch_size=1, return_as="generator")
    threading.Timer(0.05, release.set).start()
    assert list(gen) == [0, 1]


def test_scheduler_empty_iterable(thread_backend, finish_recorder) -> None:
    for return_as in ("list", "generator", "generator_unordered"):
        finished = finish_recorder()
        backend = thread_backend()
        assert list(run(backend, iter(()), n_jobs=2, return_as=return_as, on_finish=finished)) == []
        assert finished.calls == [None]
        assert backend.log == ["start_call", "stop_call"]


# -- lazy consumption --------------------------------------------------------------------
def test_scheduler_producer_consumer_sequence(sync_backend) -> None:
    """The spec's producer example: with pre_dispatch='1.5*n_jobs' and n_jobs=2, three
    items are produced before the first task runs, then one more per completed task."""
    log: list[str] = []

    def producer() -> Iterator[int]:
        for i in range(6):
            log.append(f"Produced {i}")
            yield i

    def listener(event: ProgressEvent) -> None:
        if event.kind == "completed":
            log.append(f"Done {event.n_completed}")

    def task(i: int) -> float:
        log.append(f"Run {i}")
        return i**0.5

    out = run(
        sync_backend(),
        (delayed(task)(i) for i in producer()),
        n_jobs=2,
        pre_dispatch="1.5*n_jobs",
        listeners=[listener],
    )
    assert out == [i**0.5 for i in range(6)]
    produced_or_done = [line for line in log if not line.startswith("Run")]
    assert produced_or_done == [
        "Produced 0",
        "Produced 1",
        "Produced 2",
        "Done 1",
        "Produced 3",
        "Done 2",
        "Produced 4",
        "Done 3",
        "Produced 5",
        "Done 4",
        "Done 5",
        "Done 6",
    ]
    assert log.index("Run 0") == 3  # after the first three items were produced


def test_scheduler_pre_dispatch_bounds_consumption_with_threads(thread_backend) -> None:
    release = threading.Event()
    counter = Counter()
    produced = []

    def producer() -> Iterator[Task]:
        for i in range(50):
            produced.append(i)
            yield Task(counter, (i,), {"wait": release})

    gen = run(thread_backend(), producer(), n_jobs=2, batch_size=1, pre_dispatch=3, return_as="generator")
    try:
        time.sleep(0.05)
        assert len(produced) == 3  # only the pre-dispatched batches were pulled
    finally:
        release.set()
    assert list(gen) == list(range(50))
    assert len(produced) == 50


def _wait_until(cond: Any, timeout: float = MARGIN) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_scheduler_one_long_batch_does_not_idle_the_other_workers(thread_backend) -> None:
    """While the first task runs, the consumer of an ordered generator waits for it: the
    results completed behind it are not the consumer's slowness and must not stop the
    other worker (they stopped it after one task: 1.01-1.06x joblib on uneven sleeps).
    They are held only up to one more window, so memory stays bounded."""
    release = threading.Event()
    counter = Counter()
    tasks = (Task(counter, (i,), {"wait": release if i == 0 else None}) for i in range(50))
    gen = run(thread_backend(), tasks, n_jobs=2, batch_size=1, pre_dispatch=2, return_as="generator")
    first: list[int] = []
    consumer = threading.Thread(target=lambda: first.append(next(gen)))
    consumer.start()  # blocks on task 0
    try:
        # window 2: task 0 holds one slot; the other worker goes on through tasks 1, 2, 3
        # (two results wait beyond the window, the third fills it)
        assert _wait_until(lambda: counter.n >= 4), counter.n
        time.sleep(0.1)
        assert counter.n == 4 and not first  # no further: the held results stay bounded
    finally:
        release.set()
        consumer.join(MARGIN)
    assert first == [0]
    assert list(gen) == list(range(1, 50))


def test_scheduler_result_store_counts_what_the_consumer_can_take() -> None:
    from par_scheduler._engine import _MISSING, ResultStore

    store = ResultStore(ordered=True)
    store.put(1, ["b"])
    store.put(2, ["c"])
    assert store.available == 0  # batch 0 is missing: nothing can be taken
    store.put(0, ["a"])
    assert store.available == 3
    assert store.pop() == ["a"] and store.available == 2
    store.put(4, ["e"])
    assert store.pop() == ["b"] and store.pop() == ["c"] and store.available == 0
    assert store.pop() is _MISSING
    store.put(3, ["d"])
    assert store.available == 2 and store.take_all() == ["d", "e"] and store.available == 0
    unordered = ResultStore(ordered=False)
    unordered.put(5, ["x"])
    unordered.put(2, ["y"])
    assert unordered.available == 2 and unordered.pop() == ["x"] and unordered.available == 1


def test_scheduler_pre_dispatch_all_consumes_everything_at_call(thread_backend) -> None:
    release = threading.Event()
    counter = Counter()
    produced = []

    def producer() -> Iterator[Task]:
        for i in range(20):
            produced.append(i)
            yield Task(counter, (i,), {"wait": release})

    gen = run(thread_backend(), producer(), n_jobs=2, pre_dispatch="all", return_as="generator")
    try:
        assert len(produced) == 20
    finally:
        release.set()
    assert list(gen) == list(range(20))


def test_scheduler_generator_is_lazy_on_a_synchronous_backend(sync_backend) -> None:
    counter = Counter()
    gen = run(sync_backend(), (Task(counter, (i,), {}) for i in range(100)), n_jobs=1, return_as="generator")
    assert counter.n <= 2  # computes at most pre_dispatch batches ahead of the consumer
    assert next(gen) == 0
    assert counter.n <= 3
    assert list(gen) == list(range(1, 100))


def test_scheduler_iterable_consumed_by_one_thread_at_a_time(thread_backend) -> None:
    class Guarded:
        def __init__(self, n: int) -> None:
            self.i = 0
            self.n = n
            self.inside = False
            self.overlaps = 0
            self.threads: set[int] = set()

        def __iter__(self) -> Guarded:
            return self

        def __next__(self) -> Task:
            if self.inside:
                self.overlaps += 1
            self.inside = True
            try:
                self.threads.add(threading.get_ident())
                time.sleep(0)  # invite a thread switch
                if self.i >= self.n:
                    raise StopIteration
                self.i += 1
                return Task(square, (self.i - 1,), {})
            finally:
                self.inside = False

    source = Guarded(2000)
    assert run(thread_backend(auto=False), source, n_jobs=2) == [square(i) for i in range(2000)]
    assert source.overlaps == 0
    assert source.threads == {threading.get_ident()}  # pulled by the caller only, never by a callback


# -- errors ------------------------------------------------------------------------------
def failing(i: int) -> int:
    if i == 3:
        raise KeyError("inner") from OSError("root cause")
    return i


@pytest.mark.parametrize("return_as", ["list", "generator", "generator_unordered"])
def test_scheduler_first_error_reraised_and_call_aborted(
    thread_backend, finish_recorder, return_as: str
) -> None:
    counter = Counter()
    finished = finish_recorder()
    backend = thread_backend()
    release = threading.Event()
    tasks = (Task(counter, (i,), {"fail_at": 3, "wait": release if i > 3 else None}) for i in range(200))
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="task 3 failed") as info:
        release_timer = threading.Timer(0.2, release.set)
        release_timer.start()
        try:
            list(run(backend, tasks, n_jobs=2, batch_size=1, return_as=return_as, on_finish=finished))
        finally:
            release_timer.cancel()
            release.set()
    assert time.monotonic() - t0 < MARGIN
    # The worker's frames are in the traceback.
    assert "__call__" in [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert counter.n < 20  # later tasks never started
    assert len(backend.sizes) < 20  # and were never submitted
    assert backend.aborts == [False]
    assert finished.calls == [info.value]
    assert backend.log[-1] == "stop_call"


def test_scheduler_error_keeps_type_and_cause(sync_backend, thread_backend) -> None:
    for backend in (sync_backend(), thread_backend()):
        with pytest.raises(KeyError) as info:
            run(backend, (delayed(failing)(i) for i in range(10)), n_jobs=2, batch_size=1)
        assert isinstance(info.value.__cause__, OSError)
        assert str(info.value.__cause__) == "root cause"
        assert "failing" in [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]


def test_scheduler_error_stops_dispatch_on_sync_backend(sync_backend, finish_recorder) -> None:
    counter = Counter()
    finished = finish_recorder()
    backend = sync_backend()
    with pytest.raises(ValueError):
        run(backend, (Task(counter, (i,), {"fail_at": 3}) for i in range(100)), n_jobs=2, on_finish=finished)
    assert counter.n == 4
    assert backend.aborts == [False]
    assert len(finished.calls) == 1


def test_scheduler_error_in_the_iterable(thread_backend, finish_recorder) -> None:
    def producer() -> Iterator[Task]:
        for i in range(10):
            if i == 5:
                raise RuntimeError("producer broke")
            yield Task(square, (i,), {})

    backend = thread_backend()
    finished = finish_recorder()
    with pytest.raises(RuntimeError, match="producer broke"):
        run(backend, producer(), n_jobs=2, batch_size=1, on_finish=finished)
    assert backend.aborts == [False]
    assert len(finished.calls) == 1


def test_scheduler_ensure_ready_is_passed_to_abort(thread_backend) -> None:
    backend = thread_backend()
    with pytest.raises(KeyError):
        run(backend, (delayed(failing)(i) for i in range(10)), n_jobs=2, ensure_ready=True)
    assert backend.aborts == [True]
    # The backend is usable again for the next call of a `with Parallel(...)` block.
    assert run(backend, (delayed(square)(i) for i in range(5)), n_jobs=2, ensure_ready=True) == [
        0,
        1,
        4,
        9,
        16,
    ]


def test_scheduler_submit_error_is_raised(sync_backend, finish_recorder) -> None:
    backend = sync_backend()
    finished = finish_recorder()

    def submit(func: Any, callback: Any = None) -> Any:
        raise TypeError("cannot pickle this batch")

    backend.submit = submit  # type: ignore[method-assign]
    with pytest.raises(TypeError, match="cannot pickle"):
        run(backend, [delayed(square)(1)], n_jobs=2, on_finish=finished)
    assert backend.aborts == [False]
    assert len(finished.calls) == 1


# -- timeout -----------------------------------------------------------------------------
@pytest.mark.parametrize("uses_threads", [True, False])
def test_scheduler_timeout_raises_builtin_timeout_error(
    thread_backend, finish_recorder, uses_threads: bool
) -> None:
    release = threading.Event()
    counter = Counter()
    backend = thread_backend(uses_threads=uses_threads)
    finished = finish_recorder()
    t0 = time.monotonic()
    try:
        with pytest.raises(TimeoutError) as info:
            run(
                backend,
                [Task(counter, (0,), {}), Task(counter, (1,), {"wait": release})],
                n_jobs=2,
                batch_size=1,
                timeout=0.2,
                on_finish=finished,
            )
    finally:
        release.set()
    assert time.monotonic() - t0 < 0.2 + MARGIN
    assert type(info.value) is TimeoutError
    assert "timeout=0.2" in str(info.value)
    assert ("threads" in str(info.value)) is uses_threads
    assert backend.aborts == [False]
    assert finished.calls == [info.value]


def test_scheduler_timeout_not_triggered_by_fast_tasks(thread_backend) -> None:
    assert run(thread_backend(), (delayed(square)(i) for i in range(100)), n_jobs=2, timeout=MARGIN) == [
        square(i) for i in range(100)
    ]


# -- early close / garbage collection ----------------------------------------------------
@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_scheduler_closing_generator_aborts(thread_backend, finish_recorder, return_as: str) -> None:
    counter = Counter()
    backend = thread_backend()
    finished = finish_recorder()
    gen = run(
        backend,
        (Task(counter, (i,), {}) for i in range(1000)),
        n_jobs=2,
        batch_size=1,
        return_as=return_as,
        ensure_ready=True,
        on_finish=finished,
    )
    next(gen)
    next(gen)
    gen.close()
    assert backend.aborts == [True]
    assert len(finished.calls) == 1 and isinstance(finished.calls[0], GeneratorExit)
    assert backend.log[-1] == "stop_call"
    submitted = len(backend.sizes)
    time.sleep(0.05)
    assert len(backend.sizes) == submitted < 1000  # nothing dispatched after the close
    gen.close()
    assert len(finished.calls) == 1


def test_scheduler_dropping_generator_aborts(thread_backend, finish_recorder) -> None:
    backend = thread_backend()
    finished = finish_recorder()
    gen = run(
        backend,
        (delayed(square)(i) for i in range(1000)),
        n_jobs=2,
        batch_size=1,
        return_as="generator",
        on_finish=finished,
    )
    assert next(gen) == 0
    del gen
    gc.collect()
    assert backend.aborts == [False]
    assert len(finished.calls) == 1


def test_scheduler_dropping_unstarted_generator_aborts(thread_backend, finish_recorder) -> None:
    backend = thread_backend()
    finished = finish_recorder()
    gen = run(
        backend, (delayed(square)(i) for i in range(100)), n_jobs=2, return_as="generator", on_finish=finished
    )
    assert backend.sizes  # dispatching started at call time
    del gen
    gc.collect()
    assert backend.aborts == [False]
    assert len(finished.calls) == 1


# -- life cycle --------------------------------------------------------------------------
@pytest.mark.parametrize("return_as", ["list", "generator", "generator_unordered"])
def test_scheduler_on_finish_once_after_stop_call(thread_backend, return_as: str) -> None:
    backend = thread_backend()
    calls: list[Any] = []

    def on_finish(error: BaseException | None) -> None:
        calls.append((error, list(backend.log)))

    out = run(
        backend, (delayed(square)(i) for i in range(30)), n_jobs=2, return_as=return_as, on_finish=on_finish
    )
    if return_as != "list":
        assert calls == []  # not over until consumed
    results = list(out)
    assert sorted(results) == [square(i) for i in range(30)]
    list(out)  # exhausted generator: nothing more happens
    assert len(calls) == 1
    error, log_at_finish = calls[0]
    assert error is None
    assert log_at_finish[0] == "start_call"
    assert log_at_finish[1][0] == "submit"
    assert log_at_finish[-1] == "stop_call"
    assert backend.aborts == []


def test_scheduler_start_call_failure(sync_backend, finish_recorder) -> None:
    backend = sync_backend()
    finished = finish_recorder()

    def start_call() -> None:
        raise OSError("pool could not start")

    backend.start_call = start_call  # type: ignore[method-assign]
    with pytest.raises(OSError, match="pool could not start"):
        run(backend, [delayed(square)(1)], n_jobs=2, on_finish=finished)
    assert backend.log == []  # no submit, no stop_call, no abort
    assert len(finished.calls) == 1


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs POSIX signals")
def test_scheduler_keyboard_interrupt_aborts(thread_backend, finish_recorder) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")
    release = threading.Event()
    counter = Counter()
    backend = thread_backend()
    finished = finish_recorder()

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGUSR1, interrupt)
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1))
    t0 = time.monotonic()
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            run(
                backend,
                (Task(counter, (i,), {"wait": release}) for i in range(100)),
                n_jobs=2,
                on_finish=finished,
            )
    finally:
        timer.cancel()
        release.set()
        signal.signal(signal.SIGUSR1, previous)
    assert time.monotonic() - t0 < MARGIN
    assert backend.aborts == [False]
    assert len(finished.calls) == 1 and isinstance(finished.calls[0], KeyboardInterrupt)
    assert counter.n < 100


# -- n_jobs=1 is a plain loop (issue 22) --------------------------------------------------
@pytest.mark.parametrize("return_as", ["list", "generator", "generator_unordered"])
def test_scheduler_one_job_reads_one_batch_runs_it_then_reads_the_next(sync_backend, return_as) -> None:
    log: list[str] = []

    def task(i: int) -> int:
        log.append(f"run {i}")
        return i

    def producer() -> Iterator[Task]:
        for i in range(4):
            log.append(f"read {i}")
            yield Task(task, (i,), {})

    out = run(sync_backend(), producer(), n_jobs=1, return_as=return_as)
    if return_as != "list":
        assert log == []  # nothing runs before the caller asks for the first result
        out = list(out)
    assert out == [0, 1, 2, 3]
    assert log == [f"{step} {i}" for i in range(4) for step in ("read", "run")]


@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_scheduler_one_job_generator_producer_sees_what_was_consumed(sync_backend, return_as) -> None:
    """Each item is made from the results consumed so far: the call never reads ahead."""
    consumed: list[int] = []

    def producer() -> Iterator[Task]:
        for i in range(5):
            yield Task(lambda i, seen: (i, seen), (i, len(consumed)), {})

    gen = run(sync_backend(), producer(), n_jobs=1, return_as=return_as)
    for i, seen in gen:
        assert seen == i  # the item was read after the previous result was consumed
        consumed.append(i)
    assert consumed == [0, 1, 2, 3, 4]


def test_scheduler_one_job_auto_batching_does_not_read_ahead(thread_backend) -> None:
    """Even with a backend that sizes batches itself and one worker, the iterable is read
    one batch at a time: at most one batch is read before the previous one completed."""
    read = 0
    ran_before_read: list[int] = []
    done = 0
    lock = threading.Lock()

    def task(i: int) -> int:
        nonlocal done
        with lock:
            done += 1
        return i

    def producer() -> Iterator[Task]:
        nonlocal read
        for i in range(50):
            with lock:
                ran_before_read.append(read - done)
            read += 1
            yield Task(task, (i,), {})

    backend = thread_backend(n_jobs=1, auto=True, uses_threads=False)
    assert list(run(backend, producer(), n_jobs=1, return_as="generator")) == list(range(50))
    # When a task is read, the tasks read but not run all belong to the batch being cut.
    assert max(ran_before_read) < max(backend.sizes)
