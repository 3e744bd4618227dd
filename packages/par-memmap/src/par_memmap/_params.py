"""Validation of the memmapping parameters: ``max_nbytes`` and ``mmap_mode``."""

from __future__ import annotations

import math
import re

__all__ = ["MMAP_MODES", "parse_nbytes", "validate_mmap_mode"]

#: The accepted values of ``mmap_mode`` (None disables memmapping).
MMAP_MODES: tuple[str | None, ...] = (None, "r+", "r", "w+", "c")

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)\s*B?\s*$", re.IGNORECASE)
_ACCEPTED = "an int number of bytes, a string such as '500k', '1M' or '2G' (powers of 1024), or None"


def parse_nbytes(value: int | float | str | None, name: str = "max_nbytes") -> int | None:
    """Return ``value`` as a number of bytes, or None.

    Accepts a non-negative int (or a finite float such as ``1e6``), a string made of a
    number and an optional unit ``k``/``M``/``G``/``T`` (powers of 1024, case-insensitive,
    an optional trailing ``B``), or None (memmapping of large arrays disabled).

    Raises:
        TypeError: ``value`` is of another type (bools included); the message names ``name``.
        ValueError: ``value`` is negative, not finite or not a size; the message names ``name``
            and the accepted values.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be {_ACCEPTED}; got the bool {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{name} must be >= 0; got {value!r} (accepted: {_ACCEPTED})")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite size >= 0; got {value!r} (accepted: {_ACCEPTED})")
        return int(value)
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match is None:
            raise ValueError(f"{name}={value!r} is not a size: use {_ACCEPTED}")
        number, unit = match.groups()
        return int(float(number) * _UNITS[unit.upper()])
    raise TypeError(f"{name} must be {_ACCEPTED}; got {type(value).__name__} {value!r}")


def validate_mmap_mode(mmap_mode: str | None, name: str = "mmap_mode") -> str | None:
    """Return ``mmap_mode`` if it is one of None, 'r+', 'r', 'w+', 'c'; raise ValueError naming it otherwise."""
    if mmap_mode is not None and not isinstance(mmap_mode, str):
        raise ValueError(f"{name}={mmap_mode!r} is not valid: use one of None, 'r+', 'r', 'w+', 'c'")
    if mmap_mode not in MMAP_MODES:
        raise ValueError(f"{name}={mmap_mode!r} is not valid: use one of None, 'r+', 'r', 'w+', 'c'")
    return mmap_mode
