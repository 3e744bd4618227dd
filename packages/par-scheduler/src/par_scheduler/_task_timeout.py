"""Per-task timeouts inside a worker process: a task that runs longer than the call's
``timeout`` ends its worker.

Used by :class:`par_scheduler._policy.GuardedBatch` when the call has a failure policy
(``on_error`` other than ``'raise'``), a ``timeout`` and a backend whose workers are
processes that may end themselves (``supports_task_timeout``). The clock starts when
the task starts in its worker, not when it was dispatched.

One daemon thread per worker process (``par-task-timeout``) waits for the deadline of
the running task; when the deadline passes with the task still running, the process
ends with :data:`par_api.TASK_TIMEOUT_EXIT_CODE`. The backend reports that death like
any other (``WorkerDiedError`` with the exit code), or first answers the stuck batch
with such an error through the handler it set (``par_api.set_task_timeout_handler``:
loky, whose executor would otherwise break as a whole), and the scheduler puts a
``TimeoutError`` in the task's place; the pool replaces the worker.

A task stuck in native code that holds the GIL keeps that thread from running:
:mod:`faulthandler`'s watchdog (a C thread) then ends the process :data:`GRACE` seconds
later, printing the stuck task's traceback to the worker's stderr; that task fails with
a ``WorkerDiedError`` (exit code 1) naming it.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time

from par_api import TASK_TIMEOUT_EXIT_CODE, ProcessLocal, WorkerDiedError, task_timeout_handler

__all__ = ["GRACE", "watchdog"]

#: Seconds after a task's deadline at which faulthandler ends a worker whose
#: ``par-task-timeout`` thread could not run (the GIL held by native code).
GRACE = 5.0


class _Watchdog:
    """The deadline of the task running in this process, and the thread that acts on it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._backstop = _stderr_fd() is not None
        threading.Thread(target=self._loop, name="par-task-timeout", daemon=True).start()

    def arm(self, seconds: float) -> None:
        """A task starts now and may run ``seconds``."""
        with self._cond:
            self._deadline = time.monotonic() + seconds
            self._cond.notify()
        if self._backstop:
            faulthandler.dump_traceback_later(seconds + GRACE, exit=True, file=_stderr_fd())  # type: ignore[arg-type]

    def disarm(self) -> None:
        """The task ended (returned or raised) in time."""
        if self._backstop:
            faulthandler.cancel_dump_traceback_later()
        with self._cond:
            self._deadline = None

    def _loop(self) -> None:
        with self._cond:
            while True:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left <= 0:
                    _end_worker()  # the lock stays held: the task cannot disarm meanwhile
                self._cond.wait(left)


def _end_worker() -> None:
    """The running task overran: let the backend answer its batch (if it set a
    handler), then end this process with ``TASK_TIMEOUT_EXIT_CODE``."""
    handler = task_timeout_handler()
    if handler is not None:
        error = WorkerDiedError(
            f"worker process {os.getpid()} ended itself: its task ran longer than its timeout",
            exitcode=TASK_TIMEOUT_EXIT_CODE,
            pid=os.getpid(),
        )
        try:
            handler(error)
        except BaseException:
            pass
    os._exit(TASK_TIMEOUT_EXIT_CODE)


def _stderr_fd() -> int | None:
    """The file descriptor faulthandler may write to (the process's real stderr)."""
    stream = sys.__stderr__
    try:
        return None if stream is None else stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


_watchdog: ProcessLocal[_Watchdog] = ProcessLocal(_Watchdog)


def watchdog() -> _Watchdog:
    """This process's watchdog (started on first use; a new one in a forked child)."""
    return _watchdog.get()
