"""Budget arithmetic and the worker environment (no native library needed)."""

from __future__ import annotations

import par_threadlimits as tl
import pytest
from par_threadlimits import THREAD_LIMIT_VARS, thread_budget, worker_env


@pytest.fixture(autouse=True)
def _not_in_a_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAR_THREAD_BUDGET", raising=False)


def test_threadlimits_vars_order_and_content() -> None:
    assert THREAD_LIMIT_VARS == (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "BLIS_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "NUMEXPR_NUM_THREADS",
    )


@pytest.mark.parametrize(
    ("n_jobs", "n_cpus", "expected"),
    [
        (1, 8, 8),
        (2, 8, 4),
        (3, 8, 2),
        (4, 8, 2),
        (8, 8, 1),
        (16, 8, 1),
        (5, 1, 1),
        (-1, 8, 1),
        (-2, 8, 1),
        (-7, 8, 4),
    ],
)
def test_threadlimits_budget_arithmetic(n_jobs: int, n_cpus: int, expected: int) -> None:
    assert thread_budget(n_jobs, n_cpus=n_cpus) == expected


def test_threadlimits_budget_inner_max_num_threads_wins() -> None:
    assert thread_budget(4, inner_max_num_threads=2, n_cpus=8) == 2
    # The user's explicit choice is honoured even beyond the CPU count.
    assert thread_budget(4, inner_max_num_threads=16, n_cpus=8) == 16


def test_threadlimits_budget_defaults_to_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tl.budget, "cpu_count", lambda: 12)
    assert thread_budget(5) == 2
    assert thread_budget(-1) == 1


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"n_jobs": 0}, ValueError, "n_jobs"),
        ({"n_jobs": "two"}, ValueError, "n_jobs"),
        ({"n_jobs": True}, TypeError, "n_jobs"),
        ({"n_jobs": 2, "inner_max_num_threads": 0}, ValueError, "inner_max_num_threads"),
        ({"n_jobs": 2, "inner_max_num_threads": "2"}, TypeError, "inner_max_num_threads"),
        ({"n_jobs": 2, "n_cpus": 0}, ValueError, "n_cpus"),
    ],
)
def test_threadlimits_budget_bad_input(kwargs: dict, exc: type[Exception], name: str) -> None:
    with pytest.raises(exc, match=name):
        thread_budget(**kwargs)


def test_threadlimits_worker_env_sets_every_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tl.budget, "cpu_count", lambda: 8)
    env = worker_env(4, environ={"PATH": "/bin"})
    for name in THREAD_LIMIT_VARS:
        assert env[name] == "2"
    assert env["PAR_THREAD_BUDGET"] == "2"
    assert env["PAR_THREAD_LIMITED_VARS"].split(",") == list(THREAD_LIMIT_VARS)
    assert "PATH" not in env
    assert worker_env(4, inner_max_num_threads=3, environ={})["OMP_NUM_THREADS"] == "3"


def test_threadlimits_worker_env_user_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tl.budget, "cpu_count", lambda: 8)
    user = {"OPENBLAS_NUM_THREADS": "3", "MKL_NUM_THREADS": ""}
    env = worker_env(2, environ=user)
    assert "OPENBLAS_NUM_THREADS" not in env  # inherited from the user's environment
    assert "MKL_NUM_THREADS" not in env  # set, even empty, is the user's choice
    assert env["OMP_NUM_THREADS"] == "4"
    assert env["PAR_THREAD_BUDGET"] == "4"
    assert "OPENBLAS_NUM_THREADS" not in env["PAR_THREAD_LIMITED_VARS"].split(",")
    assert user == {"OPENBLAS_NUM_THREADS": "3", "MKL_NUM_THREADS": ""}  # not modified


def test_threadlimits_worker_env_default_environ_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    monkeypatch.delenv("PAR_THREAD_LIMITED_VARS", raising=False)
    env = worker_env(1, inner_max_num_threads=1)
    assert "OMP_NUM_THREADS" not in env
    assert env["OPENBLAS_NUM_THREADS"] == "1"


def test_threadlimits_worker_env_nested_replaces_par_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a worker, par's own values are not the user's: a nested call lowers them,
    while a variable the user set in the outermost parent is still inherited."""
    monkeypatch.setattr(tl.budget, "cpu_count", lambda: 8)
    outer = worker_env(2, environ={"MKL_NUM_THREADS": "7"})
    worker_environ = {"MKL_NUM_THREADS": "7", **outer}
    assert tl.user_set_vars(worker_environ) == {"MKL_NUM_THREADS"}
    inner = worker_env(2, inner_max_num_threads=None, environ=worker_environ)
    assert inner["OMP_NUM_THREADS"] == "2"  # the worker's 4 threads shared by 2 inner workers
    assert inner["PAR_THREAD_BUDGET"] == "2"
    assert "MKL_NUM_THREADS" not in inner


def test_threadlimits_budget_inside_a_worker_defaults_to_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tl.budget, "cpu_count", lambda: 8)
    monkeypatch.setenv("PAR_THREAD_BUDGET", "4")  # an outer call gave this worker 4 threads
    assert thread_budget(2) == 2
    assert thread_budget(-1) == 1
    assert thread_budget(2, n_cpus=8) == 4  # an explicit n_cpus still wins
    assert worker_env(2)["OMP_NUM_THREADS"] == "2"  # environ defaults to os.environ
    assert worker_env(2, environ={"PAR_THREAD_BUDGET": "4"})["OMP_NUM_THREADS"] == "2"
    assert worker_env(2, environ={})["OMP_NUM_THREADS"] == "4"  # environ={}: not in a worker
    assert worker_env(2, environ={"PAR_THREAD_BUDGET": "4"}, n_cpus=8)["OMP_NUM_THREADS"] == "4"


def test_threadlimits_worker_env_changes_with_budget() -> None:
    # A backend keys its workers on this mapping: a new limit means new workers.
    assert worker_env(1, inner_max_num_threads=1, environ={}) != worker_env(
        1, inner_max_num_threads=2, environ={}
    )


def test_threadlimits_nested_budget_reads_worker_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAR_THREAD_BUDGET", "3")
    assert tl.nested_budget() == 3
    assert tl.nested_budget(default_cpus=16) == 3
    # A nested call sized on it: 3 CPUs for the inner Parallel, its workers get 3 // n.
    assert thread_budget(-1, n_cpus=tl.nested_budget()) == 1
    assert thread_budget(1, n_cpus=tl.nested_budget()) == 3


@pytest.mark.parametrize("raw", [None, "", "zero", "0", "-2"])
def test_threadlimits_nested_budget_falls_back(monkeypatch: pytest.MonkeyPatch, raw: str | None) -> None:
    if raw is None:
        monkeypatch.delenv("PAR_THREAD_BUDGET", raising=False)
    else:
        monkeypatch.setenv("PAR_THREAD_BUDGET", raw)
    assert tl.nested_budget(default_cpus=6) == 6
    monkeypatch.setattr(tl.budget, "cpu_count", lambda: 9)
    assert tl.nested_budget() == 9


def test_threadlimits_thread_backend_limit_is_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tl.budget, "cpu_count", lambda: 8)
    monkeypatch.delenv("PAR_LIMIT_THREAD_BACKENDS", raising=False)
    assert tl.thread_backend_limit(4) is None
    assert tl.thread_backend_limit(4, inner_max_num_threads=3) == 3
    assert tl.thread_backend_limit(4, enabled=True) == 2
    monkeypatch.setenv("PAR_LIMIT_THREAD_BACKENDS", "1")
    assert tl.thread_backend_limit(4) == 2
    assert tl.thread_backend_limit(4, enabled=False) is None
    monkeypatch.setenv("PAR_LIMIT_THREAD_BACKENDS", "maybe")
    with pytest.raises(ValueError, match="PAR_LIMIT_THREAD_BACKENDS"):
        tl.thread_backend_limit(4)
