"""The parent's record of a submitted batch: enough to name it when its worker dies,
without keeping its tasks alive."""

from __future__ import annotations

import functools
import gc
import weakref
from typing import Any

from par_api import BatchedCalls, Task
from par_backends_local._tracking import BatchInfo, describe_batch


class Arg:
    pass


def square(x: Any) -> Any:
    return x


def cube(x: Any) -> Any:
    return x


def test_tracking_record_names_the_tasks_and_their_function() -> None:
    one = BatchedCalls([Task(square, (1,), {})], None, 7)
    many = BatchedCalls([Task(square, (i,), {}) for i in range(4)], None, 8)
    assert describe_batch(BatchInfo.of(one)) == "task 7 (function square)"
    assert describe_batch(many) == "tasks 8 to 11 (function square)"


def test_tracking_record_lists_a_few_distinct_functions() -> None:
    funcs = [square, cube, square, functools.partial(cube), max, min, abs]
    batch = BatchedCalls([Task(f, (1,), {}) for f in funcs], None, 0)
    assert describe_batch(batch) == "tasks 0 to 6 (functions square, cube, max, ...)"


def test_tracking_record_handles_unhashable_callables() -> None:
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self, x: Any) -> Any:
            return x

    batch = BatchedCalls([Task(Unhashable(), (1,), {}), Task(square, (2,), {})], None, 3)
    assert (
        describe_batch(batch)
        == "tasks 3 to 4 (functions test_tracking_record_handles_unhashable_callables.<locals>.Unhashable, square)"
    )


def test_tracking_record_keeps_no_task_alive() -> None:
    arg = Arg()
    ref = weakref.ref(arg)
    batch = BatchedCalls([Task(square, (arg,), {})], None, 0)
    info = BatchInfo.of(batch)
    del batch, arg
    gc.collect()
    assert ref() is None
    assert info is not None and info.describe() == "task 0 (function square)"


def test_tracking_record_of_something_else_is_none() -> None:
    assert BatchInfo.of(object()) is None
    assert describe_batch(lambda: None) is None


def test_tracking_record_uses_the_functions_the_serializer_found() -> None:
    class Sent:
        functions = (cube,)

    batch = BatchedCalls([Task(square, (i,), {}) for i in range(3)], None, 5)
    # the serializer's answer is taken as is: the tasks are not walked again
    assert describe_batch(BatchInfo.of(batch, Sent())) == "tasks 5 to 7 (function cube)"
    assert describe_batch(BatchInfo.of(batch, object())) == "tasks 5 to 7 (function square)"
