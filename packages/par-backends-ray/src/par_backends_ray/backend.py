"""The ``ray`` backend: each batch of tasks is one Ray task.

Driven by the par scheduler like every backend (``configure`` → ``start_call`` →
``submit``/callback/``retrieve_result_callback`` → ``stop_call``; ``abort_everything``
on the first error, a timeout or an interrupt). What is specific to Ray:

- **The runtime**: the one already initialised in this process, else ``ray.init`` with
  ``address=``, else ``ray.init()`` (``RAY_ADDRESS``, or a local Ray) — see
  :mod:`par_backends_ray._runtime`. Nothing starts before the backend is configured.
- **n_jobs**: ``-1`` (and ``None``, the default) is the cluster's CPUs at configure
  time divided by the CPUs each task asks for (``num_cpus``, 1 by default); ``-k`` all
  but ``k - 1`` of them; a positive ``n_jobs`` is taken as is (it bounds the batches in
  flight, not the cluster). The scheduler sizes the batches.
- **Arguments**: large and repeated arguments go into the object store once per call
  (:mod:`par_backends_ray._arguments`).
- **Results** come back as Ray deserialises them (types kept; numpy arrays are
  read-only views of the object store, as with ``ray.get``).
- **Errors** come back with their own type, the worker's traceback attached as
  ``__cause__`` (:class:`par_api.RemoteTraceback`); the first error makes the scheduler
  call ``abort_everything``, which cancels the call's pending tasks
  (``ray.cancel(force=True)``: queued tasks never start, running ones end with their
  worker process). A task whose worker process
  died is retried by Ray (``max_retries``, 3 by default for system failures); then the
  call raises :class:`par_api.WorkerDiedError`.
- **Initializer**: with ``initializer=`` (or ``actors=True``) the batches run on a pool
  of ``n_jobs`` actors that each ran it once (:mod:`par_backends_ray._actors`).
- **Per-task timeouts** (``task_timeout``, set by the scheduler): batches run as Ray
  generator tasks watched by the driver, cancelled with ``force=True`` past their
  deadline (:mod:`par_backends_ray._timeout`).
- **Nesting**: a task's own ``Parallel`` runs on the same cluster; while it waits, the
  task gives its CPU back to Ray (see :mod:`par_backends_ray._task`).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

import ray
import ray.exceptions
from par_api import (
    BatchInfo,
    CallArguments,
    ParallelBackendBase,
    RemoteTraceback,
    WorkerDiedError,
    check_initializer,
    check_n_jobs,
    parse_nbytes,
)

from ._actors import ActorPool
from ._arguments import DEFAULT_PUT_THRESHOLD, put_each
from ._runtime import ENV_ADDRESS, ensure_initialized
from ._task import current_waiter, run_batch, run_batch_timed
from ._timeout import Monitor

__all__ = ["RayBackend"]

_BACKEND_KWARGS = ("address", "put_threshold", "init_kwargs", "initializer", "initargs", "actors")

#: Where the initializer runs, for check_initializer's message.
_RUNS_IN = "each Ray actor of the call"

#: Ray task options par sets itself.
_OWN_OPTIONS = frozenset({"name", "num_returns"})

#: Worker-death errors of Ray: the batch did not fail, its process (or node) did.
_DIED = tuple(
    getattr(ray.exceptions, name)
    for name in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "LocalRayletDiedError")
    if hasattr(ray.exceptions, name)
)

#: An actor of the pool died (or is restarting) under a batch.
_ACTOR_DIED = tuple(
    getattr(ray.exceptions, name)
    for name in ("RayActorError", "ActorUnavailableError")
    if hasattr(ray.exceptions, name)
)

_remote_function: Any = None
_remote_timed_function: Any = None

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the task's name in tracebacks


def _remote() -> Any:
    """``run_batch`` as a Ray remote function (made once per process)."""
    global _remote_function
    if _remote_function is None:
        _remote_function = ray.remote(run_batch)
    return _remote_function


def _remote_timed() -> Any:
    """``run_batch_timed`` as a Ray generator task (made once per process)."""
    global _remote_timed_function
    if _remote_timed_function is None:
        _remote_timed_function = ray.remote(run_batch_timed)
    return _remote_timed_function


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    """The ``ray.remote`` options given to the backend, checked by Ray itself."""
    own = sorted(set(options) & _OWN_OPTIONS)
    if own:
        raise TypeError(f"RayBackend sets the Ray task options {own} itself; do not pass them.")
    try:
        _remote().options(**options)
    except (ValueError, TypeError) as exc:
        raise TypeError(
            f"RayBackend got invalid Ray task options {sorted(options)}: {exc}. Accepted: "
            f"{', '.join(_BACKEND_KWARGS)} (and nesting_level, inner_max_num_threads), and the "
            f"options of ray.remote for tasks (num_cpus=, num_gpus=, resources=, memory=, "
            f"max_retries=, retry_exceptions=, scheduling_strategy=, runtime_env=, ...)."
        ) from None
    return dict(options)


def _check_threshold(value: Any) -> int | None:
    try:
        return parse_nbytes(value, name="put_threshold")
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{exc} (put_threshold=None never puts arguments into the object store)") from None


def _check_address(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise TypeError(
            f"address must be the address of a Ray cluster as a str, e.g. '10.0.0.5:6379', "
            f"'ray://host:10001' or 'auto', or None (RAY_ADDRESS, else a local Ray); got "
            f"{type(value).__name__} {value!r}"
        )
    return value.strip()


def _check_actors(value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(
            f"actors must be True (run the batches on a pool of n_jobs Ray actors), False (plain "
            f"Ray tasks) or None (actors when an initializer is given), got {value!r}"
        )
    return value


def _check_combination(actors: bool | None, initializer: Any) -> None:
    if actors is False and initializer is not None:
        raise ValueError(
            "initializer needs actors: with actors=False the batches run as plain Ray tasks, in "
            "no worker of par's own to initialise; pass actors=None (the default) or True"
        )


def _first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    return text.splitlines()[0] if text else ""


def _last_line(exc: BaseException) -> str:
    """The last line of an error's text: for an actor whose initializer raised, the
    initializer's own error (``ValueError: cannot load the model``)."""
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _check_init_kwargs(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or "address" in value:
        raise TypeError(
            f"init_kwargs must be a dict of ray.init keyword arguments (without 'address': "
            f"use address=), got {value!r}"
        )
    return dict(value)


def _batch_name(batch: Any) -> str:
    """The Ray task name of a batch: ``par-<first function name>``."""
    tasks = getattr(batch, "tasks", None)
    if tasks:
        func = tasks[0][0]
        return f"par-{getattr(func, '__name__', None) or type(func).__name__}"
    return "par-batch"


def _func_label(func: Any) -> str:
    return str(getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__name__)


def _batch_label(batch: Any) -> str:
    """What a batch holds, as the scheduler names tasks: ``'task 3 (function f)'``
    (``par_api.BatchInfo``; ``WorkerDiedError.task``: the scheduler then knows the dead
    worker ran this batch's tasks); the Ray task name for anything else."""
    info = BatchInfo.of(batch)
    return info.describe() if info is not None else _batch_name(batch)


class _Batch:
    """A submitted batch: its ObjectRef, the future of it, and the scheduler's completion
    callback, fired once."""

    __slots__ = (
        "actor", "callback", "done", "error", "fired", "future", "gen", "handle", "killed_by", "label", "name",
        "pool", "ref", "timeout", "waiter",
    )

    def __init__(self, ref: Any, name: str, callback: Callable[[Any], None] | None) -> None:
        self.ref = ref
        self.label = name  # what the batch holds: 'task 3 (f)' (set by submit)
        self.gen: Any = None  # the generator task, under a per-task timeout
        self.error: BaseException | None = None  # the TimeoutError of an overrun
        self.timeout: float | None = None
        self.pool: ActorPool | None = None  # the actor pool running it, and which actor
        self.actor = -1
        self.handle: Any = None  # the actor (handle) it was sent to
        self.killed_by: str | None = None  # its actor was restarted for that batch's timeout
        self.name = name
        self.callback = callback
        self.fired = False
        self.done = threading.Event()  # set once its outcome is known (before the callback)
        self.future: Any = None
        self.waiter: Any = None

    def __repr__(self) -> str:
        return f"<par ray batch {self.name} {self.ref}>"


class RayBackend(ParallelBackendBase):
    """Run par batches as Ray tasks.

    ``RayBackend(address=None, put_threshold='1M', init_kwargs=None, **ray_options)``:

    - ``address``: the cluster to connect to when Ray is not initialised in this
      process (``'HOST:PORT'`` of the head node, ``'ray://...'``, ``'auto'``); None:
      ``RAY_ADDRESS``, else a local Ray;
    - ``put_threshold``: arguments with a known size (``nbytes``) of at least this many
      bytes (an int or a string like ``'1M'``) go into the object store once per call;
      ``None`` never puts anything (not even repeated arguments);
    - ``init_kwargs``: more keyword arguments for ``ray.init`` when par initialises Ray;
    - ``initializer``/``initargs``: run once in each of ``n_jobs`` Ray actors, which then
      run the batches (:mod:`par_backends_ray._actors`); ``actors``: True for such a
      pool without an initializer, False never (None: with an initializer);
    - ``ray_options``: options of every batch's Ray task (``num_cpus=``, ``num_gpus=``,
      ``resources=``, ``memory=``, ``max_retries=``, ``scheduling_strategy=``,
      ``runtime_env=``, ...), checked by Ray.

    ``configure`` (``Parallel(backend='ray', **kwargs)``) accepts the same names, which
    override the constructor's for that configuration. The instance pickles without any
    Ray object (a nested backend uses the worker's runtime).
    """

    default_n_jobs = -1
    supports_timeout = True
    supports_task_timeout = True
    watches_task_timeout = True
    supports_sharedmem = False
    uses_threads = False
    supports_inner_max_num_threads = False
    supports_retrieve_callback = True
    supports_return_generator = True
    supports_auto_batching = True
    supports_transport_hooks = False

    def __init__(
        self,
        address: str | None = None,
        put_threshold: int | str | None = DEFAULT_PUT_THRESHOLD,
        init_kwargs: dict[str, Any] | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        actors: bool | None = None,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **ray_options: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self.address = _check_address(address)
        self.put_threshold = _check_threshold(put_threshold)
        self.init_kwargs = _check_init_kwargs(init_kwargs)
        self.initializer, self.initargs = check_initializer(initializer, initargs, _RUNS_IN)
        self.actors = _check_actors(actors)
        _check_combination(self.actors, self.initializer)
        self.ray_options = _check_options(ray_options)
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Any, _Batch] = {}  # ObjectRef -> its batch
        self._args: CallArguments | None = None
        self._options: dict[str, Any] = {}
        self._cancelled: set[Any] = set()  # refs cancelled by abort_everything
        self._monitor = Monitor(self._on_result, self._on_timeout, self._cancel_overrun, self._on_watch_error)
        self._pool: ActorPool | None = None
        self._n_jobs = 1
        #: What this backend put into the object store: objects and their known bytes.
        self.n_put = 0
        self.bytes_put = 0

    # -- pickling (nested backends travel inside batches) -------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "put_threshold": self._option("put_threshold"),
            "init_kwargs": self.init_kwargs,
            "ray_options": self._option("ray_options"),
            "nesting_level": self.nesting_level,
            "inner_max_num_threads": self.inner_max_num_threads,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.address = state["address"]
        self.put_threshold = state["put_threshold"]
        self.init_kwargs = state["init_kwargs"]
        self.ray_options = state["ray_options"]
        self.nesting_level = state["nesting_level"]
        self.inner_max_num_threads = state["inner_max_num_threads"]
        self.initializer, self.initargs, self.actors = None, (), None  # not for nested calls
        self._init_state()

    # -- the cluster ----------------------------------------------------------------
    def _option(self, name: str) -> Any:
        return self._options[name] if name in self._options else getattr(self, name)

    def _connect(self) -> None:
        ensure_initialized(self._option("address"), self._option("init_kwargs"))

    def _task_options(self) -> dict[str, Any]:
        """The options of every batch's Ray task. par's failure policy runs in the tasks
        (``retry_on``) and in the scheduler (timed-out tasks, deaths after Ray's own
        ``max_retries``): see the README, "Which layer retries what"."""
        options: dict[str, Any] = self._option("ray_options")
        return options

    def _cpus_per_task(self) -> float:
        cpus = self._task_options().get("num_cpus", 1)
        return float(cpus) if cpus else 1.0

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """``-1``/``None``: the cluster's CPUs (divided by each task's ``num_cpus``);
        ``-k``: all but ``k - 1``; ``n > 0``: ``n``. ``ValueError`` for 0."""
        n_jobs = check_n_jobs(n_jobs)
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs > 0:
            return n_jobs
        self._connect()
        slots = int(ray.cluster_resources().get("CPU", 0) // self._cpus_per_task())
        return max(slots + 1 + n_jobs, 1)

    def configure(
        self,
        n_jobs: int | None = None,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        """Initialise Ray (or use the running runtime) and return the effective n_jobs.
        ``backend_kwargs`` may hold ``hooks`` (ignored: Ray serialises the batches
        itself), the constructor's arguments and Ray task options, which override the
        constructor's for this configuration."""
        backend_kwargs = dict(backend_kwargs)
        backend_kwargs.pop("hooks", None)
        options: dict[str, Any] = {}
        if "address" in backend_kwargs:
            options["address"] = _check_address(backend_kwargs.pop("address"))
        if "put_threshold" in backend_kwargs:
            options["put_threshold"] = _check_threshold(backend_kwargs.pop("put_threshold"))
        if "init_kwargs" in backend_kwargs:
            options["init_kwargs"] = _check_init_kwargs(backend_kwargs.pop("init_kwargs"))
        if "initializer" in backend_kwargs or "initargs" in backend_kwargs:
            options["initializer"], options["initargs"] = check_initializer(
                backend_kwargs.pop("initializer", self.initializer),
                backend_kwargs.pop("initargs", self.initargs),
                _RUNS_IN,
            )
        if "actors" in backend_kwargs:
            options["actors"] = _check_actors(backend_kwargs.pop("actors"))
        if backend_kwargs:
            options["ray_options"] = {**self.ray_options, **_check_options(backend_kwargs)}
        _check_combination(
            options.get("actors", self.actors), options.get("initializer", self.initializer)
        )
        self._kill_pool()  # a new configuration: new actors (its initializer may differ)
        self._options = options
        self.parallel = parallel
        self.hooks = None
        self._connect()
        self._n_jobs = self.effective_n_jobs(n_jobs)
        return self._n_jobs

    def _uses_actors(self) -> bool:
        actors = self._option("actors")
        return bool(actors) or (actors is None and self._option("initializer") is not None)

    def _actor_pool(self) -> ActorPool:
        with self._lock:
            if self._pool is None:
                self._pool = ActorPool(
                    self._n_jobs, self._option("initializer"), self._option("initargs"), self._task_options()
                )
            return self._pool

    def _kill_pool(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.kill()

    # -- a call -----------------------------------------------------------------------
    def start_call(self) -> None:
        """A new per-call cache of the arguments put into the object store."""
        self._connect()
        args = CallArguments(put_each, self._option("put_threshold"))
        with self._lock:
            self._args = args

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Any:
        """Send the batch ``func`` as one Ray task; ``callback(out)`` fires once it is
        done (from Ray's thread). Returns the batch's handle ``out``."""
        with self._lock:
            args = self._args
        if args is None:  # submit without start_call (direct use of the backend)
            self.start_call()
            with self._lock:
                args = self._args
            assert args is not None
        n_put, bytes_put = args.n_stored, args.bytes_stored
        batch, refs = args.prepare(func)
        self.n_put += args.n_stored - n_put
        self.bytes_put += args.bytes_stored - bytes_put
        name = _batch_name(func)
        timeout = self.task_timeout
        gen = None
        pool = self._actor_pool() if self._uses_actors() else None
        actor, handle = -1, None
        if pool is not None:
            sent, actor, handle = pool.submit(name, timeout is not None, batch, refs)
            ref, gen = (sent, None) if timeout is None else (sent.completed(), sent)
        elif timeout is None:
            ref = _remote().options(name=name, **self._task_options()).remote(batch, *refs)
        else:  # a generator task that says when it starts (see _timeout)
            gen = _remote_timed().options(name=name, **self._task_options()).remote(batch, *refs)
            ref = gen.completed()
        entry = _Batch(ref, name, callback)
        entry.gen = gen
        entry.pool, entry.actor, entry.handle = pool, actor, handle
        entry.label = _batch_label(func)
        waiter = current_waiter()  # inside a par task on Ray: its thread waits for this too
        with self._lock:
            self._pending[ref] = entry
        if waiter is not None:
            entry.waiter = waiter
            waiter.add(ref)
        if gen is not None:
            self._monitor.watch(entry, gen, timeout)  # type: ignore[arg-type]
            return entry
        entry.future = ref.future()
        entry.future.add_done_callback(lambda _: self._fire(entry))
        return entry

    def _on_result(self, entry: _Batch, ref: Any) -> None:
        """A watched batch's results (or failure) are in ``ref`` (monitor thread)."""
        entry.future = ref.future()
        entry.future.add_done_callback(lambda _: self._fire(entry))

    def _cancel_overrun(self, entry: _Batch) -> None:
        """End the task of a batch that overran: ``ray.cancel(force=True)`` ends its worker
        process; an actor (force is not allowed for actor tasks) is killed and replaced."""
        if entry.pool is not None:
            with self._lock:  # the batches queued on that actor fail with it: not their fault
                for other in self._pending.values():
                    if other is not entry and other.pool is entry.pool and other.actor == entry.actor:
                        other.killed_by = entry.label
            entry.pool.replace(entry.actor)
        else:
            ray.cancel(entry.gen, force=True, recursive=True)

    def _on_timeout(self, entry: _Batch, seconds: float) -> None:
        """A watched batch ran past its timeout; its task was cancelled (monitor thread)."""
        entry.error = TimeoutError(
            f"its Ray task ({entry.name}) was cancelled after {seconds:g} s of running: "
            + (
                "its actor was killed and replaced by a new one (whose initializer runs)"
                if entry.pool is not None
                else "ray.cancel(force=True) ended the worker process running it (Ray starts another)"
            )
        )
        self._fire(entry)

    def _on_watch_error(self, entry: _Batch, exc: BaseException) -> None:
        """The timeout watch failed (the Ray runtime went away): the batch fails with it."""
        entry.error = RuntimeError(f"par lost track of the Ray task of batch {entry.name}: {exc!r}")
        entry.error.__cause__ = exc
        self._fire(entry)

    def _fire(self, entry: _Batch) -> None:
        """Run the batch's callback, once."""
        with self._lock:
            self._pending.pop(entry.ref, None)
            if entry.fired:
                return
            entry.fired = True
        entry.done.set()
        if entry.pool is not None:
            entry.pool.done(entry.actor)
        if entry.waiter is not None:
            entry.waiter.discard((entry.ref,))
        if entry.callback is not None:
            entry.callback(entry)

    def retrieve_result_callback(self, out: Any) -> Any:
        """The batch's list of results, or its task's exception re-raised with its own
        type and the worker's traceback as ``__cause__``;
        :class:`par_api.WorkerDiedError` when the worker (or node) running it died more
        often than Ray retries."""
        if out.error is not None:
            raise out.error
        try:
            try:
                return out.future.result()
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, ray.exceptions.TaskCancelledError):
                    raise exc.cause from None  # a running task cancelled: see below
                raise _original(exc)  # noqa: B904 - its __cause__ is the remote traceback
        except _ACTOR_DIED as exc:
            if out.ref in self._cancelled:  # our own abort replaced its actor
                raise CancelledError(f"par cancelled the Ray task of batch {out.name}") from exc
            init_failed = bool(getattr(exc, "actor_init_failed", False))
            again = replaced = False
            if out.pool is not None and not out.killed_by:
                # recorded only: this runs in Ray's callback thread (see ActorPool)
                again, replaced = out.pool.mark_dead(out.actor, out.handle, init_failed)
            if init_failed and out.pool is not None:
                initializer = _func_label(out.pool.initializer)
                raise WorkerDiedError(
                    f"The Ray actor running the par batch {out.name} ({out.label}) could not start: "
                    f"its initializer {initializer} raised"
                    + (" again, in an actor started in place of one whose initializer raised" if again else "")
                    + f": {_last_line(exc)}. "
                    + (
                        "par starts a new actor in its place for the next batches."
                        if replaced
                        else f"par started {out.pool.init_replacements} new actor(s) in place of actors whose "
                        f"initializer raised and starts no more: the batches sent to this actor fail."
                    ),
                    task=out.label,
                ) from exc
            raise WorkerDiedError(
                f"The Ray actor running the par batch {out.name} ({out.label}) died: "
                f"{type(exc).__name__}: {_first_line(exc)}. Ray restarts it (its initializer "
                f"runs again). Likely causes: a task used more memory than the node has, a crash "
                f"in native code, os._exit in a task."
                + (f" It was killed for the timeout of {out.killed_by}." if out.killed_by else ""),
                # a batch queued on an actor restarted for another's timeout names that one:
                # the scheduler then runs it again without spending its retries
                task=out.killed_by or out.label,
            ) from exc
        except _DIED as exc:
            if out.ref in self._cancelled:  # our own abort ended its worker (force=True)
                raise CancelledError(f"par cancelled the Ray task of batch {out.name}") from exc
            raise WorkerDiedError(
                f"The Ray worker running the par batch {out.name} ({out.label}; {out.ref.hex()}) died, and Ray "
                f"did not run it again (max_retries={self._task_options().get('max_retries', 3)}): "
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. "
                f"Likely causes: a task used more memory than the node has (Ray's memory monitor "
                f"or the OS killed it), a crash in native code (segfault), os._exit in a task, "
                f"or a node that left the cluster. The Ray logs (session_latest/logs of the "
                f"node's temp dir) say more.",
                task=out.label,
            ) from exc
        except (ray.exceptions.TaskCancelledError, CancelledError) as exc:
            if out.ref in self._cancelled:  # our own abort: the call is over anyway
                raise CancelledError(f"par cancelled the Ray task of batch {out.name}") from exc
            raise CancelledError(
                f"The Ray task of the par batch {out.name} ({out.ref.hex()}) was cancelled outside "
                f"of par ({type(exc).__name__}): someone called ray.cancel on it, or the "
                f"cluster was shut down."
            ) from exc

    def retrieve_result(self, out: Any, timeout: float | None = None) -> Any:
        """Wait up to ``timeout`` seconds for the batch (``TimeoutError``), then as
        :meth:`retrieve_result_callback`."""
        if not out.done.wait(timeout):
            raise TimeoutError(f"the Ray task of the par batch {out.name} did not finish within {timeout} s")
        return self.retrieve_result_callback(out)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel every pending task of this backend and release the call's objects.
        Plain tasks: ``ray.cancel(force=True)``: queued tasks never start, and the worker
        process of a running one is ended (Ray starts another), as loky ends its workers
        on an abort; ``force=False`` (a ``KeyboardInterrupt`` in the task) was not always
        delivered (CI's fresh environments: running tasks ran to their end). Actor tasks
        (no ``force`` for them, and a running one is not interrupted): cancelled (queued
        ones never start), and the actors with batches of the call are killed (one that
        Ray has not created yet, once it has: ``_actors.kill_when_created``), and replaced
        when ``ensure_ready`` (the backend stays usable, e.g. inside
        ``with Parallel(...)``). Every batch completes: those
        under a per-task timeout whose results are not known yet get a
        ``CancelledError``. The runtime stays."""
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
            args, self._args = self._args, None
            if len(self._cancelled) > 10000:
                self._cancelled.clear()
            self._cancelled.update(e.ref for e in pending)
        busy: dict[int, set[int]] = {}
        pools: dict[int, ActorPool] = {}
        for entry in pending:
            if entry.gen is not None:
                self._monitor.forget(entry)
            if entry.pool is not None:
                busy.setdefault(id(entry.pool), set()).add(entry.actor)
                pools[id(entry.pool)] = entry.pool
                # a queued actor task never starts; a running one is not interrupted
                # (its actor is killed below). An actor that Ray has not created yet is
                # killed only once it has (_actors.kill_when_created): meanwhile nothing
                # of this call may run on it
                with contextlib.suppress(Exception):
                    ray.cancel(entry.gen if entry.gen is not None else entry.ref, recursive=False)
            else:
                with contextlib.suppress(Exception):
                    ray.cancel(entry.gen if entry.gen is not None else entry.ref, force=True, recursive=True)
        for key, indexes in busy.items():
            pools[key].abort(indexes, replace=ensure_ready)
        for entry in pending:
            if entry.gen is not None and entry.future is None:  # no future will ever fire
                entry.error = CancelledError(f"par cancelled the Ray task of batch {entry.name}")
                self._fire(entry)
        if args is not None:
            args.clear()

    def stop_call(self) -> None:
        """Release the call's objects in the object store."""
        with self._lock:
            args, self._args = self._args, None
        if args is not None:
            args.clear()

    def terminate(self) -> None:
        """Cancel what is still pending and kill the actors (of an ``initializer``). The
        Ray runtime stays initialised (starting one costs seconds);
        ``par_backends_ray.shutdown()`` ends it."""
        self.abort_everything(ensure_ready=False)
        self._kill_pool()

    def get_nested_backend(self) -> tuple[Any, int | None]:
        """A ``RayBackend`` with the same options on the worker's runtime: a
        ``Parallel`` inside a task runs on the same cluster, with all its CPUs."""
        nested = RayBackend(
            put_threshold=self._option("put_threshold"),
            nesting_level=(self.nesting_level or 0) + 1,
            **self._option("ray_options"),
        )
        return nested, None

    def __repr__(self) -> str:
        where = self._option("address") if hasattr(self, "_options") else self.address
        return f"RayBackend({where or 'running runtime, $' + ENV_ADDRESS + ' or a local Ray'})"


def _original(exc: Any) -> BaseException:
    """The exception a task raised (``RayTaskError.cause``), with the worker's traceback
    attached as its ``__cause__``; ``exc`` itself when Ray could not rebuild it."""
    cause = getattr(exc, "cause", None)
    if not isinstance(cause, BaseException) or isinstance(cause, ray.exceptions.RayTaskError):
        return exc  # type: ignore[no-any-return]
    text = _ANSI.sub("", getattr(exc, "traceback_str", None) or str(exc))
    cause.__cause__ = RemoteTraceback(text)
    return cause

