"""Progress display for ``Parallel(progress=...)``: a tqdm bar, a plain text bar on
stderr, or any callable receiving ``par_scheduler.ProgressEvent`` objects."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from par_scheduler import ProgressEvent


class TextProgressBar:
    """A one-line text bar on a stream (stderr by default), redrawn at most every 0.1 s."""

    def __init__(self, stream: TextIO | None = None, width: int = 30, min_interval: float = 0.1) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.min_interval = min_interval
        self._last = 0.0
        self._drawn = False

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        final = event.kind in ("finished", "aborted")
        if not final and now - self._last < self.min_interval:
            return
        self._last = now
        done, total = event.n_completed, event.total
        rate = done / event.elapsed if event.elapsed > 0 else 0.0
        if total:
            frac = done / total
            filled = int(self.width * frac)
            bar = "#" * filled + "-" * (self.width - filled)
            eta = f" ETA {event.eta:.1f}s" if event.eta is not None and not final else ""
            line = f"\r[{bar}] {done}/{total} ({frac:4.0%}) {rate:,.1f} tasks/s{eta}"
        else:
            line = f"\r[{'?' * 3}] {done} done, {rate:,.1f} tasks/s"
        self.stream.write(line + ("\n" if final else ""))
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        pass


class TqdmAdapter:
    """Feeds ``ProgressEvent`` objects to a tqdm-like object (``update``, ``total``, ``close``)."""

    def __init__(self, bar: Any, own: bool = False) -> None:
        self.bar = bar
        self.own = own
        self._seen = 0

    def __call__(self, event: ProgressEvent) -> None:
        if event.total is not None and getattr(self.bar, "total", None) != event.total:
            self.bar.total = event.total
            if hasattr(self.bar, "refresh"):
                self.bar.refresh()
        delta = event.n_completed - self._seen
        if delta > 0:
            self.bar.update(delta)
            self._seen = event.n_completed

    def close(self) -> None:
        if self.own and hasattr(self.bar, "close"):
            self.bar.close()


def make_progress_listener(progress: Any) -> Callable[[ProgressEvent], None] | None:
    """``None``/``False``: nothing; ``True``: tqdm when installed, else a text bar on
    stderr; an object with ``update``: a tqdm-like bar; a callable: called with events."""
    if progress is None or progress is False:
        return None
    if progress is True:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return TextProgressBar()
        return TqdmAdapter(tqdm(total=None, unit="task"), own=True)
    if hasattr(progress, "update"):
        return TqdmAdapter(progress)
    if callable(progress):
        return progress  # type: ignore[no-any-return]
    raise TypeError(
        f"progress must be True/False/None, a tqdm-like object (with update()) or a callable "
        f"receiving ProgressEvent objects; got {type(progress).__name__} {progress!r}"
    )
