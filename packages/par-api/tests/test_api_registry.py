"""The backend registry: run-time registration, entry-point discovery, the default
backend and its environment variables."""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import par_api
import pytest
from par_api import (
    ENTRY_POINT_GROUP,
    BackendNotAvailableError,
    ParallelBackendBase,
    available_backends,
    backend_providers,
    default_backend_name,
    get_backend_factory,
    make_backend,
    multiprocessing_available,
    parallel_config,
    register_parallel_backend,
    registry,
)


class Dummy(ParallelBackendBase):
    def __init__(self, **params: Any) -> None:
        self.params = params

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        return 1


class Other(Dummy):
    pass


def test_entry_point_group_name() -> None:
    assert ENTRY_POINT_GROUP == "par.backends"


# -- register_parallel_backend ---------------------------------------------------------------


def test_register_and_make_a_backend() -> None:
    register_parallel_backend("dummy", Dummy)
    assert get_backend_factory("dummy") is Dummy
    backend = make_backend("dummy", a=1)
    assert isinstance(backend, Dummy)
    assert backend.params == {"a": 1}
    assert "dummy" in available_backends()
    assert backend_providers()["dummy"] == "registered at run time"


def test_register_a_factory_function() -> None:
    made: list[Dummy] = []

    def factory(**params: Any) -> Dummy:
        made.append(Dummy(**params))
        return made[-1]

    register_parallel_backend("by-function", factory)
    assert make_backend("by-function", x=2) is made[0]
    assert made[0].params == {"x": 2}


def test_registering_again_replaces_the_factory() -> None:
    register_parallel_backend("dummy", Dummy)
    register_parallel_backend("dummy", Other)
    assert type(make_backend("dummy")) is Other


def test_a_factory_must_return_a_backend() -> None:
    register_parallel_backend("bad", lambda: object())
    with pytest.raises(
        TypeError,
        match=r"the factory registered for backend 'bad' returned object, not a ParallelBackendBase instance",
    ):
        make_backend("bad")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", Dummy), r"name must be a non-empty str, got ''"),
        ((3, Dummy), r"name must be a non-empty str, got 3"),
        (
            ("x", "Dummy"),
            r"factory must be callable \(a backend class or a function returning a ParallelBackendBase instance\), got str",
        ),
        (("x", Dummy, "yes"), r"make_default=...\): expected True or False, got 'yes'"),
    ],
)
def test_register_validates_its_arguments(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        register_parallel_backend(*args)
    assert "x" not in available_backends()


def test_make_default_makes_it_the_default_backend() -> None:
    register_parallel_backend("dummy", Dummy)
    assert default_backend_name() != "dummy"
    register_parallel_backend("mine", Other, make_default=True)
    assert default_backend_name() == "mine"
    backend, _ = par_api.active_backend()
    assert type(backend) is Other
    register_parallel_backend("dummy", Dummy)  # make_default=False does not undo it
    assert default_backend_name() == "mine"


# -- unknown names ------------------------------------------------------------------------


def test_unknown_backend_names_it_and_lists_the_available_ones() -> None:
    register_parallel_backend("beta", Dummy)
    register_parallel_backend("alpha", Dummy)
    with pytest.raises(
        BackendNotAvailableError, match=r"backend='nope' is not available\. Available backends: alpha, beta\."
    ) as info:
        get_backend_factory("nope")
    assert isinstance(info.value, ValueError)
    assert "register_parallel_backend(name, factory)" in str(info.value)
    assert "'par.backends' entry-point group" in str(info.value)
    assert "install" not in str(info.value)  # no package to suggest for an unknown name


def test_unknown_backend_with_nothing_installed() -> None:
    with pytest.raises(ValueError, match=r"Available backends: \(none installed\)\."):
        make_backend("nope")


@pytest.mark.parametrize(
    ("name", "package"),
    [
        ("dask", r"par-backends-dask: install it"),
        ("ray", r"par-backends-ray: install it"),
        ("spark", r"a par backend for spark"),
        ("loky", r"par-backends-local: install it"),
        ("threading", r"par-backends-local"),
    ],
)
def test_known_cluster_and_local_names_say_which_package_to_install(name: str, package: str) -> None:
    with pytest.raises(
        ValueError,
        match=rf"backend='{name}' is not available\..*The '{name}' backend is provided by {package}",
    ):
        parallel_config(backend=name)


# -- entry points -------------------------------------------------------------------------


@pytest.fixture
def backend_module(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module on sys.path defining backends, as an installed backend package would."""
    name = f"par_api_test_eps_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from par_api import ParallelBackendBase

            class EPBackend(ParallelBackendBase):
                def __init__(self, **params):
                    self.params = params

                def effective_n_jobs(self, n_jobs):
                    return 2

            def make(**params):
                return EPBackend(origin="factory", **params)

            NOT_CALLABLE = 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_entry_point_backend_is_found_and_loaded_lazily(entry_points: Any, backend_module: str) -> None:
    entry_points(fromep=f"{backend_module}:EPBackend")
    # Listed without being imported.
    assert available_backends() == ["fromep"]
    assert backend_module not in sys.modules
    assert backend_providers() == {"fromep": f"{backend_module}:EPBackend"}
    assert backend_module not in sys.modules
    # Loaded on first use of the name.
    backend = make_backend("fromep", x=1)
    assert backend_module in sys.modules
    assert type(backend).__name__ == "EPBackend"
    assert backend.params == {"x": 1}  # type: ignore[attr-defined]


def test_a_shipped_backend_is_imported_without_reading_the_entry_points(
    entry_points: Any, backend_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "_SHIPPED", {"shipped": f"{backend_module}:EPBackend"})
    entry_points(shipped=f"{backend_module}:make")  # would build it with origin='factory'
    backend = make_backend("shipped", x=1)
    assert type(backend).__name__ == "EPBackend"
    assert backend.params == {"x": 1}  # type: ignore[attr-defined]
    assert entry_points.state["calls"] == 0  # type: ignore[attr-defined]
    make_backend("shipped")
    assert entry_points.state["calls"] == 0  # type: ignore[attr-defined]
    # the provider still comes from the entry point (read only when asked for)
    assert backend_providers() == {"shipped": f"{backend_module}:make"}


def test_a_shipped_backend_whose_module_is_missing_falls_back_to_the_entry_points(
    entry_points: Any, backend_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "_SHIPPED", {"shipped": "par_api_no_such_module_xyz:Backend"})
    entry_points(shipped=f"{backend_module}:make")
    backend = make_backend("shipped")
    assert backend.params == {"origin": "factory"}  # type: ignore[attr-defined]
    assert entry_points.state["calls"] == 1  # type: ignore[attr-defined]
    monkeypatch.setattr(registry, "_SHIPPED", {"gone": "par_api_no_such_module_xyz:Backend"})
    with pytest.raises(BackendNotAvailableError, match="backend='gone' is not available"):
        make_backend("gone")


def test_a_shipped_backend_whose_lazy_attribute_fails_to_import_falls_back_to_the_entry_points(
    entry_points: Any, backend_module: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # par_backends_local exposes its backends through a module __getattr__ that imports
    # the backend's module (and loky): an ImportError there is "not installed" too
    lazy = f"{backend_module}_lazy"
    (tmp_path / f"{lazy}.py").write_text(
        "def __getattr__(name):\n    raise ImportError('No module named loky')\n"
    )
    monkeypatch.setattr(registry, "_SHIPPED", {"shipped": f"{lazy}:LazyBackend"})
    entry_points(shipped=f"{backend_module}:make")
    try:
        assert make_backend("shipped").params == {"origin": "factory"}  # type: ignore[attr-defined]
        assert entry_points.state["calls"] == 1  # type: ignore[attr-defined]
    finally:
        sys.modules.pop(lazy, None)


def test_a_run_time_registration_wins_over_a_shipped_backend(
    backend_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "_SHIPPED", {"shipped": f"{backend_module}:EPBackend"})
    register_parallel_backend("shipped", Dummy)
    assert type(make_backend("shipped")) is Dummy


def test_entry_point_is_loaded_once_and_cached(entry_points: Any, backend_module: str) -> None:
    entry_points(fromep=f"{backend_module}:EPBackend")
    factory = get_backend_factory("fromep")
    scans = entry_points.state["calls"]
    assert get_backend_factory("fromep") is factory
    assert make_backend("fromep") is not None
    assert entry_points.state["calls"] == scans  # no new scan of the installed distributions


def test_entry_point_factory_function(entry_points: Any, backend_module: str) -> None:
    entry_points(viafunc=f"{backend_module}:make")
    assert make_backend("viafunc", y=2).params == {"origin": "factory", "y": 2}  # type: ignore[attr-defined]


def test_entry_point_backend_usable_from_parallel_config(entry_points: Any, backend_module: str) -> None:
    entry_points(fromep=f"{backend_module}:EPBackend")
    with parallel_config(backend="fromep", endpoint="e"):
        backend = par_api.get_active_config().backend
        assert type(backend).__name__ == "EPBackend"
        assert backend.params == {"endpoint": "e"}  # type: ignore[union-attr]
        assert par_api.effective_n_jobs(-1) == 2


def test_entry_point_can_be_the_default_through_par_backend(
    entry_points: Any, backend_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry_points(fromep=f"{backend_module}:EPBackend")
    monkeypatch.setenv("PAR_BACKEND", "fromep")
    backend, _ = par_api.active_backend()
    assert type(backend).__name__ == "EPBackend"


def test_available_backends_merges_registered_and_installed(entry_points: Any, backend_module: str) -> None:
    entry_points(fromep=f"{backend_module}:EPBackend", zeta=f"{backend_module}:make")
    register_parallel_backend("alpha", Dummy)
    assert available_backends() == ["alpha", "fromep", "zeta"]
    with pytest.raises(ValueError, match=r"Available backends: alpha, fromep, zeta\."):
        make_backend("nope")
    assert backend_module not in sys.modules


def test_run_time_registration_wins_over_an_entry_point(entry_points: Any, backend_module: str) -> None:
    entry_points(fromep=f"{backend_module}:EPBackend")
    register_parallel_backend("fromep", Dummy)
    assert type(make_backend("fromep")) is Dummy
    assert backend_providers()["fromep"] == "registered at run time"
    assert backend_module not in sys.modules


def test_registration_after_an_entry_point_was_loaded_wins_too(
    entry_points: Any, backend_module: str
) -> None:
    entry_points(fromep=f"{backend_module}:EPBackend")
    assert type(make_backend("fromep")).__name__ == "EPBackend"
    register_parallel_backend("fromep", Dummy)
    assert type(make_backend("fromep")) is Dummy
    assert backend_providers()["fromep"] == "registered at run time"


def test_a_broken_entry_point_names_the_backend_and_the_entry_point(entry_points: Any) -> None:
    entry_points(broken="par_api_no_such_module_xyz:Backend")
    assert available_backends() == ["broken"]
    with pytest.raises(
        BackendNotAvailableError,
        match=r"backend='broken' is declared by par_api_no_such_module_xyz:Backend .*could not be loaded: ModuleNotFoundError",
    ) as info:
        make_backend("broken")
    assert isinstance(info.value.__cause__, ImportError)


def test_an_entry_point_to_a_non_callable_is_rejected(entry_points: Any, backend_module: str) -> None:
    entry_points(number=f"{backend_module}:NOT_CALLABLE")
    with pytest.raises(
        BackendNotAvailableError, match=r"backend='number': entry point .*NOT_CALLABLE.* is not callable"
    ):
        make_backend("number")


def test_entry_point_provider_names_the_distribution(
    monkeypatch: pytest.MonkeyPatch, backend_module: str
) -> None:
    class FakeDist:
        name = "par-backends-fake"
        version = "1.2.3"

    real = importlib.metadata.EntryPoint(
        name="fromep", value=f"{backend_module}:EPBackend", group=ENTRY_POINT_GROUP
    )

    class InstalledEntryPoint:
        """An entry point as importlib.metadata returns it for an installed distribution."""

        name, value, group, dist = real.name, real.value, real.group, FakeDist()

        def load(self) -> Any:
            return real.load()

    monkeypatch.setattr(registry, "_entry_points", lambda: [InstalledEntryPoint()])
    assert backend_providers() == {"fromep": "par-backends-fake 1.2.3"}
    make_backend("fromep")
    assert backend_providers() == {"fromep": "par-backends-fake 1.2.3"}


def test_the_real_entry_point_reader_only_returns_par_backends(real_entry_points: Any) -> None:
    eps = real_entry_points()
    assert isinstance(eps, list)
    for ep in eps:
        # duck-typed: with some packages installed (distributed imports the
        # importlib_metadata backport) the objects come from another EntryPoint class
        assert all(hasattr(ep, attr) for attr in ("name", "value", "group", "load"))
        assert ep.group == ENTRY_POINT_GROUP
    expected = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert {ep.name for ep in eps} == expected


# -- the default backend and the environment ------------------------------------------------


def test_default_is_loky_where_multiprocessing_works() -> None:
    pytest.importorskip("_multiprocessing")
    assert multiprocessing_available() is True
    assert default_backend_name() == "loky"


def test_par_backend_sets_the_default_backend_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAR_BACKEND", " threading ")
    assert default_backend_name() == "threading"
    monkeypatch.setenv("PAR_BACKEND", "dask")
    assert default_backend_name() == "dask"
    with pytest.raises(ValueError, match="par-backends-dask"):
        par_api.active_backend()
    monkeypatch.setenv("PAR_BACKEND", "")
    assert default_backend_name() == ("loky" if multiprocessing_available() else "threading")


def test_make_default_wins_over_par_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAR_BACKEND", "threading")
    register_parallel_backend("mine", Dummy, make_default=True)
    assert default_backend_name() == "mine"


def test_par_backend_selects_a_registered_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    register_parallel_backend("dummy", Dummy)
    monkeypatch.setenv("PAR_BACKEND", "dummy")
    backend, n_jobs = par_api.active_backend()
    assert type(backend) is Dummy
    assert n_jobs is None


@pytest.mark.parametrize("value", ["0", "false", "no", "off", "FALSE", " 0 "])
def test_par_multiprocessing_off_means_threading(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PAR_MULTIPROCESSING", value)
    assert multiprocessing_available() is False
    assert default_backend_name() == "threading"


@pytest.mark.parametrize("value", ["1", "true", ""])
def test_par_multiprocessing_other_values_keep_processes(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    pytest.importorskip("_multiprocessing")
    monkeypatch.setenv("PAR_MULTIPROCESSING", value)
    assert multiprocessing_available() is True
    assert default_backend_name() == "loky"


def test_par_backend_wins_over_par_multiprocessing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAR_MULTIPROCESSING", "0")
    monkeypatch.setenv("PAR_BACKEND", "sequential")
    assert default_backend_name() == "sequential"


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PAR_BACKEND", "PAR_MULTIPROCESSING")}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, check=False
    )


@pytest.mark.timeout(60)
def test_without_a_working_multiprocessing_the_default_is_threading() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["_multiprocessing"] = None  # as on Pyodide: the import fails
        import par_api
        from par_api import WorkerDiedError
        from concurrent.futures import BrokenExecutor
        assert issubclass(WorkerDiedError, BrokenExecutor)
        print(par_api.multiprocessing_available(), par_api.default_backend_name())
        """
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "threading"]


@pytest.mark.timeout(60)
def test_importing_par_api_loads_no_backend_package() -> None:
    code = textwrap.dedent(
        """
        import sys
        import par_api
        loaded = sorted(m for m in sys.modules if m.startswith("par_") and m.split(".")[0] != "par_api")
        print(loaded)
        """
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
