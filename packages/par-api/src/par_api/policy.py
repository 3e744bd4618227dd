"""Validation of the failure policy: ``on_error``, ``retries``, ``retry_on``.

One owner for these rules, used by ``parallel_config`` (here), ``Parallel(...)`` and
``par_scheduler.run``. Each function returns the normalised value or raises
``ValueError`` naming the parameter and the accepted values.
"""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["ON_ERROR_VALUES", "TASK_TIMEOUT_EXIT_CODE", "check_on_error", "check_retries", "check_retry_on"]

#: ``'raise'``: the first failure aborts the call (joblib's behaviour, the default);
#: ``'return'``: the exception takes the failed task's place in the results;
#: ``'collect'``: the call runs to its end, then raises an ``ExceptionGroup`` of the
#: failures (the results stay reachable as its ``results`` attribute).
ON_ERROR_VALUES = ("raise", "return", "collect")

#: The exit code of a worker process that ended itself because its task ran longer
#: than the call's ``timeout`` (per-task timeouts, with ``on_error`` other than
#: ``'raise'``, on backends with ``supports_task_timeout``); 124 as in coreutils'
#: ``timeout``. The backend reports it as the ``exitcode`` of a ``WorkerDiedError``,
#: which the scheduler turns into the task's ``TimeoutError``.
TASK_TIMEOUT_EXIT_CODE = 124


def check_on_error(on_error: Any) -> str:
    """One of ``'raise'``, ``'return'``, ``'collect'``."""
    if isinstance(on_error, str) and on_error in ON_ERROR_VALUES:
        return on_error
    raise ValueError(f"on_error must be one of 'raise', 'return' or 'collect', got {on_error!r}")


def check_retries(retries: Any) -> int:
    """An int >= 0 (bools refused): how many more times a failed task is run."""
    if isinstance(retries, numbers.Integral) and not isinstance(retries, bool) and int(retries) >= 0:
        return int(retries)
    raise ValueError(f"retries must be an int >= 0, got {type(retries).__name__} {retries!r}")


def check_retry_on(retry_on: Any) -> tuple[type[BaseException], ...]:
    """A tuple (or list) of exception classes, or one exception class; ``()`` retries no
    exception (only worker deaths and timeouts are retried then)."""
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    if isinstance(retry_on, (tuple, list)) and all(
        isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
    ):
        return tuple(retry_on)
    raise ValueError(
        f"retry_on must be a tuple of exception classes (e.g. (OSError, ConnectionError)), got {retry_on!r}"
    )
