"""Worker recycling: ``max_tasks_per_child`` and ``max_worker_memory`` on the process
backends (loky and multiprocessing), within a call, across the calls of a ``with
Parallel`` block and with loky's reused pool."""

from __future__ import annotations

import collections
import os
import warnings

import pytest
from par import Parallel, delayed, parallel_config, worker_state

pytestmark = pytest.mark.timeout(180)

BACKENDS = ["loky", "multiprocessing"]
BLOCK = 30 * 1024 * 1024


def whoami(i):
    return os.getpid()


def leak(i):
    """Keep 30 MB more in this worker, for ever (pages touched, so resident)."""
    kept = worker_state().setdefault("kept", [])
    kept.append(bytearray(b"\x01") * BLOCK)
    return os.getpid(), len(kept)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_tasks_per_child_counts_tasks_across_calls_of_a_block(backend):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning about workers stopping
        with Parallel(n_jobs=2, backend=backend, max_tasks_per_child=3, batch_size=1) as parallel:
            pids = parallel(delayed(whoami)(i) for i in range(12))
            pids += parallel(delayed(whoami)(i) for i in range(12))
    per_worker = collections.Counter(pids)
    assert max(per_worker.values()) <= 3, per_worker
    assert len(per_worker) >= 8  # 24 tasks, at most 3 each
    assert os.getpid() not in per_worker


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_tasks_per_child_counts_the_tasks_of_batches(backend):
    # Batches of 4 tasks, limit 4: each worker runs exactly one batch.
    pids = Parallel(n_jobs=2, backend=backend, max_tasks_per_child=4, batch_size=4)(
        delayed(whoami)(i) for i in range(24)
    )
    per_worker = collections.Counter(pids)
    assert set(per_worker.values()) == {4}, per_worker


def test_max_tasks_per_child_with_the_reused_loky_pool_and_parallel_config():
    with parallel_config(backend="loky", max_tasks_per_child=2):
        first = Parallel(n_jobs=2, batch_size=1)(delayed(whoami)(i) for i in range(3))
        second = Parallel(n_jobs=2, batch_size=1)(delayed(whoami)(i) for i in range(3))
    per_worker = collections.Counter(first + second)
    assert max(per_worker.values()) <= 2, per_worker


def test_without_limits_workers_are_kept():
    with Parallel(n_jobs=2, backend="loky", batch_size=1) as parallel:
        pids = parallel(delayed(whoami)(i) for i in range(20))
    assert len(set(pids)) <= 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_worker_memory_replaces_a_swollen_worker(backend):
    limit = 150 * 1024 * 1024
    out = Parallel(n_jobs=2, backend=backend, max_worker_memory="150M", batch_size=1)(
        delayed(leak)(i) for i in range(16)
    )
    assert len(out) == 16  # every task succeeded
    kept_per_worker = collections.defaultdict(int)
    for pid, kept in out:
        kept_per_worker[pid] = max(kept_per_worker[pid], kept)
    # A worker leaves as soon as its memory passes the limit: it never holds more than
    # the limit's worth of 30 MB blocks plus the one that took it past.
    assert max(kept_per_worker.values()) <= limit // BLOCK + 1, kept_per_worker
    assert len(kept_per_worker) >= 16 // (limit // BLOCK + 1)


def test_memory_limit_default_leaves_workers_alone():
    with Parallel(n_jobs=2, backend="multiprocessing", batch_size=1) as parallel:
        out = parallel(delayed(leak)(i) for i in range(6))
    assert len({pid for pid, _ in out}) <= 2


@pytest.mark.parametrize(("limit", "expected"), [(10, 10), (100, 50), (67, 1), (1, 1)])
def test_auto_batches_divide_max_tasks_per_child(limit, expected):
    p = Parallel(n_jobs=2, backend="loky", max_tasks_per_child=limit)
    assert p._batch_size_for(p._backend) == expected
    assert (
        Parallel(n_jobs=2, backend="loky", batch_size=7, max_tasks_per_child=limit)._batch_size_for(
            p._backend
        )
        == 7
    )


def test_max_worker_memory_sends_one_task_per_batch():
    p = Parallel(n_jobs=2, backend="loky", max_worker_memory="1G", max_tasks_per_child=10)
    assert p._batch_size_for(p._backend) == 1
    assert Parallel(n_jobs=2, backend="loky", max_worker_memory="1G", batch_size=5)._batch_size_for(p._backend) == 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_auto_batching_runs_exactly_max_tasks_per_child(backend):
    pids = Parallel(n_jobs=2, backend=backend, max_tasks_per_child=10)(delayed(whoami)(i) for i in range(100))
    assert set(collections.Counter(pids).values()) == {10}
