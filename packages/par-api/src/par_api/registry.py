"""The backend registry: names to factories.

Backends come from two places: ``register_parallel_backend`` at run time, and the
entry-point group ``par.backends`` of installed distributions, read lazily the first
time a name is not found among the registered ones (so importing par stays cheap and
installing a backend package is all it takes to use it). The four backends of
par-backends-local are imported by their top-level name first (``KNOWN_BACKENDS``), so
that the first call with the default backend does not import ``importlib.metadata`` and
scan every installed distribution.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from .exceptions import BackendNotAvailableError

if TYPE_CHECKING:
    from importlib import metadata

    from .backend import ParallelBackendBase

ENTRY_POINT_GROUP = "par.backends"


class KnownBackend(NamedTuple):
    """A backend name par knows the package of (one row of :data:`KNOWN_BACKENDS`)."""

    #: what to install for it: a distribution name, or a sentence when none exists
    provider: str
    #: ``"package:attribute"``, a top-level name of the provider's import package that
    #: the registry imports directly, without reading the entry points; None: the
    #: entry points find it
    factory: str | None = None


#: Every backend name par knows a package for, each named once. The error for an
#: unknown name says which package to install (:data:`KNOWN_BACKEND_PACKAGES`), and the
#: four backends of par's own local package are imported by their top-level name the
#: first time they are used (:data:`_SHIPPED`): reading the entry points imports
#: ``importlib.metadata`` and scans every installed distribution, 15-45 ms of a
#: process's first call with the default backend, which joblib does not pay. When the
#: package cannot be imported (par-backends-local not installed), the entry points
#: decide. par-backends-local's tests check that each factory is the class its
#: ``par.backends`` entry point declares; this is a lookup by name, not an import
#: dependency of par_api (``tools/check_boundaries.py`` checks that it names only the
#: top level of the provider's package).
KNOWN_BACKENDS: dict[str, KnownBackend] = {
    "loky": KnownBackend("par-backends-local", "par_backends_local:LokyBackend"),
    "threading": KnownBackend("par-backends-local", "par_backends_local:ThreadingBackend"),
    "sequential": KnownBackend("par-backends-local", "par_backends_local:SequentialBackend"),
    "multiprocessing": KnownBackend("par-backends-local", "par_backends_local:MultiprocessingBackend"),
    "dask": KnownBackend("par-backends-dask"),
    "ray": KnownBackend("par-backends-ray"),
    "spark": KnownBackend("a par backend for spark (none is published yet)"),
}

#: name -> what to install for it (derived from :data:`KNOWN_BACKENDS`).
KNOWN_BACKEND_PACKAGES = {name: known.provider for name, known in KNOWN_BACKENDS.items()}

#: name -> ``"package:attribute"`` imported without reading the entry points (derived
#: from :data:`KNOWN_BACKENDS`; tests replace it).
_SHIPPED = {name: known.factory for name, known in KNOWN_BACKENDS.items() if known.factory is not None}

BackendFactory = Callable[..., "ParallelBackendBase"]

_lock = threading.RLock()
_registered: dict[str, BackendFactory] = {}
_from_entry_points: dict[str, BackendFactory] = {}
_providers: dict[str, str] = {}
_default_name: str | None = None


def register_parallel_backend(name: str, factory: BackendFactory, make_default: bool = False) -> None:
    """Register a backend factory under ``name``.

    ``factory`` is any callable returning a ``ParallelBackendBase`` instance (usually
    the class); keyword arguments given to ``parallel_config(backend=name, **params)``
    are passed to it. ``make_default=True`` makes it the default backend of the process.
    """
    global _default_name
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_parallel_backend(name=...): name must be a non-empty str, got {name!r}")
    if not callable(factory):
        raise TypeError(
            f"register_parallel_backend(factory=...): factory must be callable (a backend class or a "
            f"function returning a ParallelBackendBase instance), got {type(factory).__name__} {factory!r}"
        )
    if not isinstance(make_default, bool):
        raise TypeError(
            f"register_parallel_backend(make_default=...): expected True or False, got {make_default!r}"
        )
    with _lock:
        _registered[name] = factory
        # A run-time registration shadows an entry point of the same name: say so.
        _providers[name] = "registered at run time"
        if make_default:
            _default_name = name


def _entry_points() -> list[metadata.EntryPoint]:
    # Imported here, not at module level: importlib.metadata costs a noticeable part of
    # ``import par``, and entry points are only read for a name not registered at run time.
    from importlib import metadata

    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _load_shipped(name: str) -> BackendFactory | None:
    """The factory of a backend of :data:`_SHIPPED`, imported without reading the entry
    points; None when its module is not installed (or ``name`` is not one of them)."""
    target = _SHIPPED.get(name)
    if target is None:
        return None
    module_name, _, attr = target.partition(":")
    import importlib

    try:
        # a package may import the attribute lazily (par_backends_local's __getattr__)
        factory = getattr(importlib.import_module(module_name), attr, None)
    except ImportError:
        # not installed, or a dependency is missing: the entry points decide (and a
        # failing entry point says which package to fix)
        return None
    if not callable(factory):
        return None
    with _lock:
        # the provider is left to backend_providers(), which reads the entry points
        _from_entry_points[name] = factory
    return factory  # type: ignore[no-any-return]


def _load_entry_point(name: str) -> BackendFactory | None:
    for ep in _entry_points():
        if ep.name == name:
            try:
                factory = ep.load()
            except Exception as exc:
                dist = getattr(ep, "dist", None)
                where = f"{dist.name} {dist.version}" if dist is not None else ep.value
                raise BackendNotAvailableError(
                    f"backend={name!r} is declared by {where} (entry point {ep.value!r} in group "
                    f"{ENTRY_POINT_GROUP!r}) but could not be loaded: {type(exc).__name__}: {exc}. "
                    f"Reinstall that package or check its dependencies."
                ) from exc
            if not callable(factory):
                raise BackendNotAvailableError(
                    f"backend={name!r}: entry point {ep.value!r} in group {ENTRY_POINT_GROUP!r} "
                    f"resolves to {type(factory).__name__} {factory!r}, which is not callable; it must "
                    f"name a ParallelBackendBase subclass or a factory function."
                )
            with _lock:
                _from_entry_points[name] = factory
                dist = getattr(ep, "dist", None)
                _providers[name] = f"{dist.name} {dist.version}" if dist is not None else ep.value
            return factory  # type: ignore[no-any-return]
    return None


def available_backends() -> list[str]:
    """Names of every backend that can be used: registered ones and installed entry points."""
    with _lock:
        names = set(_registered) | set(_from_entry_points)
    names.update(ep.name for ep in _entry_points())
    return sorted(names)


def backend_providers() -> dict[str, str]:
    """For each available backend, the distribution (and version) that provides it."""
    for ep in _entry_points():
        dist = getattr(ep, "dist", None)
        if ep.name not in _providers:
            _providers[ep.name] = f"{dist.name} {dist.version}" if dist is not None else ep.value
    return {name: _providers.get(name, "?") for name in available_backends()}


def get_backend_factory(name: str) -> BackendFactory:
    """The factory for ``name``; ``ValueError`` naming the available names when unknown."""
    with _lock:
        factory = _registered.get(name)
        if factory is None:
            factory = _from_entry_points.get(name)
    if factory is None and isinstance(name, str):
        factory = _load_shipped(name) or _load_entry_point(name)
    if factory is None:
        hint = ""
        if name in KNOWN_BACKEND_PACKAGES:
            hint = f" The {name!r} backend is provided by {KNOWN_BACKEND_PACKAGES[name]}: install it."
        # joblib's key phrase first ("Invalid backend: <name>, expected one of [...]"), so
        # that code matching on it keeps working; par's explanation after it.
        names = available_backends()
        raise BackendNotAvailableError(
            f"Invalid backend: {name}, expected one of {names}. "
            f"backend={name!r} is not available. Available backends: "
            f"{', '.join(names) or '(none installed)'}.{hint} "
            f"Custom backends are registered with register_parallel_backend(name, factory) or "
            f"through the {ENTRY_POINT_GROUP!r} entry-point group."
        )
    return factory


def make_backend(name: str, **params: Any) -> ParallelBackendBase:
    """Build a backend instance from its registered name and constructor parameters."""
    from .backend import ParallelBackendBase

    factory = get_backend_factory(name)
    try:
        backend = factory(**params)
    except TypeError as exc:
        given = f"with the parameters {sorted(params)}" if params else "without parameters"
        raise TypeError(
            f"backend {name!r} could not be built {given}: {exc}. Backend parameters are passed "
            f"as parallel_config(backend={name!r}, <param>=<value>, ...)."
        ) from exc
    if not isinstance(backend, ParallelBackendBase):
        raise TypeError(
            f"the factory registered for backend {name!r} returned {type(backend).__name__}, "
            f"not a ParallelBackendBase instance"
        )
    return backend


def multiprocessing_available() -> bool:
    """Whether process-based backends can work here.

    False when ``PAR_MULTIPROCESSING`` is ``0``/``false``/``no`` (to simulate or force
    it), or when the interpreter has no working ``_multiprocessing`` (e.g. Pyodide).
    """
    if os.environ.get("PAR_MULTIPROCESSING", "").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        import _multiprocessing  # noqa: F401
        import multiprocessing.synchronize  # noqa: F401
    except ImportError:
        return False
    return True


def default_backend_name() -> str:
    """The backend used when nothing else is chosen.

    ``register_parallel_backend(..., make_default=True)`` wins, then the ``PAR_BACKEND``
    environment variable (an operator's switch, e.g. ``PAR_BACKEND=dask``), then
    ``'loky'`` where multiprocessing works, else ``'threading'``.
    """
    if _default_name is not None:
        return _default_name
    env = os.environ.get("PAR_BACKEND", "").strip()
    if env:
        return env
    return "loky" if multiprocessing_available() else "threading"


def _reset_for_tests() -> None:
    global _default_name
    with _lock:
        _default_name = None
