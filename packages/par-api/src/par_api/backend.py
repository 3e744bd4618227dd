"""The backend interface every backend package implements, and the transport hooks
that the composition root (``par``) hands to process backends.

The method names and signatures follow joblib's documented custom-backend API, so a
backend written for joblib ports by changing its import. The scheduler drives a backend
like this::

    n = backend.configure(n_jobs, parallel=..., hooks=TransportHooks(...), **kwargs)
    backend.start_call()
    fut = backend.submit(batch, callback=on_done)   # batch() -> list of results
    # ... on_done(fut) fires when the batch is finished (success or failure)
    results = backend.retrieve_result_callback(fut) # results, or raises the error
    backend.stop_call()
    backend.terminate()                              # when the pool is no longer needed

A minimal backend overrides ``effective_n_jobs`` and ``submit`` (and usually
``configure``/``terminate`` to own a pool). Class attributes carry the defaults so that
a subclass whose ``__init__`` does not call ``super().__init__()`` still works.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .njobs import normalize_n_jobs


@dataclass(frozen=True)
class TransportHooks:
    """What a process backend needs to run par tasks well, built by ``par``.

    A backend never imports the packages behind these (memmapping, serialization,
    thread limits); it only applies them:

    - ``serialize_batch``: called in the parent on each batch before it is sent to a
      worker process; returns the (picklable, callable) object to send instead. It
      raises at dispatch when the batch cannot be pickled. The object may carry
      ``functions``, a tuple of the batch's first distinct callables (at most 4), so
      that a backend can name the batch later (when its worker dies) without keeping
      its tasks alive or walking them again. The object (and the results it returns)
      may refer to files of this machine (large callables, messages through
      ``/dev/shm``): a backend whose workers run on other machines does not set
      ``supports_transport_hooks``.
    - ``env``: environment variables to set in worker processes before they start
      (e.g. thread limits of native libraries). A change means new workers.
    - ``initializer``/``initargs``: run once in each new worker process.
    - ``max_tasks_per_child``/``max_worker_memory`` (bytes): replace a worker process
      once it has run that many tasks, or when its resident memory after a batch
      exceeds that size; None means no limit. A change means new workers.
    """

    serialize_batch: Callable[[Any], Any] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    initializer: Callable[..., None] | None = None
    initargs: tuple[Any, ...] = ()
    max_tasks_per_child: int | None = None
    max_worker_memory: int | None = None


class ParallelBackendBase(ABC):
    """Base class of par backends (the same contract as joblib's custom backend API)."""

    #: n_jobs used when the caller gives None and no parallel_config sets one.
    default_n_jobs: int = 1
    #: The scheduler stops a batch running longer than ``timeout`` by terminating the
    #: backend's workers; thread backends cannot stop a running thread.
    supports_timeout: bool = False
    #: Per-task timeouts: with a failure policy (``on_error`` other than ``'raise'``) and
    #: ``timeout``, a task running longer than ``timeout`` seconds in its worker fails its
    #: batch. Process workers (``uses_threads`` false) end themselves with exit code
    #: ``TASK_TIMEOUT_EXIT_CODE`` and the backend fails the batch with a
    #: ``WorkerDiedError`` carrying that ``exitcode`` (as for any worker death); a thread
    #: backend watches ``task_timeout`` itself and fails the batch with a ``TimeoutError``,
    #: and so does a process backend with ``watches_task_timeout``.
    supports_task_timeout: bool = False
    #: With ``supports_task_timeout``: the backend measures ``task_timeout`` itself and
    #: fails an overrunning batch with a ``TimeoutError``, also when its workers are
    #: processes (``uses_threads`` false), whose tasks then run with no watchdog that ends
    #: the process (the cluster backends: their workers are shared and must not exit;
    #: ``dask`` cancels the future and interrupts its thread, ``ray`` cancels the task
    #: with ``ray.cancel(..., force=True)``).
    watches_task_timeout: bool = False
    #: Set by the scheduler before ``start_call`` on a backend with
    #: ``supports_task_timeout``: the call's per-task timeout in seconds, or None when
    #: none applies (a backend may expect its workers to end themselves meanwhile).
    task_timeout: float | None = None
    #: Workers share the caller's memory (``require='sharedmem'`` is satisfied).
    supports_sharedmem: bool = False
    #: Workers are threads of the caller's process.
    uses_threads: bool = False
    #: ``inner_max_num_threads`` can be honoured (process workers with an environment).
    supports_inner_max_num_threads: bool = False
    #: The completion callback passed to ``submit`` delivers results (always true for
    #: par backends; kept for joblib compatibility).
    supports_retrieve_callback: bool = True
    #: Results can be yielded as a generator (``return_as='generator'``).
    supports_return_generator: bool = True
    #: Let the scheduler size batches adaptively (``batch_size='auto'``); when False the
    #: scheduler uses ``compute_batch_size()``.
    supports_auto_batching: bool = False
    #: Tasks cross a process boundary: ``par`` builds ``TransportHooks`` (serialization,
    #: memmapping of large arrays, worker environment) for this backend.
    supports_transport_hooks: bool = False

    nesting_level: int | None = None
    inner_max_num_threads: int | None = None
    parallel: Any = None
    hooks: TransportHooks | None = None

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.nesting_level = nesting_level
        self.inner_max_num_threads = inner_max_num_threads

    # -- sizing -----------------------------------------------------------------
    @abstractmethod
    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """The number of workers this backend will really use for ``n_jobs``.

        Must raise ``ValueError`` for ``n_jobs == 0``. The default rule for local
        backends is :func:`par_api.normalize_n_jobs`.
        """

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        """Prepare the backend for a call (or a ``with Parallel(...)`` block).

        Receives the requested ``n_jobs``, the calling ``Parallel`` (for its options),
        the soft/hard hints and extra keyword arguments: ``hooks`` (a
        :class:`TransportHooks`, for process backends) and whatever the user passed to
        ``Parallel(**backend_kwargs)`` (e.g. ``initializer``/``initargs``).
        Returns the effective number of workers. May start a pool.
        """
        self.parallel = parallel
        self.hooks = backend_kwargs.get("hooks")
        # Remembered so that abort_everything(ensure_ready=True) can configure again.
        self._last_configure = dict(
            n_jobs=n_jobs, parallel=parallel, prefer=prefer, require=require, **backend_kwargs
        )
        return self.effective_n_jobs(n_jobs)

    # -- running ------------------------------------------------------------------
    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Any:
        """Schedule ``func()`` (a batch; returns the list of its results).

        Returns a future-like object ``out``. ``callback(out)`` must be called exactly
        once when ``func`` has finished, whether it succeeded or failed.

        What a backend may rely on (the scheduler, ``par_scheduler``, guarantees it):

        - ``submit`` is never re-entered from its own callback: the scheduler calls it
          from its dispatching thread only, never from inside ``callback`` and never
          while holding a lock that ``callback`` takes;
        - ``callback`` may be fired from any thread, even synchronously inside
          ``submit``, and while the backend holds its own (non-reentrant) locks: it only
          records the outcome (calling :meth:`retrieve_result_callback`) and wakes the
          scheduler; it never calls back into the backend otherwise.

        The default delegates to a legacy ``apply_async`` when a subclass defines one.
        """
        if type(self).apply_async is not ParallelBackendBase.apply_async:
            return self.apply_async(func, callback=callback)
        raise NotImplementedError(f"{type(self).__name__} must implement submit(func, callback=None)")

    def apply_async(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Any:
        """Legacy name of :meth:`submit` (joblib < 1.3 backends)."""
        raise NotImplementedError

    def retrieve_result_callback(self, out: Any) -> Any:
        """Return the result carried by ``out`` (what ``submit`` returned and the callback
        received), or raise the exception of the failed batch."""
        if hasattr(out, "result"):
            return out.result()
        if hasattr(out, "get"):
            return out.get()
        return out

    # -- call life cycle ----------------------------------------------------------
    def start_call(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Called before the first batch of a call is submitted."""

    def stop_call(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Called after the last result of a call was retrieved (or the call failed)."""

    def terminate(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Release the workers (end of a call, or of a ``with Parallel`` block)."""

    def end_config(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Called once when the ``parallel_config``/``parallel_backend`` block that built this
        instance from a backend name ends: release what the backend opened for that block
        (a connection to a cluster, say). Not called for an instance the user passed in."""

    def compute_batch_size(self) -> int:
        """Tasks per batch when the scheduler does not size batches itself."""
        return 1

    def batch_completed(self, batch_size: int, duration: float) -> None:  # noqa: B027 - an optional hook, not abstract
        """Told after each batch: its size and how long it took (seconds)."""

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Stop every running and pending task (first error, timeout, Ctrl-C).

        With ``ensure_ready``, the backend must be usable again afterwards (the next
        call in a ``with Parallel(...)`` block works). The default terminates, then calls
        ``configure`` again with the arguments of the last ``ParallelBackendBase.configure``
        (a subclass that overrides ``configure`` without calling it is only terminated).
        """
        self.terminate()
        if ensure_ready:
            args = getattr(self, "_last_configure", None)
            if args is not None:
                self.configure(**args)

    def get_nested_backend(self) -> tuple[Any, int | None]:
        """The backend (instance or name) and n_jobs for a ``Parallel`` running inside a
        task of this backend. Default: sequential, so nested calls never over-subscribe."""
        return "sequential", 1

    def in_main_thread(self) -> bool:
        """Whether the caller runs in the main thread (joblib's helper, e.g. for backends
        that install signal handlers)."""
        return threading.current_thread() is threading.main_thread()

    @contextlib.contextmanager
    def retrieval_context(self) -> Iterator[None]:
        """Context around the wait for results (e.g. to release a cluster slot)."""
        yield

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class AutoBatchingMixin:
    """Mark a backend as wanting the scheduler's adaptive batch sizing (joblib name)."""

    supports_auto_batching = True


def default_effective_n_jobs(n_jobs: int | None) -> int:
    """The rule used by local backends: see :func:`par_api.normalize_n_jobs`."""
    return normalize_n_jobs(n_jobs)
