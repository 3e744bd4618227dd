"""``delayed``, ``Task`` and ``BatchedCalls``."""

from __future__ import annotations

import functools
import inspect
import math
import operator
import pickle

import par_api
import pytest
from par_api import BatchedCalls, Task, delayed


def add(x: int, y: int = 0) -> int:
    """Add two numbers."""
    return x + y


def boom(x: int) -> int:
    raise KeyError(f"boom {x}")


def current_config() -> tuple[object, object, bool]:
    cfg = par_api.get_active_config()
    return cfg.backend, cfg.n_jobs, cfg.nested


class NestedBackend(par_api.ParallelBackendBase):
    def effective_n_jobs(self, n_jobs: int | None) -> int:
        return 1


# -- delayed ---------------------------------------------------------------------------


def test_delayed_records_func_args_kwargs_and_unpacks_as_a_triple() -> None:
    task = delayed(add)(1, y=2)
    assert type(task) is tuple  # as joblib's delayed: a plain (function, args, kwargs)
    func, args, kwargs = task
    assert func is add
    assert args == (1,)
    assert kwargs == {"y": 2}
    assert task == (add, (1,), {"y": 2}) == Task(add, (1,), {"y": 2})
    named = Task(*task)
    assert (named.func, named.args, named.kwargs) == (add, (1,), {"y": 2})
    assert named() == 3


def test_delayed_without_arguments_records_empty_args_and_kwargs() -> None:
    assert tuple(delayed(add)()) == (add, (), {})


def test_each_delayed_call_gets_its_own_kwargs() -> None:
    make = delayed(add)
    first, second = make(1, y=1), make(2, y=5)
    assert first[2] == {"y": 1} and second[2] == {"y": 5}
    assert first[2] is not second[2]


def test_delayed_does_not_call_the_function() -> None:
    calls: list[int] = []
    delayed(calls.append)(1)
    assert calls == []


def test_delayed_keeps_wraps_metadata() -> None:
    wrapper = delayed(add)
    assert wrapper.__name__ == "add"
    assert wrapper.__qualname__ == "add"
    assert wrapper.__doc__ == "Add two numbers."
    assert wrapper.__module__ == add.__module__
    assert wrapper.__wrapped__ is add  # type: ignore[attr-defined]
    assert inspect.signature(wrapper) == inspect.signature(add)


def test_delayed_works_as_a_decorator() -> None:
    @delayed
    def square(x: int) -> int:
        """Square x."""
        return x * x

    assert square.__name__ == "square"
    assert square.__doc__ == "Square x."
    func, args, kwargs = square(4)
    assert (args, kwargs) == ((4,), {})
    assert func is square.__wrapped__  # the undecorated function is recorded  # type: ignore[attr-defined]
    assert func(4) == 16


@pytest.mark.parametrize(
    "callable_",
    [math.sqrt, operator.neg, functools.partial(add, 10), str.upper, lambda v: v],
    ids=["builtin", "operator", "partial", "method-descriptor", "lambda"],
)
def test_delayed_accepts_any_callable(callable_: object) -> None:
    task = delayed(callable_)(4 if callable_ is not str.upper else "a")  # type: ignore[arg-type]
    func, args, _ = task
    assert func is callable_
    assert Task(*task)() == callable_(*args)  # type: ignore[operator]


def test_delayed_accepts_a_callable_instance() -> None:
    class Scale:
        def __init__(self, k: int) -> None:
            self.k = k

        def __call__(self, x: int) -> int:
            return self.k * x

    scale = Scale(3)
    assert Task(*delayed(scale)(2))() == 6


@pytest.mark.parametrize("not_callable", [3, "add", None, [add]])
def test_delayed_of_a_non_callable_is_a_type_error_naming_function(not_callable: object) -> None:
    with pytest.raises(TypeError, match=r"delayed\(function\): function must be callable"):
        delayed(not_callable)  # type: ignore[arg-type]


def test_task_pickles_round_trip() -> None:
    task = delayed(add)(1, y=2)
    clone = pickle.loads(pickle.dumps(task))
    assert clone == task
    named = Task(add, (1,), {"y": 2})
    clone_named = pickle.loads(pickle.dumps(named))
    assert isinstance(clone_named, Task) and clone_named == named
    assert clone_named() == 3


# -- BatchedCalls -------------------------------------------------------------------------


def test_batched_calls_runs_its_tasks_in_order() -> None:
    batch = BatchedCalls([delayed(add)(i, y=10) for i in range(4)], index=8)
    assert len(batch) == 4
    assert [t[1] for t in batch] == [(0,), (1,), (2,), (3,)]
    assert batch() == [10, 11, 12, 13]
    assert batch.index == 8
    assert batch.nested is None
    assert repr(batch) == "BatchedCalls(<4 tasks from index 8>)"


def test_batched_calls_propagates_a_task_error() -> None:
    batch = BatchedCalls([delayed(add)(1), delayed(boom)(2)])
    with pytest.raises(KeyError, match="boom 2"):
        batch()


def test_batched_calls_applies_the_nested_configuration_around_its_tasks() -> None:
    inner = NestedBackend()
    batch = BatchedCalls([delayed(current_config)(), delayed(current_config)()], nested=(inner, 2))
    assert batch() == [(inner, 2, True), (inner, 2, True)]
    cfg = par_api.get_active_config()
    assert (cfg.backend, cfg.n_jobs, cfg.nested) == (None, None, False)


def test_batched_calls_nested_backend_given_by_name_is_built_from_the_registry() -> None:
    par_api.register_parallel_backend("nested-test", NestedBackend)
    ((backend, n_jobs, nested),) = BatchedCalls([delayed(current_config)()], nested=("nested-test", None))()
    assert isinstance(backend, NestedBackend)
    assert n_jobs is None  # n_jobs None leaves the enclosing value
    assert nested is True


def test_batched_calls_restores_the_configuration_when_a_task_fails() -> None:
    batch = BatchedCalls([delayed(boom)(1)], nested=(NestedBackend(), 1))
    with pytest.raises(KeyError):
        batch()
    assert par_api.get_active_config().nested is False
    assert par_api.get_active_config().explicit == frozenset()


def test_batched_calls_pickles_with_its_nested_setting_and_index() -> None:
    batch = BatchedCalls([delayed(add)(1, y=1)], nested=("sequential", 1), index=5)
    clone = pickle.loads(pickle.dumps(batch))
    assert isinstance(clone, BatchedCalls)
    assert clone.tasks == batch.tasks
    assert clone.nested == ("sequential", 1)
    assert clone.index == 5


def test_delayed_caches_its_wrapper_per_function_not_per_equal_callable() -> None:
    class Same:
        """Instances compare equal (and hash alike) but are different callables."""

        def __init__(self, tag: str) -> None:
            self.tag = tag

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Same)

        def __hash__(self) -> int:
            return 1

        def __call__(self) -> str:
            return self.tag

    a, b = Same("a"), Same("b")
    assert delayed(a) is delayed(a)
    ta, tb = delayed(a)(), delayed(b)()
    assert ta[0] is a and tb[0] is b


def test_delayed_gives_a_proxy_of_a_cached_function_its_own_wrapper() -> None:
    """A proxy that hashes and compares like the function it wraps (as ``wrapt``'s
    ``ObjectProxy`` and the decorators built on it do) is another callable: once
    ``delayed(f)`` is cached, ``delayed(proxy)`` must record the proxy. A cache hit
    answered by a plain dict lookup on the callable (``{f: wrapper}[proxy]`` finds
    ``f``'s entry) would make the task call ``f`` and skip the proxy."""

    def f(x: int) -> tuple[str, int]:
        return ("f", x)

    class Proxy:
        def __init__(self, wrapped: object) -> None:
            self.__wrapped__ = wrapped

        def __eq__(self, other: object) -> bool:
            return bool(self.__wrapped__ == other)

        def __hash__(self) -> int:
            return hash(self.__wrapped__)

        def __call__(self, x: int) -> tuple[str, int]:
            return ("proxy", x)

    proxy = Proxy(f)
    assert proxy == f and f == proxy and hash(proxy) == hash(f)
    assert delayed(f)(1)[0] is f  # cached now
    func, args, kwargs = delayed(proxy)(1)
    assert func is proxy
    assert Task(func, args, kwargs)() == ("proxy", 1)
    assert delayed(f)(2) == (f, (2,), {})


def test_delayed_accepts_unhashable_callables_and_bound_methods() -> None:
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self, x: int) -> int:
            return x + 1

        def method(self, x: int) -> int:
            return x * 2

    obj = Unhashable()
    func, args, _ = delayed(obj)(1)
    assert func is obj and func(*args) == 2
    func, args, _ = delayed(obj.method)(4)
    assert func(*args) == 8


def test_single_arg_tasks_is_the_sequence_of_its_task_tuples() -> None:
    tasks = par_api.SingleArgTasks(abs, [-1, -2, -3])
    assert len(tasks) == 3
    assert list(tasks) == [(abs, (-1,), {}), (abs, (-2,), {}), (abs, (-3,), {})]
    assert tasks[1] == (abs, (-2,), {}) and tasks[-1] == (abs, (-3,), {})
    assert tasks[1:] == [(abs, (-2,), {}), (abs, (-3,), {})]
    assert tasks[0][2] is not tasks[0][2]  # each access gets its own kwargs
    back = pickle.loads(pickle.dumps(tasks))
    assert type(back) is par_api.SingleArgTasks and list(back) == list(tasks)


def test_batched_calls_maps_single_arg_tasks_in_order_and_raises_the_first_error() -> None:
    assert BatchedCalls(par_api.SingleArgTasks(abs, [-1, 2, -3]))() == [1, 2, 3]  # type: ignore[arg-type]
    nested = BatchedCalls(par_api.SingleArgTasks(math.sqrt, [4.0, -1.0]), ("sequential", 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="math domain error"):
        nested()


def test_single_arg_tasks_of_recognises_only_the_one_function_one_argument_batch() -> None:
    from par_api import SingleArgTasks

    single = SingleArgTasks.of([(abs, (-1,), {}), (abs, (2,), {})])
    assert single is not None and single.func is abs and single.args == [-1, 2]
    assert list(single) == [(abs, (-1,), {}), (abs, (2,), {})]
    assert SingleArgTasks.of(single) is single
    for other in (
        [],
        [(abs, (1,), {}), (str, (2,), {})],  # two functions
        [(divmod, (1, 2), {}), (divmod, (3, 4), {})],  # two arguments
        [(abs, (), {"x": 1})],  # keywords
        [(abs, 1, {})],  # not an args tuple
    ):
        assert SingleArgTasks.of(other) is None


def test_batch_info_names_the_tasks_without_keeping_them():
    """``BatchInfo`` (the local process backends and ray name a dead worker's batch
    with it): first task index, count, the first distinct functions."""

    def square(x):
        return x * x

    one = BatchedCalls([Task(square, (3,), {})], None, 7)
    many = BatchedCalls([Task(square, (i,), {}) for i in range(3)] + [Task(abs, (-1,), {})], None, 8)
    assert (
        par_api.BatchInfo.of(one).describe()
        == "task 7 (function test_batch_info_names_the_tasks_without_keeping_them.<locals>.square)"
    )
    info = par_api.BatchInfo.of(many)
    assert (info.index, info.n_tasks, info.functions) == (8, 4, (square, abs))
    assert info.describe().startswith("tasks 8 to 11 (functions ") and info.describe().endswith(", abs)")
    assert par_api.BatchInfo.of(object()) is None


def test_batch_first_functions_keeps_order_caps_at_four_and_takes_unhashable_callables():
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self, x):
            return x

    u = Unhashable()
    tasks = [(f, (1,), {}) for f in (abs, abs, u, max, u, min, len, repr)]
    assert par_api.BatchInfo.first_functions(tasks) == (abs, u, max, min)
    hashable = [(f, (1,), {}) for f in (len, abs, len, max, min, repr)]
    assert par_api.BatchInfo.first_functions(hashable) == (len, abs, max, min)
