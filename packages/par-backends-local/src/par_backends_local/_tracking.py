"""What each worker process is running, and workers that outlive their parent.

Two small mechanisms shared by the process backends (``loky`` and ``multiprocessing``):

**Which task a dead worker was running.** A worker killed by SIGKILL or a segfault
cannot say anything, so it says it *before* each batch: the backend wraps every
payload in a :class:`TrackedBatch` carrying a token, and the worker writes
``(pid, token)`` into a shared file at offset ``pid * 16`` just before running the
batch (one ``pwrite``, no lock: each pid has its own slot). When a worker dies the
parent reads the dead pid's slot and finds, from the token, the batch it was running:
the task index range and the function names (:meth:`TaskTracker.describe_pid`).

The shared file is an *unlinked* temporary file of the parent (it never appears in a
folder, so nothing is left behind whatever kills the parent); workers open it through
``/proc/<parent pid>/fd/<fd>``, so tracking is Linux-only. Elsewhere, or when the file
cannot be opened, nothing is written and the death message just omits the task.

**Workers whose parent died.** A worker busy with a long task does not notice that
its parent was killed (SIGKILL leaves no chance to stop it) and would run on as an
orphan. :func:`watch_parent`, run by the worker initializer, starts a daemon thread
that checks the parent about once a second and ends the worker (``os._exit``) when
the parent is gone.
"""

from __future__ import annotations

import itertools
import os
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from par_api import BatchInfo, ProcessLocal

from . import _recycling

__all__ = [
    "PARENT_POLL_INTERVAL",
    "TaskTracker",
    "TrackedBatch",
    "describe_batch",
    "open_tracking_file",
    "tracker",
    "watch_parent",
    "worker_steps",
]

#: Seconds between two checks of the parent by a worker's watcher thread.
PARENT_POLL_INTERVAL = 0.5

_RECORD = struct.Struct("<iiq")  # pid, reserved, token
_SLOT = 16
_TRACKING = sys.platform.startswith("linux")

# -- worker side ----------------------------------------------------------------------

_worker_fd: int | None = None
_worker_fd_path: str | None = None
_watch_started = False
_watch_lock = threading.Lock()


def open_tracking_file(path: str | None) -> None:
    """Worker initializer step: open the parent's tracking file (``/proc/<pid>/fd/<fd>``).
    Failing to open it only disables tracking."""
    global _worker_fd, _worker_fd_path
    if not path or path == _worker_fd_path:
        return
    try:
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    old, _worker_fd, _worker_fd_path = _worker_fd, fd, path
    if old is not None:
        try:
            os.close(old)
        except OSError:
            pass


class TrackedBatch:
    """A batch payload plus its tracking token; calling it (in the worker) records the
    token in this process's slot of the tracking file, then runs the payload."""

    __slots__ = ("payload", "token")

    def __init__(self, payload: Callable[[], Any], token: int) -> None:
        self.payload = payload
        self.token = token

    def __call__(self) -> Any:
        fd = _worker_fd
        if fd is not None:
            pid = os.getpid()
            try:
                os.pwrite(fd, _RECORD.pack(pid, 0, self.token), pid * _SLOT)
            except OSError:
                pass
        if not _recycling.active:
            return self.payload()
        try:
            return self.payload()
        finally:
            _recycling.after_batch(getattr(self.payload, "n_tasks", 1))

    def __reduce__(self) -> tuple[Any, ...]:
        return (TrackedBatch, (self.payload, self.token))

    def __repr__(self) -> str:
        return f"TrackedBatch({self.payload!r}, token={self.token})"


def _parent_gone(parent_pid: int, direct: bool, ppid0: int) -> bool:
    if direct:
        # Our parent is the par process: when it dies we are re-parented at once.
        return os.getppid() != ppid0
    try:
        os.kill(parent_pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    try:  # a killed parent that nobody reaped yet is a zombie: gone too
        with open(f"/proc/{parent_pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def _watch_loop(parent_pid: int, direct: bool, ppid0: int, interval: float) -> None:
    while True:
        if _parent_gone(parent_pid, direct, ppid0):
            os._exit(1)  # no cleanup: the parent that would want the results is dead
        time.sleep(interval)


def watch_parent(parent_pid: int, interval: float = PARENT_POLL_INTERVAL) -> None:
    """Worker initializer step: end this worker when process ``parent_pid`` dies (checked
    every ``interval`` seconds by a daemon thread; started once per process)."""
    global _watch_started
    with _watch_lock:
        if _watch_started:
            return
        _watch_started = True
    ppid0 = os.getppid()
    direct = ppid0 == parent_pid
    if not direct and _parent_gone(parent_pid, False, ppid0):
        os._exit(1)
    thread = threading.Thread(
        target=_watch_loop,
        args=(parent_pid, direct, ppid0, interval),
        name="par-parent-watch",
        daemon=True,
    )
    thread.start()


# -- parent side ----------------------------------------------------------------------


def describe_batch(batch: Any) -> str | None:
    """``'task 3 (function f)'`` / ``'tasks 8 to 11 (function f)'`` for a ``BatchInfo`` or
    a ``BatchedCalls`` (duck-typed on ``tasks`` and ``index``); None when it is neither."""
    info = batch if isinstance(batch, BatchInfo) else BatchInfo.of(batch)
    return None if info is None else info.describe()


class TaskTracker:
    """The parent's side: hands out tokens for batches and reads the workers' slots.

    One per process (:func:`tracker`); thread-safe. ``path`` is what workers open (None
    when tracking is unavailable).
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._fd: int | None = None
        self._file: Any = None
        self.path: str | None = None
        self._tokens = itertools.count(1)
        if _TRACKING:
            try:
                self._file = tempfile.TemporaryFile(prefix="par_tracking_")
                self._fd = self._file.fileno()
                self.path = f"/proc/{self._pid}/fd/{self._fd}"
            except OSError:
                self._file = self._fd = self.path = None

    def new_token(self) -> int:
        """A token never handed out before in this process."""
        return next(self._tokens)

    def running_token(self, pid: int | None) -> int | None:
        """The token of the last batch worker ``pid`` started, or None."""
        if self._fd is None or pid is None or pid <= 0:
            return None
        try:
            data = os.pread(self._fd, _SLOT, pid * _SLOT)
        except OSError:
            return None
        if len(data) < _RECORD.size:
            return None
        rec_pid, _, token = _RECORD.unpack(data[: _RECORD.size])
        return token if rec_pid == pid and token > 0 else None

    def describe_pid(self, pid: int | None, batches: Mapping[int, Any]) -> str | None:
        """What worker ``pid`` was running (:func:`describe_batch`), from ``batches``
        (token -> the batches submitted and not yet finished)."""
        token = self.running_token(pid)
        if token is None or token not in batches:
            return None
        return describe_batch(batches[token])


_tracker: ProcessLocal[TaskTracker] = ProcessLocal(TaskTracker)


def tracker() -> TaskTracker:
    """This process's :class:`TaskTracker` (a new one after a fork)."""
    return _tracker.get()


def worker_steps() -> tuple[tuple[Callable[..., Any], tuple[Any, ...]], ...]:
    """The initializer steps every process worker of this package runs first: watch the
    parent, open the tracking file."""
    return (
        (watch_parent, (os.getpid(),)),
        (open_tracking_file, (tracker().path,)),
    )
