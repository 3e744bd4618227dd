"""``n_jobs`` rules and the validation of the choice parameters (``prefer``, ``require``)."""

from __future__ import annotations

import math
import numbers
from typing import Any

PREFER_VALUES = ("processes", "threads", None)
REQUIRE_VALUES = ("sharedmem", None)


def check_n_jobs(n_jobs: Any, name: str = "n_jobs") -> int | None:
    """Validate ``n_jobs`` and return it as an int (floats rounded down), or None.

    Floats are rounded down (``math.floor``: ``2.7`` -> 2, ``-1.5`` -> -2), as the spec
    says; a string of an int (``'2'``) is converted as joblib does, another string is a
    ``ValueError``. Raises ``TypeError`` for a non-number (bools included) and ``ValueError`` for
    0, for a float that rounds down to 0, and for NaN or infinity; both name the parameter.
    """
    if n_jobs is None:
        return None
    if isinstance(n_jobs, str):
        # joblib converts with int(): '2' is 2, '-1' is -1; anything else is a ValueError
        try:
            n_jobs = int(n_jobs.strip())
        except ValueError:
            raise ValueError(
                f"{name} could not be converted to int: got {n_jobs!r}. Use a positive count of "
                f"workers, -1 for all CPUs, or -2 for all but one."
            ) from None
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Real):
        raise TypeError(
            f"{name} must be an int (or None), got {type(n_jobs).__name__} {n_jobs!r}. "
            f"Use a positive count of workers, -1 for all CPUs, or -2 for all but one."
        )
    if isinstance(n_jobs, numbers.Integral):
        value = int(n_jobs)
    else:
        as_float = float(n_jobs)
        if not math.isfinite(as_float):
            raise ValueError(f"{name} must be a finite number, got {n_jobs!r}")
        value = math.floor(as_float)
    if value == 0:
        raise ValueError(
            f"{name}={n_jobs!r} is not allowed: use a positive count of workers, "
            f"-1 for all CPUs, -2 for all but one, or None for the default."
        )
    return value


def normalize_n_jobs(n_jobs: Any, n_cpus: int | None = None, name: str = "n_jobs") -> int:
    """The number of workers ``n_jobs`` asks for: -1 is every CPU, below -1 counts back
    from there (``n_cpus + 1 + n_jobs``, at least 1), ``None`` is 1."""
    value = check_n_jobs(n_jobs, name)
    if value is None:
        return 1
    if value < 0:
        if n_cpus is None:
            from .cpu import cpu_count

            n_cpus = cpu_count()
        return max(n_cpus + 1 + value, 1)
    return value


def check_prefer(prefer: Any) -> str | None:
    if prefer not in PREFER_VALUES:
        # joblib's text (code matching it keeps working)
        raise ValueError(f"prefer={prefer} is not a valid backend hint, expected one of ('processes', 'threads', None)")
    return prefer  # type: ignore[no-any-return]


def check_require(require: Any) -> str | None:
    if require not in REQUIRE_VALUES:
        raise ValueError(f"require={require} is not a valid backend constraint, expected one of ('sharedmem', None)")
    return require  # type: ignore[no-any-return]


def check_prefer_require(prefer: Any, require: Any) -> tuple[str | None, str | None]:
    """Validate both and their combination: ``prefer='processes'`` contradicts
    ``require='sharedmem'``."""
    prefer = check_prefer(prefer)
    require = check_require(require)
    if prefer == "processes" and require == "sharedmem":
        raise ValueError(
            "prefer='processes' and require='sharedmem' are inconsistent: shared memory "
            "needs a thread-based backend. Drop prefer, or use prefer='threads'."
        )
    return prefer, require
