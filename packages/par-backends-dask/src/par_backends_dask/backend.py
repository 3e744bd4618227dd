"""The ``dask`` backend: each batch of tasks is one ``distributed`` future.

Driven by the par scheduler like every backend (``configure`` → ``start_call`` →
``submit``/callback/``retrieve_result_callback`` → ``stop_call``; ``abort_everything``
on the first error, a timeout or an interrupt). What is specific to dask:

- **The cluster**: ``client=``, else ``scheduler_address=``, else ``PAR_DASK_SCHEDULER``,
  else the worker's client (inside a task) or the current ``distributed.Client``
  (see :mod:`par_backends_dask._client`). Nothing connects before the first call.
- **n_jobs**: ``-1`` (and ``None``, the default) is every thread of the cluster at
  configure time, ``-k`` all but ``k - 1`` of them; a positive ``n_jobs`` is taken as is
  (it bounds the batches in flight, not the cluster). The scheduler sizes the batches.
- **Arguments**: large and repeated arguments are scattered once per call
  (:mod:`par_backends_dask._scatter`).
- **Errors** come back with their own type and the worker's traceback (dask's
  ``Future.result``). The first error makes the scheduler call ``abort_everything``,
  which cancels the call's pending futures on the cluster (a task already running
  on a worker thread finishes in the background: threads cannot be stopped). A batch
  whose workers died more often than ``distributed.scheduler.allowed-failures`` raises
  :class:`par_api.WorkerDiedError`; before that, dask reruns it on another worker.
- **Nesting**: a task's own ``Parallel`` runs on the same cluster; while a call made
  from a task running on a dask worker waits for its results, that task leaves the
  worker's thread pool (``distributed.secede``; ``rejoin`` at the end of the call), so
  waiting parents never hold every thread while their children queue.
- **Completion watch**: one thread per backend (``par-dask-watch``), started by the first
  ``submit`` and ended by ``stop_call``/``abort_everything``/``terminate`` (or after
  ``watch_idle`` seconds with nothing pending), learns that batches finished from a
  ``distributed.as_completed`` given each future as it is submitted (it waits on the
  client's event loop: no ``Future.add_done_callback``, whose ``Dask-Callback-Thread``
  would outlive the call), and runs their callbacks. Every ``watch_interval`` seconds it
  also checks the pending batches: a future that is done but was not reported within
  ``watch_grace`` seconds is completed by the watch; a batch pending for more than
  ``watch_after`` seconds is looked up on the scheduler, and one that the scheduler
  reports finished while this client still waits for it, for ``watch_grace`` seconds, is
  submitted again under a new key (with a warning in the log), at most ``max_recoveries``
  times before it fails with a ``RuntimeError``, and only while its call is live (never
  after ``abort_everything``). A batch that the scheduler does not know is lost only once
  the scheduler knows a probe (a no-op task, ``par-probe-*``) submitted after it: the
  scheduler reads a client's messages in order, and one under load can take seconds to
  register a graph (nested calls in full test runs on a loaded 2-core machine failed
  with "the dask scheduler does not know it ... 3 times in a row": a delay counted as a
  loss). A batch whose probe the
  scheduler has still not registered after ``watch_stall`` seconds fails with a
  ``RuntimeError`` naming the stall. A lost message thus costs seconds, not a hang, and a
  slow scheduler costs only its delay.
- **Per-task timeouts** (``task_timeout``, set by the scheduler with ``on_error`` other
  than ``'raise'``): each batch reports its start on its worker
  (:mod:`par_backends_dask._timeouts`), and the watch fails a batch that has run longer
  than ``task_timeout`` seconds with a ``TimeoutError``: its future is cancelled and its
  thread on the worker is interrupted (which stops Python code; a call blocked in C code
  keeps the worker's thread until it returns). The other batches keep running. A
  batch's deadline goes on a heap once both its start is reported and its future is
  registered (the report may come first); the watch pops what is due.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from concurrent.futures import Future as _LocalFuture
from functools import partial
from typing import Any

import distributed
from par_api import ParallelBackendBase, WorkerDiedError, check_n_jobs, parse_nbytes

from ._client import ENV_SCHEDULER, NO_CLIENT_MESSAGE, in_worker_task, release_client, resolve_client
from ._pickling import KeepCode
from ._scatter import DEFAULT_SCATTER_THRESHOLD, CallArguments, run_batch
from ._timeouts import forget, interrupt_soon, run_timed, watch_start

__all__ = ["DaskBackend"]

_BACKEND_KWARGS = ("client", "scheduler_address", "scatter_threshold", "connect_timeout")

#: joblib's extra constructor arguments: ``scatter`` (objects sent to every worker once),
#: ``wait_for_workers_timeout`` (seconds to wait for a first worker; 0/None: no wait); the
#: other keywords are ``client.submit``'s (``workers=``, ``resources=``, ``retries=``...).
_JOBLIB_KWARGS = ("scatter", "wait_for_workers_timeout")


def _probe_task() -> None:
    """A no-op task. Run once on the cluster while it has no worker: waiting for its result
    waits for a first worker (and asks an adaptive cluster for one). Also the completion
    watch's probe (``par-probe-*`` keys): the scheduler knowing it tells that it has read
    every batch this client submitted before it."""


def _submit_keywords() -> frozenset[str]:
    import inspect

    names = set(inspect.signature(distributed.Client.submit).parameters)
    # set by the backend itself, or positional
    return frozenset(names - {"self", "func", "args", "kwargs", "key", "pure"})


def _check_submit_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    accepted = _submit_keywords()
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(
            f"DaskBackend got unexpected arguments {unknown}; accepted: "
            f"{', '.join(_BACKEND_KWARGS + _JOBLIB_KWARGS)} (and nesting_level, inner_max_num_threads), "
            f"and the keywords of distributed.Client.submit passed to every task: "
            f"{', '.join(sorted(accepted))}."
        )
    return kwargs


_local = threading.local()
_logger = logging.getLogger("par_backends_dask")


class _Batch:
    """A submitted batch: its current dask future, what ``client.submit`` was given (to
    submit it again) and the scheduler's completion callback, fired once."""

    __slots__ = (
        "args", "asked", "call", "callback", "fired", "future", "key", "recoveries", "since", "started",
        "suspect_since", "timeout", "worker",
    )  # fmt: skip

    def __init__(
        self,
        args: tuple[Any, ...],
        callback: Callable[[Any], None] | None,
        timeout: float | None,
        call: CallArguments,
    ) -> None:
        self.args = args  # (batch, *scattered futures)
        self.callback = callback
        self.timeout = timeout  # per-task timeout, or None
        self.call = call  # the arguments of its call: the call is live while the backend has them
        self.key: str | None = None  # the dask key it is (being) submitted under
        self.future: Any = None
        self.fired = False
        self.since = time.monotonic()  # submitted (or submitted again) at
        self.suspect_since: float | None = None  # first seen done here or lost there
        self.asked = 0.0  # last looked up on the scheduler at
        self.recoveries = 0
        self.started: float | None = None  # its start on a worker was reported at
        self.worker: str | None = None  # the worker it started on


class _Watch:
    """One run of the completion watch thread: the ``distributed.as_completed`` that
    reports the futures of its batches as they finish (no thread of its own: it waits on
    the client's event loop), and how the thread is woken and stopped."""

    __slots__ = ("_cond", "_poked", "completions", "probe", "stopping", "thread")

    def __init__(self, completions: Any) -> None:
        self.completions = completions
        self.stopping = False
        self.thread: threading.Thread | None = None
        self._poked = False
        # (the probe's dask future, when it was submitted): see DaskBackend._check
        self.probe: tuple[Any, float] | None = None
        # as_completed notifies this condition for each future it reports
        self._cond: threading.Condition = completions.thread_condition

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, or until a future is reported or :meth:`wake`."""
        with self._cond:
            if not (self._poked or self.stopping or self.completions.has_ready()):
                self._cond.wait(timeout)
            self._poked = False

    def wake(self) -> None:
        with self._cond:
            self._poked = True
            self._cond.notify_all()


def _secede() -> bool:
    """Leave the dask worker's thread pool when running in a task that has not left it
    yet; True when this call seceded (and so must rejoin)."""
    if getattr(_local, "seceded", False) or not in_worker_task():
        return False
    try:
        distributed.secede()
    except (ValueError, KeyError, AttributeError):  # not a pool thread (e.g. an async task)
        return False
    _local.seceded = True
    return True


def _rejoin() -> None:
    if getattr(_local, "seceded", False):
        _local.seceded = False
        distributed.rejoin()


def _check_threshold(value: Any) -> int | None:
    try:
        return parse_nbytes(value, name="scatter_threshold")
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{exc} (scatter_threshold=None never scatters arguments)") from None


def _check_address(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise TypeError(
            f"scheduler_address must be the address of a dask scheduler as a str, e.g. "
            f"'tcp://127.0.0.1:8786', or None; got {type(value).__name__} {value!r}"
        )
    return value.strip()


def _check_client(value: Any) -> Any:
    if value is not None and not isinstance(value, distributed.Client):
        raise TypeError(f"client must be a distributed.Client or None, got {type(value).__name__} {value!r}")
    return value


def _batch_key(batch: Any) -> str:
    """A readable, unique dask key: ``par-<first function name>-<hex>``."""
    name = "batch"
    tasks = getattr(batch, "tasks", None)
    if tasks:
        func = tasks[0][0]
        name = getattr(func, "__name__", None) or type(func).__name__
    return f"par-{name}-{uuid.uuid4().hex}"


class DaskBackend(ParallelBackendBase):
    """Run par batches on a ``dask.distributed`` cluster.

    ``DaskBackend(client=None, scheduler_address=None, scatter_threshold='1M',
    connect_timeout=None)``:

    - ``client``: a ``distributed.Client`` to use (never closed by the backend);
    - ``scheduler_address``: e.g. ``'tcp://127.0.0.1:8786'``; a client to it is opened
      on first use and cached for the process;
    - ``scatter_threshold``: arguments with a known size (``nbytes``) of at least this
      many bytes (an int or a string like ``'1M'``) are scattered to the cluster once
      per call; ``None`` never scatters (not even repeated arguments);
    - ``connect_timeout``: seconds (or a dask duration string) to wait for the scheduler;
      dask's ``distributed.comm.timeouts.connect`` when None.

    The same names are accepted by ``configure`` (``Parallel(backend='dask', **kwargs)``)
    and override the constructor's for that configuration. The instance pickles without
    its client (a nested backend reconnects to the same scheduler address).
    """

    default_n_jobs = -1
    supports_timeout = True
    supports_sharedmem = False
    uses_threads = False
    supports_inner_max_num_threads = False
    supports_retrieve_callback = True
    supports_return_generator = True
    supports_auto_batching = True
    supports_transport_hooks = False
    #: Per-task timeouts (``on_error`` other than ``'raise'``): measured by this backend
    #: from each batch's start on its worker; no watchdog ends a worker process.
    supports_task_timeout = True
    watches_task_timeout = True

    #: Completion watch (see the module docstring), in seconds.
    watch_interval = 1.0
    watch_idle = 10.0
    watch_after = 5.0
    watch_grace = 3.0
    max_recoveries = 3
    #: Seconds the scheduler may take to register what this client submitted (a probe
    #: submitted after a batch it does not know) before that batch fails with a
    #: ``RuntimeError``: until then an unknown batch is only slow, never submitted again.
    watch_stall = 60.0
    #: Seconds ``stop_call``/``abort_everything`` wait for the watch thread to end (it may
    #: be inside a completion callback); a warning is logged if it has not ended by then.
    watch_join_timeout = 10.0

    def __init__(
        self,
        client: Any = None,
        scheduler_address: str | None = None,
        scatter_threshold: int | str | None = DEFAULT_SCATTER_THRESHOLD,
        connect_timeout: float | str | None = None,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        scatter: Any = None,
        wait_for_workers_timeout: float | None = 10,
        **submit_kwargs: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self.submit_kwargs = _check_submit_kwargs(submit_kwargs)
        self.client = _check_client(client)
        self.scheduler_address = _check_address(scheduler_address)
        self.scatter_threshold = _check_threshold(scatter_threshold)
        self.connect_timeout = connect_timeout
        if wait_for_workers_timeout is not None and (
            isinstance(wait_for_workers_timeout, bool)
            or not isinstance(wait_for_workers_timeout, (int, float))
            or wait_for_workers_timeout < 0
        ):
            raise ValueError(
                f"wait_for_workers_timeout must be a number of seconds >= 0 (0 or None: do not "
                f"wait), got {wait_for_workers_timeout!r}"
            )
        self.wait_for_workers_timeout = wait_for_workers_timeout
        if scatter is not None and not isinstance(scatter, (list, tuple)):
            raise TypeError(f"scatter must be a list or tuple of objects, got {type(scatter).__name__}")
        self._scatter = list(scatter) if scatter is not None else []
        self._init_state()
        if self.client is None and self.scheduler_address is None and not in_worker_task():
            # Fail where the backend is chosen (parallel_config), as joblib does, not at
            # the first call.
            if not os.environ.get(ENV_SCHEDULER, "").strip():
                try:
                    distributed.get_client()
                except ValueError:
                    raise ValueError(
                        f"To use par with Dask first create a Dask Client. {NO_CLIENT_MESSAGE}"
                    ) from None

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._active_client: Any = None
        self._pending: dict[Any, _Batch] = {}  # current dask future -> its batch
        self._watch_state: _Watch | None = None  # the running completion watch
        self._args: CallArguments | None = None
        self._seceded_thread: int | None = None
        self._options: dict[str, Any] = {}
        self._cancelled: set[Any] = set()  # keys cancelled by abort_everything
        self._prescattered: tuple[Any, list[Any]] | None = None  # (client, futures of scatter=)
        # per-task timeouts: (deadline, n, batch, its key, its start) of each batch whose
        # start was reported, earliest first (stale ones are skipped when popped), and the
        # keys whose start reports this backend awaits (_timeouts.watch_start)
        self._deadlines: list[tuple[float, int, _Batch, str, float]] = []
        self._deadline_order = itertools.count()
        self._timed_keys: set[str] = set()

    # -- pickling (nested backends travel inside batches) -------------------------------
    def __getstate__(self) -> dict[str, Any]:
        address = self.scheduler_address
        client = self._active_client or self.client
        if client is not None:
            with contextlib.suppress(Exception):
                address = client.scheduler.address
        return {
            "scheduler_address": address,
            "scatter_threshold": self.scatter_threshold,
            "connect_timeout": self.connect_timeout,
            "nesting_level": self.nesting_level,
            "inner_max_num_threads": self.inner_max_num_threads,
            "submit_kwargs": self.submit_kwargs,
            "wait_for_workers_timeout": self.wait_for_workers_timeout,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.client = None
        self.scheduler_address = state["scheduler_address"]
        self.scatter_threshold = state["scatter_threshold"]
        self.connect_timeout = state["connect_timeout"]
        self.nesting_level = state["nesting_level"]
        self.inner_max_num_threads = state["inner_max_num_threads"]
        self.submit_kwargs = state.get("submit_kwargs", {})
        self.wait_for_workers_timeout = state.get("wait_for_workers_timeout", 10)
        self._scatter = []
        self._init_state()

    # -- the cluster ----------------------------------------------------------------
    def _option(self, name: str) -> Any:
        return self._options[name] if name in self._options else getattr(self, name)

    def get_client(self) -> distributed.Client:
        """The ``distributed.Client`` this backend submits to (resolved on first use;
        ``ValueError`` saying how to start one when there is none)."""
        client = self._active_client
        if client is None or client.status not in ("running", "connecting", "newly-created"):
            client = resolve_client(
                self._option("client"), self._option("scheduler_address"), self._option("connect_timeout")
            )
            self._active_client = client
        return client

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """``-1``/``None``: every thread of the cluster; ``-k``: all but ``k - 1``;
        ``n > 0``: ``n``. ``ValueError`` for 0 (``par_api.check_n_jobs``)."""
        n_jobs = check_n_jobs(n_jobs)
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs > 0:
            return n_jobs
        client = self.get_client()
        threads = sum(client.nthreads().values())
        if threads == 0 and self.wait_for_workers_timeout:
            # As joblib: wait for a first worker with a probe task, which also makes an
            # adaptive cluster start one (client.wait_for_workers would not).
            probe = client.submit(_probe_task, pure=False)
            try:
                probe.result(timeout=self.wait_for_workers_timeout)
            except (TimeoutError, distributed.TimeoutError) as exc:
                self._cancel_quietly(probe)
                raise TimeoutError(
                    f"DaskDistributedBackend has no worker after {self.wait_for_workers_timeout} seconds. "
                    f"Make sure that workers are started and can properly connect to the scheduler "
                    f"and increase the par/dask connection timeout with:\n\n"
                    f"parallel_config(backend='dask', "
                    f"wait_for_workers_timeout={max(10, 2 * self.wait_for_workers_timeout)})\n\n"
                    f"(par's dask backend is par_backends_dask.DaskBackend; the first sentence is "
                    f"joblib's, for code that matches it.)"
                ) from exc
            threads = sum(client.nthreads().values())
        return max(threads + 1 + n_jobs, 1)

    def configure(
        self,
        n_jobs: int | None = None,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        """Resolve the client and return the effective n_jobs. ``backend_kwargs`` may hold
        ``hooks`` (ignored: dask serializes the batches itself) and the constructor's
        arguments, which override the constructor's for this configuration."""
        backend_kwargs = dict(backend_kwargs)
        backend_kwargs.pop("hooks", None)
        unknown = sorted(set(backend_kwargs) - set(_BACKEND_KWARGS))
        if unknown:
            raise TypeError(
                f"backend 'dask' got unexpected arguments {unknown}; accepted: {', '.join(_BACKEND_KWARGS)}."
            )
        options: dict[str, Any] = {}
        if "client" in backend_kwargs:
            options["client"] = _check_client(backend_kwargs["client"])
        if "scheduler_address" in backend_kwargs:
            options["scheduler_address"] = _check_address(backend_kwargs["scheduler_address"])
        if "scatter_threshold" in backend_kwargs:
            options["scatter_threshold"] = _check_threshold(backend_kwargs["scatter_threshold"])
        if "connect_timeout" in backend_kwargs:
            options["connect_timeout"] = backend_kwargs["connect_timeout"]
        if options != self._options:
            self._active_client = None
        self._options = options
        self.parallel = parallel
        self.hooks = None
        self._last_configure = dict(
            n_jobs=n_jobs, parallel=parallel, prefer=prefer, require=require, **backend_kwargs
        )
        self.get_client()
        return self.effective_n_jobs(n_jobs)

    # -- a call -----------------------------------------------------------------------
    def start_call(self) -> None:
        """New per-call argument cache; leave the worker's thread pool when this call is
        made from a task running on a dask worker."""
        client = self.get_client()

        def scatter(objects: list[Any]) -> list[Any]:
            return client.scatter(objects, hash=False)  # type: ignore[no-any-return]

        args = CallArguments(scatter, self._option("scatter_threshold"))
        if self._scatter:
            # scatter= objects: sent to every worker once per client, used by every call
            if self._prescattered is None or self._prescattered[0] is not client:
                self._prescattered = (client, client.scatter(self._scatter, broadcast=True, hash=False))
            args.preload(self._scatter, self._prescattered[1])
        with self._lock:
            self._args = args
        if self._seceded_thread is None and _secede():
            self._seceded_thread = threading.get_ident()

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Any:
        """Send the batch ``func`` as one dask task; ``callback(future)`` fires once it is
        done (from the backend's completion watch thread). Returns the
        ``distributed.Future``."""
        with self._lock:
            args = self._args
        if args is None:  # submit without start_call (direct use of the backend)
            self.start_call()
            with self._lock:
                args = self._args
            assert args is not None
        batch, futures = args.prepare(func)
        batch = KeepCode(batch)  # worker tracebacks name the user's files (see _pickling)
        entry = _Batch((batch, *futures), callback, self.task_timeout, args)
        future = self._send(entry, _batch_key(func))
        if future is None:
            raise RuntimeError(
                "DaskBackend.submit: the call ended (abort_everything or stop_call from another "
                "thread) while the batch was being submitted; call start_call() to begin a new call"
            )
        return future

    def _send(self, entry: _Batch, key: str) -> Any:
        """Submit ``entry`` under ``key``, make it the batch's current future and hand it
        to the completion watch (started when it is not running). Only while the entry's
        call is live: once it is over (``abort_everything``, ``stop_call``; a recovery may
        come late) nothing is submitted, or the future just submitted is cancelled, no
        watch is started, and None is returned."""
        client = self.get_client()
        timed = entry.timeout is not None
        with self._lock:
            if entry.fired or self._args is not entry.call:
                return None
            # The key first: a start report may arrive before client.submit returns.
            entry.key = key
            entry.suspect_since = entry.started = entry.worker = None
            if timed:
                self._timed_keys.add(key)
        if timed:
            watch_start(client, key, partial(self._started, entry, key))
            args: tuple[Any, ...] = (run_timed, key, *entry.args)
        elif len(entry.args) > 1:
            args = (run_batch, *entry.args)
        else:
            args = entry.args
        try:
            future = client.submit(*args, key=key, pure=False, **self.submit_kwargs)
        except BaseException:
            if timed:
                self._forget(key)
            raise
        armed = False
        with self._lock:
            watch = self._watch_state
            live = self._args is entry.call
            if live:
                entry.future = future
                entry.since = time.monotonic()
                self._pending[future] = entry
                if watch is None or watch.stopping:
                    watch = self._watch_state = _Watch(distributed.as_completed(loop=client.loop))
                    thread = threading.Thread(
                        target=self._watch, args=(watch,), name="par-dask-watch", daemon=True
                    )
                    watch.thread = thread
                    thread.start()
                watch.completions.add(future)
                armed = self._arm(entry)  # its start was reported already
        if not live:
            if timed:
                self._forget(key)
            self._cancel_quietly(future)
            return None
        if armed and watch is not None:
            watch.wake()
        return future

    def _started(self, entry: _Batch, key: str, worker: str | None) -> None:
        """The batch ``key`` started on ``worker`` (on the client's event loop, possibly
        before :meth:`_send` has its future): its per-task timeout counts from now."""
        with self._lock:
            if entry.fired or entry.key != key:
                return
            entry.started = time.monotonic()
            entry.worker = worker
            armed = self._arm(entry)
            watch = self._watch_state
        if armed and watch is not None:
            watch.wake()  # its deadline may come before the watch's next tick

    def _arm(self, entry: _Batch) -> bool:
        """With ``self._lock`` held: put the deadline of ``entry`` on the heap once both
        its start is reported and its future under that key is registered (whichever
        comes second calls this with effect)."""
        started, key = entry.started, entry.key
        if started is None or entry.timeout is None or key is None:
            return False
        if str(getattr(entry.future, "key", "")) != key:
            return False  # not registered yet (or a recovery's previous future)
        heapq.heappush(self._deadlines, (started + entry.timeout, next(self._deadline_order), entry, key, started))
        return True

    def _expired(self, now: float) -> list[tuple[_Batch, str, float]]:
        """With ``self._lock`` held: pop the deadlines passed by ``now``; ``(batch, key,
        seconds run)`` of those still current (not completed, resubmitted or restarted)."""
        heap, out = self._deadlines, []
        while heap and heap[0][0] <= now:
            _, _, entry, key, started = heapq.heappop(heap)
            if not entry.fired and entry.key == key and entry.started == started:
                out.append((entry, key, now - started))
        return out

    def _forget(self, key: str) -> None:
        """Stop awaiting the start report of ``key``."""
        with self._lock:
            self._timed_keys.discard(key)
        forget(key)

    def _fire(self, entry: _Batch, fut: Any) -> None:
        """Run the batch's callback with ``fut``, once, and only for its current future."""
        with self._lock:
            self._pending.pop(fut, None)
            if entry.fired or fut is not entry.future:
                return  # a replaced future's late completion, or a second one
            entry.fired = True
            key = entry.key
        if entry.timeout is not None and key is not None:
            self._forget(key)
        if entry.callback is not None:
            entry.callback(fut)

    def _fail(self, entry: _Batch, key: str, error: BaseException) -> Any:
        """Give up on batch ``entry`` submitted under ``key``: its callback fires with a
        future that raises ``error``, its dask future is cancelled. Returns that dask
        future, or None when the batch completed or was resubmitted meanwhile."""
        failed: _LocalFuture[Any] = _LocalFuture()
        failed.set_exception(error)
        with self._lock:
            old = entry.future
            if entry.fired or old is None or str(getattr(old, "key", "")) != key:
                return None
            self._pending.pop(old, None)
            entry.future = failed
        self._cancel_quietly(old)
        self._fire(entry, failed)
        return old

    # -- completion watch -------------------------------------------------------------
    def _watch(self, watch: _Watch) -> None:
        """The completion watch thread (see the module docstring): fires the callbacks of
        the futures ``watch.completions`` reports done, ends overrunning batches (from the
        deadline heap: no walk over the pending batches per completion) and, every
        ``watch_interval`` seconds, looks after batches whose completion seems lost;
        until :meth:`_stop_watch`, or until no batch has been pending for ``watch_idle``
        seconds."""
        completions = watch.completions
        last_check = idle_since = time.monotonic()
        try:
            while True:
                for fut in completions.next_batch(block=False):
                    with self._lock:
                        entry = self._pending.get(fut)
                    if entry is not None:
                        self._fire(entry, fut)
                now = time.monotonic()
                with self._lock:
                    if watch.stopping:
                        return
                    if self._pending:
                        idle_since = now
                    elif now - idle_since >= self.watch_idle:
                        watch.stopping = True
                        if self._watch_state is watch:
                            self._watch_state = None
                        return
                    expired = self._expired(now)
                    wake = now + self.watch_interval
                    if self._deadlines:
                        wake = min(wake, self._deadlines[0][0])
                    check = now - last_check >= self.watch_interval
                    entries = list(self._pending.values()) if check else []
                for entry, key, ran in expired:
                    try:
                        self._time_out(entry, key, ran)
                    except Exception:  # the watch must never break the call
                        _logger.debug("par dask completion watch: time-out of %r failed", key, exc_info=True)
                if check:
                    last_check = now
                    try:
                        self._check(entries, watch)
                    except Exception:
                        _logger.debug("par dask completion watch failed", exc_info=True)
                watch.wait(max(wake - time.monotonic(), 0.0))
        finally:
            completions.clear()
            self._drop_probe(watch)

    def _time_out(self, entry: _Batch, key: str, ran: float) -> None:
        """Fail the overrunning batch with a ``TimeoutError`` (:meth:`_fail`: its future
        is cancelled) and interrupt its thread on its worker; the other batches keep
        running."""
        worker = entry.worker
        error = TimeoutError(
            f"the dask future {key!r} was cancelled after {ran:.1f} s on worker {worker}: dask "
            f"cannot stop a running thread; it is interrupted if it runs Python code, else it "
            f"keeps its worker thread until it returns (its result dropped)"
        )
        if self._fail(entry, key, error) is not None and worker is not None:
            with contextlib.suppress(Exception):
                self.get_client().run(interrupt_soon, key, workers=[worker], wait=False)

    def _stop_watch(self) -> None:
        """End the completion watch thread of this backend and wait for it, up to
        ``watch_join_timeout`` seconds (unless called from that thread): one still running
        then (stuck in a completion callback) is left to end on its own, with a warning."""
        with self._lock:
            watch, self._watch_state = self._watch_state, None
            if watch is None:
                return
            watch.stopping = True
        watch.wake()
        thread = watch.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.watch_join_timeout)
            if thread.is_alive():
                _logger.warning(
                    "par: the dask completion watch thread %r did not end within %g s (a completion "
                    "callback has not returned); it is left running and ends when that callback "
                    "returns",
                    thread.name,
                    self.watch_join_timeout,
                )

    def _check(self, entries: list[_Batch], watch: _Watch) -> None:
        now = time.monotonic()
        grace = self.watch_grace
        ask: dict[str, _Batch] = {}
        for entry in entries:
            fut = entry.future
            if entry.fired or not isinstance(fut, distributed.Future):
                continue
            if fut.done():  # finished here: its completion should have been reported
                entry.suspect_since = entry.suspect_since or now
                if now - entry.suspect_since >= grace:
                    _logger.warning(
                        "par: the completion of dask future %r was not reported within %g s; "
                        "completing it from the watch",
                        fut.key,
                        grace,
                    )
                    self._fire(entry, fut)
            elif now - entry.since >= self.watch_after and (
                entry.suspect_since is not None or now - entry.asked >= self.watch_after
            ):  # a batch running for long is looked up every watch_after seconds
                entry.asked = now
                ask[str(fut.key)] = entry
        if not ask:
            self._drop_probe(watch)  # no batch waits for it
            return
        client = self.get_client()
        probe = watch.probe
        keys = list(ask)
        if probe is not None:
            keys.append(str(probe[0].key))
        states = client.sync(client.scheduler.get_task_status, keys=keys, callback_timeout=30)
        # The scheduler reads the messages of a client in the order they were sent, each
        # submission to the end: once it knows the probe, it has read every batch
        # submitted before the probe was.
        probe_read = probe is not None and states.get(str(probe[0].key)) is not None
        now = time.monotonic()
        need_probe = wait_probe = False
        for key, entry in ask.items():
            state = states.get(key)
            if state not in (None, "memory", "erred", "released", "forgotten") or entry.future.done():
                entry.suspect_since = None  # queued or running there: keep waiting
                continue
            entry.suspect_since = entry.suspect_since or now
            if state is None:
                # Unknown there: lost, or not read yet (a scheduler under load may take
                # seconds to register a graph). Only a probe submitted after the batch
                # tells which: the batch is lost once the scheduler knows the probe.
                if probe is None or probe[1] < entry.since:
                    need_probe = True
                elif probe_read:
                    self._recover(entry, key, state)
                elif now - probe[1] >= self.watch_stall:
                    self._fail(
                        entry,
                        key,
                        RuntimeError(
                            f"The dask scheduler has not registered the par batch {key!r}, nor a probe "
                            f"task submitted after it {now - probe[1]:.0f} s ago (watch_stall="
                            f"{self.watch_stall:g} s): it has not read what this client (status "
                            f"{getattr(client, 'status', None)!r}) sent since. The scheduler is overloaded "
                            f"or the connection stalled; check the scheduler's and this process's logs."
                        ),
                    )
                else:
                    wait_probe = True  # the scheduler is behind this client: slow, not lost
                continue
            if now - entry.suspect_since >= grace:
                self._recover(entry, key, state)
        if need_probe:
            self._send_probe(watch, client)
        elif not wait_probe:
            self._drop_probe(watch)

    def _send_probe(self, watch: _Watch, client: Any) -> None:
        """Submit a new probe (a no-op task) for :meth:`_check`, in place of the last one."""
        self._drop_probe(watch)
        sent = time.monotonic()  # before the submission: every batch submitted by then precedes it
        watch.probe = (client.submit(_probe_task, key=f"par-probe-{uuid.uuid4().hex}", pure=False), sent)

    def _drop_probe(self, watch: _Watch) -> None:
        probe, watch.probe = watch.probe, None
        if probe is not None:
            with contextlib.suppress(Exception):  # a closed client has nothing to release
                probe[0].cancel()

    def _recover(self, entry: _Batch, key: str, state: str | None) -> None:
        """The scheduler says ``key`` is over (or unknown) but this client never heard:
        submit the batch again under a new key, or fail it after ``max_recoveries``."""
        with self._lock:
            old = entry.future
            if entry.fired or str(getattr(old, "key", "")) != key or self._args is not entry.call:
                return  # completed, already resubmitted, or its call is over
            entry.recoveries += 1
            give_up = entry.recoveries > self.max_recoveries
            if not give_up:
                self._pending.pop(old, None)  # its late completion is ignored from now on
        what = "does not know it" if state is None else f"has it in state {state!r}"
        if give_up:
            self._fail(
                entry,
                key,
                RuntimeError(
                    f"The dask scheduler {what} for the par batch {key!r}, but this client was never "
                    f"told that it finished, {self.max_recoveries} times in a row: the connection "
                    f"between this client and the scheduler loses messages. Check the scheduler's "
                    f"and this process's logs."
                ),
            )
            return
        _logger.warning(
            "par: the dask scheduler %s for batch %r, but this client still waits for it after "
            "%g s; submitting the batch again (%d of %d)",
            what,
            key,
            self.watch_grace,
            entry.recoveries,
            self.max_recoveries,
        )
        if entry.timeout is not None:
            self._forget(key)
        # _send checks again, under its lock, that the call is live (an abort may have
        # come meanwhile): then nothing is submitted and no watch is started.
        self._send(entry, f"{key.rsplit('-', 1)[0]}-{uuid.uuid4().hex}")
        self._cancel_quietly(old)

    def _cancel_quietly(self, future: Any) -> None:
        with contextlib.suppress(Exception):
            self.get_client().cancel([future])

    def retrieve_result_callback(self, out: Any) -> Any:
        """The batch's list of results, or its task's exception re-raised with the
        worker's traceback; :class:`par_api.WorkerDiedError` when dask gave up after
        workers died running it."""
        try:
            return out.result()
        except distributed.KilledWorker as exc:
            raise WorkerDiedError(
                f"The dask workers running the par batch {out.key!r} died {exc.allowed_failures + 1} "
                f"times (distributed.scheduler.allowed-failures={exc.allowed_failures}); the last one was "
                f"{getattr(exc.last_worker, 'address', exc.last_worker)}. Likely causes: a task used more "
                f"memory than the worker's limit (the nanny or the OS killed it), a crash in native code "
                f"(segfault), or os._exit/sys.exit in a task. The worker logs say more.",
                task=str(out.key),
            ) from exc
        except CancelledError as exc:
            if out.key in self._cancelled:  # our own abort: the call is over anyway
                raise
            raise CancelledError(
                f"The dask future of the par batch {out.key!r} was cancelled outside of par ({exc}): "
                f"the connection to the scheduler was lost, the cluster was closed or restarted, or "
                f"someone cancelled it."
            ) from exc

    def retrieve_result(self, out: Any, timeout: float | None = None) -> Any:
        return out.result(timeout=timeout)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel every pending future of this backend on the cluster and release the
        call's scattered arguments. The client stays: the backend remains usable."""
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
            args, self._args = self._args, None
            if len(self._cancelled) > 10000:
                self._cancelled.clear()
            self._cancelled.update(f.key for f in pending)
        self._forget_call()
        client = self._active_client
        if pending and client is not None:
            with contextlib.suppress(Exception):
                client.cancel(pending)
        if args is not None:
            args.clear()
        self._stop_watch()

    def stop_call(self) -> None:
        """End the completion watch thread, release the call's scattered arguments;
        rejoin the worker's thread pool when ``start_call`` left it (from the same
        thread)."""
        self._stop_watch()
        with self._lock:
            args, self._args = self._args, None
        self._forget_call()
        if args is not None:
            args.clear()
        if self._seceded_thread is not None and self._seceded_thread == threading.get_ident():
            self._seceded_thread = None
            _rejoin()

    def _forget_call(self) -> None:
        """The call is over: await no start report and no deadline any more."""
        with self._lock:
            timed, self._timed_keys = self._timed_keys, set()
            self._deadlines.clear()
        for key in timed:
            forget(key)

    def terminate(self) -> None:
        """Cancel what is still pending and forget the client (a client given as
        ``client=`` or cached per address is never closed here)."""
        self.abort_everything(ensure_ready=False)
        self._active_client = None

    def end_config(self) -> None:
        """The ``parallel_config`` block that built this backend ended: close the client
        opened for its ``scheduler_address=`` (or ``PAR_DASK_SCHEDULER``)."""
        self.terminate()
        if self._option("client") is None and not in_worker_task():
            release_client(self._option("scheduler_address"))

    @contextlib.contextmanager
    def retrieval_context(self) -> Iterator[None]:
        """Leave the dask worker's thread pool while waiting (inside a task on a worker)."""
        seceded = _secede()
        try:
            yield
        finally:
            if seceded:
                _rejoin()

    def get_nested_backend(self) -> tuple[Any, int | None]:
        """A ``DaskBackend`` bound to the same scheduler, with every cluster thread: a
        ``Parallel`` inside a task submits to the same cluster."""
        state = self.__getstate__()
        nested = DaskBackend(
            scheduler_address=state["scheduler_address"],
            scatter_threshold=self._option("scatter_threshold"),
            connect_timeout=self._option("connect_timeout"),
            nesting_level=(self.nesting_level or 0) + 1,
        )
        return nested, None

    def __repr__(self) -> str:
        where = self.scheduler_address or ("client=" + repr(self.client) if self.client else None)
        return f"DaskBackend({where or 'current client or $' + ENV_SCHEDULER})"
