"""What the engine keeps alive and how it treats the garbage collector while it pulls."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from par_api import Task
from par_scheduler import run


class Payload:
    """A task argument that can be watched with a weak reference."""


def _watched(n: int, refs: list[Any], gc_states: list[bool] | None = None) -> Iterator[Task]:
    for _ in range(n):
        if gc_states is not None:
            gc_states.append(gc.isenabled())
        obj = Payload()
        refs.append(weakref.ref(obj))
        yield Task(id, (obj,), {})


@pytest.mark.parametrize("batch_size", [1, 5, "auto"])
def test_scheduler_pauses_the_collector_while_it_pulls_and_restores_it(sync_backend, batch_size) -> None:
    states: list[bool] = []
    assert gc.isenabled()
    out = run(sync_backend(auto=True), _watched(50, [], states), n_jobs=1, batch_size=batch_size)
    assert len(out) == 50
    assert states and not any(states)
    assert gc.isenabled()


def test_scheduler_leaves_a_disabled_collector_disabled(sync_backend) -> None:
    gc.disable()
    try:
        run(sync_backend(), _watched(10, []), n_jobs=1)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_scheduler_restores_the_collector_when_the_iterable_fails(sync_backend) -> None:
    def failing() -> Iterator[Task]:
        yield Task(abs, (1,), {})
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        run(sync_backend(), failing(), n_jobs=1)
    assert gc.isenabled()


@pytest.mark.parametrize("batch_size", [5, "auto"])
def test_scheduler_holds_no_task_once_its_batch_is_submitted(sync_backend, batch_size) -> None:
    # Between pumps (here: while the consumer holds the first result), the engine keeps
    # only the tasks it has pulled and not yet submitted, so that submitted tasks (and
    # their arguments) are freed by reference counting, not by a later collection.
    refs: list[Any] = []
    backend = sync_backend(auto=True)
    results = run(backend, _watched(200, refs), n_jobs=1, batch_size=batch_size, return_as="generator")
    assert isinstance(results, Iterator)
    first = next(results)
    assert isinstance(first, int)
    submitted = sum(backend.sizes)
    backend.batches.clear()  # the fake backend's own record of what it ran
    alive = [i for i, r in enumerate(refs) if r() is not None]
    # at most one task read ahead (the look-ahead that finds the end of the iterable)
    assert len(refs) - submitted <= 1 and len(alive) <= 1, (len(refs), submitted, alive)
    assert len(list(results)) == 199
    backend.batches.clear()
    assert all(r() is None for r in refs)
