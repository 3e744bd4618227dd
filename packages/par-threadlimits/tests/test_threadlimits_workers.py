"""Real worker processes: the environment before start, and the initializer after."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor

import par_threadlimits as tl
import pytest
from par_api import cpu_count

pytest.importorskip("numpy")

_LIMITED_APIS = ("openblas", "openmp", "mkl", "blis")

_REPORT = textwrap.dedent(
    """
    import json, os
    import par_threadlimits as tl
    report = {
        "libs": [i for i in tl.threadpool_report() if i["internal_api"] in LIMITED_APIS],
        "env": {k: os.environ.get(k) for k in (*tl.THREAD_LIMIT_VARS, "PAR_THREAD_BUDGET")},
        "nested_budget": tl.nested_budget(),
    }
    print(json.dumps(report))
    """
).replace("LIMITED_APIS", repr(_LIMITED_APIS))


def _base_env() -> dict[str, str]:
    """This process's environment without any thread-limit variable (the user sets none)."""
    drop = {*tl.THREAD_LIMIT_VARS, "PAR_THREAD_BUDGET", "PAR_THREAD_LIMITED_VARS"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run_child(code: str, env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _libs_or_skip(report: dict) -> list[dict]:
    if not report["libs"]:
        pytest.skip("numpy loaded no BLAS/OpenMP library that threadpoolctl controls")
    return report["libs"]


@pytest.mark.timeout(60)
def test_threadlimits_worker_env_reaches_native_pools() -> None:
    n_jobs = max(cpu_count(), 2)  # as many workers as CPUs (at least 2): budget 1
    budget = tl.thread_budget(n_jobs)
    assert budget == 1
    env = {**_base_env(), **tl.worker_env(n_jobs, environ=_base_env())}
    report = _run_child("import numpy\n" + _REPORT, env)
    for lib in _libs_or_skip(report):
        assert lib["num_threads"] == budget, lib
    assert report["env"]["OMP_NUM_THREADS"] == str(budget)
    assert report["nested_budget"] == budget


@pytest.mark.timeout(60)
def test_threadlimits_worker_env_user_variable_wins_in_child() -> None:
    user_env = {**_base_env(), "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    env = {**user_env, **tl.worker_env(1, inner_max_num_threads=1, environ=user_env)}
    report = _run_child("import numpy\n" + _REPORT, env)
    libs = _libs_or_skip(report)
    assert report["env"]["OPENBLAS_NUM_THREADS"] == "2"
    assert report["env"]["OMP_NUM_THREADS"] == "1"
    if os.cpu_count() and os.cpu_count() >= 2:  # libraries cap their variable at the core count
        for lib in libs:
            if lib["internal_api"] in ("openblas", "mkl"):
                assert lib["num_threads"] == 2, lib


@pytest.mark.timeout(60)
def test_threadlimits_initializer_limits_already_loaded_library() -> None:
    """A worker that loaded numpy before it got its budget (forked or reused)."""
    code = textwrap.dedent(
        """
        import numpy
        import par_threadlimits as tl
        before = [i["num_threads"] for i in tl.threadpool_report()]
        tl.worker_initializer(1)
        first = [i["num_threads"] for i in tl.threadpool_report()]
        tl.worker_initializer(3)   # a new limit for a reused worker: re-limited
        """
    ) + _REPORT.replace(
        "print(json.dumps(report))", "report.update(before=before, first=first); print(json.dumps(report))"
    )
    report = _run_child(code, _base_env())
    libs = _libs_or_skip(report)
    assert set(report["first"]) == {1}
    for lib in libs:
        assert lib["num_threads"] == 3, lib
    assert report["env"]["OPENBLAS_NUM_THREADS"] == "3"  # par's own value, replaced
    assert report["nested_budget"] == 3


@pytest.mark.timeout(60)
def test_threadlimits_initializer_respects_user_variable() -> None:
    env = {**_base_env(), "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "BLIS_NUM_THREADS": "1"}
    code = "import numpy\nimport par_threadlimits as tl\ntl.worker_initializer(3)\n" + _REPORT
    report = _run_child(code, env)
    for lib in _libs_or_skip(report):
        if lib["internal_api"] in ("openblas", "mkl", "blis"):
            assert lib["num_threads"] == 1, lib
    assert report["env"]["OPENBLAS_NUM_THREADS"] == "1"
    assert report["env"]["OMP_NUM_THREADS"] == "3"


def test_threadlimits_initializer_none_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAR_THREAD_BUDGET", raising=False)
    tl.worker_initializer(None)
    assert "PAR_THREAD_BUDGET" not in os.environ
    with pytest.raises(ValueError, match="limit"):
        tl.worker_initializer(0)


@pytest.mark.timeout(60)
def test_threadlimits_initializer_in_spawned_pool_worker() -> None:
    """A concurrent.futures spawn worker with the initializer: a library loaded by a
    task after start-up reads the variables the initializer set."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=1, mp_context=ctx, initializer=tl.worker_initializer, initargs=(1,)
    ) as pool:
        # eval is picklable by reference; test functions are not importable in the child.
        libs = pool.submit(
            eval, "__import__('numpy') and __import__('par_threadlimits').threadpool_report()"
        ).result(timeout=60)
        budget = pool.submit(eval, "__import__('par_threadlimits').nested_budget()").result(timeout=60)
    assert budget == 1
    libs = [i for i in libs if i["internal_api"] in _LIMITED_APIS]
    if not libs:
        pytest.skip("numpy loaded no BLAS/OpenMP library that threadpoolctl controls")
    for lib in libs:
        assert lib["num_threads"] == 1, lib


@pytest.mark.timeout(60)
@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="the start environment is read from /proc")
def test_threadlimits_initializer_skips_threadpoolctl_when_started_with_the_budget() -> None:
    """A worker started with the budget in its environment (loky passes worker_env() to
    the new process) has nothing to re-limit: no threadpoolctl and no scan of its
    libraries. A worker whose variables were set after it started (multiprocessing's
    initializer, a forked worker holding the parent's libraries) is still scanned."""
    code = textwrap.dedent(
        """
        import json, os, sys
        sys.modules.pop("threadpoolctl", None)
        import par_threadlimits as tl
        if sys.argv[1] == "after-start":
            os.environ.update(tl.worker_env(2, n_cpus=4))
        tl.worker_initializer(2)
        print(json.dumps({"threadpoolctl": "threadpoolctl" in sys.modules, "budget": tl.nested_budget()}))
        """
    )
    started = {**_base_env(), **tl.worker_env(2, n_cpus=4)}
    for how, env, scanned in (("at-start", started, False), ("after-start", _base_env(), True)):
        proc = subprocess.run(
            [sys.executable, "-c", code, how], env=env, capture_output=True, text=True, timeout=50, check=False
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"threadpoolctl": scanned, "budget": 2}, how
