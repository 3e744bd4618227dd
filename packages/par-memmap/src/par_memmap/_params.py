"""Validation of the memmapping parameters: ``max_nbytes`` (bytes) and ``mmap_mode``."""

from __future__ import annotations

__all__ = ["MMAP_MODES", "check_nbytes", "validate_mmap_mode"]

#: The accepted values of ``mmap_mode`` (None disables memmapping).
MMAP_MODES: tuple[str | None, ...] = (None, "r+", "r", "w+", "c")


def check_nbytes(value: int | None, name: str = "max_nbytes") -> int | None:
    """Return ``value``, a number of bytes (an int >= 0), or None.

    par_memmap takes sizes already parsed: the rule for sizes written as strings
    (``'1M'``, ``'1e6'``) has one owner, ``par_api.parse_nbytes``, which ``Parallel`` and
    ``parallel_config`` apply when they are created.

    Raises:
        TypeError: ``value`` is not an int (bools included) nor None; the message names ``name``.
        ValueError: ``value`` is negative.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be a number of bytes (an int >= 0) or None; got {type(value).__name__} "
            f"{value!r} (sizes such as '1M' are parsed by par_api.parse_nbytes, as Parallel does)"
        )
    if value < 0:
        raise ValueError(f"{name} must be a number of bytes >= 0 or None; got {value!r}")
    return value


def validate_mmap_mode(mmap_mode: str | None, name: str = "mmap_mode") -> str | None:
    """Return ``mmap_mode`` if it is one of None, 'r+', 'r', 'w+', 'c'; raise ValueError naming it otherwise."""
    if mmap_mode is not None and not isinstance(mmap_mode, str):
        raise ValueError(f"{name}={mmap_mode!r} is not valid: use one of None, 'r+', 'r', 'w+', 'c'")
    if mmap_mode not in MMAP_MODES:
        raise ValueError(f"{name}={mmap_mode!r} is not valid: use one of None, 'r+', 'r', 'w+', 'c'")
    return mmap_mode
