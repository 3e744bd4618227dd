"""``parallel_config`` / ``parallel_backend``: the active configuration, per thread.

Each thread has a stack of the fields set explicitly by the enclosing
``parallel_config`` blocks. An inner block overrides only the fields it sets; leaving
it (also through an exception) restores the outer state. ``get_active_config()``
merges the stack over the documented defaults.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any

from .backend import ParallelBackendBase
from .njobs import check_n_jobs, check_prefer_require, normalize_n_jobs
from .policy import check_on_error, check_retries, check_retry_on
from .registry import default_backend_name, make_backend
from .worker import check_forward_output, check_max_tasks_per_child, check_max_worker_memory

MMAP_MODES = (None, "r+", "r", "w+", "c")


class _Default:
    """Marks a parameter left at its default: the enclosing configuration applies."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"default({self.value!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Default) and other.value == self.value

    def __hash__(self) -> int:
        return hash(("_Default", repr(self.value)))


def default(value: Any) -> Any:
    """Wrap a default value so a function can tell "not passed" from "passed"."""
    return _Default(value)


def is_default(value: Any) -> bool:
    """Whether ``value`` is a ``default(...)`` marker (a parameter left unset)."""
    return isinstance(value, _Default)


DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "backend": None,
        "n_jobs": None,
        "verbose": 0,
        "temp_folder": None,
        "max_nbytes": "1M",
        "mmap_mode": "r",
        "prefer": None,
        "require": None,
        "inner_max_num_threads": None,
        "progress": None,
        "max_tasks_per_child": None,
        "max_worker_memory": None,
        "forward_output": True,
        "on_error": "raise",
        "retries": 0,
        "retry_on": (),
    }
)


@dataclass(frozen=True)
class ActiveConfig:
    """The merged configuration in force in this thread; ``explicit`` names the
    fields some enclosing ``parallel_config`` set."""

    backend: ParallelBackendBase | None
    n_jobs: int | None
    verbose: int
    temp_folder: str | None
    max_nbytes: int | str | None
    mmap_mode: str | None
    prefer: str | None
    require: str | None
    inner_max_num_threads: int | None
    progress: Any
    explicit: frozenset[str]
    max_tasks_per_child: int | None = None
    max_worker_memory: int | str | None = None
    forward_output: bool = True
    on_error: str = "raise"
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = ()
    nested: bool = False
    #: how many task scopes enclose this point: 0 in the caller, 1 inside a task
    nesting_level: int = 0

    def is_set(self, name: str) -> bool:
        return name in self.explicit


_local = threading.local()


def _stack() -> list[dict[str, Any]]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def get_active_config() -> ActiveConfig:
    merged: dict[str, Any] = dict(DEFAULTS)
    explicit: set[str] = set()
    nested = False
    depth = 0  # how many task scopes (nested calls) enclose this point
    for layer in _stack():
        for key, value in layer.items():
            if key == "__nested__":
                nested = True
                depth += 1
                continue
            merged[key] = value
            explicit.add(key)
    if isinstance(merged["backend"], str):
        merged["backend"] = make_backend(merged["backend"])
    backend = merged["backend"]
    if backend is not None and backend.nesting_level is None:
        # joblib's backends report their nesting level: 0 in the caller, 1 inside a task
        backend.nesting_level = depth
    return ActiveConfig(**merged, explicit=frozenset(explicit), nested=nested, nesting_level=depth)


def check_verbose(verbose: Any) -> int:
    if isinstance(verbose, bool) or not isinstance(verbose, int):
        raise TypeError(f"verbose must be an int >= 0, got {type(verbose).__name__} {verbose!r}")
    if verbose < 0:
        raise ValueError(f"verbose must be >= 0, got {verbose!r}")
    return verbose


def check_mmap_mode(mmap_mode: Any) -> str | None:
    if mmap_mode not in MMAP_MODES:
        raise ValueError(f"mmap_mode={mmap_mode!r} is not valid: use one of None, 'r+', 'r', 'w+', 'c'.")
    return mmap_mode  # type: ignore[no-any-return]


def check_temp_folder(temp_folder: Any) -> str | None:
    import os

    if temp_folder is None:
        return None
    if not isinstance(temp_folder, (str, os.PathLike)):
        raise TypeError(
            f"temp_folder must be a path (str or os.PathLike) or None, got {type(temp_folder).__name__}"
        )
    return os.fspath(temp_folder)


def check_progress_value(progress: Any) -> Any:
    """``progress`` is None, a bool, a tqdm-like object or class (with ``update``), or a
    callable receiving progress events."""
    if progress is None or isinstance(progress, bool) or callable(progress):
        return progress
    if callable(getattr(progress, "update", None)):
        return progress
    raise TypeError(
        f"progress must be True/False/None, a tqdm-like object (with update()) or a callable "
        f"receiving ProgressEvent objects; got {type(progress).__name__} {progress!r}"
    )


_NBYTES_ACCEPTED = (
    "a number of bytes >= 0 (an int, or a float such as 1e6), a string of a number with an "
    "optional unit K, M, G or T (powers of 1024, case-insensitive, optional trailing B), such "
    "as '500k', '1M', '2G' or '1e6', or None to disable memmapping"
)


def parse_nbytes(max_nbytes: Any, name: str = "max_nbytes") -> int | None:
    """``max_nbytes`` as a number of bytes, the one rule of par for sizes.

    Accepts an int or a finite float (``1e6``), a string of a number with an optional unit
    ``K``/``M``/``G``/``T`` (powers of 1024, case-insensitive, optional trailing ``B``):
    ``'1M'``, ``'500k'``, ``'2G'``, ``'1e6'``; None disables memmapping. ``Parallel`` and
    ``parallel_config`` parse their ``max_nbytes`` with it once, when they are created,
    and hand the number of bytes on (``par_memmap.make_reducers`` takes bytes only).
    Raises ``TypeError`` or ``ValueError`` naming ``name`` and the accepted values."""
    if max_nbytes is None:
        return None
    if isinstance(max_nbytes, bool) or not isinstance(max_nbytes, (int, float, str)):
        raise TypeError(f"{name} must be {_NBYTES_ACCEPTED}; got {type(max_nbytes).__name__} {max_nbytes!r}")
    value: float
    factor = 1
    if isinstance(max_nbytes, str):
        text = max_nbytes.strip().upper().removesuffix("B").rstrip()
        units = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
        if text and text[-1] in units:
            factor = units[text[-1]]
            text = text[:-1].rstrip()
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{name}={max_nbytes!r} is not a size: use {_NBYTES_ACCEPTED}") from None
    else:
        value = max_nbytes
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{name} must be a finite size >= 0; got {max_nbytes!r} (accepted: {_NBYTES_ACCEPTED})"
        )
    return int(value * factor)


def _check_inner_max_num_threads(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"inner_max_num_threads must be a positive int or None, got {value!r}")
    if value < 1:
        raise ValueError(f"inner_max_num_threads must be >= 1, got {value!r}")
    return value


def check_inner_max_num_threads_supported(backend: ParallelBackendBase, value: int | None) -> None:
    if value is not None and not backend.supports_inner_max_num_threads:
        raise ValueError(
            f"inner_max_num_threads={value} is not supported by backend {type(backend).__name__}: "
            f"it limits native thread pools (BLAS, OpenMP) per worker and works with the 'loky', "
            f"'multiprocessing' and 'threading' backends. Remove it, or choose one of those."
        )


def backend_instance(backend: Any, **params: Any) -> ParallelBackendBase:
    """The backend object for what a user passed as ``backend=``: a registered name
    (``params`` go to its constructor), a ``ParallelBackendBase`` instance, or a
    multiprocessing context (the ``multiprocessing`` backend with that start method)."""
    if isinstance(backend, str):
        return make_backend(backend, **params)
    if params:
        raise TypeError(
            f"backend parameters {sorted(params)} are only accepted with a backend name; "
            f"configure the instance {backend!r} directly instead."
        )
    if isinstance(backend, ParallelBackendBase):
        return backend
    if hasattr(backend, "get_start_method") and hasattr(backend, "Process"):
        return make_backend("multiprocessing", context=backend)
    raise TypeError(
        f"backend must be a backend name (str), a ParallelBackendBase instance, a "
        f"multiprocessing context or None; got {type(backend).__name__} {backend!r}"
    )


class parallel_config:
    """Set the default backend and options of ``Parallel`` for a ``with`` block.

    Usable as a context manager (the usual way) or as a plain call, which sets the
    configuration of the current thread until ``unregister()`` is called. Only the
    parameters passed override the enclosing configuration. ``backend`` is a registered
    name (``backend_params`` go to its constructor) or a ``ParallelBackendBase`` instance.
    """

    def __init__(
        self,
        backend: Any = default(None),
        *,
        n_jobs: Any = default(None),
        verbose: Any = default(0),
        temp_folder: Any = default(None),
        max_nbytes: Any = default("1M"),
        mmap_mode: Any = default("r"),
        prefer: Any = default(None),
        require: Any = default(None),
        inner_max_num_threads: Any = None,
        progress: Any = default(None),
        max_tasks_per_child: Any = default(None),
        max_worker_memory: Any = default(None),
        forward_output: Any = default(True),
        on_error: Any = default("raise"),
        retries: Any = default(0),
        retry_on: Any = default(()),
        **backend_params: Any,
    ) -> None:
        layer: dict[str, Any] = {}
        given = {
            "n_jobs": n_jobs,
            "verbose": verbose,
            "temp_folder": temp_folder,
            "max_nbytes": max_nbytes,
            "mmap_mode": mmap_mode,
            "prefer": prefer,
            "require": require,
            "progress": progress,
            "max_tasks_per_child": max_tasks_per_child,
            "max_worker_memory": max_worker_memory,
            "forward_output": forward_output,
            "on_error": on_error,
            "retries": retries,
            "retry_on": retry_on,
        }
        for key, value in given.items():
            if not isinstance(value, _Default):
                layer[key] = value
        if "n_jobs" in layer:
            layer["n_jobs"] = check_n_jobs(layer["n_jobs"])
        if "verbose" in layer:
            layer["verbose"] = check_verbose(layer["verbose"])
        if "temp_folder" in layer:
            layer["temp_folder"] = check_temp_folder(layer["temp_folder"])
        if "max_nbytes" in layer:
            parse_nbytes(layer["max_nbytes"])
        if "mmap_mode" in layer:
            check_mmap_mode(layer["mmap_mode"])
        if "progress" in layer:
            check_progress_value(layer["progress"])
        if "max_tasks_per_child" in layer:
            check_max_tasks_per_child(layer["max_tasks_per_child"])
        if "max_worker_memory" in layer:
            check_max_worker_memory(layer["max_worker_memory"])
        if "forward_output" in layer:
            check_forward_output(layer["forward_output"])
        if "on_error" in layer:
            layer["on_error"] = check_on_error(layer["on_error"])
        if "retries" in layer:
            layer["retries"] = check_retries(layer["retries"])
        if "retry_on" in layer:
            layer["retry_on"] = check_retry_on(layer["retry_on"])
        check_prefer_require(layer.get("prefer"), layer.get("require"))
        if inner_max_num_threads is not None:
            layer["inner_max_num_threads"] = _check_inner_max_num_threads(inner_max_num_threads)

        backend_obj = self._resolve_backend(backend, backend_params, inner_max_num_threads)
        if backend_obj is not None:
            layer["backend"] = backend_obj
        self.backend = backend_obj
        # an instance built here from a name is this block's: end_config() at its end
        self._owned_backend = backend_obj if backend_obj is not None and backend_obj is not backend else None
        self._layer = layer
        self._stack = _stack()
        self._stack.append(layer)
        self._closed = False

    @staticmethod
    def _resolve_backend(
        backend: Any, backend_params: dict[str, Any], inner_max_num_threads: int | None
    ) -> ParallelBackendBase | None:
        if isinstance(backend, _Default) or backend is None:
            if backend_params:
                # joblib's type and key phrase first, par's explanation after.
                raise ValueError(
                    f"inner_max_num_threads and other constructor parameters backend_params are "
                    f"only supported when backend is not None. parallel_config got unexpected "
                    f"keyword arguments {sorted(backend_params)}: extra keyword arguments are "
                    f"backend parameters and need backend=<name>."
                )
            return None
        obj = backend_instance(backend, **backend_params)
        if obj.nesting_level is None:
            # joblib's backends report their nesting level: 0 in the caller, 1 in a task
            obj.nesting_level = sum(1 for layer in _stack() if "__nested__" in layer)
        check_inner_max_num_threads_supported(obj, inner_max_num_threads)
        if inner_max_num_threads is not None:
            obj.inner_max_num_threads = inner_max_num_threads
        return obj

    def unregister(self) -> None:
        """Restore the configuration that was in force before this one."""
        if self._closed:
            return
        self._closed = True
        stack = self._stack
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is self._layer:
                del stack[i]
                break
        owned, self._owned_backend = self._owned_backend, None
        if owned is not None:
            owned.end_config()

    def __enter__(self) -> dict[str, Any]:
        """The configuration in force in the block, as joblib yields it: a dict of the
        parameters (``cfg["backend"]`` is the backend instance, None when unset)."""
        cfg = get_active_config()
        return {name: getattr(cfg, name) for name in DEFAULTS}

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unregister()


class parallel_backend(parallel_config):
    """Legacy alias of :class:`parallel_config`: ``parallel_backend(backend, n_jobs=-1,
    inner_max_num_threads=None, **backend_params)``. By default every CPU is used."""

    def __init__(
        self,
        backend: Any,
        n_jobs: Any = -1,
        inner_max_num_threads: Any = None,
        **backend_params: Any,
    ) -> None:
        super().__init__(
            backend=backend, n_jobs=n_jobs, inner_max_num_threads=inner_max_num_threads, **backend_params
        )

    def __enter__(self) -> Any:  # joblib returns (backend, n_jobs)
        return self.backend, self._layer.get("n_jobs")


class _nested_scope:
    """Configuration applied by a worker around the tasks of a batch (see BatchedCalls)."""

    __slots__ = ("_layer",)

    def __init__(self, backend: Any, n_jobs: int | None) -> None:
        layer: dict[str, Any] = {"__nested__": True}
        if backend is not None:
            # A name is resolved only when a Parallel inside the task asks for the active
            # configuration: building it here would cost every batch a backend instance.
            layer["backend"] = backend
        if n_jobs is not None:
            layer["n_jobs"] = n_jobs
        self._layer = layer

    def __enter__(self) -> None:
        _stack().append(self._layer)

    def __exit__(self, *exc: object) -> None:
        stack = _stack()
        if stack and stack[-1] is self._layer:
            stack.pop()
        else:  # pragma: no cover - unbalanced use
            try:
                stack.remove(self._layer)
            except ValueError:
                pass


def active_backend() -> tuple[ParallelBackendBase, int | None]:
    """The backend and n_jobs that ``Parallel()`` would use here (instance, n_jobs)."""
    cfg = get_active_config()
    backend = cfg.backend if cfg.backend is not None else make_backend(default_backend_name())
    return backend, cfg.n_jobs


def effective_n_jobs(n_jobs: Any = -1) -> int:
    """The number of workers ``Parallel(n_jobs=n_jobs)`` would use with the active
    backend (``-1`` is every CPU, ``None`` takes the active configuration's value)."""
    n_jobs = check_n_jobs(n_jobs)
    if n_jobs == 1:
        return 1
    cfg = get_active_config()
    if n_jobs is None:
        n_jobs = cfg.n_jobs
    try:
        backend, _ = active_backend()
    except ValueError:
        return normalize_n_jobs(n_jobs)
    return backend.effective_n_jobs(n_jobs)
