"""Validation of the scheduler's parameters, shared with ``Parallel(...)`` construction.

Each function returns the normalised value or raises ``ValueError`` naming the
parameter and the accepted values.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal

__all__ = [
    "RETURN_AS_VALUES",
    "check_batch_size",
    "check_n_jobs_effective",
    "check_return_as",
    "check_timeout",
]

RETURN_AS_VALUES = ("list", "generator", "generator_unordered")


def check_batch_size(batch_size: Any) -> int | Literal["auto"]:
    """``'auto'`` or a positive int (bools refused)."""
    if batch_size == "auto" and isinstance(batch_size, str):
        return "auto"
    if isinstance(batch_size, numbers.Integral) and not isinstance(batch_size, bool) and int(batch_size) >= 1:
        return int(batch_size)
    raise ValueError(
        f"batch_size must be 'auto' or a positive int, got {type(batch_size).__name__} {batch_size!r}"
    )


def check_return_as(return_as: Any) -> str:
    """One of ``'list'``, ``'generator'``, ``'generator_unordered'``."""
    if isinstance(return_as, str) and return_as in RETURN_AS_VALUES:
        return return_as
    raise ValueError(
        f"return_as must be one of 'list', 'generator' or 'generator_unordered', got {return_as!r}"
    )


def check_timeout(timeout: Any) -> float | None:
    """``None`` (no limit) or a positive, finite number of seconds, returned as float."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise ValueError(
            f"timeout must be None or a positive number of seconds, got {type(timeout).__name__} {timeout!r}"
        )
    value = float(timeout)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"timeout must be None or a positive, finite number of seconds, got {timeout!r}")
    return value


def check_n_jobs_effective(n_jobs: Any) -> int:
    """The effective number of workers given to :func:`par_scheduler.run`: an int >= 1."""
    if isinstance(n_jobs, numbers.Integral) and not isinstance(n_jobs, bool) and int(n_jobs) >= 1:
        return int(n_jobs)
    raise ValueError(
        f"n_jobs must be the effective number of workers (an int >= 1, as returned by "
        f"backend.configure), got {n_jobs!r}"
    )
