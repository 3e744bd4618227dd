"""Progress events and the ``verbose`` printer (one consumer of them).

The engine publishes a :class:`ProgressEvent` to every listener: ``'start'``, one
``'dispatched'`` per batch sent, one ``'completed'`` per batch finished, then
``'finished'`` (everything done) or ``'aborted'`` (error, timeout, interrupt, early
close). Listeners are called in order of the counts, one at a time, from whatever
thread observed the change (often a backend's callback thread): they must be quick and
must not call back into the running call.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from math import floor, log10, sqrt
from typing import TextIO

__all__ = ["ProgressEvent", "VerbosePrinter", "short_format_time", "verbosity_filter"]


@dataclass(frozen=True)
class ProgressEvent:
    """A snapshot of a call's progress.

    ``kind`` is ``'start' | 'dispatched' | 'completed' | 'finished' | 'aborted'``.
    ``total`` is known from the start when the iterable has a length, otherwise once it
    is exhausted. ``eta`` is ``elapsed / n_completed * (total - n_completed)`` when both
    are known. ``batch_size`` is the size of the batch the event is about (0 for
    start/finished/aborted).
    """

    kind: str
    n_dispatched: int
    n_completed: int
    total: int | None
    elapsed: float
    batch_size: int
    eta: float | None
    #: ``len(iterable)`` when the iterable had a length at the start of the call.
    length: int | None = None
    #: Batches dispatched so far.
    n_batches: int = 0
    #: Whether the iterable has been consumed entirely (no more tasks to dispatch).
    exhausted: bool = False
    #: The ``pre_dispatch`` window in batches (0 for ``'all'``).
    pre_dispatch: int = 0
    #: Tasks that failed so far (with ``on_error`` other than ``'raise'``, or retries).
    n_failed: int = 0
    #: Extra runs of tasks so far (``retries``: after an exception in ``retry_on`` or the
    #: death of their worker).
    n_retried: int = 0
    #: Tasks that overran their per-task ``timeout`` (counted in ``n_failed`` too).
    n_timed_out: int = 0


def short_format_time(t: float) -> str:
    """A duration as joblib prints it: ``'   0.8s'`` up to a minute, then ``' 1.2min'``."""
    if t > 60:
        return f"{t / 60.0:4.1f}min"
    return f" {t:5.1f}s"


def verbosity_filter(index: int, verbose: int) -> bool:
    """True when the message for ``index`` must be skipped at this ``verbose`` level.

    Above 10 every message is shown; below, messages get sparser as the index grows
    (the gap grows like the square root of the index, faster at lower verbosity).
    """
    if not verbose:
        return True
    if verbose > 10:
        return False
    if index == 0:
        return False
    scale = 0.5 * (11 - verbose) ** 2
    return int(sqrt((index + 1) / scale)) == int(sqrt(index / scale))


class VerbosePrinter:
    """Prints joblib's progress messages for a ``verbose`` level.

    ``[Parallel(n_jobs=2)]: Done   4 tasks      | elapsed:    0.8s`` while the iterable
    is being consumed, ``Done  7 out of  10 | elapsed: ... remaining: ...`` once it is
    exhausted, and ``Done  10 out of  10 | elapsed:    1.4s finished`` at the end.
    Messages go to stderr below verbose 50 and to stdout from 50 on (looked up at each
    message), unless ``stream_chooser`` (a zero-argument callable returning a text
    stream) is given. With ``backend_name``, the ``'start'`` event prints
    ``Using backend <name> with <n_jobs> concurrent workers.``
    """

    def __init__(
        self,
        verbose: int,
        n_jobs: int,
        name: str = "Parallel",
        stream_chooser: Callable[[], TextIO] | None = None,
        backend_name: str | None = None,
    ) -> None:
        self.verbose = verbose
        self.n_jobs = n_jobs
        self.name = name
        self.stream_chooser = stream_chooser
        self.backend_name = backend_name

    def _print(self, msg: str) -> None:
        if self.stream_chooser is not None:
            stream = self.stream_chooser()
        else:
            stream = sys.stdout if self.verbose >= 50 else sys.stderr
        stream.write(f"[{self.name}(n_jobs={self.n_jobs})]: {msg}\n")

    def __call__(self, event: ProgressEvent) -> None:
        verbose = self.verbose
        if not verbose:
            return
        kind = event.kind
        if kind == "start":
            if self.backend_name is not None:
                self._print(f"Using backend {self.backend_name} with {self.n_jobs} concurrent workers.")
            return
        if kind not in ("completed", "finished"):
            return
        length = event.length
        width = floor(log10(length)) + 1 if length else 3
        elapsed = short_format_time(event.elapsed)
        done = event.n_completed
        counts = ""
        if event.n_failed or event.n_retried:  # the failure policy (on_error, retries)
            counts = f" | failed: {event.n_failed}, retried: {event.n_retried}"
            if event.n_timed_out:
                counts += f", timed out: {event.n_timed_out}"

        def say(msg: str) -> None:
            self._print(msg + counts)

        if kind == "finished":
            if done:
                say(f"Done {done:{width}d} out of {done:{width}d} | elapsed: {elapsed} finished")
            return
        if event.exhausted and done == event.n_dispatched:
            return  # the 'finished' event says it
        if not event.exhausted:
            if verbosity_filter(event.n_batches, verbose):
                return
            if length is not None:
                say(f"Done {done:{width}d} out of {length:{width}d} | elapsed: {elapsed}")
            else:
                pad = " " * (len("out of ") + width - len("tasks"))
                say(f"Done {done:{width}d} tasks {pad}| elapsed: {elapsed}")
            return
        total = event.n_dispatched
        if done != 0:
            # Once dispatching is over, show a message every `frequency` tasks counted
            # back from the end, never for the one before the last.
            cursor = total - done + 1 - event.pre_dispatch
            frequency = (total // verbose) + 1
            if done + 1 == total or cursor % frequency:
                return
        remaining = (event.elapsed / max(done, 1)) * (total - done)
        say(
            f"Done {done:{width}d} out of {total:{width}d} | elapsed: {elapsed} "
            f"remaining: {short_format_time(remaining)}"
        )
