"""What the two process backends (``loky``, ``multiprocessing``) share: their flags, the
``n_jobs`` rule, the nested backend of their workers, how a batch is prepared for a
worker (serialized in the caller's thread, given a tracking token, described by a
``BatchInfo`` that names it if its worker dies) and how results are retrieved."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from par_api import ParallelBackendBase, WorkerDiedError, check_initializer, cpu_count, normalize_n_jobs

from . import _crash, _tracking
from ._common import nested_process_n_jobs, serialize

__all__ = ["ProcessBackendBase", "nested_threads"]


def nested_threads(inner_max_num_threads: int | None, n_jobs: int | None) -> tuple[str, int]:
    """The backend of a ``Parallel`` inside a worker: threads sized so that workers x
    threads stays within the CPUs, or ``('sequential', 1)`` when that is one thread."""
    if inner_max_num_threads is not None:
        threads = max(int(inner_max_num_threads), 1)
    else:
        threads = max(cpu_count() // max(n_jobs or cpu_count(), 1), 1)
    if threads <= 1:
        return "sequential", 1
    return "threading", threads


class ProcessBackendBase(ParallelBackendBase):
    """The base of par's process backends (workers are processes of this machine)."""

    supports_timeout = True
    #: A task over its ``timeout`` ends its worker (``par_scheduler``'s guard, in the
    #: worker); both pools report that as a ``WorkerDiedError`` with the exit code.
    supports_task_timeout = True
    supports_inner_max_num_threads = True
    supports_auto_batching = True
    supports_transport_hooks = True
    supports_sharedmem = False
    uses_threads = False

    _n_jobs: int | None = None

    def _init_user_kwargs(self, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
        self._user_kwargs: dict[str, Any] = {}
        if initializer is not None or initargs:
            self._user_kwargs["initializer"], self._user_kwargs["initargs"] = check_initializer(
                initializer, initargs
            )

    #: The name joblib's nesting warning gives the backend ("Loky", "Multiprocessing").
    nesting_label = "Process"

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """:func:`par_api.normalize_n_jobs` (``-1`` is every CPU; ``ValueError`` for 0); 1,
        with joblib's warning, inside a daemonic process or a thread below a parallel call."""
        n = normalize_n_jobs(n_jobs)
        return nested_process_n_jobs(self, n, self.nesting_label) or n

    def _prepare(self, func: Callable[[], Any]) -> tuple[_tracking.TrackedBatch, int, Any, float]:
        """``(payload, token, info, took)`` for ``func``: serialized through
        ``hooks.serialize_batch`` in this thread (its pickling errors propagate), tagged
        with a tracking token, described by ``info`` (not the tasks: they are freed once
        pickled); ``took`` is the serialization time in seconds."""
        payload, took = serialize(self.hooks, func)
        token = _tracking.tracker().new_token()
        info = _tracking.BatchInfo.of(func, payload)
        return _tracking.TrackedBatch(payload, token), token, info, took

    @staticmethod
    def worker_death(
        dead: Iterable[tuple[int | None, int | None]],
        batches: Mapping[int, Any],
        cause: BaseException | None = None,
    ) -> Callable[[], WorkerDiedError]:
        """What both pools do when they notice that workers died: ``dead`` are their
        ``(pid, exit code)``, ``batches`` the descriptions of the batches not finished
        (tracking token -> ``BatchInfo``). The task each dead worker was running is read
        from the tracker; :func:`_crash.death_report` names the worker whose task is
        known. Returns a factory of the error that every pending batch fails with."""
        table = dict(batches)
        return _crash.death_report(dead, lambda pid: _tracking.tracker().describe_pid(pid, table), cause)

    def retrieve_result_callback(self, out: Any) -> Any:
        """The batch's results, or raise its exception (``WorkerDiedError`` when a worker died)."""
        return out.result()

    def get_nested_backend(self) -> tuple[Any, int | None]:
        """Threads sized so workers x threads stays within the CPUs:
        ``('threading', inner_max_num_threads or max(cpu_count() // n_jobs, 1))``,
        or ``('sequential', 1)`` when that is 1."""
        return nested_threads(self.inner_max_num_threads, self._n_jobs)
