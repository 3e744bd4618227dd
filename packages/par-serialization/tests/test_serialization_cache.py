"""The per-call cache: a callable pickled by value is pickled once per BatchSerializer."""

from __future__ import annotations

import pickle
import textwrap
from typing import Any, ClassVar

import pytest
from par_serialization import BatchSerializer, dumps, loads, pickles_by_reference


class DuckBatch:
    def __init__(self, tasks: list[Any], nested: Any = None, index: int = 0) -> None:
        self.tasks = tasks
        self.nested = nested
        self.index = index

    def __call__(self) -> list[Any]:
        return [f(*a, **k) for f, a, k in self.tasks]


class CountingPayload:
    """Counts how many times it is pickled."""

    reduced: ClassVar[int] = 0

    def __reduce__(self) -> tuple[Any, ...]:
        type(self).reduced += 1
        return (CountingPayload, ())


class Marker:
    pass


def reduce_marker(obj: Marker) -> tuple[Any, ...]:
    return (str, ("reduced-marker",))


def identity(x: Any) -> Any:
    return x


def make_closure() -> Any:
    payload = CountingPayload()

    def closure(i: int) -> tuple[int, str]:
        return i, type(payload).__name__

    return closure


def test_serialization_closure_pickled_once_per_call() -> None:
    CountingPayload.reduced = 0
    closure = make_closure()
    ser = BatchSerializer()
    sent = [ser(DuckBatch([(closure, (i,), {}) for i in range(k, k + 5)], index=k)) for k in (0, 5, 10)]
    assert CountingPayload.reduced == 1
    assert ser.stats.batches == 3
    assert ser.stats.by_value == 1
    assert ser.stats.cache_hits == 2
    results = [r for s in sent for r in pickle.loads(pickle.dumps(s))()]
    assert results == [(i, "CountingPayload") for i in range(15)]


def test_serialization_ten_thousand_tasks_one_lambda_pickles_it_once() -> None:
    f = lambda x: x + 1  # noqa: E731
    ser = BatchSerializer()
    tasks = [(f, (i,), {}) for i in range(10_000)]
    for k in range(0, 10_000, 1000):
        ser(DuckBatch(tasks[k : k + 1000], index=k))
    assert ser.stats.by_value == 1
    assert ser.stats.cache_hits == 9


def test_serialization_close_drops_cache_and_calls_do_not_share() -> None:
    CountingPayload.reduced = 0
    closure = make_closure()
    ser = BatchSerializer()
    ser(DuckBatch([(closure, (0,), {})]))
    ser.close()
    assert ser.stats.cached == 0
    ser(DuckBatch([(closure, (1,), {})]))
    BatchSerializer()(DuckBatch([(closure, (2,), {})]))
    assert CountingPayload.reduced == 3


def test_serialization_module_function_sent_by_reference() -> None:
    assert pickles_by_reference(textwrap.dedent)
    assert not pickles_by_reference(lambda: 0)
    ser = BatchSerializer()
    sent = ser(DuckBatch([(textwrap.dedent, ("  a",), {})] * 3))
    assert ser.stats.by_value == 0
    assert sent() == ["a"] * 3
    assert b"textwrap" in sent.payload and b"dedent" in sent.payload


def test_serialization_reducers_apply_to_arguments_closures_and_fallback() -> None:
    marker = Marker()

    def closure() -> Any:
        return marker

    ser = BatchSerializer({Marker: reduce_marker})
    out = ser(DuckBatch([(identity, (marker,), {}), (closure, (), {})]))()
    assert out == ["reduced-marker", "reduced-marker"]
    # dict views are not picklable by plain pickle: the batch falls back to cloudpickle
    keys = {"a": 1, "b": 2}.keys()
    out = ser(DuckBatch([(identity, ((keys, marker),), {})]))()
    assert ser.stats.fallbacks == 1
    assert list(out[0][0]) == ["a", "b"] and out[0][1] == "reduced-marker"


def test_serialization_dumps_loads_helpers() -> None:
    f = lambda x: x * 2  # noqa: E731
    assert loads(dumps(f))(21) == 42
    assert loads(dumps([Marker()], reducers={Marker: reduce_marker})) == ["reduced-marker"]


@pytest.mark.parametrize("bad", [[1, 2], {1: print}, {Marker: 3}])
def test_serialization_bad_reducers_rejected(bad: Any) -> None:
    with pytest.raises(TypeError, match="reducers"):
        BatchSerializer(bad)


@pytest.mark.parametrize("bad", [1, 99, "5", True])
def test_serialization_bad_protocol_rejected(bad: Any) -> None:
    with pytest.raises(ValueError, match="protocol"):
        BatchSerializer(protocol=bad)
