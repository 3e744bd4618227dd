"""``delayed`` and the records it builds: a task and a batch of tasks."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
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


# ``delayed(f)(x)`` is evaluated once per task, and ``functools.wraps`` costs several
# microseconds: the wrapper of a function is built once and kept in a small cache.
_WRAPPERS: dict[int, tuple[Callable[..., Any], Callable[..., Task]]] = {}
_WRAPPERS_MAX = 512


def _make_wrapper(function: Callable[..., Any]) -> Callable[..., Task]:
    new = tuple.__new__

    def delayed_function(*args: Any, **kwargs: Any) -> Task:
        return new(Task, (function, args, kwargs))  # Task(function, args, kwargs), one frame less

    try:
        delayed_function = functools.wraps(function)(delayed_function)
    except AttributeError:  # pragma: no cover - exotic callables without __dict__
        pass
    return delayed_function


def delayed(function: Callable[P, R]) -> Callable[P, Task]:
    """Capture the arguments of a call instead of making it.

    ``delayed(f)(1, y=2)`` returns ``Task(f, (1,), {'y': 2})``, a named tuple that
    unpacks as ``(function, args, kwargs)``. The wrapper keeps the metadata of
    ``function`` (``functools.wraps``), so ``delayed`` also works as a decorator.
    """
    entry = _WRAPPERS.get(id(function))
    if entry is not None and entry[0] is function:
        return entry[1]
    if not callable(function):
        raise TypeError(
            f"delayed(function): function must be callable, got {type(function).__name__} "
            f"{function!r}. Pass the function itself, e.g. delayed(math.sqrt)(4), not its result."
        )
    wrapper = _make_wrapper(function)
    if len(_WRAPPERS) >= _WRAPPERS_MAX:
        _WRAPPERS.clear()
    _WRAPPERS[id(function)] = (function, wrapper)
    return wrapper


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
        tasks: list[Task],
        nested: tuple[Any, int | None] | None = None,
        index: int = 0,
    ) -> None:
        self.tasks = tasks
        self.nested = nested
        self.index = index

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __call__(self) -> list[Any]:
        if self.nested is None:
            return [func(*args, **kwargs) for func, args, kwargs in self.tasks]
        from .config import _nested_scope

        with _nested_scope(*self.nested):
            return [func(*args, **kwargs) for func, args, kwargs in self.tasks]

    def __reduce__(self) -> tuple[Any, ...]:
        return (BatchedCalls, (self.tasks, self.nested, self.index))

    def __repr__(self) -> str:
        return f"BatchedCalls(<{len(self.tasks)} tasks from index {self.index}>)"


def run_tasks(tasks: Iterable[Task]) -> list[Any]:
    """Run tasks in order and return their results (the worker-side body of a batch)."""
    return [func(*args, **kwargs) for func, args, kwargs in tasks]
