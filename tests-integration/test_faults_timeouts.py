"""Fault injection: a stuck task with ``timeout=``.

A Python loop, ``time.sleep`` and a blocking C call (``libc.sleep`` through ctypes):
``TimeoutError`` must reach the caller within timeout + 2 s, and the stuck worker must
be stopped, not left spinning: process workers are killed; a pool thread running Python
code is interrupted (a thread blocked in C cannot be, it ends when the call returns).
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

import pytest
from par import Parallel, delayed

pytestmark = [pytest.mark.timeout(60), pytest.mark.skipif(not os.path.isdir("/proc"), reason="Linux /proc")]

TIMEOUT = 1.0
#: The issue's bound: TimeoutError within timeout + 2 s (measured on a warm pool).
SLACK = 2.0


def _quick(i):
    return i


def _stuck(i, kind, pid_dir):
    if i == 1:
        open(os.path.join(pid_dir, str(os.getpid())), "w").close()
        if kind == "loop":
            n = 0
            while True:
                n += 1
        elif kind == "sleep":
            time.sleep(60)
        elif kind == "c":
            ctypes.CDLL(None).sleep(60)
    return i


PROCESS_CASES = [
    pytest.param("loky", "loop", id="loky-loop"),
    pytest.param("loky", "sleep", id="loky-sleep", marks=pytest.mark.slow),
    pytest.param("loky", "c", id="loky-c_call", marks=pytest.mark.slow),
    pytest.param("multiprocessing", "c", id="mp-c_call"),
    pytest.param("multiprocessing", "loop", id="mp-loop", marks=pytest.mark.slow),
    pytest.param("multiprocessing", "sleep", id="mp-sleep", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("backend", "kind"), PROCESS_CASES)
def test_faults_stuck_task_times_out_and_its_worker_is_killed(backend, kind, tmp_path, probe):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    stuck_pids: set[int] = set()
    try:
        # Warm the pool first (loky's executor is reused by the next call): the timeout
        # then measures the stuck task, not the start of the workers.
        assert Parallel(n_jobs=2, backend=backend)(delayed(_quick)(i) for i in range(4)) == [0, 1, 2, 3]
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="timeout=1"):
            Parallel(n_jobs=2, backend=backend, timeout=TIMEOUT, batch_size=1)(
                delayed(_stuck)(i, kind, str(pid_dir)) for i in range(4)
            )
        elapsed = time.monotonic() - t0
        stuck_pids = {int(n) for n in os.listdir(pid_dir)}
        assert len(stuck_pids) == 1
        assert elapsed < TIMEOUT + SLACK, elapsed
        # The stuck worker is stopped, not left spinning or sleeping.
        assert probe.wait_until(lambda: not any(probe.alive(p) for p in stuck_pids), 10)
        # The next call works (on a fresh pool).
        assert Parallel(n_jobs=2, backend=backend)(delayed(_quick)(i) for i in range(4)) == [0, 1, 2, 3]
    finally:
        probe.kill_all(stuck_pids)


def _pool_threads():
    return [t for t in threading.enumerate() if t.name.startswith("par-threading-")]


def test_faults_stuck_python_loop_in_a_thread_is_interrupted(tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    before = set(_pool_threads())
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="timeout=1"):
        Parallel(n_jobs=2, backend="threading", timeout=TIMEOUT)(
            delayed(_stuck)(i, "loop", str(pid_dir)) for i in range(4)
        )
    assert time.monotonic() - t0 < TIMEOUT + SLACK
    # The thread spinning in the loop was interrupted: no pool thread is left running.
    deadline = time.monotonic() + 10
    while set(_pool_threads()) - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not set(_pool_threads()) - before


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sleep", "c"])
def test_faults_thread_blocked_in_c_times_out_and_ends_when_the_call_returns(kind, tmp_path):
    # A thread blocked in C cannot be interrupted: TimeoutError is raised on time, and the
    # thread (not spinning) exits as soon as its blocking call returns.
    def blocked(i):
        if i == 1:
            if kind == "sleep":
                time.sleep(3)
            else:
                ctypes.CDLL(None).sleep(3)
        return i

    before = set(_pool_threads())
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        Parallel(n_jobs=2, backend="threading", timeout=TIMEOUT)(delayed(blocked)(i) for i in range(4))
    assert time.monotonic() - t0 < TIMEOUT + SLACK
    deadline = time.monotonic() + 20
    while set(_pool_threads()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(_pool_threads()) - before
