"""wrap_non_picklable_objects: functions and classes travel by cloudpickle under plain pickle."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from par_serialization import BatchSerializer, TaskPicklingError, wrap_non_picklable_objects


class DuckBatch:
    def __init__(self, tasks: list[Any], nested: Any = None, index: int = 0) -> None:
        self.tasks = tasks
        self.nested = nested
        self.index = index

    def __call__(self) -> list[Any]:
        return [f(*a, **k) for f, a, k in self.tasks]


@pytest.fixture
def plain_pickle(monkeypatch: pytest.MonkeyPatch) -> BatchSerializer:
    monkeypatch.setenv("LOKY_PICKLER", "pickle")
    return BatchSerializer()


def test_serialization_wrapped_function_keeps_metadata_and_travels(plain_pickle: BatchSerializer) -> None:
    def square(x: int) -> int:
        """Square a number."""
        return x * x

    with pytest.raises(TaskPicklingError):
        plain_pickle(DuckBatch([(square, (3,), {})]))

    wrapped = wrap_non_picklable_objects(square)
    assert wrapped.__name__ == "square" and wrapped.__doc__ == "Square a number."
    assert wrapped.__qualname__ == square.__qualname__ and wrapped.__wrapped__ is square  # type: ignore[attr-defined]
    assert wrapped(4) == 16
    sent = plain_pickle(DuckBatch([(wrapped, (i,), {}) for i in range(3)]))
    assert pickle.loads(pickle.dumps(sent))() == [0, 1, 4]
    # plain pickle alone (no par serializer) can send it too
    assert pickle.loads(pickle.dumps(wrapped))(5) == 25
    assert wrap_non_picklable_objects(wrapped) is wrapped


def test_serialization_wrapped_function_pickled_once_per_call(plain_pickle: BatchSerializer) -> None:
    wrapped = wrap_non_picklable_objects(lambda x: x + 1)
    for k in range(3):
        plain_pickle(DuckBatch([(wrapped, (k,), {})], index=k))
    assert plain_pickle.stats.by_value == 1 and plain_pickle.stats.cache_hits == 2


def test_serialization_keep_wrapper_false_unwraps_on_load() -> None:
    def inc(x: int) -> int:
        return x + 1

    kept = pickle.loads(pickle.dumps(wrap_non_picklable_objects(inc)))
    bare = pickle.loads(pickle.dumps(wrap_non_picklable_objects(inc, keep_wrapper=False)))
    assert kept.__name__ == "inc" and hasattr(kept, "__wrapped__")
    assert bare.__name__ == "inc" and not hasattr(bare, "__wrapped__")
    assert kept(1) == bare(1) == 2


def test_serialization_wrapped_class_instances_behave_as_original(plain_pickle: BatchSerializer) -> None:
    class Point:
        """A point in the plane."""

        def __init__(self, x: int, y: int) -> None:
            self.x, self.y = x, y

        def norm2(self) -> int:
            return self.x**2 + self.y**2

    with pytest.raises(TaskPicklingError):
        plain_pickle(DuckBatch([(abs, (Point(1, 2),), {})]))

    WPoint = wrap_non_picklable_objects(Point)
    assert WPoint.__name__ == "Point" and WPoint.__doc__ == "A point in the plane."
    assert WPoint.__qualname__ == Point.__qualname__
    p = WPoint(3, 4)
    assert isinstance(p, Point) and isinstance(p, WPoint) and p.norm2() == 25
    copy = pickle.loads(pickle.dumps(p))
    assert type(copy) is WPoint and (copy.x, copy.y) == (3, 4)

    def norm(point: Any) -> int:
        return point.norm2()

    sent = plain_pickle(DuckBatch([(wrap_non_picklable_objects(norm), (p,), {}), (WPoint, (5, 6), {})]))
    out = pickle.loads(pickle.dumps(sent()))
    assert out[0] == 25
    assert type(out[1]) is WPoint and isinstance(out[1], Point) and out[1].y == 6
    assert wrap_non_picklable_objects(WPoint) is WPoint


def test_serialization_wrapped_function_binds_as_method() -> None:
    def describe(self: Any) -> str:
        return f"value={self.v}"

    class Holder:
        method = wrap_non_picklable_objects(describe)

        def __init__(self) -> None:
            self.v = 3

    assert Holder().method() == "value=3"


def test_serialization_wrap_rejects_non_callable() -> None:
    with pytest.raises(TypeError, match="obj must be a function"):
        wrap_non_picklable_objects(42)
