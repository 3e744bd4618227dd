"""``parallel_config`` / ``parallel_backend``: validation, nesting, thread-locality,
``active_backend`` and ``effective_n_jobs``."""

from __future__ import annotations

import inspect
import multiprocessing
import pathlib
import threading
from typing import Any

import par_api
import pytest
from par_api import (
    DEFAULTS,
    ParallelBackendBase,
    active_backend,
    default,
    effective_n_jobs,
    get_active_config,
    parallel_backend,
    parallel_config,
    parse_nbytes,
    register_parallel_backend,
)
from par_api.config import _nested_scope


class LocalLike(ParallelBackendBase):
    """A backend following the local n_jobs rule; records its constructor parameters."""

    def __init__(self, **params: Any) -> None:
        super().__init__(nesting_level=params.pop("nesting_level", None))
        self.params = params

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        return par_api.normalize_n_jobs(n_jobs)


class ProcessLike(LocalLike):
    supports_inner_max_num_threads = True


class FixedSize(ParallelBackendBase):
    """A backend that always uses 3 workers, whatever is asked (like a fixed cluster)."""

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        return 3


@pytest.fixture
def local_backends() -> None:
    register_parallel_backend("local-like", LocalLike)
    register_parallel_backend("process-like", ProcessLike)


# -- defaults and signature ----------------------------------------------------------------


def test_defaults_without_any_configuration() -> None:
    cfg = get_active_config()
    assert cfg.explicit == frozenset()
    assert cfg.nested is False
    for name, value in DEFAULTS.items():
        assert getattr(cfg, name) == value, name
    assert dict(DEFAULTS) == {
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
    with pytest.raises(TypeError):
        DEFAULTS["n_jobs"] = 2  # type: ignore[index]


def test_parallel_config_signature_matches_the_reference() -> None:
    params = inspect.signature(parallel_config).parameters
    spec = [
        ("backend", inspect.Parameter.POSITIONAL_OR_KEYWORD, "default(None)"),
        ("n_jobs", inspect.Parameter.KEYWORD_ONLY, "default(None)"),
        ("verbose", inspect.Parameter.KEYWORD_ONLY, "default(0)"),
        ("temp_folder", inspect.Parameter.KEYWORD_ONLY, "default(None)"),
        ("max_nbytes", inspect.Parameter.KEYWORD_ONLY, "default('1M')"),
        ("mmap_mode", inspect.Parameter.KEYWORD_ONLY, "default('r')"),
        ("prefer", inspect.Parameter.KEYWORD_ONLY, "default(None)"),
        ("require", inspect.Parameter.KEYWORD_ONLY, "default(None)"),
        ("inner_max_num_threads", inspect.Parameter.KEYWORD_ONLY, "None"),
    ]
    # par adds keyword-only options (progress, the worker options, the failure policy)
    # after the documented ones.
    additions = (
        "progress",
        "max_tasks_per_child",
        "max_worker_memory",
        "forward_output",
        "on_error",
        "retries",
        "retry_on",
    )
    names = [name for name in params if name not in additions]
    assert names == [name for name, _, _ in spec] + ["backend_params"]
    for name, kind, default_repr in spec:
        assert params[name].kind == kind, name
        assert repr(params[name].default) == default_repr, name
    assert params["backend_params"].kind == inspect.Parameter.VAR_KEYWORD
    for name in additions:
        assert params[name].kind == inspect.Parameter.KEYWORD_ONLY, name


def test_parallel_backend_signature_matches_the_reference() -> None:
    params = inspect.signature(parallel_backend).parameters
    assert list(params) == ["backend", "n_jobs", "inner_max_num_threads", "backend_params"]
    assert params["backend"].default is inspect.Parameter.empty
    assert params["n_jobs"].default == -1
    assert params["inner_max_num_threads"].default is None


def test_default_marker() -> None:
    assert repr(default("1M")) == "default('1M')"
    assert default(None) == default(None)
    assert default(None) != default(0)
    assert default(None) != None  # noqa: E711 - the marker is not the value
    assert hash(default(1)) == hash(default(1))


# -- context manager, plain call, nesting ----------------------------------------------------


def test_context_manager_sets_and_restores() -> None:
    with parallel_config(n_jobs=3, verbose=5, prefer="threads") as cfg:
        # joblib yields the active configuration as a dict
        assert isinstance(cfg, dict)
        assert (cfg["n_jobs"], cfg["verbose"], cfg["prefer"], cfg["backend"]) == (3, 5, "threads", None)
        active = get_active_config()
        assert (active.n_jobs, active.verbose, active.prefer) == (3, 5, "threads")
        assert active.explicit == frozenset({"n_jobs", "verbose", "prefer"})
        assert active.is_set("n_jobs") and not active.is_set("backend")
        assert active.mmap_mode == "r"  # untouched fields keep their defaults
    assert get_active_config().n_jobs is None
    assert get_active_config().explicit == frozenset()


def test_plain_call_sets_until_unregister() -> None:
    cfg = parallel_config(n_jobs=2)
    try:
        assert get_active_config().n_jobs == 2
    finally:
        cfg.unregister()
    assert get_active_config().n_jobs is None
    cfg.unregister()  # a second call is harmless
    assert get_active_config().explicit == frozenset()


def test_nested_configs_override_only_what_they_set() -> None:
    with parallel_config(n_jobs=4, verbose=1, max_nbytes="2M"):
        with parallel_config(verbose=10, mmap_mode="r+"):
            cfg = get_active_config()
            assert (cfg.n_jobs, cfg.verbose, cfg.max_nbytes, cfg.mmap_mode) == (4, 10, "2M", "r+")
            assert cfg.explicit == frozenset({"n_jobs", "verbose", "max_nbytes", "mmap_mode"})
            with parallel_config(n_jobs=1):
                assert get_active_config().n_jobs == 1
                assert get_active_config().verbose == 10
            assert get_active_config().n_jobs == 4
        cfg = get_active_config()
        assert (cfg.n_jobs, cfg.verbose, cfg.max_nbytes, cfg.mmap_mode) == (4, 1, "2M", "r")


def test_inner_config_can_set_a_field_back_to_none() -> None:
    with parallel_config(n_jobs=4, temp_folder="/somewhere"), parallel_config(n_jobs=None, temp_folder=None):
        cfg = get_active_config()
        assert cfg.n_jobs is None and cfg.temp_folder is None
        assert cfg.is_set("n_jobs") and cfg.is_set("temp_folder")


def test_exit_restores_the_outer_config_on_exceptions() -> None:
    with parallel_config(n_jobs=4):
        with pytest.raises(KeyError), parallel_config(n_jobs=2, verbose=3):
            raise KeyError("inside")
        cfg = get_active_config()
        assert (cfg.n_jobs, cfg.verbose) == (4, 0)
    assert get_active_config().explicit == frozenset()


def test_out_of_order_unregister_removes_only_its_own_layer() -> None:
    outer = parallel_config(n_jobs=4)
    inner = parallel_config(verbose=2)
    outer.unregister()
    try:
        cfg = get_active_config()
        assert (cfg.n_jobs, cfg.verbose) == (None, 2)
    finally:
        inner.unregister()


def test_nested_scope_marks_the_configuration_as_nested() -> None:
    backend = LocalLike()
    with parallel_config(verbose=3), _nested_scope(backend, 2):
        cfg = get_active_config()
        assert cfg.nested is True
        assert (cfg.backend, cfg.n_jobs, cfg.verbose) == (backend, 2, 3)
    assert get_active_config().nested is False


# -- thread-locality ---------------------------------------------------------------------


def run_in_thread(target: Any) -> None:
    errors: list[BaseException] = []

    def wrapper() -> None:
        try:
            target()
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    thread = threading.Thread(target=wrapper)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    if errors:
        raise errors[0]


def test_configuration_is_thread_local() -> None:
    seen: dict[str, Any] = {}
    main_may_check = threading.Event()
    thread_may_leave = threading.Event()

    def other_thread() -> None:
        seen["initial"] = get_active_config()
        with parallel_config(n_jobs=7, verbose=9):
            seen["own"] = get_active_config()
            main_may_check.set()
            assert thread_may_leave.wait(30)
        seen["after"] = get_active_config()

    with parallel_config(n_jobs=2, prefer="threads"):
        thread = threading.Thread(target=other_thread)
        thread.start()
        try:
            assert main_may_check.wait(30)
            # The other thread's config is active there, not here.
            cfg = get_active_config()
            assert (cfg.n_jobs, cfg.verbose, cfg.prefer) == (2, 0, "threads")
        finally:
            thread_may_leave.set()
            thread.join(timeout=30)
        assert not thread.is_alive()
        assert get_active_config().n_jobs == 2
    # The main thread's config was not visible in the other thread.
    assert seen["initial"].explicit == frozenset()
    assert seen["initial"].n_jobs is None
    assert (seen["own"].n_jobs, seen["own"].verbose, seen["own"].prefer) == (7, 9, None)
    assert seen["after"].explicit == frozenset()


def test_plain_call_in_a_thread_does_not_leak_into_the_main_thread() -> None:
    holder: list[parallel_config] = []

    def other_thread() -> None:
        holder.append(parallel_config(n_jobs=5))
        assert get_active_config().n_jobs == 5

    run_in_thread(other_thread)
    assert get_active_config().explicit == frozenset()
    holder[0].unregister()  # removes the layer from the other thread's stack, harmlessly


# -- backend: name, instance, parameters ---------------------------------------------------


def test_backend_by_name_is_built_with_backend_params(local_backends: None) -> None:
    with parallel_config(backend="local-like", n_jobs=2, endpoint="tcp://x", max_attempts=3) as cfg:
        backend = get_active_config().backend
        assert isinstance(backend, LocalLike)
        assert backend is cfg["backend"]
        assert backend.params == {"endpoint": "tcp://x", "max_attempts": 3}
        assert active_backend() == (backend, 2)


def test_backend_as_positional_argument(local_backends: None) -> None:
    with parallel_config("local-like"):
        assert isinstance(get_active_config().backend, LocalLike)


def test_backend_instance_is_used_as_is(local_backends: None) -> None:
    backend = LocalLike()
    with parallel_config(backend=backend):
        assert get_active_config().backend is backend
        assert active_backend() == (backend, None)


def test_each_entry_of_a_named_backend_builds_a_new_instance(local_backends: None) -> None:
    with parallel_config(backend="local-like") as a, parallel_config(backend="local-like") as b:
        assert a["backend"] is not b["backend"]


def test_backend_params_with_an_instance_are_a_type_error(local_backends: None) -> None:
    with pytest.raises(
        TypeError, match=r"backend parameters \['max_attempts'\] are only accepted with a backend name"
    ):
        parallel_config(backend=LocalLike(), max_attempts=3)


def test_backend_params_without_a_backend_are_a_type_error() -> None:
    with pytest.raises(
        ValueError, match=r"unexpected keyword arguments \['max_attempts'\].*need backend=<name>"
    ):
        parallel_config(n_jobs=2, max_attempts=3)


@pytest.mark.parametrize("bad", [3, object(), ["loky"]])
def test_backend_of_a_wrong_type_is_a_type_error_naming_the_accepted_kinds(bad: Any) -> None:
    with pytest.raises(
        TypeError, match=r"backend must be a backend name \(str\), a ParallelBackendBase instance"
    ):
        parallel_config(backend=bad)


def test_unknown_backend_name_is_a_value_error_and_nothing_is_pushed(local_backends: None) -> None:
    with pytest.raises(
        ValueError, match=r"backend='nope' is not available\. Available backends: local-like, process-like"
    ):
        parallel_config(backend="nope", n_jobs=2)
    assert get_active_config().explicit == frozenset()


def test_backend_none_leaves_the_enclosing_backend(local_backends: None) -> None:
    with parallel_config(backend="local-like") as outer, parallel_config(backend=None, n_jobs=3):
        assert get_active_config().backend is outer["backend"]
        assert get_active_config().n_jobs == 3


def test_a_multiprocessing_context_selects_the_multiprocessing_backend() -> None:
    register_parallel_backend("multiprocessing", LocalLike)
    ctx = multiprocessing.get_context("spawn")
    with parallel_config(backend=ctx):
        backend = get_active_config().backend
        assert isinstance(backend, LocalLike)
        assert backend.params == {"context": ctx}


# -- inner_max_num_threads -------------------------------------------------------------------


def test_inner_max_num_threads_is_set_on_a_supporting_backend(local_backends: None) -> None:
    with parallel_config(backend="process-like", inner_max_num_threads=2):
        cfg = get_active_config()
        assert cfg.inner_max_num_threads == 2
        assert cfg.backend.inner_max_num_threads == 2  # type: ignore[union-attr]
    instance = ProcessLike()
    with parallel_config(backend=instance, inner_max_num_threads=3):
        assert instance.inner_max_num_threads == 3


def test_inner_max_num_threads_alone_is_recorded() -> None:
    with parallel_config(inner_max_num_threads=2):
        assert get_active_config().inner_max_num_threads == 2
        assert get_active_config().explicit == frozenset({"inner_max_num_threads"})


def test_inner_max_num_threads_with_a_backend_that_cannot_honour_it(local_backends: None) -> None:
    with pytest.raises(
        ValueError, match=r"inner_max_num_threads=2 is not supported by backend LocalLike.*'loky'"
    ):
        parallel_config(backend="local-like", inner_max_num_threads=2)
    with pytest.raises(ValueError, match="inner_max_num_threads=2 is not supported"):
        parallel_config(backend=LocalLike(), inner_max_num_threads=2)
    with pytest.raises(ValueError, match="inner_max_num_threads=4 is not supported"):
        parallel_backend("local-like", 2, 4)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, r"inner_max_num_threads must be >= 1, got 0"),
        (-2, ValueError, r"inner_max_num_threads must be >= 1"),
        ("2", TypeError, r"inner_max_num_threads must be a positive int or None, got '2'"),
        (1.5, TypeError, r"inner_max_num_threads must be a positive int or None"),
        (True, TypeError, r"inner_max_num_threads must be a positive int or None"),
    ],
)
def test_invalid_inner_max_num_threads(value: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        parallel_config(inner_max_num_threads=value)


# -- validation of the other parameters ------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"n_jobs": 0},
            ValueError,
            r"n_jobs=0 is not allowed: use a positive count of workers, -1 for all CPUs",
        ),
        ({"n_jobs": "two"}, ValueError, r"n_jobs could not be converted to int: got 'two'"),
        ({"n_jobs": True}, TypeError, r"n_jobs must be an int"),
        ({"n_jobs": float("nan")}, ValueError, r"n_jobs must be a finite number"),
        ({"verbose": -1}, ValueError, r"verbose must be >= 0, got -1"),
        ({"verbose": "high"}, TypeError, r"verbose must be an int >= 0, got str 'high'"),
        ({"verbose": 1.0}, TypeError, r"verbose must be an int >= 0"),
        (
            {"mmap_mode": "rw"},
            ValueError,
            r"mmap_mode='rw' is not valid: use one of None, 'r\+', 'r', 'w\+', 'c'",
        ),
        (
            {"max_nbytes": "lots"},
            ValueError,
            r"max_nbytes='lots' is not a size: use a number of bytes >= 0 .*'500k', '1M', '2G' or '1e6', or None",
        ),
        ({"max_nbytes": -1}, ValueError, r"max_nbytes must be a finite size >= 0; got -1 \(accepted: "),
        ({"max_nbytes": [1]}, TypeError, r"max_nbytes must be a number of bytes >= 0 .*; got list \[1\]"),
        (
            {"temp_folder": 3},
            TypeError,
            r"temp_folder must be a path \(str or os.PathLike\) or None, got int",
        ),
        ({"prefer": "gpu"}, ValueError, r"prefer=gpu is not a valid backend hint, expected one of \("),
        ({"require": "shared"}, ValueError, r"require=shared is not a valid backend constraint, expected one of \("),
        (
            {"prefer": "processes", "require": "sharedmem"},
            ValueError,
            r"prefer='processes' and require='sharedmem' are inconsistent",
        ),
    ],
)
def test_invalid_values_name_the_parameter_and_the_accepted_values(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        parallel_config(**kwargs)
    assert get_active_config().explicit == frozenset()  # nothing was pushed


@pytest.mark.parametrize("mmap_mode", [None, "r+", "r", "w+", "c"])
def test_every_documented_mmap_mode_is_accepted(mmap_mode: str | None) -> None:
    with parallel_config(mmap_mode=mmap_mode):
        assert get_active_config().mmap_mode == mmap_mode


def test_values_are_normalised(tmp_path: pathlib.Path) -> None:
    with parallel_config(
        n_jobs=2.9, temp_folder=tmp_path, max_nbytes=None, prefer="threads", require="sharedmem"
    ):
        cfg = get_active_config()
        assert cfg.n_jobs == 2 and isinstance(cfg.n_jobs, int)
        assert cfg.temp_folder == str(tmp_path) and isinstance(cfg.temp_folder, str)
        assert cfg.max_nbytes is None
        assert (cfg.prefer, cfg.require) == ("threads", "sharedmem")


def test_progress_is_recorded() -> None:
    with parallel_config(progress=True):
        assert get_active_config().progress is True
        assert get_active_config().explicit == frozenset({"progress"})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (0, 0),
        (1000, 1000),
        (1.5, 1),
        ("100", 100),
        ("1k", 1024),
        ("500K", 500 * 1024),
        ("1M", 1024**2),
        ("1mb", 1024**2),
        (" 2G ", 2 * 1024**3),
        ("1.5M", int(1.5 * 1024**2)),
        ("1T", 1024**4),
    ],
)
def test_parse_nbytes(value: Any, expected: int | None) -> None:
    assert parse_nbytes(value) == expected


def test_parse_nbytes_errors_use_the_given_parameter_name() -> None:
    with pytest.raises(ValueError, match=r"threshold='1X' is not a size"):
        parse_nbytes("1X", name="threshold")
    with pytest.raises(ValueError, match=r"max_nbytes must be a finite size >= 0; got '-1M'"):
        parse_nbytes("-1M")
    with pytest.raises(TypeError, match=r"max_nbytes must be a number of bytes >= 0 .*; got bool True"):
        parse_nbytes(True)


# -- parallel_backend (legacy alias) --------------------------------------------------------


def test_parallel_backend_defaults_to_all_cpus_and_yields_backend_and_n_jobs(local_backends: None) -> None:
    with parallel_backend("local-like") as (backend, n_jobs):
        assert isinstance(backend, LocalLike)
        assert n_jobs == -1
        cfg = get_active_config()
        assert cfg.backend is backend
        assert cfg.n_jobs == -1
        assert effective_n_jobs() == par_api.cpu_count()
    assert get_active_config().explicit == frozenset()


def test_parallel_backend_accepts_positional_n_jobs_and_inner_threads(local_backends: None) -> None:
    with parallel_backend("process-like", 2, 1, endpoint="e") as (backend, n_jobs):
        assert n_jobs == 2
        assert backend.inner_max_num_threads == 1
        assert backend.params == {"endpoint": "e"}
        assert get_active_config().inner_max_num_threads == 1


def test_parallel_backend_restores_on_exceptions(local_backends: None) -> None:
    with pytest.raises(RuntimeError), parallel_backend("local-like", n_jobs=2):
        raise RuntimeError
    assert get_active_config().explicit == frozenset()


def test_parallel_backend_as_a_plain_call(local_backends: None) -> None:
    handle = parallel_backend("local-like")
    try:
        assert isinstance(get_active_config().backend, LocalLike)
        assert get_active_config().n_jobs == -1
    finally:
        handle.unregister()


def test_parallel_backend_validates_n_jobs(local_backends: None) -> None:
    with pytest.raises(ValueError, match="n_jobs=0 is not allowed"):
        parallel_backend("local-like", n_jobs=0)


# -- active_backend / effective_n_jobs -------------------------------------------------------


def test_active_backend_builds_the_default_backend() -> None:
    register_parallel_backend("my-default", LocalLike, make_default=True)
    backend, n_jobs = active_backend()
    assert isinstance(backend, LocalLike)
    assert n_jobs is None


def test_active_backend_without_any_backend_installed_names_the_default() -> None:
    with pytest.raises(ValueError, match=r"backend='(loky|threading)' is not available.*par-backends-local"):
        active_backend()


@pytest.mark.parametrize(
    ("n_jobs", "expected"),
    [(1, 1), (3, 3), (100, 100), (2.9, 2), (None, 1)],
)
def test_effective_n_jobs_without_backend_uses_the_local_rule(n_jobs: Any, expected: int) -> None:
    assert effective_n_jobs(n_jobs) == expected


def test_effective_n_jobs_negative_values_count_back_from_all_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(par_api.cpu, "cpu_count", lambda only_physical_cores=False: 4)
    assert effective_n_jobs() == 4
    assert effective_n_jobs(-1) == 4
    assert effective_n_jobs(-2) == 3
    assert effective_n_jobs(-4) == 1
    assert effective_n_jobs(-10) == 1  # at least one
    assert effective_n_jobs(-1.5) == 3  # rounded down to -2


def test_effective_n_jobs_default_is_all_cpus() -> None:
    assert inspect.signature(effective_n_jobs).parameters["n_jobs"].default == -1
    assert effective_n_jobs() == par_api.cpu_count()


def test_effective_n_jobs_none_takes_the_configured_value() -> None:
    with parallel_config(n_jobs=3):
        assert effective_n_jobs(None) == 3
        assert effective_n_jobs(2) == 2  # an explicit value wins
    with parallel_config(n_jobs=-1):
        assert effective_n_jobs(None) == par_api.cpu_count()


def test_effective_n_jobs_asks_the_active_backend() -> None:
    with parallel_config(backend=FixedSize()):
        assert effective_n_jobs(-1) == 3
        assert effective_n_jobs(8) == 3
        assert effective_n_jobs(1) == 1  # 1 means no parallelism at all
    register_parallel_backend("fixed", FixedSize, make_default=True)
    assert effective_n_jobs(-1) == 3


def test_effective_n_jobs_passes_the_validated_int_to_the_backend() -> None:
    received: list[Any] = []

    class Recording(LocalLike):
        def effective_n_jobs(self, n_jobs: int | None) -> int:
            received.append(n_jobs)
            return super().effective_n_jobs(n_jobs)

    with parallel_config(backend=Recording()):
        assert effective_n_jobs(2.7) == 2
    assert received == [2]
    assert type(received[0]) is int


@pytest.mark.parametrize(
    ("n_jobs", "error", "message"),
    [
        (0, ValueError, r"n_jobs=0 is not allowed"),
        (0.5, ValueError, r"n_jobs=0.5 is not allowed"),
        ("all", ValueError, r"n_jobs could not be converted to int: got 'all'"),
        ([2], TypeError, r"n_jobs must be an int"),
        (float("inf"), ValueError, r"n_jobs must be a finite number"),
    ],
)
def test_effective_n_jobs_rejects_bad_values(n_jobs: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        effective_n_jobs(n_jobs)
    with parallel_config(backend=FixedSize()), pytest.raises(error, match=message):
        effective_n_jobs(n_jobs)
