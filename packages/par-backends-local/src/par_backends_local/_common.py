"""Helpers shared by the backends: argument checks, worker start-up, remote tracebacks."""

from __future__ import annotations

import linecache
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from par_api import BackendNotAvailableError, RemoteTraceback, multiprocessing_available

Initializer = Callable[..., Any]
#: One start-up step of a worker: ``(function or None, args)``.
InitStep = tuple[Initializer | None, tuple[Any, ...]]


#: Serializing a batch for longer than this (seconds) held the GIL that long: then the
#: pool's threads get a moment to send the batch before the next one is pickled.
LONG_SERIALIZATION = 0.002
#: How long :func:`serialize_then_hand_over` lets the pool's threads run (seconds).
HANDOVER_PAUSE = 0.0005


def serialize(hooks: Any, func: Any) -> tuple[Any, float]:
    """``hooks.serialize_batch(func)`` (or ``func`` itself without one) and the seconds
    it took."""
    serialize_batch = getattr(hooks, "serialize_batch", None) if hooks is not None else None
    if serialize_batch is None:
        return func, 0.0
    t0 = time.perf_counter()
    payload = serialize_batch(func)
    return payload, time.perf_counter() - t0


def hand_over(serialize_seconds: float) -> None:
    """Called right after a batch was given to the pool: when pickling it took long (a
    large argument), sleep briefly so that the pool's manager and feeder threads, which
    need the GIL, send it now. Otherwise pickling the next batch (C code that never
    releases the GIL) would hold it back: with two batches of a 10^6-item list, the first
    worker started only after the second batch was pickled."""
    if serialize_seconds > LONG_SERIALIZATION:
        time.sleep(HANDOVER_PAUSE)


def check_process_backend_available(name: str) -> None:
    """Raise :class:`par_api.BackendNotAvailableError` when processes cannot be used here."""
    if not multiprocessing_available():
        raise BackendNotAvailableError(
            f"backend={name!r} needs worker processes, but multiprocessing is not usable in this "
            f"interpreter (PAR_MULTIPROCESSING is set to a false value, or the _multiprocessing "
            f"module cannot be imported, as on Pyodide). Use backend='threading' or "
            f"'sequential' instead (the default backend already falls back to 'threading')."
        )


def check_backend_kwargs(backend: str, given: Mapping[str, Any], accepted: Iterable[str]) -> None:
    """``TypeError`` naming the unknown keyword arguments and the accepted ones."""
    accepted = tuple(accepted)
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        allowed = ", ".join(accepted) if accepted else "none"
        raise TypeError(
            f"backend {backend!r} got unexpected keyword argument(s) {unknown}; accepted backend "
            f"arguments: {allowed}."
        )


def init_steps(*steps: InitStep) -> tuple[InitStep, ...]:
    """The steps that have a function, in order (equal inputs give equal tuples, so that
    an executor compares equal across calls and is reused)."""
    return tuple((func, tuple(args)) for func, args in steps if func is not None)


def run_initializers(*steps: InitStep) -> None:
    """Worker initializer: run each ``(func, args)`` step in order (module-level so that
    it pickles by reference into any worker)."""
    for func, args in steps:
        if func is not None:
            func(*args)


def setup_worker(env: Mapping[str, str], *steps: InitStep) -> None:
    """Worker initializer for pools that cannot set the environment at start-up
    (``multiprocessing.Pool``): apply ``env`` first, then run the steps."""
    if env:
        os.environ.update(env)
    run_initializers(*steps)


def adopt_remote_traceback(exc: BaseException) -> BaseException:
    """Make the worker traceback of ``exc`` a :class:`par_api.RemoteTraceback` cause.

    loky and :mod:`multiprocessing.pool` both attach the formatted worker traceback as
    ``__cause__`` (their own ``RemoteTraceback`` types, with a ``tb`` text attribute);
    par reports it uniformly. Exceptions without such a cause are returned unchanged.
    """
    cause = exc.__cause__
    if cause is None or isinstance(cause, RemoteTraceback):
        return exc
    tb = getattr(cause, "tb", None)
    if isinstance(tb, str) and type(cause).__name__.lstrip("_") == "RemoteTraceback":
        text = tb.strip()
        if text.startswith('"""') and text.endswith('"""'):
            text = text[3:-3].strip("\n")
        exc.__cause__ = RemoteTraceback(fill_source_lines(text))
    return exc


_FRAME_LINE = re.compile(r'^(?P<indent>[ ]*)File "(?P<file>[^"]+)", line (?P<line>\d+), in ')


def fill_source_lines(text: str) -> str:
    """Add the source line under each frame of a worker's formatted traceback that has
    none, from this process's ``linecache``: a function defined in a notebook cell or
    an interactive session has its source only in the parent (the worker could not
    read the cell's pseudo-file)."""
    lines = text.split("\n")
    out: list[str] = []
    for i, line in enumerate(lines):
        out.append(line)
        match = _FRAME_LINE.match(line)
        if match is None:
            continue
        indent = match.group("indent")
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if nxt.startswith(indent + "  ") and not _FRAME_LINE.match(nxt):
            continue  # the worker found the source
        source = linecache.getline(match.group("file"), int(match.group("line"))).strip()
        if source:
            out.append(f"{indent}  {source}")
    return "\n".join(out)


def _inside_dask_worker() -> bool:
    """True in a task of a ``distributed`` worker (distributed is then imported already;
    this package does not import it)."""
    import sys

    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except Exception:
        return False
    return True


def nested_process_n_jobs(backend: Any, n_jobs: int | None, label: str) -> int | None:
    """1 (with joblib's warning) where a process backend must not start processes: inside
    a daemonic process (a multiprocessing or dask worker cannot have children), or in a
    thread below a parallel call (``nesting_level`` >= 1 outside the main thread: forking
    a multi-threaded process can deadlock). None where processes can be started.

    ``label`` is ``'Loky'`` or ``'Multiprocessing'``; the warning starts with joblib's
    text ("... cannot be nested ..., setting n_jobs=1") so that filters on it keep working."""
    import multiprocessing
    import threading
    import warnings

    if multiprocessing.current_process().daemon and _inside_dask_worker():
        if n_jobs != 1:
            # joblib's text, with its work-arounds
            warnings.warn(
                "Inside a Dask worker with daemon=True, setting n_jobs=1.\nPossible work-arounds:\n"
                "- dask.config.set({'distributed.worker.daemon': False})\n"
                "- set the environment variable DASK_DISTRIBUTED__WORKER__DAEMON=False\n"
                "before creating your Dask cluster. The tasks run sequentially in the caller.",
                UserWarning,
                stacklevel=4,
            )
        return 1
    if multiprocessing.current_process().daemon:
        where = "called in a multiprocessing" if label == "Loky" else "nested"
        reason = (
            "this process is daemonic (a multiprocessing or dask worker), and a daemonic process "
            "cannot start worker processes"
        )
    elif threading.current_thread() is not threading.main_thread() and (backend.nesting_level or 0) >= 1:
        where = "nested below threads"
        reason = (
            "this call runs in a thread of an enclosing parallel call, where starting processes can deadlock"
        )
    else:
        return None
    if n_jobs != 1:
        warnings.warn(
            f"{label}-backed parallel loops cannot be {where}, setting n_jobs=1: {reason}; the "
            f"tasks run sequentially in the caller.",
            UserWarning,
            stacklevel=4,
        )
    return 1
