"""The ``n_jobs`` rules and the validation of ``prefer`` / ``require``."""

from __future__ import annotations

import fractions
from typing import Any

import par_api
import pytest
from par_api import check_n_jobs, check_prefer, check_prefer_require, check_require, normalize_n_jobs


@pytest.mark.parametrize(
    ("n_jobs", "expected"),
    [
        (None, None),
        (1, 1),
        (7, 7),
        (-1, -1),
        (-3, -3),
        (2.0, 2),
        (2.9, 2),  # rounded down
        (1.0001, 1),
        (-1.0, -1),
        (-1.5, -2),  # rounded down, not towards zero
        (-0.5, -1),
        (fractions.Fraction(7, 2), 3),
    ],
)
def test_check_n_jobs_returns_an_int_rounded_down(n_jobs: Any, expected: int | None) -> None:
    value = check_n_jobs(n_jobs)
    assert value == expected
    assert value is None or type(value) is int


@pytest.mark.parametrize("n_jobs", [0, 0.0, 0.5, 0.999])
def test_zero_is_a_value_error_naming_n_jobs(n_jobs: Any) -> None:
    with pytest.raises(
        ValueError,
        match=r"n_jobs=.* is not allowed: use a positive count of workers, -1 for all CPUs, -2 for all but one, or None",
    ):
        check_n_jobs(n_jobs)


@pytest.mark.parametrize("n_jobs", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_value_errors(n_jobs: float) -> None:
    with pytest.raises(ValueError, match=r"n_jobs must be a finite number"):
        check_n_jobs(n_jobs)


def test_strings_of_ints_are_converted_as_joblib_does() -> None:
    assert check_n_jobs("2") == 2
    assert check_n_jobs(" -1 ") == -1
    with pytest.raises(ValueError, match=r"^n_jobs could not be converted to int: got 'all'"):
        check_n_jobs("all")
    with pytest.raises(ValueError, match=r"n_jobs=0 is not allowed"):
        check_n_jobs("0")


@pytest.mark.parametrize("n_jobs", [b"2", True, False, [1], 2j, object()])
def test_non_numbers_are_type_errors_naming_n_jobs(n_jobs: Any) -> None:
    with pytest.raises(
        TypeError,
        match=r"n_jobs must be an int \(or None\), got .*Use a positive count of workers, -1 for all CPUs",
    ):
        check_n_jobs(n_jobs)


def test_errors_name_the_given_parameter() -> None:
    with pytest.raises(ValueError, match=r"^workers=0 is not allowed"):
        check_n_jobs(0, name="workers")
    with pytest.raises(TypeError, match=r"^workers must be an int"):
        normalize_n_jobs(b"x", n_cpus=4, name="workers")
    with pytest.raises(ValueError, match=r"^workers could not be converted to int"):
        normalize_n_jobs("x", n_cpus=4, name="workers")


@pytest.mark.parametrize(
    ("n_jobs", "n_cpus", "expected"),
    [
        (None, 4, 1),  # None means 1 when nothing configures it
        (1, 4, 1),
        (3, 4, 3),
        (16, 4, 16),  # oversubscription is allowed
        (-1, 4, 4),  # all CPUs
        (-2, 4, 3),  # all but one
        (-4, 4, 1),
        (-5, 4, 1),  # at least 1
        (-100, 4, 1),
        (-1, 1, 1),
        (2.5, 4, 2),
        (-1.5, 4, 3),
    ],
)
def test_normalize_n_jobs(n_jobs: Any, n_cpus: int, expected: int) -> None:
    assert normalize_n_jobs(n_jobs, n_cpus=n_cpus) == expected


def test_normalize_n_jobs_uses_cpu_count_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(par_api.cpu, "cpu_count", lambda only_physical_cores=False: 6)
    assert normalize_n_jobs(-1) == 6
    assert normalize_n_jobs(-2) == 5


def test_normalize_n_jobs_rejects_zero() -> None:
    with pytest.raises(ValueError, match="n_jobs=0 is not allowed"):
        normalize_n_jobs(0, n_cpus=4)


# -- prefer / require ------------------------------------------------------------------------


@pytest.mark.parametrize("prefer", ["processes", "threads", None])
def test_check_prefer_accepts_the_documented_values(prefer: str | None) -> None:
    assert check_prefer(prefer) == prefer


@pytest.mark.parametrize("prefer", ["process", "thread", "Threads", "", 1, ["threads"]])
def test_check_prefer_rejects_anything_else(prefer: Any) -> None:
    with pytest.raises(ValueError, match=r"^prefer=.* is not a valid backend hint, expected one of \('processes', 'threads', None\)$"):
        check_prefer(prefer)


@pytest.mark.parametrize("require", ["sharedmem", None])
def test_check_require_accepts_the_documented_values(require: str | None) -> None:
    assert check_require(require) == require


@pytest.mark.parametrize("require", ["shared", "threads", "SHAREDMEM", 0])
def test_check_require_rejects_anything_else(require: Any) -> None:
    with pytest.raises(ValueError, match=r"^require=.* is not a valid backend constraint, expected one of \('sharedmem', None\)$"):
        check_require(require)


@pytest.mark.parametrize(
    ("prefer", "require"),
    [(None, None), ("threads", None), ("processes", None), (None, "sharedmem"), ("threads", "sharedmem")],
)
def test_consistent_combinations(prefer: str | None, require: str | None) -> None:
    assert check_prefer_require(prefer, require) == (prefer, require)


def test_processes_with_sharedmem_is_inconsistent() -> None:
    with pytest.raises(
        ValueError,
        match=r"prefer='processes' and require='sharedmem' are inconsistent: .*use prefer='threads'",
    ):
        check_prefer_require("processes", "sharedmem")


def test_combination_check_validates_each_value_first() -> None:
    with pytest.raises(ValueError, match=r"^prefer=gpu "):
        check_prefer_require("gpu", "sharedmem")
    with pytest.raises(ValueError, match=r"^require=x "):
        check_prefer_require("threads", "x")
