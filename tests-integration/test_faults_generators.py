"""Fault injection: a generator result abandoned half-way (``del``, ``close()``, ``break``).

The workers must be freed (process workers stopped, pool threads ended) and the
memmapped temp files removed, without consuming the rest of the input.
"""

from __future__ import annotations

import gc
import os
import threading
import time

import numpy as np
import pytest
from par import Parallel, delayed

pytestmark = [pytest.mark.timeout(60), pytest.mark.skipif(not os.path.isdir("/proc"), reason="Linux /proc")]


def _slow(i, array):
    time.sleep(0.02)
    return os.getpid(), float(array[i])


def _pool_threads():
    return {t for t in threading.enumerate() if t.name.startswith("par-threading-")}


def _consume_then_break(gen, n):
    """``for ... break`` in a function: the generator is dropped when it returns."""
    pids = set()
    for k, (pid, _value) in enumerate(gen):
        pids.add(pid)
        if k + 1 == n:
            break
    return pids


@pytest.mark.parametrize("how", ["del", "close", "break"])
@pytest.mark.parametrize("backend", ["loky", "threading", "multiprocessing"])
@pytest.mark.parametrize(
    "return_as", ["generator", pytest.param("generator_unordered", marks=pytest.mark.slow)]
)
def test_faults_abandoned_generator_frees_workers_and_temp_files(backend, how, return_as, tmp_path, probe):
    temp = tmp_path / "memmap"
    array = np.arange(5000.0)  # memmapped: max_nbytes below its size
    threads_before = _pool_threads()
    pulled = []

    def tasks():
        for i in range(200):
            pulled.append(i)
            yield delayed(_slow)(i, array)

    gen = Parallel(n_jobs=2, backend=backend, return_as=return_as, max_nbytes=1000, temp_folder=temp)(tasks())
    if how == "break":
        pids = _consume_then_break(gen, 3)
        del gen
    else:
        pids = set()
        for _ in range(3):
            pids.add(next(gen)[0])
        if how == "close":
            gen.close()
        else:
            del gen
            gc.collect()
    try:
        if backend != "threading":
            # the workers that ran the tasks are stopped
            assert probe.wait_until(lambda: not any(probe.alive(p) for p in pids), 10), pids
        else:
            assert probe.wait_until(lambda: not (_pool_threads() - threads_before), 10)
        assert probe.wait_until(lambda: not temp.exists() or probe.files(temp) == [], 10), probe.files(temp)
        assert len(pulled) < 200  # the rest of the input was not consumed
    finally:
        if backend != "threading":
            probe.kill_all(pids)
    # and a new call works
    assert Parallel(n_jobs=2, backend=backend)(delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]
