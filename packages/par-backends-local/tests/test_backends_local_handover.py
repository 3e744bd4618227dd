"""After a batch that took long to pickle, the pool's threads get a moment to send it
before the next batch is pickled (which holds the GIL)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from par_api import BatchedCalls, Task, TransportHooks
from par_backends_local import LokyBackend, MultiprocessingBackend, _common


def test_backends_handover_sleeps_only_after_a_long_serialization(monkeypatch: Any) -> None:
    slept: list[float] = []
    monkeypatch.setattr(_common.time, "sleep", slept.append)
    _common.hand_over(0.0001)
    assert slept == []
    _common.hand_over(_common.LONG_SERIALIZATION * 2)
    assert slept == [_common.HANDOVER_PAUSE]


def test_backends_serialize_without_hooks_is_the_batch_itself() -> None:
    marker = object()
    assert _common.serialize(None, marker) == (marker, 0.0)
    assert _common.serialize(TransportHooks(), marker) == (marker, 0.0)
    payload, took = _common.serialize(TransportHooks(serialize_batch=lambda b: ("sent", b)), marker)
    assert payload == ("sent", marker) and took >= 0


@pytest.mark.parametrize("backend_class", [LokyBackend, MultiprocessingBackend])
@pytest.mark.parametrize(("pickling_seconds", "pauses"), [(0.0, 0), (0.01, 2)])
def test_backends_hand_over_after_slow_pickling(
    monkeypatch: Any, backend_class: Any, pickling_seconds: float, pauses: int
) -> None:
    def slow_serialize(batch: Any) -> Any:
        if pickling_seconds:
            time.sleep(pickling_seconds)  # stands for pickling a large argument
        return batch

    handed: list[float] = []
    real = _common.hand_over
    monkeypatch.setattr(
        "par_backends_local.loky.hand_over"
        if backend_class is LokyBackend
        else "par_backends_local.multiprocessing.hand_over",
        lambda seconds: (handed.append(seconds), real(seconds)),
    )
    backend = backend_class()
    backend.configure(2, hooks=TransportHooks(serialize_batch=slow_serialize))
    try:
        futures = [backend.submit(BatchedCalls([Task(abs, (-i,), {})], None, i)) for i in range(2)]
        assert [f.result(timeout=60) for f in futures] == [[0], [1]]
    finally:
        backend.terminate()
    assert len(handed) == 2
    assert sum(s > _common.LONG_SERIALIZATION for s in handed) == pauses
