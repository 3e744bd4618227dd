"""``delayed`` and the records it builds: a task and a batch of tasks."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, NamedTuple, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class Task(NamedTuple):
    """One recorded call: ``func(*args, **kwargs)``. Unpacks as ``(func, args, kwargs)``."""

    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __call__(self) -> Any:
        return self.func(*self.args, **self.kwargs)


#: What ``delayed(f)(*args, **kwargs)`` returns: the plain tuple ``(f, args, kwargs)``, as
#: joblib's ``delayed`` does. :class:`Task` is the same record with names (and callable);
#: both unpack alike and compare equal, and everything that takes tasks accepts either.
TaskTuple = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]

# ``delayed(f)(x)`` is evaluated once per task, and ``functools.wraps`` costs several
# microseconds: the wrapper of a function is built once and kept in a small cache, keyed
# by the function itself (a dict lookup is the whole cost of ``delayed(f)`` then).
_WRAPPERS: dict[Any, tuple[Callable[..., Any], Callable[..., TaskTuple]]] = {}
_WRAPPERS_MAX = 512


def _make_wrapper(function: Callable[..., Any]) -> Callable[..., TaskTuple]:
    def delayed_function(*args: Any, **kwargs: Any) -> TaskTuple:
        # a plain tuple: building a Task (a tuple subclass) costs twice as much, and this
        # runs once per task in the caller's generator
        return (function, args, kwargs)

    try:
        delayed_function = functools.wraps(function)(delayed_function)
    except AttributeError:  # pragma: no cover - exotic callables without __dict__
        pass
    return delayed_function


def _new_wrapper(function: Callable[..., Any]) -> Callable[..., TaskTuple]:
    if not callable(function):
        raise TypeError(
            f"delayed(function): function must be callable, got {type(function).__name__} "
            f"{function!r}. Pass the function itself, e.g. delayed(math.sqrt)(4), not its result."
        )
    wrapper = _make_wrapper(function)
    try:
        if len(_WRAPPERS) >= _WRAPPERS_MAX:
            _WRAPPERS.clear()
        _WRAPPERS[function] = (function, wrapper)
    except Exception:  # an unhashable callable (or one whose __eq__ fails): not cached
        pass
    return wrapper


def delayed(function: Callable[P, R]) -> Callable[P, TaskTuple]:
    """Capture the arguments of a call instead of making it.

    ``delayed(f)(1, y=2)`` returns the tuple ``(f, (1,), {'y': 2})`` (a :data:`TaskTuple`,
    equal to ``Task(f, (1,), {'y': 2})``), which unpacks as ``(function, args, kwargs)``.
    The wrapper keeps the metadata of ``function`` (``functools.wraps``), so ``delayed``
    also works as a decorator.
    """
    try:
        entry = _WRAPPERS[function]
    except Exception:  # not cached yet, or unhashable
        return _new_wrapper(function)
    if entry[0] is function:  # not merely an equal callable
        return entry[1]
    return _new_wrapper(function)


class SingleArgTasks(Sequence[TaskTuple]):
    """The tasks ``func(arg)`` for each ``arg`` of ``args``, without a tuple per task.

    What a process worker receives for a batch of ``delayed(func)(x)`` tasks (made by
    ``par_serialization``): a read-only sequence of ``(func, (arg,), {})`` tuples, made
    on access, which :class:`BatchedCalls` runs as ``map(func, args)``. For trivial tasks
    that is 0.035 us per task in the worker, against 0.19 us to build the tuples, call
    through ``*args, **kwargs`` and free them again.
    """

    __slots__ = ("args", "func")

    def __init__(self, func: Callable[..., Any], args: list[Any]) -> None:
        self.func = func
        self.args = args

    @classmethod
    def of(cls, tasks: Any) -> SingleArgTasks | None:
        """``tasks`` as a :class:`SingleArgTasks` when every task calls the same function
        with exactly one positional argument and no keywords (the usual
        ``delayed(f)(x) for x in ...`` batch), else None; one pass over the tasks. The
        one rule for that shape: ``par_serialization`` packs such batches by it, the
        scheduler keeps them by it."""
        if type(tasks) is cls:
            return tasks
        try:
            first = tasks[0][0]
            args = [a for f, (a,), k in tasks if f is first and not k]
        except (TypeError, ValueError, IndexError, KeyError):  # empty, or not such triples
            return None
        return cls(first, args) if len(args) == len(tasks) else None

    def __len__(self) -> int:
        return len(self.args)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [(self.func, (a,), {}) for a in self.args[i]]
        return (self.func, (self.args[i],), {})

    def __iter__(self) -> Iterator[TaskTuple]:
        func = self.func
        return ((func, (a,), {}) for a in self.args)

    def __reduce__(self) -> tuple[Any, ...]:
        return (SingleArgTasks, (self.func, self.args))

    def __repr__(self) -> str:
        return f"SingleArgTasks({self.func!r}, <{len(self.args)} arguments>)"


#: ``config._nested_scope``, imported at the first batch with a nested setting (this
#: module is imported by ``config``), then kept: an import statement in every batch
#: costs ~0.5 us.
_NESTED_SCOPE: Any = None


def _nested_scope_class() -> Any:
    global _NESTED_SCOPE
    from .config import _nested_scope

    _NESTED_SCOPE = _nested_scope
    return _nested_scope


class BatchedCalls:
    """A batch of tasks run as one unit by a worker; calling it returns the list of results.

    ``nested`` is the configuration applied around the tasks in the worker, so that a
    ``Parallel`` inside a task uses the backend chosen by the outer backend's
    ``get_nested_backend()`` (for instance threads sized to the remaining CPUs, or
    sequential inside a thread backend). It is ``(backend_or_name, n_jobs)`` or None.
    ``index`` is the position of the first task of the batch in the whole call.
    """

    __slots__ = ("index", "nested", "tasks")

    def __init__(
        self,
        tasks: list[TaskTuple],
        nested: tuple[Any, int | None] | None = None,
        index: int = 0,
    ) -> None:
        self.tasks = tasks
        self.nested = nested
        self.index = index

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[TaskTuple]:
        return iter(self.tasks)

    def __call__(self) -> list[Any]:
        if self.nested is None:
            return self._call_tasks()
        with (_NESTED_SCOPE or _nested_scope_class())(*self.nested):
            return self._call_tasks()

    def _call_tasks(self) -> list[Any]:
        tasks: Any = self.tasks  # a list, or SingleArgTasks in a process worker
        if type(tasks) is SingleArgTasks:
            return list(map(tasks.func, tasks.args))
        return [func(*args, **kwargs) for func, args, kwargs in tasks]

    def __reduce__(self) -> tuple[Any, ...]:
        return (BatchedCalls, (self.tasks, self.nested, self.index))

    def __repr__(self) -> str:
        return f"BatchedCalls(<{len(self.tasks)} tasks from index {self.index}>)"


def _func_name(func: Any) -> str:
    inner = getattr(func, "func", None)  # functools.partial
    if inner is not None and callable(inner) and not hasattr(func, "__qualname__"):
        func = inner
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if name is None:
        name = type(func).__qualname__
    return str(name)


class BatchInfo:
    """What the parent remembers of a submitted batch, to name it if its worker dies: the
    index of its first task, its number of tasks and its first few distinct functions.

    Made at submission from a ``BatchedCalls`` (:meth:`of`); it does not keep the tasks
    (and their arguments) alive until the batch completes, so they are freed as soon as
    the batch is pickled. Used by the local process backends and ray
    (``WorkerDiedError.task``: the scheduler then knows which tasks the dead worker ran)."""

    __slots__ = ("functions", "index", "n_tasks")

    def __init__(self, index: int, n_tasks: int, functions: tuple[Any, ...]) -> None:
        self.index = index
        self.n_tasks = n_tasks
        self.functions = functions

    @classmethod
    def of(cls, batch: Any, sent: Any = None) -> BatchInfo | None:
        """The record of ``batch`` (duck-typed on ``tasks`` and ``index``), or None.
        ``sent`` is what ``TransportHooks.serialize_batch`` made of it: when it carries
        ``functions`` (see :class:`par_api.TransportHooks`), the tasks are not walked."""
        tasks = getattr(batch, "tasks", None)
        index = getattr(batch, "index", None)
        if tasks is None or not isinstance(index, int):
            return None
        known = getattr(sent, "functions", None)
        if isinstance(known, tuple) and known:
            return cls(index, len(tasks), known[:4])
        try:
            return cls(index, len(tasks), cls.first_functions(tasks))
        except Exception:
            return None

    @staticmethod
    def first_functions(tasks: Any) -> tuple[Any, ...]:
        """The first (at most 4) distinct callables of ``tasks`` (``(func, args, kwargs)``
        items), in order: the one rule for what a batch's record and
        ``par_serialization``'s sent batch say about its functions."""
        try:  # C speed for hashable callables (nearly all), order kept
            return tuple(dict.fromkeys(map(itemgetter(0), tasks)))[:4]
        except TypeError:  # an unhashable callable
            seen: list[Any] = []
            for task in tasks:
                if not any(task[0] is f for f in seen):
                    seen.append(task[0])
                    if len(seen) == 4:
                        break
            return tuple(seen)

    def describe(self) -> str:
        """``'task 3 (function f)'`` / ``'tasks 8 to 11 (functions f, g)'``."""
        names: list[str] = []
        for func in self.functions:
            name = _func_name(func)
            if name not in names:
                names.append(name)
        funcs = ", ".join(names[:3]) + (", ..." if len(self.functions) > 3 else "")
        label = "function" if len(names) == 1 else "functions"
        n, index = self.n_tasks, self.index
        where = f"task {index}" if n == 1 else f"tasks {index} to {index + n - 1}"
        return f"{where} ({label} {funcs})"
