"""The ``sequential`` backend: batches run right away, in the caller's thread."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from par_api import ParallelBackendBase, check_n_jobs

from ._common import check_backend_kwargs


class SequentialBackend(ParallelBackendBase):
    """A plain loop in the caller's thread (what ``n_jobs=1`` uses).

    ``submit`` runs the batch before returning and hands the callback a completed
    :class:`concurrent.futures.Future` holding its results or its exception. Nothing is
    started or owned, so ``terminate``/``abort_everything`` have nothing to stop.
    """

    uses_threads = False  # no thread: batches run inside submit, in the caller's thread
    supports_sharedmem = True
    supports_timeout = False
    supports_auto_batching = False

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """Always 1; ``ValueError`` for ``n_jobs=0`` (and ``TypeError`` for a non-number)."""
        check_n_jobs(n_jobs)
        return 1

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        hooks: Any = None,
        **backend_kwargs: Any,
    ) -> int:
        """Validate ``n_jobs`` and return 1; no backend arguments are accepted."""
        check_backend_kwargs("sequential", backend_kwargs, ())
        self.parallel = parallel
        self.hooks = hooks
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Future[Any]:
        """Run ``func()`` now; return (and pass to ``callback``) a completed future."""
        future: Future[Any] = Future()
        try:
            result = func()
        except BaseException as exc:  # delivered through the future, like other backends
            future.set_exception(exc)
        else:
            future.set_result(result)
        if callback is not None:
            callback(future)
        return future

    def get_nested_backend(self) -> tuple[Any, int | None]:
        """``('sequential', 1)``: nothing runs in parallel inside a sequential call."""
        return "sequential", 1

    def __repr__(self) -> str:
        return "SequentialBackend()"
