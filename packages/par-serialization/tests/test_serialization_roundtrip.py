"""Round trips through a real spawn ProcessPoolExecutor (one worker, shared by the module).

This test module is not importable by name in a spawned worker, so it is registered
with ``cloudpickle.register_pickle_by_value``: its functions and classes travel by value,
like those of a ``__main__`` script.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import cloudpickle
import pytest
from par_serialization import (
    BatchSerializer,
    ResultPicklingError,
    SerializedBatch,
    worker_cache_info,
    wrap_non_picklable_objects,
)

pytestmark = pytest.mark.timeout(90)


class DuckBatch:
    """A BatchedCalls-like batch (par_api is not a dependency of this package)."""

    def __init__(self, tasks: list[Any], nested: Any = None, index: int = 0) -> None:
        self.tasks = tasks
        self.nested = nested
        self.index = index

    def __call__(self) -> list[Any]:
        return [f(*a, **k) for f, a, k in self.tasks]


WrappedDuck = wrap_non_picklable_objects(DuckBatch)


@dataclasses.dataclass
class Record:
    name: str
    values: list[int]


class CustomInitError(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class Reducible:
    def __init__(self, a: int, b: int) -> None:
        self.a, self.b = a, b

    def __reduce__(self) -> tuple[Any, ...]:
        return (Reducible, (self.a, self.b))


def make_results() -> list[Any]:
    return [Record("r", [1, 2]), CustomInitError(7, "bad"), Reducible(3, 4)]


def make_adder(n: int) -> Any:
    def add(x: int) -> int:
        return x + n

    return add


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        cloudpickle.unregister_pickle_by_value(module)


def run(pool: ProcessPoolExecutor, serializer: BatchSerializer, tasks: list[Any], index: int = 0) -> Any:
    sent = serializer(DuckBatch(tasks, None, index))
    assert isinstance(sent, SerializedBatch) and len(sent) == len(tasks)
    return pool.submit(sent).result(timeout=60)


def test_serialization_lambda_closure_nested_roundtrip(pool: ProcessPoolExecutor) -> None:
    def outer() -> Any:
        def nested(x: int) -> int:
            return x * 10

        return nested

    with BatchSerializer() as ser:
        out = run(pool, ser, [(lambda x: x + 1, (1,), {}), (make_adder(5), (1,), {}), (outer(), (2,), {})])
    assert out == [2, 6, 20]
    assert type(out) is list  # the parent sees a plain list


def test_serialization_local_class_roundtrip(pool: ProcessPoolExecutor) -> None:
    class Point:
        def __init__(self, x: int, y: int) -> None:
            self.x, self.y = x, y

        def norm2(self) -> int:
            return self.x**2 + self.y**2

    ser = BatchSerializer()
    out = run(pool, ser, [(Point.norm2, (Point(3, 4),), {}), (Point, (1, 2), {})])
    assert out[0] == 25
    assert type(out[1]) is Point and (out[1].x, out[1].y) == (1, 2)


def test_serialization_exact_result_types(pool: ProcessPoolExecutor) -> None:
    out = run(pool, BatchSerializer(), [(make_results, (), {})])[0]
    record, error, reducible = out
    assert type(record) is Record and record == Record("r", [1, 2])
    assert type(error) is CustomInitError
    assert (error.code, error.detail, error.args) == (7, "bad", ("7: bad",))
    assert type(reducible) is Reducible and (reducible.a, reducible.b) == (3, 4)


def test_serialization_numpy_scalar_types(pool: ProcessPoolExecutor) -> None:
    np = pytest.importorskip("numpy")
    out = run(pool, BatchSerializer(), [(lambda: [np.float32(1.5), np.int64(3), np.bool_(True)], (), {})])[0]
    assert [type(v) for v in out] == [np.float32, np.int64, np.bool_]
    assert out == [np.float32(1.5), np.int64(3), np.bool_(True)]


def test_serialization_worker_unpickles_closure_once_per_call(pool: ProcessPoolExecutor) -> None:
    big = list(range(1000))

    def closure(i: int) -> dict[str, int]:
        assert len(big) == 1000
        return worker_cache_info()

    ser = BatchSerializer()
    first = run(pool, ser, [(closure, (0,), {})])[0]
    run(pool, ser, [(closure, (1,), {})], index=1)
    third = run(pool, ser, [(closure, (2,), {})], index=2)[0]
    assert third["loads"] == first["loads"], (first, third)
    assert third["hits"] >= first["hits"] + 2
    # parent side: the closure was cloudpickled once for the three batches
    assert ser.stats.batches == 3 and ser.stats.cache_hits >= 2


def test_serialization_unpicklable_result_through_pool(pool: ProcessPoolExecutor) -> None:
    def returns_lock() -> Any:
        return threading.Lock()

    sent = BatchSerializer()(DuckBatch([(abs, (-1,), {}), (returns_lock, (), {})], index=4))
    with pytest.raises(ResultPicklingError) as info:
        pool.submit(sent).result(timeout=60)
    err = info.value
    assert err.function is not None and err.function.endswith("returns_lock")
    assert err.result_type == "_thread.lock"
    assert err.task_index == 5
    assert "returns_lock" in str(err) and "_thread.lock" in str(err)


def test_serialization_wrapped_objects_with_plain_pickle(
    pool: ProcessPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOKY_PICKLER", "pickle")

    @wrap_non_picklable_objects
    def triple(x: int) -> int:
        """Multiply by three."""
        return 3 * x

    @wrap_non_picklable_objects
    class Box:
        """A box."""

        def __init__(self, v: int) -> None:
            self.v = v

    ser = BatchSerializer()
    sent = ser(WrappedDuck([(triple, (2,), {}), (Box, (5,), {})], None, 0))
    out = pool.submit(sent).result(timeout=60)
    assert out[0] == 6
    assert type(out[1]) is Box and out[1].v == 5
    assert triple.__name__ == "triple" and triple.__doc__ == "Multiply by three."


def test_serialization_raised_exception_with_custom_init(pool: ProcessPoolExecutor) -> None:
    def fails(code: int) -> None:
        raise CustomInitError(code, "broken")

    sent = BatchSerializer()(DuckBatch([(fails, (9,), {})]))
    with pytest.raises(CustomInitError) as info:
        pool.submit(sent).result(timeout=60)
    assert type(info.value) is CustomInitError
    assert (info.value.code, info.value.detail, info.value.args) == (9, "broken", ("9: broken",))
