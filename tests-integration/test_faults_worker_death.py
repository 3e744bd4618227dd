"""Fault injection: a worker process dies in the middle of a call.

``os._exit(1)``, ``SIGKILL``, a segfault (``ctypes.string_at(0)``) and a memory limit
(``resource.setrlimit`` inside the task). The caller must get, within seconds, an error
naming what happened (exit code or signal and its likely cause) and which task was
running in the dead worker (index and function); every worker of the broken pool and
every temp file must be gone, and the next call must work on fresh workers.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from par import Parallel, WorkerDiedError, delayed

pytestmark = [pytest.mark.timeout(60), pytest.mark.skipif(not os.path.isdir("/proc"), reason="Linux /proc")]

#: A generous bound on "the caller gets an exception within seconds" (a loaded CI machine).
ERROR_WITHIN = 30.0
#: Dead workers' siblings must be gone within this many seconds.
GONE_WITHIN = 10.0

DIE_AT = 3


def _die(i, how, array, pid_dir):
    """Record this worker's pid, then die at task DIE_AT in the way asked."""
    open(os.path.join(pid_dir, str(os.getpid())), "w").close()
    if i == DIE_AT:
        if how == "exit":
            os._exit(1)
        elif how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "segfault":
            import ctypes

            ctypes.string_at(0)
        elif how == "memory":
            import resource

            with open("/proc/self/status") as f:
                vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
            limit = vm + 64 * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
            blob = bytearray(512 * 2**20)  # over the limit: MemoryError
            return len(blob)
    time.sleep(0.02)
    return float(array[i])


def _pids(pid_dir):
    return {int(n) for n in os.listdir(pid_dir)}


EXPECTED = {
    # how: (exit code text, likely-cause words)
    "exit": ("exited with code 1", "os._exit(1)"),
    "sigkill": ("SIGKILL", "out-of-memory"),
    "segfault": ("SIGSEGV", "native crash"),
}

CASES = [
    pytest.param("loky", "exit", id="loky-os_exit"),
    pytest.param("loky", "sigkill", id="loky-sigkill"),
    pytest.param("loky", "segfault", id="loky-segfault"),
    pytest.param("multiprocessing", "sigkill", id="mp-sigkill"),
    pytest.param("multiprocessing", "exit", id="mp-os_exit"),
    pytest.param("multiprocessing", "segfault", id="mp-segfault"),
]


@pytest.mark.parametrize(("backend", "how"), CASES)
def test_faults_worker_death_is_named_and_cleaned_up(backend, how, tmp_path, probe):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    temp = tmp_path / "memmap"
    array = np.arange(4000.0)  # 32 kB > max_nbytes: sent as a memmap in `temp`
    children_before = probe.children()
    t0 = time.monotonic()
    with pytest.raises(WorkerDiedError) as info:
        Parallel(n_jobs=2, backend=backend, batch_size=1, max_nbytes=1000, temp_folder=temp)(
            delayed(_die)(i, how, array, str(pid_dir)) for i in range(12)
        )
    elapsed = time.monotonic() - t0
    err = info.value
    message = str(err)
    code_text, cause_words = EXPECTED[how]
    assert code_text in message and cause_words in message, message
    assert f"task {DIE_AT} (function _die)" in message, message
    assert err.task == f"task {DIE_AT} (function _die)"
    assert err.pid in _pids(pid_dir)
    assert elapsed < ERROR_WITHIN
    # Every worker of the broken pool is gone, and so are the memmapped arrays.
    workers = _pids(pid_dir)
    try:
        assert probe.wait_until(lambda: not any(probe.alive(p) for p in workers), GONE_WITHIN), [
            p for p in workers if probe.alive(p)
        ]
        # nor any other process started for the call (a worker that ran no task)
        assert probe.wait_until(lambda: probe.children() <= children_before, GONE_WITHIN)
    finally:
        probe.kill_all(workers)
    assert not temp.exists() or probe.files(temp) == []
    # The next call works, on fresh workers.
    pid_dir2 = tmp_path / "pids2"
    pid_dir2.mkdir()
    out = Parallel(n_jobs=2, backend=backend, max_nbytes=1000, temp_folder=temp)(
        delayed(_die)(i, "none", array, str(pid_dir2)) for i in range(6)
    )
    assert out == [float(i) for i in range(6)]
    assert not (_pids(pid_dir2) & workers)


def test_faults_worker_death_in_a_larger_batch_names_the_task_range(tmp_path, probe):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    with pytest.raises(WorkerDiedError) as info:
        Parallel(n_jobs=2, backend="loky", batch_size=4)(
            delayed(_die)(i, "sigkill", np.zeros(16), str(pid_dir)) for i in range(16)
        )
    assert "tasks 0 to 3 (function _die)" in str(info.value), str(info.value)
    probe.kill_all(_pids(pid_dir))


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_faults_memory_limit_in_a_task_is_reported_and_the_pool_replaced(backend, tmp_path, probe):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    temp = tmp_path / "memmap"
    array = np.arange(4000.0)
    t0 = time.monotonic()
    with pytest.raises(MemoryError) as info:
        Parallel(n_jobs=2, backend=backend, batch_size=1, max_nbytes=1000, temp_folder=temp)(
            delayed(_die)(i, "memory", array, str(pid_dir)) for i in range(8)
        )
    assert time.monotonic() - t0 < ERROR_WITHIN
    message = str(info.value)
    assert "ran out of memory" in message and f"task {DIE_AT}" in message and "_die" in message, message
    # The worker that set the limit must not serve later calls: the pool was replaced.
    workers = _pids(pid_dir)
    try:
        assert probe.wait_until(lambda: not any(probe.alive(p) for p in workers), GONE_WITHIN)
    finally:
        probe.kill_all(workers)
    assert not temp.exists() or probe.files(temp) == []
    pid_dir2 = tmp_path / "pids2"
    pid_dir2.mkdir()
    out = Parallel(n_jobs=2, backend=backend)(
        delayed(_die)(i, "none", array, str(pid_dir2)) for i in range(6)
    )
    assert out == [float(i) for i in range(6)]
