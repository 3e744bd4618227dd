"""``Parallel``: the composition root.

Reads the parameters (falling back on the active ``parallel_config`` for those not
given), picks the backend, builds the transport hooks for process backends
(memmapping reducers from ``par_memmap`` + a per-call ``par_serialization``
serializer + thread limits from ``par_threadlimits``) and hands the iterable to
``par_scheduler.run``.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import par_scheduler
import par_serialization
import par_threadlimits
from par_api import (
    ParallelBackendBase,
    TaskTuple,
    TransportHooks,
    backend_instance,
    check_forward_output,
    check_inner_max_num_threads_supported,
    check_max_tasks_per_child,
    check_max_worker_memory,
    check_mmap_mode,
    check_n_jobs,
    check_on_error,
    check_prefer_require,
    check_retries,
    check_retry_on,
    check_temp_folder,
    check_verbose,
    default,
    default_backend_name,
    get_active_config,
    is_default,
    make_backend,
    parse_nbytes,
)
from par_scheduler import ProgressEvent

from . import _forwarding
from .progress import TqdmLike, check_progress, make_progress_listener

#: Largest fixed batch used with ``max_tasks_per_child`` and ``batch_size='auto'``.
MAX_RECYCLING_BATCH = 64


def _pick(value: Any, name: str, cfg: Any) -> Any:
    """The value passed, else the active configuration's (set or documented default)."""
    if is_default(value):
        return getattr(cfg, name)
    return value


def _pick_unset_none(value: Any, name: str, cfg: Any) -> Any:
    """For ``n_jobs``, the one parameter the spec documents None as "unset" for: an
    explicit None takes the enclosing ``parallel_config``'s value, as in joblib (the way
    libraries pass ``n_jobs=self.n_jobs``). For ``prefer``/``require``/``temp_folder``
    an explicit None is a value that overrides the configuration, as in joblib 1.6."""
    if value is None:
        return getattr(cfg, name)
    return _pick(value, name, cfg)


class _CallBlobs:
    """par_serialization's blob store (large callables pickled by value, written once per
    call) in the call's memmap folder: removed with the call's arrays, and swept like
    them by a later process when this one is killed."""

    __slots__ = ("_temp",)

    def __init__(self, temp: Any) -> None:
        self._temp = temp

    def put(self, token: str, data: bytes) -> str:
        path: str = self._temp.write_bytes(data, prefix="blob_")
        return path


class _LateSerializer:
    """A call's ``TransportHooks.serialize_batch``, handed to the backend before the call's
    serializer exists: ``Parallel._configure`` builds that (par_memmap, imported then,
    the memmap folder's manager, the reducers, the pickler: ~6 ms of CPU in a first call)
    after ``backend.configure``, which starts the workers of a new pool, so that it runs
    while they start. No batch is serialized before ``configure`` returns."""

    __slots__ = ("serialize",)

    def __init__(self) -> None:
        self.serialize: Callable[[Any], Any] | None = None

    def __call__(self, batch: Any) -> Any:
        serialize = self.serialize
        if serialize is None:  # pragma: no cover - configure failed: no batch is sent
            raise RuntimeError("the call's serializer was not built (its configure failed)")
        return serialize(batch)


def _loop_running_here() -> bool:
    """Whether an asyncio event loop runs in the calling thread. None can before asyncio
    is imported: then neither asyncio (~14 ms of CPU) nor ``par._aio`` is imported, which a
    first call outside any event loop would otherwise pay."""
    if "asyncio" not in sys.modules:
        return False
    from ._aio import loop_running_here

    return loop_running_here()


class Parallel:
    """Helper class for readable parallel mapping: ``Parallel(n_jobs=2)(delayed(f)(x) for x in xs)``.

    Parameters are those of joblib's ``Parallel`` (see the spec): ``n_jobs``, ``backend``
    (a name, a ``ParallelBackendBase`` instance or a multiprocessing context),
    ``return_as`` ('list', 'generator', 'generator_unordered'), ``verbose``, ``timeout``
    (seconds per task; the built-in ``TimeoutError`` is raised), ``pre_dispatch``,
    ``batch_size``, ``temp_folder``, ``max_nbytes``, ``mmap_mode``, ``prefer``,
    ``require``; par adds ``progress`` (True, a tqdm-like object, or a callable receiving
    progress events), ``max_tasks_per_child`` (replace a process worker after that many
    tasks), ``max_worker_memory`` (bytes or ``'2G'``: replace a process worker whose
    resident memory after a batch exceeds it) and ``forward_output`` (default True:
    logging records and prints of process workers reach the parent),
    and a failure policy: ``on_error`` ('raise', the default and
    joblib's behaviour; 'return': the exception takes the failed task's place;
    'collect': an ``ExceptionGroup`` of the failures at the end, the results as its
    ``results`` attribute), ``retries`` (a failed task runs again up to this many more
    times: after its worker died, or an exception of a type in ``retry_on``) and
    ``retry_on`` (a tuple of exception classes). With a policy other than 'raise', a
    batch whose worker process died is run again task by task on fresh workers. Extra keyword arguments go to the backend's ``configure`` (e.g.
    ``initializer=``/``initargs=`` for process backends). Parameters left at their
    default take the value of an enclosing ``parallel_config``.

    Used as a context manager, one pool (and one temp folder) serves every call of
    the block.
    """

    def __init__(
        self,
        n_jobs: int | None = default(None),
        backend: str | ParallelBackendBase | Any | None = default(None),
        return_as: Literal["list", "generator", "generator_unordered"] = "list",
        verbose: int = default(0),
        timeout: float | None = None,
        pre_dispatch: int | str = "2 * n_jobs",
        batch_size: int | Literal["auto"] = "auto",
        temp_folder: str | os.PathLike[str] | None = default(None),
        max_nbytes: int | str | None = default("1M"),
        mmap_mode: Literal["r+", "r", "w+", "c"] | None = default("r"),
        prefer: Literal["processes", "threads"] | None = default(None),
        require: Literal["sharedmem"] | None = default(None),
        progress: bool | TqdmLike | type[TqdmLike] | Callable[[ProgressEvent], object] | None = default(None),
        max_tasks_per_child: int | None = default(None),
        max_worker_memory: int | str | None = default(None),
        forward_output: bool = default(True),
        on_error: Literal["raise", "return", "collect"] = default("raise"),
        retries: int = default(0),
        retry_on: tuple[type[BaseException], ...] = default(()),
        **backend_kwargs: Any,
    ) -> None:
        cfg = get_active_config()
        self.verbose: int = check_verbose(_pick(verbose, "verbose", cfg))
        self.timeout = par_scheduler.check_timeout(timeout)
        self.return_as = par_scheduler.check_return_as(return_as)
        self.batch_size = par_scheduler.check_batch_size(batch_size)
        self.temp_folder = check_temp_folder(_pick(temp_folder, "temp_folder", cfg))
        self.max_nbytes = _pick(max_nbytes, "max_nbytes", cfg)
        self._max_nbytes = parse_nbytes(self.max_nbytes)  # the one rule; memmap gets bytes
        self.mmap_mode = check_mmap_mode(_pick(mmap_mode, "mmap_mode", cfg))
        self.prefer, self.require = check_prefer_require(
            _pick(prefer, "prefer", cfg), _pick(require, "require", cfg)
        )
        self.on_error = check_on_error(_pick(on_error, "on_error", cfg))
        self.retries = check_retries(_pick(retries, "retries", cfg))
        self.retry_on = check_retry_on(_pick(retry_on, "retry_on", cfg))
        self.progress = _pick(progress, "progress", cfg)
        check_progress(self.progress)
        self._backend_kwargs = backend_kwargs
        self.max_tasks_per_child = check_max_tasks_per_child(
            _pick(max_tasks_per_child, "max_tasks_per_child", cfg)
        )
        self.max_worker_memory = check_max_worker_memory(_pick(max_worker_memory, "max_worker_memory", cfg))
        self.forward_output: bool = check_forward_output(_pick(forward_output, "forward_output", cfg))
        explicit_limits = [
            name
            for name, value in (
                ("max_tasks_per_child", max_tasks_per_child),
                ("max_worker_memory", max_worker_memory),
            )
            if not is_default(value) and value is not None
        ]

        n_jobs = check_n_jobs(_pick_unset_none(n_jobs, "n_jobs", cfg))
        self._backend, self._inner_max_num_threads = self._resolve_backend(backend, cfg)
        # Still unset: the backend's default (1 for local backends, every worker for dask),
        # as joblib's Parallel reports it.
        self.n_jobs: int = n_jobs if n_jobs is not None else self._backend.default_n_jobs
        if self._backend.nesting_level is None:
            # 0 in the caller, 1 inside a task: process backends use it to refuse starting
            # processes from the threads of a thread backend (joblib's rule)
            self._backend.nesting_level = cfg.nesting_level
        # Inside a worker, a Parallel that did not choose its backend gets the nested one,
        # capped to the worker's share of the CPUs so outer x inner stays within cpu_count.
        self._nested_cap: int | None = (
            cfg.n_jobs if cfg.nested and (is_default(backend) or backend is None) else None
        )
        if explicit_limits and not self._backend.supports_transport_hooks:
            raise ValueError(
                f"{explicit_limits[0]} replaces worker processes and works with the 'loky' and "
                f"'multiprocessing' backends, not with {type(self._backend).__name__}: remove it, or "
                f"use one of those backends."
            )
        self.pre_dispatch = pre_dispatch
        par_scheduler.parse_pre_dispatch(pre_dispatch, 1)  # validate now: never evaluated as code

        self._lock = threading.Lock()
        self._running = False
        self._managed = False
        self._call_backend: ParallelBackendBase | None = None
        self._effective_n_jobs: int | None = None
        self._temp: Any = None
        self._serializer: Any = None
        self._live_result: weakref.ref[Any] | None = None

    # -- backend choice -------------------------------------------------------------
    def _resolve_backend(self, backend: Any, cfg: Any) -> tuple[ParallelBackendBase, int | None]:
        inner = cfg.inner_max_num_threads
        if not is_default(backend) and backend is not None:
            obj = backend_instance(backend)
            if self.require == "sharedmem" and not obj.supports_sharedmem:
                raise ValueError(
                    f"backend={backend!r} does not support shared memory, but require='sharedmem' was "
                    f"given: use backend='threading', or drop require='sharedmem'."
                )
            if inner is not None and obj.supports_inner_max_num_threads:
                obj.inner_max_num_threads = obj.inner_max_num_threads or inner
            return obj, obj.inner_max_num_threads
        if cfg.backend is not None:
            obj = cfg.backend
            if self.require == "sharedmem" and not obj.supports_sharedmem:
                # The hard constraint wins over the configured backend; n_jobs is kept.
                if self.verbose >= 10:
                    print(
                        f"Using ThreadingBackend as backend instead of {type(obj).__name__} as the latter "
                        f"does not provide shared memory semantics."
                    )
                return make_backend("threading"), None
            return obj, obj.inner_max_num_threads
        name = default_backend_name()
        if self.prefer == "threads" or self.require == "sharedmem":
            name = "threading"
        obj = make_backend(name)
        if inner is not None:
            check_inner_max_num_threads_supported(obj, inner)
            obj.inner_max_num_threads = inner
        return obj, obj.inner_max_num_threads

    # -- life cycle -----------------------------------------------------------------
    def _configure(self) -> tuple[ParallelBackendBase, int]:
        backend = self._backend
        n_jobs = backend.effective_n_jobs(self.n_jobs)
        if self._nested_cap is not None:
            # the worker's remaining budget (PAR_THREAD_BUDGET in process workers)
            cap = min(self._nested_cap, par_threadlimits.nested_budget(self._nested_cap))
            n_jobs = max(min(n_jobs, cap), 1)
        one_worker = n_jobs == 1 and not self._backend_kwargs
        if one_worker and (backend.uses_threads or backend.supports_transport_hooks):
            # One worker: run in the caller's thread. Not when backend arguments were given
            # (initializer=...): they set up workers, so the chosen backend checks them
            # (naming the accepted ones) and runs the tasks in its one worker.
            backend = make_backend("sequential")
        hooks = None
        late: _LateSerializer | None = None
        if backend.supports_transport_hooks:
            budget = par_threadlimits.thread_budget(n_jobs, self._inner_max_num_threads)
            late = _LateSerializer()
            serialize_batch: Any = late
            if self.forward_output:
                serialize_batch = _forwarding.forwarding_serializer(late)
            hooks = TransportHooks(
                serialize_batch=serialize_batch,
                env=par_threadlimits.worker_env(n_jobs, self._inner_max_num_threads),
                initializer=par_threadlimits.worker_initializer,
                initargs=(budget,),
                max_tasks_per_child=self.max_tasks_per_child,
                max_worker_memory=self.max_worker_memory,
            )
        n = backend.configure(
            n_jobs=n_jobs,
            parallel=self,
            prefer=self.prefer,
            require=self.require,
            hooks=hooks,
            **self._backend_kwargs,
        )
        if late is not None:
            try:
                import par_memmap

                if self._temp is None:
                    self._temp = par_memmap.TempFolderManager(self.temp_folder, verbose=self.verbose)
                reducers = par_memmap.make_reducers(self._temp, self._max_nbytes, self.mmap_mode)
                self._serializer = par_serialization.BatchSerializer(
                    reducers, result_reducers=par_memmap.make_result_reducers(), blob_store=_CallBlobs(self._temp)
                )
            except BaseException:
                backend.terminate()  # its workers started: release them as the call's end would
                raise
            late.serialize = self._serializer
        self._call_backend = backend
        self._effective_n_jobs = n
        if self.timeout is not None and not backend.supports_timeout:
            # joblib's warning, word for word (n_jobs=1 and the sequential backend run in the
            # caller's thread, where a task cannot be interrupted)
            warnings.warn(
                f"The backend class {type(backend).__name__!r} does not support timeout. You have "
                f"set 'timeout={self.timeout:g}' in Parallel but the 'timeout' parameter will not "
                f"be used.",
                UserWarning,
                stacklevel=4,
            )
        return backend, n

    def _release(self) -> None:
        backend, self._call_backend = self._call_backend, None
        serializer, self._serializer = self._serializer, None
        temp, self._temp = self._temp, None
        try:
            if backend is not None:
                backend.terminate()
        finally:
            if serializer is not None:
                serializer.close()
            if temp is not None:
                temp.cleanup()

    def __enter__(self) -> Parallel:
        self._configure()
        self._managed = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._managed = False
        live, self._live_result = self._live_result, None
        result = live() if live is not None else None
        if self._running and result is not None and hasattr(result, "close"):
            # Leaving the block with a generator result not exhausted: end that call now
            # (the batches not started are dropped and not waited for, as in joblib),
            # rather than when the generator is collected, possibly at interpreter exit.
            result.close()
        self._release()

    # -- the call ---------------------------------------------------------------------
    def __call__(self, iterable: Iterable[TaskTuple]) -> list[Any] | Iterator[Any]:
        """Run the tasks. With ``return_as='generator'``/``'generator_unordered'``, called
        where an event loop runs in this thread (a coroutine, a Jupyter cell), the result
        is a :class:`ParallelGenerator`, usable with ``for`` and ``async for``; elsewhere
        it is a plain generator, as in joblib (``ParallelGenerator(gen)`` makes it
        async-iterable)."""
        return self._call(iterable, self.return_as, driven=_loop_running_here())

    async def acall(self, iterable: Iterable[TaskTuple]) -> list[Any]:
        """``await parallel.acall(tasks)``: the list of results, in task order, without
        blocking the event loop (the call runs in a thread of its own, which also reads
        ``iterable`` lazily). Cancelling the awaiting task aborts the call as an error
        does. Whatever ``return_as`` is, a list is returned."""
        from ._aio import ParallelGenerator

        gen = self._call(iterable, "generator", driven=True)
        assert isinstance(gen, ParallelGenerator)
        return await gen.collect()

    def _call(self, iterable: Iterable[TaskTuple], return_as: str, driven: bool) -> list[Any] | Iterator[Any]:
        with self._lock:
            if self._running:
                raise RuntimeError(
                    "This Parallel instance is already running a call (a generator result not yet "
                    "exhausted?). Consume or close it first, or use another Parallel instance."
                )
            self._running = True
        try:
            if self._managed and self._call_backend is not None:
                backend, n_jobs = self._call_backend, self._effective_n_jobs or 1
            else:
                backend, n_jobs = self._configure()
            listeners: list[Callable[[Any], None]] = []
            if self.verbose:
                listeners.append(par_scheduler.VerbosePrinter(self.verbose, n_jobs, name=type(self).__name__))
            progress_listener = make_progress_listener(self.progress)
            if progress_listener is not None:
                listeners.append(progress_listener)
            limits = par_threadlimits.parent_limits(
                par_threadlimits.thread_backend_limit(n_jobs, self._inner_max_num_threads)
                if backend.uses_threads and n_jobs > 1
                else None
            )
            limits.__enter__()
        except BaseException:
            self._running = False
            if not self._managed:
                self._release()
            raise

        def on_finish(error: BaseException | None) -> None:
            try:
                limits.__exit__(None, None, None)
                if progress_listener is not None and hasattr(progress_listener, "close"):
                    progress_listener.close()
                if not self._managed:
                    self._release()
            finally:
                self._running = False

        run = functools.partial(
            par_scheduler.run,
            backend,
            iterable,
            n_jobs=n_jobs,
            batch_size=self._batch_size_for(backend),
            pre_dispatch=self.pre_dispatch,
            return_as=return_as,
            timeout=self.timeout,
            listeners=listeners,
            ensure_ready=self._managed,
            on_finish=on_finish,
            on_error=self.on_error,
            retries=self.retries,
            retry_on=self.retry_on,
        )
        result: list[Any] | Iterator[Any]
        if driven and return_as != "list":
            # An event loop runs in this thread: never block it, not even to start.
            from ._aio import ParallelGenerator

            result = ParallelGenerator(start=run)  # type: ignore[arg-type]
        else:
            result = run()  # no loop here: joblib's plain generator (or list)
        if self._managed and return_as != "list":
            self._live_result = weakref.ref(result)  # closed by __exit__ if not exhausted
        return result

    def _batch_size_for(self, backend: ParallelBackendBase) -> int | str:
        """``batch_size``, except with automatic batching on process backends: with
        ``max_worker_memory``, one task per batch (the memory is checked after each
        batch); with ``max_tasks_per_child=N``, fixed batches of the largest divisor of N
        up to :data:`MAX_RECYCLING_BATCH` (a worker retires after the batch that reaches
        N tasks, so batches dividing N make it run exactly N)."""
        limit = self.max_tasks_per_child
        if self.batch_size != "auto" or not backend.supports_transport_hooks:
            return self.batch_size
        if self.max_worker_memory is not None:
            return 1  # memory is checked after each batch: then after each task
        if limit is None:
            return self.batch_size
        return max(d for d in range(1, min(limit, MAX_RECYCLING_BATCH) + 1) if limit % d == 0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_jobs={self.n_jobs})"
