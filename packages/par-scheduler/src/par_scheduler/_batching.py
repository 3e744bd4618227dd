"""Batch sizing: how many tasks go into the next batch.

Three policies, chosen once per call by :func:`make_sizer`:

- a fixed ``batch_size`` given by the user;
- the backend's own ``compute_batch_size()`` when it does not want the scheduler to
  size batches (``supports_auto_batching`` is False and it is not a multi-worker thread
  backend);
- :class:`AutoBatcher`, which aims every batch at :data:`TARGET_BATCH_DURATION` for
  backends with ``supports_auto_batching``, and at the shorter
  :data:`THREAD_TARGET_BATCH_DURATION` for thread backends (``uses_threads``) with
  several workers, whose per-batch cost is tens of microseconds instead of a process
  round trip.

The tail of the iterable is split by :func:`tail_batch_size` (auto policy only) so that
the last tasks are spread over all workers in shrinking batches.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = [
    "TARGET_BATCH_DURATION",
    "THREAD_TARGET_BATCH_DURATION",
    "MAX_AUTO_BATCH_SIZE",
    "FAST_GROWTH",
    "FAST_HEADROOM",
    "TAIL_MIN_FRACTION",
    "TAIL_MIN_SIZE",
    "AutoBatcher",
    "BackendSizer",
    "FixedSizer",
    "make_sizer",
    "tail_batch_size",
]

#: The duration (seconds) the auto policy aims at for one batch. Long enough to hide
#: the per-batch cost of a process round trip (well under a millisecond), short enough
#: that a batch of tasks which turn out to be slow cannot hold one worker for long.
TARGET_BATCH_DURATION = 0.05

#: The target of the auto policy for thread backends (``uses_threads``): a batch costs
#: a queue hand-over and a callback (tens of microseconds), so a few milliseconds
#: amortise it while slow tasks fall back to batches of one after the first batch.
THREAD_TARGET_BATCH_DURATION = 0.005

#: The auto policy never puts more tasks than this in one batch. Only tasks of a few
#: microseconds or less reach it (at the 50 ms target, 10,000 tasks of 5 us), and for
#: them the parent is the bottleneck: the user's generator makes each task's tuples,
#: which the parent packs, pickles and frees when the batch is sent. With batches of
#: 10^5 tasks (~20 MB of tuples) those have left the CPU caches between being made and
#: being packed and freed; at this size they have not, and the parent's CPU time per
#: trivial task drops by ~20% (0.43 -> 0.34 us, 10^6 tasks, ``n_jobs=2``). One more
#: round trip per 10,000 tasks costs ~0.03 us per task.
MAX_AUTO_BATCH_SIZE = 10_000

#: In the tail, a batch holds at most ``remaining / (TAIL_SPLIT * n_jobs)`` tasks
#: (guided self-scheduling: batches shrink geometrically, down to single tasks unless
#: the tasks are trivially short: :data:`TAIL_MIN_SIZE`).
TAIL_SPLIT = 2

#: The tail split stops shrinking batches at ``size // TAIL_MIN_FRACTION`` tasks, at
#: most :data:`TAIL_MIN_SIZE`, where ``size`` is the auto policy's current size. That
#: many tasks take at most ~1/128 of the target duration at the rate the policy measured
#: (well under a millisecond): splitting them further costs a round trip per batch and
#: balances nothing. For 10^5 trivial tasks the last ~10 batches of 1 to 7 tasks were a
#: third of the tail's batches. Tasks long enough for the policy's size to stay below
#: ``TAIL_MIN_FRACTION`` (a millisecond or more) are split down to one as before, and so
#: is everything after slow tasks (the size drops to 1). The cap bounds what a batch cut
#: before a slow result could be seen can hold when trivially short tasks are followed by
#: slow ones.
TAIL_MIN_SIZE = 8
TAIL_MIN_FRACTION = 128

#: Growth of the auto policy while batches are far below the target: when a batch ran
#: in less than ``1 / FAST_HEADROOM`` of the target (``ideal >= FAST_HEADROOM * size``),
#: the next size may reach ``FAST_GROWTH`` times the tasks verified fast instead of
#: twice. Trivially short tasks are then measured by little more than a
#: process round trip each time, and reach the steady size in about half the round
#: trips; tasks of more than ``target / FAST_HEADROOM`` each grow as before.
FAST_HEADROOM = 8
FAST_GROWTH = 8


class BatchSizer(Protocol):
    """What the engine asks of a batch-size policy."""

    #: Whether the engine should look ahead in the iterable and split its tail.
    adaptive: bool

    def next_size(self) -> int: ...

    def record(self, size: int, duration: float) -> None: ...


class FixedSizer:
    """A batch size chosen by the user: every batch has ``size`` tasks (the last may be shorter)."""

    adaptive = False

    def __init__(self, size: int) -> None:
        self.size = size

    def next_size(self) -> int:
        return self.size

    def record(self, size: int, duration: float) -> None:
        pass


class BackendSizer:
    """Delegates to ``backend.compute_batch_size()`` (told of each batch through
    ``backend.batch_completed``, which the engine calls for every backend)."""

    adaptive = False

    def __init__(self, backend: Any) -> None:
        self._compute = backend.compute_batch_size

    def next_size(self) -> int:
        return max(int(self._compute()), 1)

    def record(self, size: int, duration: float) -> None:
        pass


class AutoBatcher:
    """Adaptive batch size: start at 1, grow while batches are fast, shrink at once when slow.

    After each batch, ``record(size, duration)`` estimates the per-task time of that
    batch and the size that would take ``target`` seconds (``ideal``):

    - faster than wanted: the size grows to ``ideal`` but at most to twice the tasks of
      all the batches measured fast since the last shrink (``verified``), so the work
      committed in one batch stays within a small multiple of what has been verified to
      be fast (a batch that swallows slow tasks stays small). When the batch took less
      than ``1 / FAST_HEADROOM`` of the target for its size, the bound is
      ``FAST_GROWTH`` times ``verified`` instead of twice: the tasks are far too short
      to hide a round trip, and each doubling would cost one more round trip. Counting
      every fast batch, not only the last one, lets the size grow at each completion
      while several batches of the same size are in flight;
    - slower than wanted for the current size: the size drops to ``ideal`` (at least 1)
      straight away, without smoothing, so that slow tasks quickly run one per batch,
      and ``verified`` starts again from 0; unless the batch itself took less than
      ``1 / FAST_HEADROOM`` of the target (a small batch, measured mostly by its round
      trip: the size stays);
    - never above ``max_size`` (:data:`MAX_AUTO_BATCH_SIZE`).

    Not thread-safe: the engine calls it under its lock.
    """

    adaptive = True

    def __init__(self, target: float = TARGET_BATCH_DURATION, max_size: int = MAX_AUTO_BATCH_SIZE) -> None:
        if not target > 0:
            raise ValueError(f"target must be a positive duration in seconds, got {target!r}")
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be an int >= 1 (tasks per batch), got {max_size!r}")
        self.target = target
        self.max_size = max_size
        self.size = 1
        #: tasks of the batches completed within the target since the last shrink
        self.verified = 0

    def next_size(self) -> int:
        return self.size

    def record(self, size: int, duration: float) -> None:
        if size <= 0:
            return
        if duration <= 0:
            ideal = 2 * size
        else:
            ideal = max(int(size * self.target / duration), 1)
        if ideal >= self.size:
            self.verified += size
            growth = FAST_GROWTH if ideal >= FAST_HEADROOM * size else 2
            self.size = min(max(self.size, min(ideal, growth * self.verified)), self.max_size)
        elif duration * FAST_HEADROOM <= self.target:
            # A batch smaller than the current size (the tail split's, or one cut before
            # the last growth) that took a small fraction of the target: its duration is
            # mostly the round trip, which makes its tasks look slower than they are.
            # Shrinking on it would split the tail down to single tasks.
            pass
        else:
            self.verified = 0
            self.size = min(ideal, self.max_size)


def tail_batch_size(size: int, remaining: int, n_jobs: int) -> int:
    """The size of a batch cut from the last ``remaining`` tasks of the iterable: at most
    ``size``, and small enough that the tail is shared by all ``n_jobs`` workers in
    shrinking batches (no worker idles while another runs a big final batch), but not
    below ``size // TAIL_MIN_FRACTION`` capped at :data:`TAIL_MIN_SIZE` (only trivially
    short tasks, measured by a size of thousands, keep a floor)."""
    share = -(-remaining // (TAIL_SPLIT * n_jobs))  # ceil
    floor = min(size // TAIL_MIN_FRACTION, TAIL_MIN_SIZE)
    return max(min(size, max(share, floor)), 1)


def make_sizer(
    batch_size: int | str, backend: Any, n_jobs: int = 1
) -> FixedSizer | BackendSizer | AutoBatcher:
    """The policy for ``batch_size`` (already validated), ``backend`` and ``n_jobs`` workers.

    ``'auto'`` means :class:`AutoBatcher` when the backend sets ``supports_auto_batching``
    or when it runs several workers in threads (``uses_threads`` and ``n_jobs > 1``; the
    target is then :data:`THREAD_TARGET_BATCH_DURATION`); otherwise the backend's own
    ``compute_batch_size()`` (e.g. the sequential backend: batches of one keep a
    generator result as lazy as possible).
    """
    if batch_size != "auto":
        return FixedSizer(int(batch_size))
    threads = bool(getattr(backend, "uses_threads", False))
    if threads and n_jobs > 1:
        return AutoBatcher(THREAD_TARGET_BATCH_DURATION)
    if getattr(backend, "supports_auto_batching", False):
        return AutoBatcher(THREAD_TARGET_BATCH_DURATION if threads else TARGET_BATCH_DURATION)
    return BackendSizer(backend)
