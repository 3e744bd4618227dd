"""Worker recycling (max_tasks_per_child / max_worker_memory) applied by the local
process backends, driven through TransportHooks as par does."""

from __future__ import annotations

import collections
import os
import pickle

import pytest
from par_api import BatchedCalls, Task, TransportHooks
from par_backends_local import _recycling
from par_backends_local.loky import LokyBackend
from par_backends_local.multiprocessing import MultiprocessingBackend

pytestmark = pytest.mark.timeout(120)


def test_pool_budget_is_an_int_that_ends_the_loop_once_leaving(monkeypatch):
    budget = _recycling.PoolBudget(2**62)
    assert isinstance(budget, int) and budget > 0
    assert 5 < budget  # the pool worker's ``completed < maxtasks``
    monkeypatch.setattr(_recycling, "_leaving", True)
    assert not (5 < budget)
    assert pickle.loads(pickle.dumps(budget)) == budget
    assert type(pickle.loads(pickle.dumps(budget))) is _recycling.PoolBudget


def test_steps_and_pool_maxtasks_follow_the_hooks():
    assert _recycling.worker_steps(None) == ()
    assert _recycling.worker_steps(TransportHooks()) == ()
    hooks = TransportHooks(max_tasks_per_child=3)
    assert _recycling.worker_steps(hooks) == ((_recycling.init_worker, (3, None)),)
    assert _recycling.pool_maxtasks(None, TransportHooks()) is None
    assert _recycling.pool_maxtasks(7, TransportHooks()) == 7
    assert type(_recycling.pool_maxtasks(7, hooks)) is _recycling.PoolBudget
    assert _recycling.pool_maxtasks(7, hooks) == 7


def test_after_batch_counts_tasks_and_checks_memory(monkeypatch):
    monkeypatch.setattr(_recycling, "_loky_call_queue", None)
    _recycling.init_worker(5, None)
    try:
        _recycling.after_batch(3)
        assert not _recycling.leaving()
        _recycling.after_batch(2)
        assert _recycling.leaving()
        _recycling.init_worker(None, 10)  # 10 bytes: any process is over
        assert not _recycling.leaving()
        _recycling.after_batch(1)
        assert _recycling.leaving()
        _recycling.init_worker(None, 1 << 50)
        _recycling.after_batch(1)
        assert not _recycling.leaving()
        # A batch that grew the worker by X leaves when one more X would pass the limit.
        used = _recycling.rss()
        if used is not None:
            monkeypatch.setattr(_recycling, "_last_rss", used - 60 * 2**20)
            monkeypatch.setattr(_recycling, "_max_memory", used + 50 * 2**20)
            _recycling.after_batch(1)
            assert _recycling.leaving()
    finally:
        _recycling.init_worker(None, None)
    assert not _recycling.active
    assert _recycling.rss() is None or _recycling.rss() > 0


def _pid():
    return os.getpid()


@pytest.mark.parametrize("backend_cls", [LokyBackend, MultiprocessingBackend])
def test_backends_replace_workers_after_n_tasks(backend_cls):
    backend = backend_cls()
    backend.configure(n_jobs=2, hooks=TransportHooks(max_tasks_per_child=2))
    try:
        outs = [backend.submit(BatchedCalls([Task(_pid, (), {})], None, i)) for i in range(12)]
        pids = [backend.retrieve_result_callback(out)[0] for out in outs]
    finally:
        backend.terminate()
    per_worker = collections.Counter(pids)
    assert max(per_worker.values()) <= 2, per_worker
    assert len(per_worker) >= 6
