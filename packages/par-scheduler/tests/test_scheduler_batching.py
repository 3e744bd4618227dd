"""Batch sizing: the adaptive policy (driven by injected durations or a fake clock), the
tail split, fixed sizes and the backend's own sizing."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from par_api import BatchedCalls, Task
from par_scheduler import MAX_AUTO_BATCH_SIZE, TARGET_BATCH_DURATION, AutoBatcher, run, tail_batch_size
from par_scheduler._batching import FAST_GROWTH, FAST_HEADROOM, TAIL_MIN_FRACTION, TAIL_MIN_SIZE

T = TARGET_BATCH_DURATION


def test_scheduler_auto_batcher_starts_at_one_and_grows_while_fast() -> None:
    batcher = AutoBatcher()
    assert batcher.next_size() == 1
    sizes, verified = [], 0
    for _ in range(8):
        size = batcher.next_size()
        batcher.record(size, T / 4)  # each batch a quarter of the target: fast, not trivially
        verified += size
        sizes.append(batcher.next_size())
        assert batcher.next_size() == 2 * verified  # twice the tasks measured fast
    assert sizes == [2, 6, 18, 54, 162, 486, 1458, 4374]


def test_scheduler_auto_batcher_grows_faster_on_trivially_short_tasks() -> None:
    """Batches far below the target (1 µs per task: a batch is measured by little more
    than its round trip) may grow to FAST_GROWTH times the tasks verified fast."""
    assert FAST_GROWTH > 2
    batcher = AutoBatcher()
    sizes, verified = [], 0
    for _ in range(5):
        size = batcher.next_size()
        batcher.record(size, size * 1e-6)
        verified += size
        sizes.append(batcher.next_size())
    assert sizes == [8, 72, 648, 5832, MAX_AUTO_BATCH_SIZE]
    # At the edge: a batch that took 1/FAST_HEADROOM of the target is fast, a bit more is not.
    edge = AutoBatcher()
    edge.record(1, T / FAST_HEADROOM)
    assert edge.next_size() == FAST_GROWTH
    slower = AutoBatcher()
    slower.record(1, T / FAST_HEADROOM * 1.01)
    assert slower.next_size() == 2


def test_scheduler_auto_batcher_growth_is_bounded_by_what_was_measured() -> None:
    batcher = AutoBatcher()
    batcher.record(1, T / 6)  # 6 such tasks would take the target
    assert batcher.next_size() == 2
    batcher.record(1, T / 6)  # another batch in flight at the old size: 2 tasks verified
    assert batcher.next_size() == 4
    batcher.record(1, T / 6)  # a stale, smaller batch does not shrink a fast size
    assert batcher.next_size() == 6
    batcher.record(6, 3 * T)  # 3x too long: shrink, and forget what was verified
    assert batcher.next_size() == 2
    assert batcher.verified == 0
    batcher.record(1, T / 6)
    assert batcher.next_size() == 2
    fast = AutoBatcher()
    fast.record(1, 1e-6)
    assert fast.next_size() == FAST_GROWTH  # bounded by FAST_GROWTH verified tasks, not by ideal
    fast.record(1, 1e-6)
    assert fast.next_size() == 2 * FAST_GROWTH


def test_scheduler_auto_batcher_keeps_its_size_on_small_quick_batches() -> None:
    """A batch smaller than the current size that took a small fraction of the target
    (the tail split's batches of trivially short tasks, measured mostly by their round
    trip) does not shrink the size; a small batch that took long does."""
    batcher = AutoBatcher()
    batcher.size = MAX_AUTO_BATCH_SIZE
    batcher.record(30, 1e-3)  # 33 µs per task by its round trip: would say 1,500 tasks
    assert batcher.next_size() == MAX_AUTO_BATCH_SIZE
    batcher.record(3, T / FAST_HEADROOM)
    assert batcher.next_size() == MAX_AUTO_BATCH_SIZE
    batcher.record(3, 2 * T)  # slow tasks: shrink at once
    assert batcher.next_size() == 1


def test_scheduler_auto_batcher_aims_at_the_target_duration() -> None:
    batcher = AutoBatcher(target=0.1)
    batcher.size = 64
    batcher.record(64, 0.064)  # 1 ms per task: 100 tasks make 0.1 s
    assert batcher.next_size() == 100
    batcher.record(100, 0.1)
    assert batcher.next_size() == 100  # on target: stays


def test_scheduler_auto_batcher_shrinks_at_once_when_slow() -> None:
    batcher = AutoBatcher()
    batcher.size = 512
    batcher.record(512, 20 * T)  # 20x too long
    assert batcher.next_size() == 512 // 20
    batcher.record(1, 3 * T)  # one task alone takes longer than the target
    assert batcher.next_size() == 1
    batcher.record(1, 0.5 * T)  # then fast again: grows back
    assert batcher.next_size() == 2


def test_scheduler_auto_batcher_refuses_bad_target() -> None:
    with pytest.raises(ValueError, match="target"):
        AutoBatcher(target=0)


def test_scheduler_auto_batcher_never_exceeds_max_size() -> None:
    batcher = AutoBatcher()
    assert batcher.max_size == MAX_AUTO_BATCH_SIZE
    for _ in range(40):  # trivial tasks: the size would grow without bound
        size = batcher.next_size()
        batcher.record(size, size * 1e-8)
    assert batcher.next_size() == MAX_AUTO_BATCH_SIZE
    small = AutoBatcher(max_size=100)
    small.size = 50
    small.record(50, 1e-6)
    assert small.next_size() == 100
    small.size = 500  # set above the cap by hand: a slow batch shrinks within the cap
    small.record(500, 2 * T)
    assert small.next_size() == 100


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_scheduler_auto_batcher_refuses_bad_max_size(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_size must be an int >= 1"):
        AutoBatcher(max_size=bad)


@pytest.mark.parametrize(
    ("size", "remaining", "n_jobs", "expected"),
    [
        (100, 40, 2, 10),
        (100, 3, 2, 1),
        (5, 100, 2, 5),
        (64, 64, 4, 8),
        (1, 1000, 8, 1),
        (7, 0, 2, 1),
        # trivially short tasks (a size of thousands): the split stops at TAIL_MIN_SIZE
        (10_000, 20, 2, 8),
        (10_000, 3, 2, 8),
        (10_000, 400, 2, 100),
        (4 * 128, 20, 2, 5),  # size // TAIL_MIN_FRACTION = 4 < share
        (4 * 128, 8, 2, 4),  # the floor is size // TAIL_MIN_FRACTION
        (3 * 128 - 1, 8, 2, 2),
        (TAIL_MIN_FRACTION - 1, 3, 2, 1),  # below: split down to one task
    ],
)
def test_scheduler_tail_split(size: int, remaining: int, n_jobs: int, expected: int) -> None:
    assert tail_batch_size(size, remaining, n_jobs) == expected


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    import par_scheduler._engine as engine

    fake = FakeClock()
    monkeypatch.setattr(engine, "_now", fake)
    return fake


def test_scheduler_auto_batches_grow_then_shrink_on_slow_tasks(sync_backend, clock: FakeClock) -> None:
    """Fast tasks make batches grow; when tasks become slow, batches drop to single tasks
    quickly and the end of the iterable is split: no batch holds many slow tasks."""

    def work(i: int, duration: float) -> int:
        clock.t += duration
        return i

    n_fast, n_slow = 3000, 40
    fast = (Task(work, (i, 1e-6), {}) for i in range(n_fast))
    slow = (Task(work, (n_fast + i, 1.0), {}) for i in range(n_slow))
    backend = sync_backend(auto=True)
    results = run(backend, itertools.chain(fast, slow), n_jobs=2)
    assert results == list(range(n_fast + n_slow))
    sizes = backend.sizes
    assert max(sizes) >= 256  # grew while fast
    assert sizes[0] == 1
    slow_per_batch = [sum(1 for t in b.tasks if t.args[1] == 1.0) for b in backend.batches]
    # Only batches cut before the first slow result could be seen hold several slow
    # tasks; every later batch runs one slow task.
    assert max(slow_per_batch) <= 10
    assert sum(1 for n in slow_per_batch if n > 1) <= 4
    assert sizes[-10:] == [1] * 10
    # Batches cover the tasks in order, with their index.
    assert [b.index for b in backend.batches] == list(itertools.accumulate([0, *sizes[:-1]]))
    # The backend is told each batch's size and duration.
    assert [c[0] for c in backend.completed] == sizes
    assert sum(c[1] for c in backend.completed) == pytest.approx(n_slow * 1.0 + n_fast * 1e-6)


def _ticking(clock: FakeClock, seconds: float) -> Any:
    def work(i: int) -> int:
        clock.t += seconds
        return i

    return work


def test_scheduler_auto_batches_split_the_tail(sync_backend, clock: FakeClock) -> None:
    """Tasks of 1 ms: the tail is split down to single tasks."""
    backend = sync_backend(auto=True)
    work = _ticking(clock, 1e-3)
    tasks = [Task(work, (i,), {}) for i in range(5000)]
    assert run(backend, iter(tasks), n_jobs=2) == list(range(5000))
    sizes = backend.sizes
    assert sum(sizes) == 5000
    assert max(sizes) < TAIL_MIN_FRACTION  # ~50 tasks make the target
    biggest = len(sizes) - 1 - sizes[::-1].index(max(sizes))
    tail = sizes[biggest:]
    assert tail == sorted(tail, reverse=True)  # shrinking batches at the end
    assert tail[-3:] == [1, 1, 1]


class _RoundTripBackend:
    """Adds a fixed round trip (fake clock) to each batch of a SyncBackend."""

    def __init__(self, backend: Any, clock: FakeClock, seconds: float) -> None:
        original = backend.submit

        def submit(func: Any, callback: Any = None) -> Any:
            clock.t += seconds
            return original(func, callback)

        backend.submit = submit


def test_scheduler_auto_batches_of_trivial_tasks_ramp_up_fast_and_keep_a_tail_floor(
    sync_backend, clock: FakeClock
) -> None:
    """10^5 tasks of 1 µs behind a 1 ms round trip: the size reaches MAX_AUTO_BATCH_SIZE
    within 16 batches (the 25th before FAST_GROWTH), and the tail shrinks to TAIL_MIN_SIZE, not
    to single tasks (the tail's own small batches, measured by their round trip, do not
    shrink the size): 46 batches in all instead of 59."""
    backend = sync_backend(auto=True)
    _RoundTripBackend(backend, clock, 1e-3)
    n = 100_000
    work = _ticking(clock, 1e-6)
    assert run(backend, (Task(work, (i,), {}) for i in range(n)), n_jobs=2) == list(range(n))
    sizes = backend.sizes
    assert sum(sizes) == n
    assert sizes[:4] == [1, 1, 1, 1]
    assert sizes.index(MAX_AUTO_BATCH_SIZE) <= 16
    tail = sizes[len(sizes) - 1 - sizes[::-1].index(MAX_AUTO_BATCH_SIZE) + 1 :]
    assert tail == sorted(tail, reverse=True)
    assert min(tail[:-1]) == TAIL_MIN_SIZE  # the last batch holds what is left
    assert 0 < tail[-1] <= TAIL_MIN_SIZE
    assert len(sizes) <= 48


def test_scheduler_fixed_batch_size(sync_backend) -> None:
    backend = sync_backend(auto=True)
    assert run(backend, (Task(abs, (-i,), {}) for i in range(10)), n_jobs=2, batch_size=4) == list(range(10))
    assert backend.sizes == [4, 4, 2]
    assert [b.index for b in backend.batches] == [0, 4, 8]
    assert all(isinstance(b, BatchedCalls) for b in backend.batches)
    assert all(b.nested == backend.get_nested_backend() for b in backend.batches)


def test_scheduler_backend_sizes_batches_without_auto_batching(sync_backend) -> None:
    sizes = itertools.chain([1, 2, 3], itertools.repeat(3))
    calls: list[Any] = []

    backend = sync_backend(auto=False)
    backend.compute_batch_size = lambda: next(sizes)  # type: ignore[method-assign]
    original = backend.batch_completed

    def batch_completed(size: int, duration: float) -> None:
        calls.append(size)
        original(size, duration)

    backend.batch_completed = batch_completed  # type: ignore[method-assign]
    assert run(backend, [Task(abs, (-i,), {}) for i in range(12)], n_jobs=2) == list(range(12))
    assert backend.sizes == [1, 2, 3, 3, 3]
    assert calls == [1, 2, 3, 3, 3]


def test_scheduler_thread_style_backend_gets_batches_of_one(sync_backend) -> None:
    backend = sync_backend(auto=False)  # default compute_batch_size() is 1
    assert run(backend, [Task(abs, (-i,), {}) for i in range(50)], n_jobs=2) == list(range(50))
    assert backend.sizes == [1] * 50
