"""Pickler selection: the pickler argument and the LOKY_PICKLER environment variable."""

from __future__ import annotations

import pickle
import sys
import types
from typing import Any

import pytest
from par_serialization import BatchSerializer, TaskPicklingError, dumps, get_pickler_name


class DuckBatch:
    def __init__(self, tasks: list[Any], nested: Any = None, index: int = 0) -> None:
        self.tasks = tasks
        self.nested = nested
        self.index = index

    def __call__(self) -> list[Any]:
        return [f(*a, **k) for f, a, k in self.tasks]


class Marker:
    pass


def identity(x: Any) -> Any:
    return x


@pytest.fixture(autouse=True)
def _no_loky_pickler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOKY_PICKLER", raising=False)


def test_serialization_default_is_auto() -> None:
    ser = BatchSerializer()
    assert "default" in ser.pickler_name and "LOKY_PICKLER is not set" in ser.pickler_name
    assert "LOKY_PICKLER is not set" in get_pickler_name()
    assert ser(DuckBatch([(lambda: 1, (), {})]))() == [1]


def test_serialization_loky_pickler_pickle_is_plain_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOKY_PICKLER", "pickle")
    ser = BatchSerializer()
    assert "LOKY_PICKLER" in ser.pickler_name and "pickle" in ser.pickler_name
    assert "LOKY_PICKLER" in get_pickler_name()
    assert ser(DuckBatch([(identity, (5,), {})]))() == [5]
    with pytest.raises(TaskPicklingError) as info:
        ser(DuckBatch([(lambda: 1, (), {})]))
    assert info.value.argument == "function"


def test_serialization_loky_pickler_cloudpickle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOKY_PICKLER", "cloudpickle")
    ser = BatchSerializer()
    assert "cloudpickle" in ser.pickler_name
    f = lambda x: -x  # noqa: E731
    assert ser(DuckBatch([(f, (2,), {})]))() == [-2]
    ser(DuckBatch([(f, (3,), {})]))
    assert ser.stats.by_value == 1 and ser.stats.cache_hits == 1


def test_serialization_explicit_pickler_overrides_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOKY_PICKLER", "pickle")
    ser = BatchSerializer(pickler="auto")
    assert ser(DuckBatch([(lambda: 2, (), {})]))() == [2]


def test_serialization_loky_pickler_module_without_pickler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOKY_PICKLER", "json")
    with pytest.raises(ValueError, match="LOKY_PICKLER") as info:
        BatchSerializer()
    assert "'json'" in str(info.value) and "Pickler" in str(info.value)
    assert "LOKY_PICKLER" in get_pickler_name() and "invalid" in get_pickler_name()
    with pytest.raises(ValueError, match="LOKY_PICKLER"):
        dumps(1)


def test_serialization_loky_pickler_missing_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOKY_PICKLER", "par_no_such_pickler_module_xyz")
    with pytest.raises(ValueError, match="LOKY_PICKLER") as info:
        BatchSerializer()
    assert isinstance(info.value.__cause__, ImportError)


def test_serialization_pickler_argument_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="pickler='json'"):
        BatchSerializer(pickler="json")
    with pytest.raises(TypeError, match="pickler"):
        BatchSerializer(pickler=pickle)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pickler"):
        BatchSerializer(pickler=" ")


def test_serialization_loky_pickler_custom_module(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[str] = []

    class CountingPickler(pickle.Pickler):
        def __init__(self, file: Any, protocol: Any = None) -> None:
            created.append(type(self).__name__)
            super().__init__(file, protocol)

    module = types.ModuleType("par_test_custom_pickler")
    module.Pickler = CountingPickler  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "par_test_custom_pickler", module)
    monkeypatch.setenv("LOKY_PICKLER", "par_test_custom_pickler")
    ser = BatchSerializer({Marker: lambda m: (str, ("custom-reduced",))})
    assert "par_test_custom_pickler.Pickler" in ser.pickler_name
    out = ser(DuckBatch([(identity, (Marker(),), {})]))()
    assert out == ["custom-reduced"]
    # the batch (with the reducers) in the parent, the results "in the worker"
    assert created == ["CountingPicklerWithReducers", "CountingPickler"]
