"""The failure policy of a call: ``on_error``, ``retries``, ``retry_on``.

The engine (``_engine``) decides what runs next; this module holds the decisions about
one task's failure, so the engine only asks:

- :class:`Guard` wraps a task's function (in the parent, once per distinct function of
  the call) and runs in the worker: an exception of a type in ``retry_on`` runs the task
  again there, up to ``retries`` more times; the final exception is *returned* as a
  :class:`TaskFailed` envelope instead of raised, so one batch brings back a mix of
  results and failures and the other tasks of the batch are not lost.
- :meth:`Policy.open` turns the envelopes of a completed batch into exceptions in the
  task's place, each with a note naming its task index and function. The worker lists
  their positions in a trailing :class:`Envelopes` item, so a batch without failures
  costs the parent nothing per task.
- :func:`exception_group` builds the ``ExceptionGroup`` of ``on_error='collect'``.

A batch that fails as a whole (its worker died) is split by the engine into tasks run
one by one; :meth:`Policy.retry_death` says whether a lone task whose worker died is
run again.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any

from par_api import (
    TASK_TIMEOUT_EXIT_CODE,
    BatchedCalls,
    RemoteTraceback,
    SingleArgTasks,
    WorkerDiedError,
    check_on_error,
    check_retries,
    check_retry_on,
)

from ._task_timeout import watchdog

if sys.version_info >= (3, 11):
    from builtins import ExceptionGroup
else:  # pragma: no cover - Python 3.10
    from exceptiongroup import ExceptionGroup

__all__ = [
    "Envelopes",
    "ExceptionGroup",
    "Guard",
    "GuardedBatch",
    "Policy",
    "Retried",
    "TaskFailed",
    "exception_group",
    "failed_task",
]


def _func_name(func: Any) -> str:
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if name is None:
        name = type(func).__qualname__
    module = getattr(func, "__module__", None)
    return f"{module}.{name}" if module and module not in ("__main__", "builtins") else str(name)


class TaskFailed:
    """A task's final exception, returned by :class:`Guard` in place of its result."""

    __slots__ = ("exc", "func", "retried")

    def __init__(self, exc: BaseException, func: str, retried: int) -> None:
        self.exc = exc
        self.func = func
        self.retried = retried

    def __reduce__(self) -> Any:
        return (TaskFailed, (self.exc, self.func, self.retried))


class Retried:
    """A task's result after ``retried`` failed runs (so progress can count them)."""

    __slots__ = ("retried", "value")

    def __init__(self, value: Any, retried: int) -> None:
        self.value = value
        self.retried = retried

    def __reduce__(self) -> Any:
        return (Retried, (self.value, self.retried))


class Guard:
    """Runs a task's function in the worker under the policy (picklable by reference to
    this class; the wrapped function is pickled as the task's function would be)."""

    __slots__ = ("func", "retries", "retry_on")

    def __init__(
        self, func: Callable[..., Any], retries: int, retry_on: tuple[type[BaseException], ...]
    ) -> None:
        self.func = func
        self.retries = retries
        self.retry_on = retry_on

    def __reduce__(self) -> Any:
        return (Guard, (self.func, self.retries, self.retry_on))

    def __repr__(self) -> str:
        return f"Guard({self.func!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.func(*args, **kwargs)
        except Exception as exc:
            return self.rerun(args, kwargs, exc)

    def rerun(
        self, args: Any, kwargs: Any, first: BaseException | None, before: Callable[[], None] | None = None
    ) -> Any:
        """After the task raised ``first``: run it again while ``retry_on`` and the
        retries allow (calling ``before()`` before each run), then return its value
        (:class:`Retried` when it was re-run) or its final exception in a
        :class:`TaskFailed` envelope."""
        attempt = 0
        exc = first
        while True:
            if exc is not None:
                if self.retry_on and attempt < self.retries and isinstance(exc, self.retry_on):
                    attempt += 1
                    exc = None
                    if before is not None:
                        before()
                    try:
                        value = self.func(*args, **kwargs)
                    except Exception as again:
                        exc = again
                    continue
                # The traceback does not survive pickling: keep its text as the cause,
                # as the backends do for an exception raised by a batch.
                if exc.__cause__ is None:
                    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                    exc.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""')
                return TaskFailed(exc, _func_name(self.func), attempt)
            return Retried(value, attempt) if attempt else value


class GuardedBatch(BatchedCalls):
    """A batch run under the policy: each task's final exception is returned in a
    :class:`TaskFailed` envelope in its place (after re-runs for ``retry_on``), so the
    other tasks of the batch are not lost. ``nested`` carries ``(nested, retries,
    retry_on, task_timeout)``, so the batch survives every transport as it is (a
    serializer rebuilds it as ``type(batch)(tasks, nested, index)``); the cost is one
    ``try`` per task, in the worker, and nothing per task in the parent. With a
    ``task_timeout`` (worker processes only) each task runs under the process's
    watchdog (:mod:`._task_timeout`), which ends the worker when the task overruns."""

    __slots__ = ()

    def __reduce__(self) -> Any:
        return (GuardedBatch, (self.tasks, self.nested, self.index))

    def __call__(self) -> list[Any]:
        inner, retries, retry_on, task_timeout = self.nested  # type: ignore[misc]
        run: Any = (self._run, (retries, retry_on, task_timeout), {})
        # A one-task batch applies the nested-backend scope around the loop.
        return BatchedCalls([run], inner, self.index)()[0]  # type: ignore[no-any-return]

    def _run(
        self, retries: int, retry_on: tuple[type[BaseException], ...], task_timeout: float | None
    ) -> list[Any]:
        out: list[Any] = []
        append = out.append
        marked: list[int] | None = None  # positions of the envelopes, when there are any
        tasks: Any = self.tasks  # SingleArgTasks in a process worker
        if task_timeout is None and type(tasks) is SingleArgTasks:
            # map, as BatchedCalls runs them; list.extend keeps the results before a
            # task that raises, and the map goes on after it
            func, values = tasks.func, tasks.args
            rest = iter(values)
            while True:
                try:
                    out.extend(map(func, rest))
                    break
                except Exception:
                    if marked is None:
                        marked = []
                    pos = len(out)
                    marked.append(pos)
                    append(Guard(func, retries, retry_on).rerun((values[pos],), {}, sys.exc_info()[1]))
        elif task_timeout is None:
            for func, args, kwargs in tasks:
                try:
                    append(func(*args, **kwargs))
                except Exception:
                    if marked is None:
                        marked = []
                    marked.append(len(out))
                    append(Guard(func, retries, retry_on).rerun(args, kwargs, sys.exc_info()[1]))
        else:
            dog = watchdog()
            for func, args, kwargs in tasks:
                dog.arm(task_timeout)  # re-runs for retry_on get a timeout of their own
                try:
                    append(func(*args, **kwargs))
                except Exception:
                    if marked is None:
                        marked = []
                    marked.append(len(out))
                    guard = Guard(func, retries, retry_on)
                    append(guard.rerun(args, kwargs, sys.exc_info()[1], lambda: dog.arm(task_timeout)))
                finally:
                    dog.disarm()
        if marked is not None:
            append(Envelopes(tuple(marked)))
        return out


class Envelopes:
    """The last item of a guarded batch's results when some of them are envelopes
    (:class:`TaskFailed`, :class:`Retried`): their positions. A batch without one (the
    usual case) comes back as the plain list of its results, so the parent opens
    nothing: :meth:`Policy.open` costs O(1) per batch instead of a look at every result."""

    __slots__ = ("positions",)

    def __init__(self, positions: tuple[int, ...]) -> None:
        self.positions = positions

    def __reduce__(self) -> Any:
        return (Envelopes, (self.positions,))


class _Kept:
    """A batch of ``func(arg)`` tasks as :meth:`Policy.keep` keeps it."""

    __slots__ = ("index", "nested", "tasks")

    def __init__(self, tasks: SingleArgTasks, nested: Any, index: int) -> None:
        self.tasks = tasks
        self.nested = nested
        self.index = index


def _add_note(exc: BaseException, note: str) -> None:
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # pragma: no cover - Python 3.10: the exceptiongroup backport prints __notes__
        notes = getattr(exc, "__notes__", None)
        if notes is None:
            notes = []
            exc.__notes__ = notes  # type: ignore[attr-defined]
        notes.append(note)


def note_failure(exc: BaseException, index: int, func: str) -> BaseException:
    _add_note(exc, f"par: task {index} ({func}) failed")
    return exc


class Policy:
    """The validated policy of one call, and the per-call cache of guarded functions."""

    def __init__(self, on_error: Any = "raise", retries: Any = 0, retry_on: Any = ()) -> None:
        self.on_error = check_on_error(on_error)
        self.retries = check_retries(retries)
        self.retry_on = check_retry_on(retry_on)
        #: Whether tasks are guarded at all: with the defaults nothing changes (no cost).
        self.active = self.on_error != "raise" or self.retries > 0
        #: Seconds a task may run in its worker (set by the engine: see
        #: :meth:`take_timeout`), or None.
        self.task_timeout: float | None = None
        self._guards: dict[int, tuple[Any, Guard]] = {}

    def take_timeout(self, timeout: float | None, backend: Any) -> bool:
        """Whether the call's ``timeout`` becomes a per-task timeout: with ``on_error``
        other than ``'raise'`` on a backend with ``supports_task_timeout``. Then the
        engine no longer applies it to its wait for results. On process backends
        (``uses_threads`` false) the workers enforce it (:mod:`._task_timeout`); a thread
        backend, or one with ``watches_task_timeout`` (dask, ray), enforces it itself."""
        if timeout is None or self.on_error == "raise" or not getattr(backend, "supports_task_timeout", False):
            return False
        self.task_timeout = timeout
        self.worker_exit = not (
            getattr(backend, "uses_threads", False) or getattr(backend, "watches_task_timeout", False)
        )
        return True

    #: Whether a worker process ends itself when its task overruns (else the backend
    #: enforces the per-task timeout: thread backends, and backends with
    #: ``watches_task_timeout`` such as dask and ray).
    worker_exit = False

    def timed_out(self, error: BaseException) -> bool:
        """Whether ``error`` (a lone task's failure as a whole) says the task overran
        its per-task timeout: its worker process ended itself (``WorkerDiedError`` with
        ``TASK_TIMEOUT_EXIT_CODE``), or the backend failed the batch with a
        ``TimeoutError`` (a task's own exceptions come back in envelopes, never so)."""
        if self.task_timeout is None:
            return False
        if isinstance(error, WorkerDiedError):
            return error.exitcode == TASK_TIMEOUT_EXIT_CODE
        return isinstance(error, TimeoutError)

    def timeout_error(self, index: int, func: Any, error: BaseException) -> TimeoutError:
        """The ``TimeoutError`` that takes the place of task ``index`` (``error``: how
        the backend reported it)."""
        what = (
            "its worker process was ended and replaced"
            if isinstance(error, WorkerDiedError)
            else str(error)
        )
        return TimeoutError(
            f"task {index} ({_func_name(getattr(func, 'func', func))}) ran longer than "
            f"timeout={self.task_timeout:g} seconds: {what}."
        )

    def guard(self, func: Any) -> Guard:
        key = id(func)
        hit = self._guards.get(key)
        if hit is not None and hit[0] is func:
            return hit[1]
        guard = Guard(func, self.retries, self.retry_on)
        self._guards[key] = (func, guard)  # keeps func alive, so its id is not reused
        return guard

    def guarded(self, batch: BatchedCalls) -> GuardedBatch:
        """``batch`` run under the policy (O(1): the tasks are not copied)."""
        in_worker = self.task_timeout if self.worker_exit else None
        packed: Any = (batch.nested, self.retries, self.retry_on, in_worker)
        return GuardedBatch(batch.tasks, packed, batch.index)

    @staticmethod
    def keep(batch: GuardedBatch) -> Any:
        """What the parent keeps of a submitted ``batch`` until it completes, to run its
        tasks again if its worker dies (:meth:`restore` gives the batch back): for the
        usual batch of one function with one positional argument per task, the function
        and the list of the arguments; else the batch. The tasks' tuples are then freed
        once the batch is pickled, as without a policy: kept alive, each would be walked
        by the garbage collector's next young collection (0.08 us per task, which was
        most of what ``on_error='return'`` cost on 10^6 trivial tasks)."""
        tasks = batch.tasks
        single = SingleArgTasks.of(tasks) if len(tasks) >= 2 else None
        if single is None:
            return batch
        return _Kept(single, batch.nested, batch.index)

    @staticmethod
    def restore(kept: Any) -> GuardedBatch:
        """The batch that :meth:`keep` kept."""
        if type(kept) is not _Kept:
            return kept  # type: ignore[no-any-return]
        return GuardedBatch(list(kept.tasks), kept.nested, kept.index)

    def retry_death(self, attempts: int) -> bool:
        """Whether a lone task whose worker died (or timed out) after ``attempts`` extra
        runs is run again on a fresh worker."""
        return attempts < self.retries

    @staticmethod
    def innocent(error: BaseException, index: int) -> bool:
        """Whether ``error`` (a lone task's failure) names the death of a worker that ran
        another task than task ``index``: loky fails every pending batch when one worker
        dies, each error naming the dead worker's task."""
        task = getattr(error, "task", None)
        return (
            isinstance(error, WorkerDiedError)
            and isinstance(task, str)
            and not task.startswith(f"task {index} ")
        )

    def open(self, results: list[Any], first_index: int) -> tuple[list[Any], list[BaseException], int]:
        """A guarded batch's results as returned by its worker (see :class:`Envelopes`),
        with the envelopes opened: ``(results, failures, n_retried)``."""
        if not results or type(results[-1]) is not Envelopes:
            return results, [], 0
        positions = results.pop().positions
        return self.unpack(results, first_index, positions)

    def unpack(
        self, results: list[Any], first_index: int, positions: Any = None
    ) -> tuple[list[Any], list[BaseException], int]:
        """``results`` with the envelopes at ``positions`` (every position when None)
        opened: ``(results, failures, n_retried)``; failures are exceptions (with a note)
        in their task's place."""
        n_retried = 0
        failures: list[BaseException] = []
        out = results
        for i in range(len(results)) if positions is None else positions:
            value = results[i]
            cls = type(value)
            if cls is TaskFailed:
                if out is results:
                    out = list(results)
                n_retried += value.retried
                out[i] = exc = note_failure(value.exc, first_index + i, value.func)
                failures.append(exc)
            elif cls is Retried:
                if out is results:
                    out = list(results)
                n_retried += value.retried
                out[i] = value.value
        return out, failures, n_retried


def failed_task(exc: BaseException, func: Any, attempts: int) -> TaskFailed:
    """The envelope of a task that failed as a whole (its worker died) after ``attempts``
    extra runs; ``func`` is its (guarded) function."""
    return TaskFailed(exc, _func_name(getattr(func, "func", func)), attempts)


def exception_group(failures: list[BaseException], n_tasks: int, results: Any) -> BaseException:
    """The ``ExceptionGroup`` of ``on_error='collect'``, with the call's results (the
    exceptions in the failed tasks' places) as its ``results`` attribute."""
    group: Any = ExceptionGroup(f"{len(failures)} of {n_tasks} tasks failed (on_error='collect')", failures)
    group.results = results
    return group  # type: ignore[no-any-return]
