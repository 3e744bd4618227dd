"""Library code written for joblib behaves the same on par (issue 22).

Each test runs the same script twice, once with ``from joblib import ...`` and once
with ``from par import ...``, each in a fresh interpreter (so that neither library's
pools, configuration or warnings filters leak into the other or into this process), and
compares what the two printed (a JSON document of observed outcomes).

joblib is a *test-only reference* here: it is never a dependency of a par package.
hatch.toml adds ``joblib==1.6.0`` to the hatch-test environment's extra-dependencies
for these tests; where joblib is missing (a package's own test run, or another
environment), the module is skipped with ``pytest.importorskip``.

Where par deliberately differs (docs/migrating-from-joblib.md), the script prints only
what both must agree on (the error type and joblib's key phrase, not the full text).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("joblib")

pytestmark = pytest.mark.timeout(120)

_PRELUDE = """
import json, sys, warnings
LIB = sys.argv[1]
if LIB == "joblib":
    from joblib import Parallel, delayed, parallel_backend, parallel_config
else:
    from par import Parallel, delayed, parallel_backend, parallel_config
OUT = {}
def error_of(f):
    try:
        f()
    except Exception as exc:
        # the nearest built-in type: par's own classes subclass the built-in joblib raises
        kind = next(k for k in type(exc).__mro__ if k.__module__ == "builtins")
        return kind.__name__, str(exc)
    return None, None
"""


def run_both(body: str) -> tuple[dict, dict]:
    """Run ``body`` (after the prelude) with joblib and with par; return both ``OUT``s."""
    script = _PRELUDE + textwrap.dedent(body) + "\nprint('@@' + json.dumps(OUT))\n"
    outs = []
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    for lib in ("joblib", "par"):
        proc = subprocess.run(
            [sys.executable, "-c", script, lib], capture_output=True, text=True, timeout=100, env=env
        )
        assert proc.returncode == 0, f"{lib} run failed:\n{proc.stdout}\n{proc.stderr}"
        line = [x for x in proc.stdout.splitlines() if x.startswith("@@")][-1]
        outs.append(json.loads(line[2:]))
    return outs[0], outs[1]


def assert_same(body: str) -> dict:
    joblib_out, par_out = run_both(body)
    assert par_out == joblib_out, f"joblib: {joblib_out}\npar:    {par_out}"
    return par_out


# -- 1. an explicit None means "not set" --------------------------------------------------


def test_n_jobs_none_takes_the_enclosing_configuration():
    out = assert_same(
        """
        import os
        OUT["plain"] = Parallel(n_jobs=None).n_jobs
        with parallel_config(backend="threading", n_jobs=2):
            OUT["threading"] = Parallel(n_jobs=None).n_jobs
        with parallel_config(n_jobs=2):
            OUT["cfg"] = Parallel(n_jobs=None).n_jobs
            # the tasks run outside the caller's process
            pids = Parallel(n_jobs=None)(delayed(os.getpid)() for _ in range(4))
            OUT["in_caller"] = all(p == os.getpid() for p in pids)
            with parallel_config(n_jobs=None):
                OUT["inner_none"] = Parallel().n_jobs
        with parallel_config(prefer="threads", n_jobs=2):
            # prefer=None / require=None / temp_folder=None / backend=None: not set either
            p = Parallel(n_jobs=None, backend=None, prefer=None, require=None, temp_folder=None)
            OUT["prefer_none_pids"] = set(p(delayed(os.getpid)() for _ in range(4))) == {os.getpid()}
        """
    )
    assert out["threading"] == 2 and out["in_caller"] is False


# -- 4. n_jobs=1 is a plain for-loop ------------------------------------------------------


def test_one_job_reads_one_item_runs_it_then_reads_the_next():
    out = assert_same(
        """
        events = []
        def produce(n):
            for i in range(n):
                events.append(f"read {i}")
                yield delayed(events.append)(f"run {i}")
        Parallel(n_jobs=1)(produce(4))
        OUT["list"] = events[:]
        events.clear()
        gen = Parallel(n_jobs=1, return_as="generator")(produce(3))
        OUT["generator_created"] = events[:]  # nothing read or run before the first next()
        next(gen)
        OUT["after_first_next"] = events[:]
        list(gen)
        OUT["generator"] = events[:]
        """
    )
    assert out["list"] == ["read 0", "run 0", "read 1", "run 1", "read 2", "run 2", "read 3", "run 3"]
    assert out["generator_created"] == []


# -- 2. the context managers yield what joblib's yield -----------------------------------


def test_context_managers_yield_the_configuration_and_the_backend():
    assert_same(
        """
        with parallel_config(backend="threading", n_jobs=3) as cfg:
            OUT["cfg_is_dict"] = isinstance(cfg, dict)
            OUT["n_jobs"] = cfg["n_jobs"]
            OUT["backend"] = type(cfg["backend"]).__name__
            OUT["level"] = cfg["backend"].nesting_level
        with parallel_backend("threading", n_jobs=2) as (backend, n_jobs):
            OUT["pb"] = [type(backend).__name__, n_jobs, backend.nesting_level]
        def level():
            if LIB == "joblib":
                from joblib.parallel import get_active_backend
                return get_active_backend()[0].nesting_level
            from par_api import get_active_config
            return get_active_config().backend.nesting_level
        OUT["in_task"] = Parallel(n_jobs=2, backend="threading")(delayed(level)() for _ in range(2))
        """
    )


# -- 3. nested process backends warn and run sequentially ---------------------------------


def test_nested_process_backends_warn_and_run_sequentially():
    assert_same(
        """
        import os, re
        SEEN = []
        def hook(message, *args, **kwargs):
            SEEN.append(str(message))
        def inner(backend):
            # catch_warnings is not thread-safe: a process-wide hook instead
            warnings.simplefilter("always")
            warnings.showwarning = hook
            start = len(SEEN)
            pids = Parallel(n_jobs=2, backend=backend)(delayed(os.getpid)() for _ in range(3))
            texts = SEEN[start:]
            phrase = [bool(re.search(r"cannot be (nested|called in a multiprocessing).*setting n_jobs=1", t))
                      for t in texts]
            return any(phrase), set(pids) == {os.getpid()}
        # in a thread of the threading backend
        OUT["mp_below_threads"] = Parallel(n_jobs=2, backend="threading")(
            delayed(inner)("multiprocessing") for _ in range(2))
        OUT["loky_below_threads"] = Parallel(n_jobs=2, backend="threading")(
            delayed(inner)("loky") for _ in range(2))
        # inside a daemonic multiprocessing worker
        OUT["mp_in_mp"] = Parallel(n_jobs=2, backend="multiprocessing")(
            delayed(inner)("multiprocessing") for _ in range(2))
        OUT["loky_in_mp"] = Parallel(n_jobs=2, backend="multiprocessing")(
            delayed(inner)("loky") for _ in range(2))
        # an ordinary user thread is not nested: no warning
        import threading
        res = []
        t = threading.Thread(target=lambda: res.append(inner("loky")[0]))
        t.start(); t.join()
        OUT["user_thread_warns"] = res
        """
    )


# -- 5. timeout where it cannot apply --------------------------------------------------


def test_timeout_with_one_job_or_the_sequential_backend_warns():
    assert_same(
        """
        for name, kw in [("n_jobs=1", dict(n_jobs=1)), ("sequential", dict(n_jobs=2, backend="sequential"))]:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                res = Parallel(timeout=5, **kw)(delayed(abs)(-i) for i in range(3))
            OUT[name] = [res, [("does not support timeout" in str(x.message), x.category.__name__) for x in w]]
        """
    )


# -- 6. byte order survives the memmapping path ----------------------------------------


def test_non_native_byte_order_arrays_keep_their_dtype():
    pytest.importorskip("numpy")
    assert_same(
        """
        import numpy as np
        def same(a):
            return a
        for size in (10, 300_000):  # below and above max_nbytes='1M'
            for dt in (">i4", "<i4", ">f8"):
                a = np.arange(size, dtype=dt)
                out = Parallel(n_jobs=2, backend="loky", max_nbytes="1M")(delayed(same)(a) for _ in range(2))
                OUT[f"{size}-{dt}"] = [[o.dtype.str, bool((o == a).all())] for o in out]
        """
    )


# -- 9. values joblib accepts -------------------------------------------------------------


def test_n_jobs_strings_of_ints_are_accepted():
    assert_same(
        """
        OUT["two"] = Parallel(n_jobs="2").n_jobs
        OUT["minus"] = Parallel(n_jobs="-1").n_jobs
        OUT["float"] = Parallel(n_jobs=2.5).n_jobs
        OUT["bad"] = error_of(lambda: Parallel(n_jobs="two"))[0]
        OUT["run"] = Parallel(n_jobs="2", backend="threading")(delayed(abs)(-i) for i in range(3))
        """
    )


# -- 10. error types and key phrases users match on -------------------------------------


def test_errors_keep_joblibs_type_and_key_phrase():
    assert_same(
        """
        import re
        for name, f in {
            "Parallel": lambda: Parallel(backend="nope"),
            "parallel_config": lambda: parallel_config(backend="nope"),
        }.items():
            kind, text = error_of(f)
            OUT[name] = [kind, bool(re.match(r"Invalid backend: nope, expected one of \\[", text))]
        kind, text = error_of(lambda: parallel_config(foo=1))
        OUT["stray_kw"] = [kind, "only supported when backend is not None" in text]
        kind, text = error_of(lambda: Parallel(prefer="x"))
        OUT["prefer"] = kind
        kind, text = error_of(lambda: Parallel(return_as="x"))
        OUT["return_as"] = kind
        kind, text = error_of(lambda: Parallel(batch_size=0))
        OUT["batch_size"] = [kind, "batch_size must be 'auto' or a positive int" in text]
        kind, text = error_of(lambda: Parallel(prefer="processes", require="sharedmem"))
        OUT["inconsistent"] = [kind, "inconsistent" in text]
        """
    )


# -- 7. the dask backend's documented options ---------------------------------------------


def test_dask_backend_options():
    pytest.importorskip("distributed")
    out = assert_same(
        """
        import distributed
        kind, text = error_of(lambda: parallel_config(backend="dask"))
        OUT["no_client"] = [kind, "first create a Dask Client" in text]
        def where(x, big):
            from distributed import get_worker
            return get_worker().address, len(big)
        big = list(range(1000))
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                      dashboard_address=None) as cluster, distributed.Client(cluster) as client:
            first = sorted(client.scheduler_info()["workers"])[0]
            with parallel_config(backend="dask", scatter=[big], workers=[first], retries=1,
                                 wait_for_workers_timeout=5):
                res = Parallel()(delayed(where)(i, big) for i in range(6))
            OUT["pinned"] = all(addr == first for addr, _ in res)
            OUT["lens"] = [n for _, n in res]
        """
    )
    assert out["no_client"] == ["ValueError", True]
    assert out["pinned"] is True and out["lens"] == [1000] * 6



def test_dask_waits_for_a_first_worker_and_scales_an_adaptive_cluster():
    """``wait_for_workers_timeout``: an adaptive cluster with no worker is asked for one
    (by a probe task), and a cluster that never gets one raises ``TimeoutError`` with
    joblib's key phrase."""
    pytest.importorskip("distributed")
    out = assert_same(
        """
        import distributed
        with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
            cluster.adapt(minimum=0, maximum=1)
            with distributed.Client(cluster) as client:
                with parallel_config(backend="dask", wait_for_workers_timeout=30):
                    OUT["adaptive"] = Parallel(n_jobs=-1)(delayed(abs)(-i) for i in range(4))
        with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
            with distributed.Client(cluster) as client:
                with parallel_config(backend="dask", wait_for_workers_timeout=1):
                    kind, text = error_of(lambda: Parallel(n_jobs=-1)(delayed(abs)(-i) for i in range(4)))
        OUT["none"] = [kind, text.split(".")[0]]
        """
    )
    assert out["adaptive"] == [0, 1, 2, 3]
    assert out["none"] == ["TimeoutError", "DaskDistributedBackend has no worker after 1 seconds"]

# -- 8. leaving early ---------------------------------------------------------------------


def test_leaving_a_threading_block_early_does_not_run_the_rest():
    out = assert_same(
        """
        import threading, time
        started = []
        lock = threading.Lock()
        def task(i):
            with lock:
                started.append(i)
            time.sleep(0.2)
            return i
        with Parallel(n_jobs=2, backend="threading", return_as="generator", pre_dispatch="all") as p:
            gen = p(delayed(task)(i) for i in range(30))
            OUT["first"] = next(gen)
        time.sleep(0.5)
        # the tasks not started when the block was left never run (and the script exits)
        OUT["most_skipped"] = len(started) < 15
        """
    )
    assert out["most_skipped"] is True


# -- found by joblib's own tests (tools/joblib_suite.py) ---------------------------------


def test_texts_that_joblibs_own_tests_match():
    assert_same(
        """
        import pickle, re
        for param in ("prefer", "require"):
            def use():
                with parallel_config(**{param: "wrong"}):  # joblib raises here, par when created
                    Parallel()
            kind, text = error_of(use)
            OUT[f"cfg_{param}"] = [kind, bool(re.match(f"{param}=wrong is not a valid backend (hint|constraint), expected one of", text))]
        # the warning for a timeout that cannot apply, word for word
        for timeout in (1, 0.5):
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                Parallel(n_jobs=1, timeout=timeout)(delayed(abs)(-i) for i in range(2))
            OUT[f"timeout_{timeout}"] = [str(x.message) for x in w if "timeout" in str(x.message)]
        class Unpicklable:
            def __reduce__(self):
                raise RuntimeError("123")
        try:
            Parallel(n_jobs=2, backend="loky")(delayed(id)(Unpicklable()) for _ in range(3))
        except pickle.PicklingError as exc:
            OUT["pickling"] = bool(re.search("the task to send", str(exc)))
        """
    )


def test_process_backend_inside_a_daemonic_dask_worker_warns_with_the_dask_work_arounds():
    pytest.importorskip("distributed")
    out = assert_same(
        """
        import distributed
        def inner(backend):
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                res = Parallel(n_jobs=2, backend=backend)(delayed(abs)(-i) for i in range(4))
            texts = [str(x.message) for x in w if "n_jobs=1" in str(x.message)]
            return res, len(texts), all("distributed.worker.daemon" in t for t in texts)
        if __name__ == "__main__":
            with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                          dashboard_address=None) as cluster, distributed.Client(cluster) as client:
                for backend in ("loky", "multiprocessing"):
                    OUT[backend] = client.submit(inner, backend, pure=False).result()
        """
    )
    assert out["loky"] == [[0, 1, 2, 3], 1, True] and out["multiprocessing"] == [[0, 1, 2, 3], 1, True]
