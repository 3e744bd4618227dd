"""Endurance and concurrency (slow group).

- 1,000 consecutive calls (loky and threading, with memmapped arrays) leave the count of
  threads, file descriptors, child processes and temp files where it was, and resident
  memory within 10% of where it was after the first 10 calls.
- 8 threads each running their own ``Parallel`` at the same time (loky and threading,
  with memmapped arrays): every result right, no deadlock, nothing left behind.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from par import Parallel, delayed

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not os.path.isdir("/proc"), reason="Linux /proc"),
]

N_CALLS = 1000
WARMUP = 10
OS_THREADS_SLACK = 2


def _work(array, i):
    return float(array[i]) + i


def _settled(read, tries=40):
    """A reading that stayed the same over 3 samples 50 ms apart (threads that were
    joined may take a moment to leave /proc/self/task)."""
    last = [read() for _ in range(3)]
    for _ in range(tries):
        if len(set(last)) == 1:
            return last[0]
        time.sleep(0.05)
        last = [*last[1:], read()]
    return max(last)


def _snapshot(probe, temp):
    return {
        "python_threads": _settled(threading.active_count),
        "os_threads": _settled(probe.os_threads),
        "fds": _settled(probe.fds),
        "children": _settled(lambda: len(probe.children(helpers=True))),
        "temp_files": len(probe.files(temp)) if temp.exists() else 0,
        "rss_kb": probe.rss_kb(),
    }


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_faults_endurance_1000_calls_leak_nothing(backend, tmp_path, probe, record_property):
    temp = tmp_path / "memmap"
    array = np.arange(5000.0)  # 40 kB: memmapped (max_nbytes=1000) for process workers
    expected = [float(array[i]) + i for i in range(8)]
    parallel_kwargs = {"n_jobs": 2, "backend": backend, "max_nbytes": 1000, "temp_folder": temp}
    baseline = None
    for call in range(N_CALLS):
        assert Parallel(**parallel_kwargs)(delayed(_work)(array, i) for i in range(8)) == expected
        if call + 1 == WARMUP:
            baseline = _snapshot(probe, temp)
    final = _snapshot(probe, temp)
    record_property("baseline", baseline)
    record_property("final", final)
    print(f"\n{backend}: after {WARMUP} calls {baseline}\n{backend}: after {N_CALLS} calls {final}")
    assert baseline is not None
    for key in ("python_threads", "fds", "children", "temp_files"):
        assert final[key] <= baseline[key], (key, baseline, final)
    # OS threads also count threads that are not ours (the test runner's, native thread
    # pools): a little slack, far below what a per-call leak over 990 calls would add.
    assert final["os_threads"] <= baseline["os_threads"] + OS_THREADS_SLACK, (baseline, final)
    assert final["temp_files"] == 0
    assert final["rss_kb"] <= baseline["rss_kb"] * 1.10, (baseline, final)


def _thread_job(k, backend, temp):
    rng = np.random.default_rng(k)
    array = rng.random(20000)  # 160 kB: memmapped for process workers
    ok = []
    for _rep in range(3):
        out = Parallel(n_jobs=2, backend=backend, max_nbytes=1000, temp_folder=temp)(
            delayed(_work)(array, i) for i in range(k, k + 30)
        )
        ok.append(out == [float(array[i]) + i for i in range(k, k + 30)])
    # and one block reusing its pool for several calls
    with Parallel(n_jobs=2, backend=backend, max_nbytes=1000, temp_folder=temp) as parallel:
        for _rep in range(2):
            out = parallel(delayed(_work)(array, i) for i in range(20))
            ok.append(out == [float(array[i]) + i for i in range(20)])
    return all(ok)


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_faults_eight_threads_each_with_their_own_parallel(backend, tmp_path, probe):
    temp = tmp_path / "memmap"
    children_before = probe.children()
    threads_before = {t.ident for t in threading.enumerate()}
    with ThreadPoolExecutor(8, thread_name_prefix="faults-user") as pool:
        futures = [pool.submit(_thread_job, k, backend, temp) for k in range(8)]
        results = [f.result(timeout=200) for f in futures]  # a deadlock fails here
    assert results == [True] * 8
    # The threads are gone, and with them their executors' workers.
    assert probe.wait_until(lambda: probe.children() <= children_before, 20), (
        probe.children() - children_before
    )
    def new_threads():
        # par-output-forward, the accept thread of the process's log-forwarding server,
        # lives for the process once a call started it (documented, like loky's executor).
        return [
            t.name
            for t in threading.enumerate()
            if t.ident not in threads_before and t.name != "par-output-forward"
        ]

    assert probe.wait_until(lambda: not new_threads(), 10), new_threads()
    assert not temp.exists() or probe.files(temp) == []
