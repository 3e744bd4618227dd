"""Parameter checks shared with Parallel(...): errors name the parameter and the accepted values."""

from __future__ import annotations

import math

import pytest
from par_api import delayed
from par_scheduler import check_batch_size, check_return_as, check_timeout, run


@pytest.mark.parametrize("value", ["auto", 1, 7])
def test_scheduler_batch_size_accepted(value: object) -> None:
    assert check_batch_size(value) == value


@pytest.mark.parametrize("value", [0, -1, 1.5, "3", "AUTO", None, True, [1]])
def test_scheduler_batch_size_refused(value: object) -> None:
    with pytest.raises(ValueError, match=r"batch_size must be 'auto' or a positive int"):
        check_batch_size(value)


@pytest.mark.parametrize("value", ["list", "generator", "generator_unordered"])
def test_scheduler_return_as_accepted(value: str) -> None:
    assert check_return_as(value) == value


@pytest.mark.parametrize("value", ["unordered_generator", "List", None, 1, "iterator"])
def test_scheduler_return_as_refused(value: object) -> None:
    with pytest.raises(
        ValueError, match="return_as must be one of 'list', 'generator' or 'generator_unordered'"
    ):
        check_return_as(value)


@pytest.mark.parametrize(("value", "expected"), [(None, None), (1, 1.0), (0.25, 0.25)])
def test_scheduler_timeout_accepted(value: object, expected: float | None) -> None:
    assert check_timeout(value) == expected


@pytest.mark.parametrize("value", [0, -1, math.inf, math.nan, "1", True])
def test_scheduler_timeout_refused(value: object) -> None:
    with pytest.raises(ValueError, match="timeout must be None or a positive"):
        check_timeout(value)


def test_scheduler_run_validates_before_starting(sync_backend, finish_recorder) -> None:
    backend = sync_backend()
    finished = finish_recorder()
    tasks = [delayed(abs)(-1)]
    for kwargs, name in [
        ({"n_jobs": 0}, "n_jobs"),
        ({"n_jobs": 2, "batch_size": 0}, "batch_size"),
        ({"n_jobs": 2, "return_as": "set"}, "return_as"),
        ({"n_jobs": 2, "timeout": -1}, "timeout"),
        ({"n_jobs": 2, "pre_dispatch": "n_jobs**2"}, "pre_dispatch"),
    ]:
        with pytest.raises(ValueError, match=name):
            run(backend, tasks, on_finish=finished, **kwargs)  # type: ignore[arg-type]
    assert backend.log == []  # nothing started
    assert finished.calls == []


def test_scheduler_generator_refused_when_backend_cannot(sync_backend) -> None:
    backend = sync_backend()
    backend.supports_return_generator = False
    with pytest.raises(ValueError, match="return_as='generator'"):
        run(backend, [delayed(abs)(-1)], n_jobs=1, return_as="generator")
    assert run(backend, [delayed(abs)(-1)], n_jobs=1) == [1]
