"""par_api.arguments: which task arguments a cluster backend stores once per call, and
the placeholders that stand for them (the rule shared by the dask and ray backends)."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from par_api import BatchedCalls, Task
from par_api.arguments import CallArguments, Slot, fill_slots, is_small, known_nbytes


def _store_into(stored: list[Any]):
    def store(objects: list[Any]) -> list[str]:
        handles = []
        for obj in objects:
            stored.append(obj)
            handles.append(f"h{len(stored)}")
        return handles

    return store


def test_large_stored_at_once_repeated_stored_on_second_sight() -> None:
    stored: list[Any] = []
    args = CallArguments(_store_into(stored), threshold=1000)
    big = bytearray(2000)
    repeated = [object()] * 20  # not small, size unknown
    b1, h1 = args.prepare(BatchedCalls([Task(len, (big, repeated, 3), {})]))
    assert h1 == ["h1"] and stored == [big]  # big at once; repeated not yet
    assert type(b1.tasks[0][1][0]) is Slot and b1.tasks[0][1][1] is repeated and b1.tasks[0][1][2] == 3
    b2, h2 = args.prepare(BatchedCalls([Task(len, (big,), {"x": repeated}), Task(len, (big,), {})]))
    assert h2 == ["h1", "h2"] and stored == [big, repeated]  # big reused; repeated stored now
    placed = [a for t in b2.tasks for a in (*t[1], *t[2].values())]
    assert [type(a) for a in placed] == [Slot] * 3 and [a.index for a in placed] == [0, 1, 0]
    filled = fill_slots(b2, (big, repeated))
    assert filled.tasks[0][1][0] is big and filled.tasks[0][2]["x"] is repeated
    assert (args.n_stored, args.bytes_stored) == (2, 2000)
    args.clear()
    _, h3 = args.prepare(BatchedCalls([Task(len, (big,), {})]))
    assert h3 == ["h3"]  # forgotten with the call: stored again


def test_threshold_none_stores_only_preloaded_objects() -> None:
    stored: list[Any] = []
    args = CallArguments(_store_into(stored), threshold=None)
    big = bytearray(10**6)
    batch = BatchedCalls([Task(len, (big,), {})])
    assert args.prepare(batch) == (batch, [])
    args.preload([big], ["pre"])
    swapped, handles = args.prepare(batch)
    assert handles == ["pre"] and type(swapped.tasks[0][1][0]) is Slot and stored == []


def test_small_values_stay_inline() -> None:
    assert is_small(3) and is_small("x" * 10) and is_small((1, 2.0, "a")) and is_small({"k": b"v"})
    assert not is_small(bytearray(5000)) and not is_small([object()])
    assert known_nbytes(b"abc") == 3 and known_nbytes(memoryview(b"abcd")) == 4 and known_nbytes(object()) is None


def test_slot_pickles_and_fill_without_values_is_the_same_batch() -> None:
    assert pickle.loads(pickle.dumps(Slot(2))).index == 2
    batch = BatchedCalls([Task(len, ("ab",), {})])
    assert fill_slots(batch, ()) is batch
    assert fill_slots(BatchedCalls([Task(len, (Slot(0),), {})]), ["abc"])() == [3]


@pytest.mark.parametrize("threshold", [1000])
def test_same_object_in_one_batch_gets_one_handle(threshold: int) -> None:
    stored: list[Any] = []
    args = CallArguments(_store_into(stored), threshold=threshold)
    big = bytearray(2000)
    batch, handles = args.prepare(BatchedCalls([Task(len, (big,), {"y": big})]))
    assert handles == ["h1"] and stored == [big]
    assert batch.tasks[0][1][0].index == batch.tasks[0][2]["y"].index == 0
