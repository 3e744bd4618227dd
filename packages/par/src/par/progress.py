"""Progress display for ``Parallel(progress=...)``.

:func:`make_progress_listener` turns the ``progress`` parameter into a listener of
``par_scheduler.ProgressEvent`` objects (or None):

- ``None``/``False``: no listener;
- ``True``: a ``tqdm.auto`` bar when tqdm is installed (``pip install "par[progress]"``),
  else a :class:`TextProgressBar` on stderr;
- a tqdm-like *instance* (it has ``update(n)``): fed by a :class:`TqdmAdapter`, never
  closed by par (the caller owns it, and may reuse it over several calls);
- a tqdm-like *class* (``progress=tqdm``): instantiated once per call and closed at the
  end of the call;
- any other callable: called with each ``ProgressEvent`` (notebook widgets, loggers).

Listeners are called by the scheduler one at a time, in order of the counts, from
whatever thread observed the change; they must be quick and must not call back into
the running call. An exception raised by a listener aborts the call and is re-raised
to the caller.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO, runtime_checkable

from par_scheduler import ProgressEvent

__all__ = [
    "CallableListener",
    "ProgressListener",
    "TextProgressBar",
    "TqdmAdapter",
    "TqdmLike",
    "check_progress",
    "format_duration",
    "make_progress_listener",
]

ProgressListener = Callable[[ProgressEvent], None]

_ACCEPTED = (
    "True/False/None, a tqdm-like object or class (with an update(n) method), or a callable "
    "receiving par.ProgressEvent objects"
)


@runtime_checkable
class TqdmLike(Protocol):
    """What par uses of a tqdm bar: ``update(n)``; ``total``, ``n``, ``refresh()`` and
    ``close()`` are used when present."""

    def update(self, n: int = 1) -> Any: ...


def format_duration(seconds: float) -> str:
    """``'4.2s'`` under a minute, ``'3m07s'`` under an hour, then ``'2h05m'``."""
    if seconds < 0 or seconds != seconds:  # negative or NaN: nothing sensible to show
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class TextProgressBar:
    """A text progress bar for terminals and logs, used by ``progress=True`` without tqdm.

    On a terminal (``stream.isatty()``) one line is redrawn in place with ``\\r`` at most
    every ``min_interval`` seconds (default 0.1); elsewhere (a log file, a pipe, a
    captured stream) a full line is written at most every ``min_interval`` seconds
    (default 5), so that logs stay short. The last event (``'finished'`` or
    ``'aborted'``) is always written, ending with a newline::

        [##############----------------] 7/15 47% | 1.4s elapsed, 5.0 tasks/s, 1.6s left
        [##############################] 15/15 100% | 3.0s elapsed, 5.0 tasks/s, done

    Until the iterable is exhausted (and its length unknown) the total is shown as
    ``?``: ``[...] 7/? | 1.4s elapsed, 5.0 tasks/s``.

    Args:
        stream: where to write; None (default) means ``sys.stderr`` as it is at each write.
        width: the number of characters between the brackets.
        min_interval: seconds between two redraws; None picks by stream type (above).
    """

    def __init__(
        self, stream: TextIO | None = None, width: int = 30, min_interval: float | None = None
    ) -> None:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"TextProgressBar(width=...) must be an int >= 1, got {width!r}")
        if min_interval is not None and (isinstance(min_interval, bool) or not min_interval >= 0):
            raise ValueError(
                f"TextProgressBar(min_interval=...) must be a number of seconds >= 0 or None, got {min_interval!r}"
            )
        self._stream = stream
        self.width = width
        self._min_interval = min_interval
        self._last_write: float | None = None
        self._line_open = False  # a '\r' line is on screen without its final newline
        self._closed = False

    @property
    def stream(self) -> TextIO:
        """The stream written to (``sys.stderr`` at the time of the call by default)."""
        return self._stream if self._stream is not None else sys.stderr

    def _is_tty(self, stream: TextIO) -> bool:
        try:
            return bool(stream.isatty())
        except (AttributeError, ValueError, OSError):
            return False

    def render(self, event: ProgressEvent) -> str:
        """The text of the bar for ``event``, without ``\\r`` or newline."""
        done, total = event.n_completed, event.total
        rate = done / event.elapsed if event.elapsed > 0 else 0.0
        final = event.kind in ("finished", "aborted")
        if total:
            frac = min(done / total, 1.0)
            filled = int(self.width * frac)
            bar = "#" * filled + "-" * (self.width - filled)
            head = f"[{bar}] {done}/{total} {frac:4.0%}"
        elif total == 0:
            head = f"[{'#' * self.width}] 0/0 100%"
        else:
            # total unknown: a marker bouncing with the count shows that work goes on
            pos = done % self.width
            bar = "-" * pos + "#" + "-" * (self.width - pos - 1)
            head = f"[{bar}] {done}/?"
        parts = [f"{format_duration(event.elapsed)} elapsed", f"{rate:,.1f} tasks/s"]
        parts += failure_counts(event)
        if event.kind == "finished":
            parts.append("done")
        elif event.kind == "aborted":
            parts.append("aborted")
        elif event.eta is not None and not final:
            parts.append(f"{format_duration(event.eta)} left")
        return f"{head} | {', '.join(parts)}"

    def __call__(self, event: ProgressEvent) -> None:
        stream = self.stream
        tty = self._is_tty(stream)
        final = event.kind in ("finished", "aborted")
        if event.kind == "start" and not tty:
            return  # nothing done yet: not worth a line in a log
        now = time.monotonic()
        interval = self._min_interval if self._min_interval is not None else (0.1 if tty else 5.0)
        if not final and self._last_write is not None and now - self._last_write < interval:
            return
        if not final and not tty and self._last_write is None and event.kind != "completed":
            return  # in logs, wait for the first result before writing anything
        self._last_write = now
        text = self.render(event)
        if tty:
            stream.write("\r" + text + ("\n" if final else ""))
            self._line_open = not final
        else:
            stream.write(text + "\n")
        stream.flush()

    def close(self) -> None:
        """End a line left open on a terminal (a call stopped without a final event)."""
        if self._line_open:
            self._line_open = False
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (ValueError, OSError):  # the stream was closed meanwhile
                pass


def failure_counts(event: ProgressEvent) -> list[str]:
    """``['2 failed', '1 timed out', '3 retried']``: the failure policy's counts that
    are not zero (``on_error``, per-task ``timeout``, ``retries``)."""
    counts = (
        (getattr(event, "n_failed", 0), "failed"),
        (getattr(event, "n_timed_out", 0), "timed out"),
        (getattr(event, "n_retried", 0), "retried"),
    )
    return [f"{n} {what}" for n, what in counts if n]


class TqdmAdapter:
    """Feeds ``ProgressEvent`` objects to a tqdm-like bar.

    Each ``completed`` event calls ``bar.update(k)`` with the tasks completed since the
    previous one, so the updates of one call sum to its number of tasks. ``bar.total``
    is set once the call's total is known (from ``len(iterable)`` at the start, else
    when the iterable is exhausted) unless the bar already has a larger total (a bar
    shared by several calls): the bar's count at the start of the call is added, so
    that reusing one bar over several calls accumulates.

    Args:
        bar: the tqdm-like object.
        own: close the bar in :meth:`close` (True for bars par created).
    """

    def __init__(self, bar: Any, own: bool = False) -> None:
        if not callable(getattr(bar, "update", None)):
            raise TypeError(
                f"progress: a tqdm-like object needs an update(n) method; got {type(bar).__name__} {bar!r}"
            )
        self.bar = bar
        self.own = own
        self._seen = 0
        self._counts: list[str] = []
        self._base: int | None = None

    def __call__(self, event: ProgressEvent) -> None:
        bar = self.bar
        if self._base is None:
            n = getattr(bar, "n", 0)
            self._base = n if isinstance(n, int) and not isinstance(n, bool) else 0
        if event.total is not None:
            wanted = self._base + event.total
            current = getattr(bar, "total", None)
            if current is None or (isinstance(current, (int, float)) and current < wanted):
                try:
                    bar.total = wanted
                except AttributeError:  # a read-only total: leave it as it is
                    pass
                else:
                    refresh = getattr(bar, "refresh", None)
                    if callable(refresh):
                        refresh()
        counts = failure_counts(event)
        if counts != self._counts:  # the failure policy's counts, as the bar's postfix
            self._counts = counts
            set_postfix_str = getattr(bar, "set_postfix_str", None)
            if callable(set_postfix_str):
                set_postfix_str(", ".join(counts), refresh=False)
        delta = event.n_completed - self._seen
        if delta > 0:
            bar.update(delta)
            self._seen = event.n_completed

    def close(self) -> None:
        """Close the bar when par created it; a bar passed by the caller stays open."""
        close = getattr(self.bar, "close", None)
        if self.own and callable(close):
            close()


class CallableListener:
    """Wraps a user callable so that par never calls anything but ``fn(event)`` on it
    (in particular not a ``close`` method it may happen to have)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[ProgressEvent], Any]) -> None:
        self.fn = fn

    def __call__(self, event: ProgressEvent) -> None:
        self.fn(event)

    def __repr__(self) -> str:
        return f"CallableListener({self.fn!r})"


def _is_tqdm_class(progress: Any) -> bool:
    return isinstance(progress, type) and callable(getattr(progress, "update", None))


def check_progress(progress: Any) -> Any:
    """Validate a ``progress`` parameter without creating anything; return it unchanged.

    Raises:
        TypeError: ``progress`` is none of True/False/None, a tqdm-like object or class,
            or a callable. (``Parallel`` calls this at construction so that a bad value
            fails at the call site, not when the call runs.)
    """
    if progress is None or isinstance(progress, bool):
        return progress
    if _is_tqdm_class(progress) or callable(getattr(progress, "update", None)) or callable(progress):
        return progress
    raise TypeError(f"progress must be {_ACCEPTED}; got {type(progress).__name__} {progress!r}")


def make_progress_listener(progress: Any) -> ProgressListener | None:
    """The listener for one call; see the module docstring for the accepted values.

    The returned object may have a ``close()`` method, which ``Parallel`` calls once when
    the call is over (success, error or early close of a generator).

    Raises:
        TypeError: as :func:`check_progress`.
    """
    progress = check_progress(progress)
    if progress is None or progress is False:
        return None
    if progress is True:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return TextProgressBar()
        return TqdmAdapter(tqdm(total=None, unit="task"), own=True)
    if _is_tqdm_class(progress):
        return TqdmAdapter(progress(total=None, unit="task"), own=True)
    if callable(getattr(progress, "update", None)):
        return TqdmAdapter(progress)
    return CallableListener(progress)
