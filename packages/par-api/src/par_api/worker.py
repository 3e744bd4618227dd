"""Per-worker state, and the worker limits (recycling) and output options of par.

``worker_state()`` returns a dict that lives as long as the worker running the current
task, so that a task can build something expensive once (a model, a connection, a
lookup table) and every later task of that worker reuses it::

    def predict(x):
        state = par.worker_state()
        if "model" not in state:
            state["model"] = load_model()
        return state["model"](x)

What "the worker" is depends on the backend:

- process backends (``loky``, ``multiprocessing``): the worker process (one dict per
  process; a process started by ``fork`` gets a new, empty dict);
- ``threading``: the worker thread (the backend binds a dict to each of its threads with
  :func:`bind_worker_state`);
- ``dask``: the ``distributed`` worker running the task (stored on the worker object);
- ``ray``: the Ray worker process (with an ``initializer`` or ``actors=True``, the actor:
  one process of ``n_jobs`` kept for the configuration, e.g. a ``with Parallel`` block);
- ``sequential`` or outside any ``Parallel`` call: the calling process.

The state survives across the calls that reuse the workers (``with Parallel(...)``
blocks and loky's reusable executor); a worker replaced by ``max_tasks_per_child`` or
``max_worker_memory`` starts with an empty dict. Nothing here is pickled: functions
defined in ``__main__`` or a notebook use it like any other.

The module also validates par's worker options (``max_tasks_per_child``,
``max_worker_memory``, ``forward_output``) for ``Parallel`` and ``parallel_config``, and
the ``initializer``/``initargs`` of the backends that take them.
Standard library only.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = [
    "bind_worker_state",
    "check_forward_output",
    "check_initializer",
    "check_max_tasks_per_child",
    "check_max_worker_memory",
    "set_task_timeout_handler",
    "task_timeout_handler",
    "worker_state",
]

_local = threading.local()
_lock = threading.Lock()
_process_state: dict[str, Any] | None = None
_process_pid: int | None = None

_timeout_handler: tuple[int, Any] | None = None


def set_task_timeout_handler(handler: Any) -> None:
    """Worker side, for backends: ``handler(error)`` is called (from another thread,
    the running task being stuck) when this worker process ends because its task
    overran its per-task timeout, just before the process exits with
    ``TASK_TIMEOUT_EXIT_CODE``. A backend whose pool would take the exit as a crash of
    the whole pool uses it to answer the stuck batch with ``error`` (a
    ``WorkerDiedError`` carrying that exit code) and retire the worker the pool's own
    way (loky). Set in the worker initializer; None removes it."""
    global _timeout_handler
    _timeout_handler = None if handler is None else (os.getpid(), handler)


def task_timeout_handler() -> Any:
    """The handler set by :func:`set_task_timeout_handler` in this process, or None."""
    current = _timeout_handler
    return current[1] if current is not None and current[0] == os.getpid() else None


#: Attribute of a ``distributed`` worker object holding its par state.
_DASK_ATTRIBUTE = "_par_worker_state"


def _dask_worker_state() -> dict[str, Any] | None:
    """The state of the ``distributed`` worker running this task, or None (not a dask
    worker). ``distributed`` is looked up only if this process already imported it."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    get_worker = getattr(distributed, "get_worker", None)
    if get_worker is None:
        return None
    try:
        worker = get_worker()
    except Exception:  # ValueError: not running in a dask worker
        return None
    state = getattr(worker, _DASK_ATTRIBUTE, None)
    if state is None:
        with _lock:
            state = getattr(worker, _DASK_ATTRIBUTE, None)
            if state is None:
                state = {}
                try:
                    setattr(worker, _DASK_ATTRIBUTE, state)
                except AttributeError:  # pragma: no cover - a worker with __slots__
                    return None
    return state


def worker_state() -> dict[str, Any]:
    """A dict that lives as long as the worker running the current task (see the module
    docstring for what a worker is on each backend). Build expensive objects in it once;
    every later task of the same worker finds them."""
    state = getattr(_local, "state", None)
    if state is not None:
        return state  # type: ignore[no-any-return]
    dask_state = _dask_worker_state()
    if dask_state is not None:
        return dask_state
    global _process_state, _process_pid
    pid = os.getpid()
    current = _process_state
    if current is not None and _process_pid == pid:
        return current
    with _lock:
        if _process_state is None or _process_pid != pid:
            _process_state, _process_pid = {}, pid
        return _process_state


def bind_worker_state(state: dict[str, Any] | None) -> None:
    """Make ``state`` what :func:`worker_state` returns in the calling thread (None: back
    to the process's). Thread backends call it at the start of each worker thread."""
    if state is not None and not isinstance(state, dict):
        raise TypeError(f"state must be a dict or None, got {type(state).__name__}")
    _local.state = state


def check_initializer(
    initializer: Any, initargs: Any, runs_in: str = "each new worker"
) -> tuple[Callable[..., Any] | None, tuple[Any, ...]]:
    """A backend's ``initializer``/``initargs`` pair: ``initializer`` a callable or None,
    ``initargs`` a tuple or list (None: no arguments). ``runs_in`` says where the
    backend runs it, for the error message. Returns ``(initializer, tuple(initargs))``."""
    if initializer is not None and not callable(initializer):
        raise TypeError(
            f"initializer must be a callable run once in {runs_in} (or None), got "
            f"{type(initializer).__name__} {initializer!r}"
        )
    if initargs is None:
        initargs = ()
    if not isinstance(initargs, (tuple, list)):
        raise TypeError(f"initargs must be a tuple of arguments for initializer, got {type(initargs).__name__}")
    return initializer, tuple(initargs)


def check_max_tasks_per_child(value: Any) -> int | None:
    """``max_tasks_per_child``: a positive int (a process worker is replaced once it has
    run that many tasks) or None (no limit)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"max_tasks_per_child must be a positive int (tasks a process worker runs before it is "
            f"replaced) or None (no limit), got {value!r}"
        )
    return value


def check_max_worker_memory(value: Any) -> int | None:
    """``max_worker_memory`` in bytes: an int, or a string such as ``'500M'`` or ``'2G'``
    (powers of 1024), or None (no limit). Returns the number of bytes."""
    if value is None:
        return None
    from .config import parse_nbytes

    accepted = "bytes as a positive int, a string such as '500M' or '2G', or None (no limit)"
    try:
        nbytes = parse_nbytes(value, name="max_worker_memory")
    except (TypeError, ValueError):
        raise ValueError(f"max_worker_memory must be {accepted}; got {value!r}") from None
    if not nbytes:
        raise ValueError(f"max_worker_memory must be {accepted}; got {value!r}")
    return nbytes


def check_forward_output(value: Any) -> bool:
    """``forward_output``: True (logging records and prints of process workers reach the
    parent) or False."""
    if not isinstance(value, bool):
        raise TypeError(f"forward_output must be True or False, got {type(value).__name__} {value!r}")
    return value
