"""The compact form of a batch whose tasks all call one function, and its round trip."""

from __future__ import annotations

import functools
import operator
import pickle
from typing import Any

import pytest
from par_serialization import BatchSerializer


class DuckBatch:
    def __init__(self, tasks: list[Any], nested: Any = None, index: int = 0) -> None:
        self.tasks = tasks
        self.nested = nested
        self.index = index

    def __call__(self) -> list[Any]:
        return [f(*a, **k) for f, a, k in self.tasks]


def _roundtrip(tasks: list[Any]) -> tuple[list[Any], int]:
    with BatchSerializer() as serializer:
        payload = serializer(DuckBatch(tasks))
    received = pickle.loads(pickle.dumps(payload, protocol=5))
    return list(received()), len(payload.payload)


def grab_kwargs(x: int, **kwargs: Any) -> dict[str, Any]:
    kwargs["seen"] = x  # a task mutating its own kwargs must not affect other tasks
    return kwargs


def test_same_function_batch_is_pickled_without_a_tuple_per_task() -> None:
    n = 2000
    results, size = _roundtrip([(abs, (-i,), {}) for i in range(n)])
    assert results == list(range(n))
    general = len(pickle.dumps([(abs, (-i,), {}) for i in range(n)], protocol=5))
    assert size < 0.7 * general, (size, general)


def test_same_function_with_keywords_keeps_each_tasks_keywords() -> None:
    tasks = [(grab_kwargs, (i,), {"k": i * 2} if i % 2 else {}) for i in range(6)]
    results, _ = _roundtrip(tasks)
    assert results == [
        {"seen": 0},
        {"k": 2, "seen": 1},
        {"seen": 2},
        {"k": 6, "seen": 3},
        {"seen": 4},
        {"k": 10, "seen": 5},
    ]


def test_shared_empty_keywords_are_never_shared_with_the_callee() -> None:
    results, _ = _roundtrip([(grab_kwargs, (i,), {}) for i in range(3)])
    assert results == [{"seen": 0}, {"seen": 1}, {"seen": 2}]
    assert results[0] is not results[1]


def test_mixed_functions_and_partials_round_trip_in_order() -> None:
    add3 = functools.partial(operator.add, 3)
    tasks = [(abs, (-1,), {}), (add3, (4,), {}), (abs, (-5,), {}), (max, (1, 9), {})]
    results, _ = _roundtrip(tasks)
    assert results == [1, 7, 5, 9]


def test_unpicklable_argument_in_a_same_function_batch_names_its_task() -> None:
    from par_serialization import TaskPicklingError

    lock = __import__("threading").Lock()
    with BatchSerializer() as serializer, pytest.raises(TaskPicklingError, match="task 1 "):
        serializer(DuckBatch([(abs, (1,), {}), (abs, (lock,), {})]))


class Big:
    """Stands for a large argument (a dict of 10^6 items takes tens of ms to free)."""

    def __len__(self) -> int:
        return 1


def test_arguments_are_freed_after_the_results_are_sent_not_before() -> None:
    import weakref

    arg = Big()
    ref = weakref.ref(arg)
    with BatchSerializer() as serializer:
        payload = serializer(DuckBatch([(len, (arg,), {})]))
    del arg
    received = pickle.loads(pickle.dumps(payload, protocol=5))
    del payload
    results = received()  # in the worker: unpickles its own copy of the argument
    worker_copy = results._keep[0][1][0]
    copy_ref = weakref.ref(worker_copy)
    del worker_copy
    assert ref() is None  # the parent's object was never kept
    assert copy_ref() is not None  # the worker's copy lives while its results do ...
    sent = pickle.dumps(results, protocol=5)  # ... the pool pickles and sends them ...
    del results  # ... then drops them
    assert copy_ref() is None
    assert pickle.loads(sent) == [1]


def test_serialized_batch_names_its_first_functions_for_the_backend() -> None:
    with BatchSerializer() as serializer:
        same = serializer(DuckBatch([(abs, (-i,), {}) for i in range(5)]))
        mixed = serializer(DuckBatch([(f, (1,), {}) for f in (abs, max, abs, min, len, str, repr)]))
    assert same.functions == (abs,)
    assert mixed.functions == (abs, max, min, len)
    # parent-side only: not part of what the worker receives
    assert pickle.loads(pickle.dumps(same, protocol=5)).functions == ()


def test_single_argument_tasks_pickle_as_a_list_of_values() -> None:
    # no 1-tuple per task in the pickle: the pickler memoizes tuples, values it does not
    n = 2000
    results, size = _roundtrip([(abs, (-i,), {}) for i in range(n)])
    assert results == list(range(n))
    with_tuples = len(pickle.dumps((abs, [(-i,) for i in range(n)], None), protocol=5))
    assert size < 0.8 * with_tuples, (size, with_tuples)


def test_single_argument_that_is_a_tuple_stays_one_argument() -> None:
    def first(x: Any) -> Any:
        return x

    tasks = [(first, ((i, i + 1),), {}) for i in range(3)] + [(first, ((),), {})]
    results, _ = _roundtrip(tasks)
    assert results == [(0, 1), (1, 2), (2, 3), ()]


def test_mixed_argument_counts_in_one_function_batch_round_trip() -> None:
    tasks = [(max, (1, 5), {}), (max, ([3],), {}), (max, ([4],), {})]
    results, _ = _roundtrip(tasks)
    assert results == [5, 3, 4]


def test_short_numeric_results_are_left_to_the_pool_pickler() -> None:
    from par_serialization import _batch

    with BatchSerializer() as serializer:
        numbers = serializer(DuckBatch([(abs, (-i,), {}) for i in range(3)] + [(float, (2,), {})]))
        nones = serializer(DuckBatch([(print, (), {"end": ""})]))
        text = serializer(DuckBatch([(str, (5,), {})]))
        many = serializer(DuckBatch([(abs, (-i,), {}) for i in range(_batch.PLAIN_MAX_RESULTS + 1)]))
    out = pickle.loads(pickle.dumps(numbers, protocol=5))()
    # not pickled in the worker a second time: the pool pickles the list itself ...
    assert type(out) is _batch._PlainResults
    assert out == [0, 1, 2, 2.0]
    back = pickle.loads(pickle.dumps(out, protocol=5))
    assert type(back) is list and back == [0, 1, 2, 2.0]  # ... and the parent gets a list
    assert type(back[3]) is float
    assert type(pickle.loads(pickle.dumps(nones, protocol=5))()) is _batch._PlainResults
    # anything else (a str could be large, a subclass could need a reducer) goes through
    # the call's strategy, as do long lists
    assert type(pickle.loads(pickle.dumps(text, protocol=5))()) is _batch._PickledResults
    assert type(pickle.loads(pickle.dumps(many, protocol=5))()) is _batch._PickledResults


def test_the_calls_shared_header_is_pickled_once_and_unpickled_once_per_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from par_serialization import _batch, _results

    reduced: list[int] = []
    reduce = _results.ResultSpec.__reduce__

    def counting_reduce(self: Any) -> Any:
        reduced.append(1)
        return reduce(self)

    monkeypatch.setattr(_results.ResultSpec, "__reduce__", counting_reduce)
    monkeypatch.setattr(_batch, "_HEADERS", {})
    nested = ("sequential", 1)
    with BatchSerializer() as serializer:
        sent = [serializer(DuckBatch([(abs, (-i,), {})], nested, i)) for i in range(3)]
        assert len(reduced) == 1  # the result spec (and nested, the batch type) once per call
        other = serializer(DuckBatch([(abs, (-1,), {})], ("threading", 2), 3))
        assert len(reduced) == 2  # another nested: a new header
    results = [pickle.loads(pickle.dumps(s, protocol=5))() for s in sent]
    assert results == [[0], [1], [2]]
    assert len(_batch._HEADERS) == 1  # one header kept in the worker for the three batches
    assert pickle.loads(pickle.dumps(other, protocol=5))() == [1]
    assert len(_batch._HEADERS) == 2
