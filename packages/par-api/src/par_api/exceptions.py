"""Exception types shared by every par package."""

from __future__ import annotations

try:
    from concurrent.futures.process import BrokenProcessPool
except ImportError:  # no working _multiprocessing (e.g. Pyodide): par_api must still import
    from concurrent.futures import BrokenExecutor

    class BrokenProcessPool(BrokenExecutor):  # type: ignore[no-redef]
        """Stand-in for ``concurrent.futures.process.BrokenProcessPool`` where
        multiprocessing cannot be imported (no process pool can break there)."""


class WorkerDiedError(BrokenProcessPool):
    """A worker process died while it was running (or about to run) tasks.

    Subclasses :class:`concurrent.futures.process.BrokenProcessPool`, as loky's
    ``TerminatedWorkerError`` does, so ``except BrokenProcessPool`` keeps working.
    The message says which worker died (pid, exit code or signal when known), which
    task it was running when known, and the usual causes.
    """

    def __init__(
        self,
        message: str,
        *,
        exitcode: int | None = None,
        pid: int | None = None,
        task: str | None = None,
    ) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.pid = pid
        self.task = task


class RemoteTraceback(Exception):
    """Carries the formatted traceback of an exception raised in a worker.

    It is attached as ``__cause__`` of the re-raised exception, so the caller's
    traceback shows the worker's frames (function name and failing line).
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class BackendNotAvailableError(ValueError):
    """The requested backend name is unknown or cannot be used on this system."""
