"""Helpers shared by the backends: argument checks, worker start-up, remote tracebacks."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from par_api import BackendNotAvailableError, RemoteTraceback, multiprocessing_available

Initializer = Callable[..., Any]
#: One start-up step of a worker: ``(function or None, args)``.
InitStep = tuple[Initializer | None, tuple[Any, ...]]


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


def check_initializer(initializer: Any, initargs: Any) -> tuple[Initializer | None, tuple[Any, ...]]:
    """Validate a user ``initializer``/``initargs`` pair."""
    if initializer is not None and not callable(initializer):
        raise TypeError(
            f"initializer must be a callable run once in each new worker (or None), got "
            f"{type(initializer).__name__} {initializer!r}"
        )
    if initargs is None:
        initargs = ()
    if not isinstance(initargs, (tuple, list)):
        raise TypeError(
            f"initargs must be a tuple of arguments for initializer, got {type(initargs).__name__}"
        )
    return initializer, tuple(initargs)


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
        exc.__cause__ = RemoteTraceback(text)
    return exc
