"""Thread limits seen from inside tasks, through ``Parallel`` (issue: no over-subscription)."""

from __future__ import annotations

import os

import pytest
from par import Parallel, cpu_count, delayed, parallel_config

np = pytest.importorskip("numpy")
threadpoolctl = pytest.importorskip("threadpoolctl")


@pytest.fixture(autouse=True)
def _no_thread_settings_in_the_environment(monkeypatch):
    """These tests are about par's own limits: start from an environment without any
    thread-count variable (a user's own setting wins, which one test checks)."""
    from par_threadlimits import THREAD_LIMIT_VARS

    for name in (*THREAD_LIMIT_VARS, "PAR_THREAD_BUDGET", "PAR_THREAD_LIMITED_VARS", "PAR_LIMIT_THREAD_BACKENDS"):
        monkeypatch.delenv(name, raising=False)


def worker_view(_):
    import numpy  # noqa: F401  (loads OpenBLAS in the worker)
    from threadpoolctl import threadpool_info

    blas = sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
    return os.getenv("OMP_NUM_THREADS"), os.getenv("OPENBLAS_NUM_THREADS"), blas


def blas_threads():
    return sorted({p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"})


@pytest.mark.timeout(120)
def test_default_budget_in_process_workers():
    budget = max(cpu_count() // 2, 1)
    out = Parallel(n_jobs=2, backend="loky")(delayed(worker_view)(i) for i in range(2))
    for omp, openblas, blas in out:
        assert omp == str(budget) and openblas == str(budget)
        assert blas == [budget]


@pytest.mark.timeout(120)
def test_explicit_inner_max_num_threads_then_back_to_default():
    # OpenBLAS never uses more threads than the machine has cores
    with parallel_config(backend="loky", inner_max_num_threads=2):
        out = Parallel(n_jobs=2)(delayed(worker_view)(i) for i in range(2))
    assert all(omp == "2" and blas == [min(2, os.cpu_count() or 1)] for omp, _, blas in out)
    # a change of the limit between calls takes effect (workers restarted)
    budget = max(cpu_count() // 2, 1)
    out = Parallel(n_jobs=2, backend="loky")(delayed(worker_view)(i) for i in range(2))
    assert all(omp == str(budget) and blas == [budget] for omp, _, blas in out)


@pytest.mark.timeout(120)
def test_user_setting_wins(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    out = Parallel(n_jobs=2, backend="loky")(delayed(worker_view)(i) for i in range(2))
    budget = max(cpu_count() // 2, 1)
    for omp, openblas, blas in out:
        assert openblas == "2" and blas == [2]  # the user's variable, not par's budget
        assert omp == str(budget)


def test_thread_backend_limits_the_parent_only_during_the_call():
    before = blas_threads()
    with parallel_config(backend="threading", inner_max_num_threads=1):
        out = Parallel(n_jobs=2)(delayed(lambda _: blas_threads())(i) for i in range(2))
    assert out == [[1], [1]]
    assert blas_threads() == before


def test_thread_backend_is_not_limited_by_default():
    before = blas_threads()
    out = Parallel(n_jobs=2, backend="threading")(delayed(lambda _: blas_threads())(i) for i in range(2))
    assert out == [before, before]
