"""Fixtures of par-api's own tests.

Every test runs against a hermetic backend registry (nothing registered, no
installed entry points) so that the tests pass with only par-api installed, and
whether or not other par packages are installed next to it. The registry and the
environment variables are restored afterwards, and each test must leave the
thread-local configuration stack empty.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from collections.abc import Callable, Iterator

import par_api
import pytest
from par_api import config, registry

#: The real entry-point reader, for the one test that exercises it.
REAL_ENTRY_POINTS = registry._entry_points


@pytest.fixture(autouse=True)
def _hermetic_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    saved = (
        dict(registry._registered),
        dict(registry._from_entry_points),
        dict(registry._providers),
        registry._default_name,
    )
    registry._registered.clear()
    registry._from_entry_points.clear()
    registry._providers.clear()
    registry._reset_for_tests()
    monkeypatch.setattr(registry, "_entry_points", lambda: [])
    monkeypatch.setattr(registry, "_SHIPPED", {})  # par-backends-local may be installed
    monkeypatch.delenv("PAR_BACKEND", raising=False)
    monkeypatch.delenv("PAR_MULTIPROCESSING", raising=False)
    try:
        yield
    finally:
        registered, from_eps, providers, default_name = saved
        registry._registered.clear()
        registry._registered.update(registered)
        registry._from_entry_points.clear()
        registry._from_entry_points.update(from_eps)
        registry._providers.clear()
        registry._providers.update(providers)
        registry._default_name = default_name


@pytest.fixture(autouse=True)
def _config_stack_left_empty() -> Iterator[None]:
    if config._stack():  # leaked by a test of another package run in this thread
        warnings.warn(f"parallel_config layers left by an earlier test: {config._stack()}", stacklevel=1)
        config._stack().clear()
    yield
    leaked = list(config._stack())
    config._stack().clear()  # do not let one failure cascade into the next tests
    assert leaked == [], f"the test left parallel_config layers on the stack: {leaked}"
    assert par_api.get_active_config().explicit == frozenset()


@pytest.fixture
def real_entry_points() -> Callable[[], list[importlib.metadata.EntryPoint]]:
    """The registry's own entry-point reader (the autouse fixture replaces it)."""
    return REAL_ENTRY_POINTS


@pytest.fixture
def entry_points(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[importlib.metadata.EntryPoint]]:
    """Install fake ``par.backends`` entry points: ``entry_points(name=value, ...)``.

    Returns the list that ``registry._entry_points`` serves; the number of scans is
    counted in ``entry_points.calls``.
    """
    state: dict[str, object] = {"eps": [], "calls": 0}

    def fake() -> list[importlib.metadata.EntryPoint]:
        state["calls"] = int(state["calls"]) + 1  # type: ignore[call-overload]
        return list(state["eps"])  # type: ignore[call-overload]

    monkeypatch.setattr(registry, "_entry_points", fake)

    def install(**named: str) -> list[importlib.metadata.EntryPoint]:
        eps = [
            importlib.metadata.EntryPoint(name=name, value=value, group=registry.ENTRY_POINT_GROUP)
            for name, value in named.items()
        ]
        state["eps"] = eps
        return eps

    install.state = state  # type: ignore[attr-defined]
    return install
