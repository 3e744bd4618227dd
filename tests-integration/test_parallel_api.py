"""End-to-end behaviour of ``par.Parallel`` as the spec and the Parallel issue describe."""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from math import sqrt

import par
import pytest
from par import Parallel, delayed, parallel_backend, parallel_config

BACKENDS = ["loky", "threading", "multiprocessing", "sequential"]


def square(x):
    return x * x


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"bad value {x}")
    return x


def pid_and_value(x):
    return os.getpid(), x


def nested_inner(x):
    # a Parallel inside a task: uses the nested backend chosen by the outer one
    inner = Parallel()
    return type(inner._backend).__name__, inner._nested_cap, sum(inner(delayed(square)(i) for i in range(x)))


def end_after_marker(x, marker):
    """Task 0 waits (at most 30 s) for the marker that any other task writes as it ends."""
    if x == 0:
        deadline = time.monotonic() + 30
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
    else:
        with open(marker, "a"):
            pass
    return x


def sleep_then(x, seconds):
    time.sleep(seconds)
    return x


def test_public_names():
    for name in [
        "Parallel",
        "delayed",
        "parallel_config",
        "parallel_backend",
        "register_parallel_backend",
        "effective_n_jobs",
        "cpu_count",
        "wrap_non_picklable_objects",
        "dump",
        "load",
        "ParallelBackendBase",
        "WorkerDiedError",
    ]:
        assert hasattr(par, name), name
    assert issubclass(par.WorkerDiedError, concurrent.futures.process.BrokenProcessPool)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("return_as", ["list", "generator"])
def test_results_in_order(backend, return_as):
    out = Parallel(n_jobs=2, backend=backend, return_as=return_as)(delayed(square)(i) for i in range(50))
    assert list(out) == [i * i for i in range(50)]


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_generator_unordered_yields_all(backend, tmp_path):
    # Task 0 ends only after another task has (a marker file), then 0.3 s more: a second
    # worker that starts late on a loaded machine cannot make task 0 come first.
    marker = str(tmp_path / "another-task-ended")
    out = Parallel(n_jobs=2, backend=backend, return_as="generator_unordered")(
        delayed(end_after_marker)(i, marker) for i in range(6)
    )
    got = list(out)
    assert sorted(got) == list(range(6))
    assert got[0] != 0  # the slow first task does not hold back the others


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_error_reraised_with_type(backend):
    with pytest.raises(ValueError, match="bad value 3"):
        Parallel(n_jobs=2, backend=backend)(delayed(fail_on)(i, 3) for i in range(20))


def test_prefer_threads_and_require_sharedmem():
    p = Parallel(n_jobs=2, prefer="threads")
    assert p._backend.uses_threads
    shared = set()
    Parallel(n_jobs=2, require="sharedmem")(delayed(shared.add)(i) for i in range(5))
    assert shared == set(range(5))
    with parallel_config(backend="loky", n_jobs=2):
        p = Parallel(require="sharedmem")
        assert p._backend.supports_sharedmem
        assert p.n_jobs == 2  # joblib drops to 1 here; par keeps the configured n_jobs
    with pytest.raises(ValueError, match="sharedmem"):
        Parallel(backend="loky", require="sharedmem")


def test_config_values_used_for_unset_parameters():
    with parallel_config(backend="threading", n_jobs=3, verbose=0):
        p = Parallel()
        assert p.n_jobs == 3 and type(p._backend).__name__ == "ThreadingBackend"
        assert Parallel(n_jobs=1).n_jobs == 1
    with parallel_backend("threading"):
        assert Parallel().n_jobs == -1


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(n_jobs=0), ValueError, "n_jobs"),
        (dict(n_jobs="two"), ValueError, "n_jobs"),  # joblib: could not be converted to int
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(return_as="dict"), ValueError, "return_as"),
        (dict(backend="nope"), ValueError, "nope"),
        (dict(pre_dispatch="os.system('echo pwned')"), ValueError, "pre_dispatch"),
        (dict(timeout=-1), ValueError, "timeout"),
        (dict(timeout="soon"), (TypeError, ValueError), "timeout"),
        (dict(prefer="gpu"), ValueError, "prefer"),
        (dict(require="fast"), ValueError, "require"),
        (dict(mmap_mode="x"), ValueError, "mmap_mode"),
        (dict(max_nbytes="lots"), ValueError, "max_nbytes"),
        (dict(verbose=-1), ValueError, "verbose"),
    ],
)
def test_bad_parameters(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Parallel(**kwargs)


def test_context_manager_reuses_workers_and_recovers_after_error():
    with Parallel(n_jobs=2, backend="loky") as parallel:
        pids1 = {pid for pid, _ in parallel(delayed(pid_and_value)(i) for i in range(20))}
        with pytest.raises(ValueError):
            parallel(delayed(fail_on)(i, 5) for i in range(50))
        out = parallel(delayed(square)(i) for i in range(7))
        assert out == [i * i for i in range(7)]  # nothing of the aborted call leaks in
        pids2 = {pid for pid, _ in parallel(delayed(pid_and_value)(i) for i in range(20))}
    assert os.getpid() not in pids1
    assert pids1 and pids2


def test_calling_a_running_instance_raises():
    p = Parallel(n_jobs=2, backend="threading", return_as="generator")
    gen = p(delayed(square)(i) for i in range(10))
    with pytest.raises(RuntimeError, match="already running"):
        p(delayed(square)(i) for i in range(3))
    assert list(gen) == [i * i for i in range(10)]
    assert list(p(delayed(square)(i) for i in range(3))) == [0, 1, 4]


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_timeout_raises_builtin_timeout_error(backend):
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        Parallel(n_jobs=2, backend=backend, timeout=0.5)(
            delayed(sleep_then)(i, 3 if i == 1 else 0) for i in range(4)
        )
    assert time.monotonic() - t0 < 3.0 + 2.5


def test_worker_death_reports_and_next_call_works():
    with pytest.raises(par.WorkerDiedError) as info:
        Parallel(n_jobs=2, backend="loky")(delayed(os._exit)(3) for _ in range(2))
    assert "worker" in str(info.value).lower()
    assert Parallel(n_jobs=2, backend="loky")(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]


def test_nested_parallel_inside_process_worker_uses_threads_within_budget():
    out = Parallel(n_jobs=2, backend="loky")(delayed(nested_inner)(5) for _ in range(2))
    for backend_name, cap, total in out:
        assert total == sum(i * i for i in range(5))
        assert backend_name in ("ThreadingBackend", "SequentialBackend")
        assert cap is not None and cap * 2 <= max(par.cpu_count(), 2)


def test_nested_parallel_inside_threads_is_sequential():
    out = Parallel(n_jobs=2, backend="threading")(delayed(nested_inner)(4) for _ in range(2))
    assert all(name == "SequentialBackend" for name, _, _ in out)


def test_effective_n_jobs():
    assert par.effective_n_jobs(1) == 1
    assert par.effective_n_jobs(-1) == par.cpu_count()
    with parallel_config(backend="threading", n_jobs=3):
        assert par.effective_n_jobs(None) == 3


def test_initializer_runs_in_each_worker(tmp_path):
    marker = tmp_path / "init"

    out = Parallel(n_jobs=2, backend="loky", initializer=_touch, initargs=(str(marker),))(
        delayed(os.path.exists)(str(marker)) for _ in range(4)
    )
    assert out == [True] * 4


def _touch(path):
    with open(path, "a"):
        pass


def test_verbose_output(capsys):
    Parallel(n_jobs=2, backend="threading", verbose=10)(delayed(square)(i) for i in range(10))
    err = capsys.readouterr().err
    assert "[Parallel(n_jobs=2)]: Done  10 out of  10 | elapsed:" in err
    assert err.rstrip().endswith("finished")


def test_repr():
    assert repr(Parallel(n_jobs=2)) == "Parallel(n_jobs=2)"


def test_no_threads_left_after_threading_calls(no_thread_leak):
    for _ in range(3):
        Parallel(n_jobs=2, backend="threading")(delayed(square)(i) for i in range(10))


def test_concurrent_parallel_calls_from_threads():
    results = {}

    def work(k):
        results[k] = Parallel(n_jobs=2, backend="threading")(delayed(square)(i + k) for i in range(20))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {k: [(i + k) ** 2 for i in range(20)] for k in range(4)}


def test_sqrt_example():
    assert Parallel(n_jobs=2)(delayed(sqrt)(i**2) for i in range(10)) == [float(i) for i in range(10)]


# -- max_nbytes: one rule (par_api.parse_nbytes), the same on every backend and n_jobs --
@pytest.mark.parametrize("max_nbytes", ["1e6", 1e6, "1M", "500k", 10**6, None])
@pytest.mark.parametrize(("backend", "n_jobs"), [("loky", 2), ("multiprocessing", 2), ("threading", 2), ("loky", 1)])
def test_max_nbytes_accepted_at_construction_works_when_called(max_nbytes, backend, n_jobs):
    np = pytest.importorskip("numpy")
    big = np.arange(200_000, dtype=np.float64)  # 1.6 MB: above every threshold here
    out = Parallel(n_jobs=n_jobs, backend=backend, max_nbytes=max_nbytes)(delayed(np.sum)(big) for _ in range(3))
    assert out == [big.sum()] * 3


@pytest.mark.parametrize("max_nbytes", ["lots", "1X", -1, "-1M", float("inf"), "nan", True, [1]])
def test_a_bad_max_nbytes_fails_at_construction_naming_the_parameter(max_nbytes):
    with pytest.raises((TypeError, ValueError), match="max_nbytes"):
        Parallel(n_jobs=2, max_nbytes=max_nbytes)
    with pytest.raises((TypeError, ValueError), match="max_nbytes"):
        with parallel_config(max_nbytes=max_nbytes):
            pass
