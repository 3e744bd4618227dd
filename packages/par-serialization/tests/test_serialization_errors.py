"""Pickling failures: at dispatch for tasks, in the worker for results, with names."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path
from typing import Any

import pytest
from par_serialization import BatchSerializer, ResultPicklingError, TaskPicklingError


class DuckBatch:
    def __init__(self, tasks: list[Any], nested: Any = None, index: int = 0) -> None:
        self.tasks = tasks
        self.nested = nested
        self.index = index

    def __call__(self) -> list[Any]:
        return [f(*a, **k) for f, a, k in self.tasks]


def process(*args: Any, **kwargs: Any) -> int:
    return len(args) + len(kwargs)


def test_serialization_open_file_kwarg_names_task_and_argument(tmp_path: Path) -> None:
    with open(tmp_path / "data.txt", "w") as fh:
        batch = DuckBatch([(process, (1,), {}), (process, (2,), {"fh": fh})], index=40)
        with pytest.raises(TaskPicklingError) as info:
            BatchSerializer()(batch)
    err = info.value
    assert err.task_index == 41
    assert err.function is not None and err.function.endswith("process")
    assert err.argument == "kwargs['fh']"
    assert err.argument_type == "_io.TextIOWrapper"
    # plain pickle raises TypeError; cloudpickle's retry a PicklingError (write-mode file)
    assert isinstance(err.__cause__, (TypeError, pickle.PicklingError))
    message = str(err)
    assert "task 41" in message and "process" in message and "kwargs['fh']" in message
    assert "TextIOWrapper" in message


def test_serialization_lock_positional_argument() -> None:
    batch = DuckBatch([(process, (1, threading.Lock()), {})], index=0)
    with pytest.raises(TaskPicklingError) as info:
        BatchSerializer()(batch)
    assert (info.value.task_index, info.value.argument) == (0, "args[1]")
    assert info.value.argument_type == "_thread.lock"
    assert isinstance(info.value.__cause__, TypeError)
    assert "thread backend" in str(info.value)


def test_serialization_generator_argument() -> None:
    gen = (x for x in range(3))
    with pytest.raises(TaskPicklingError) as info:
        BatchSerializer()(DuckBatch([(process, (), {}), (process, (), {}), (process, (gen,), {})], index=7))
    assert (info.value.task_index, info.value.argument, info.value.argument_type) == (
        9,
        "args[0]",
        "generator",
    )
    assert "list(gen)" in str(info.value)


def test_serialization_unpicklable_function_itself() -> None:
    lock = threading.Lock()

    def uses_lock() -> bool:
        return lock.locked()

    with pytest.raises(TaskPicklingError) as info:
        BatchSerializer()(DuckBatch([(uses_lock, (), {})]))
    assert info.value.argument == "function"
    assert info.value.function is not None and info.value.function.endswith("uses_lock")
    assert info.value.__cause__ is not None


def test_serialization_task_error_is_picklable_with_attributes() -> None:
    with pytest.raises(TaskPicklingError) as info:
        BatchSerializer()(DuckBatch([(process, (threading.Lock(),), {})], index=3))
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is TaskPicklingError and str(copy) == str(info.value)
    assert (copy.task_index, copy.argument, copy.argument_type) == (3, "args[0]", "_thread.lock")
    assert isinstance(copy, pickle.PicklingError)


def returns_lock() -> Any:
    return threading.Lock()


def test_serialization_unpicklable_result_in_process() -> None:
    sent = BatchSerializer()(DuckBatch([(process, (), {}), (returns_lock, (), {})], index=10))
    with pytest.raises(ResultPicklingError) as info:
        sent()
    err = info.value
    assert err.function is not None and err.function.endswith("returns_lock")
    assert err.result_type == "_thread.lock" and err.task_index == 11
    assert isinstance(err.__cause__, TypeError)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.function, copy.result_type) == (err.function, err.result_type)


def test_serialization_batch_without_tasks_is_rejected() -> None:
    with pytest.raises(TypeError, match="batch"):
        BatchSerializer()(object())
