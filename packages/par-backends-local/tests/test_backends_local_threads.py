"""The sequential and threading backends, driven directly with batches and callbacks."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FuturesTimeoutError
from typing import Any

import pytest
from par_api import BatchedCalls, Task
from par_backends_local import SequentialBackend, ThreadingBackend


def batch(*calls: tuple[Any, ...]) -> BatchedCalls:
    return BatchedCalls([Task(call[0], tuple(call[1:]), {}) for call in calls])


class Recorder:
    """A completion callback that remembers each call."""

    def __init__(self) -> None:
        self.outs: list[Any] = []
        self.threads: list[int] = []
        self._cond = threading.Condition()

    def __call__(self, out: Any) -> None:
        with self._cond:
            self.outs.append(out)
            self.threads.append(threading.get_ident())
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 30) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.outs) >= n, timeout), (
                f"{len(self.outs)} of {n} callbacks"
            )


def _raise_key_error(key: str) -> None:
    raise KeyError(key)


# -- sequential --------------------------------------------------------------------------


def test_backends_sequential_runs_in_the_caller_thread() -> None:
    backend = SequentialBackend()
    assert backend.configure(n_jobs=-1) == 1
    rec = Recorder()
    out = backend.submit(batch((threading.get_ident,), (pow, 2, 5)), callback=rec)
    assert isinstance(out, Future) and out.done()
    assert rec.outs == [out] and rec.threads == [threading.get_ident()]
    assert backend.retrieve_result_callback(out) == [threading.get_ident(), 32]


def test_backends_sequential_delivers_the_exception_through_the_future() -> None:
    backend = SequentialBackend()
    backend.configure(1)
    rec = Recorder()
    out = backend.submit(batch((pow, 1, 1), (_raise_key_error, "k")), callback=rec)
    assert rec.outs == [out]
    with pytest.raises(KeyError, match="k"):
        backend.retrieve_result_callback(out)


# -- threading ---------------------------------------------------------------------------


@pytest.fixture
def threading_backend():
    before = threading.active_count()
    backend = ThreadingBackend()
    yield backend
    backend.terminate()
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before


def test_backends_threading_results_and_callbacks(threading_backend: ThreadingBackend) -> None:
    assert threading_backend.configure(n_jobs=2) == 2
    rec = Recorder()
    outs = [threading_backend.submit(batch((pow, i, 2), (abs, -i)), callback=rec) for i in range(20)]
    rec.wait_for(20)
    assert len(rec.outs) == 20 and {id(o) for o in rec.outs} == {id(o) for o in outs}
    assert [threading_backend.retrieve_result_callback(o) for o in outs] == [[i * i, i] for i in range(20)]
    assert threading.get_ident() not in rec.threads  # callbacks run in the pool's threads


def test_backends_threading_exception_type_is_preserved(threading_backend: ThreadingBackend) -> None:
    threading_backend.configure(2)
    rec = Recorder()
    out = threading_backend.submit(batch((_raise_key_error, "missing")), callback=rec)
    rec.wait_for(1)
    assert rec.outs == [out]
    with pytest.raises(KeyError, match="missing"):
        threading_backend.retrieve_result_callback(out)
    assert isinstance(out.exception(), KeyError)


def test_backends_threading_pool_is_reused_between_submits(threading_backend: ThreadingBackend) -> None:
    threading_backend.configure(2)
    outs = [threading_backend.submit(batch((threading.get_ident,))) for _ in range(50)]
    idents = {threading_backend.retrieve_result_callback(o)[0] if o.done() else o.result(30)[0] for o in outs}
    assert 1 <= len(idents) <= 2
    assert threading.get_ident() not in idents


def test_backends_threading_terminate_joins_threads() -> None:
    before = threading.active_count()
    backend = ThreadingBackend()
    backend.configure(2)
    assert threading.active_count() == before + 2
    out = backend.submit(batch((time.sleep, 0.05), (abs, -1)))
    backend.terminate()  # queued work finishes first, then the threads are joined
    assert out.result(timeout=0) == [None, 1]
    assert threading.active_count() == before


def test_backends_threading_configure_resizes_the_pool() -> None:
    before = threading.active_count()
    backend = ThreadingBackend()
    try:
        backend.configure(1)
        assert threading.active_count() == before + 1
        backend.configure(2)
        assert threading.active_count() == before + 2
    finally:
        backend.terminate()
    assert threading.active_count() == before


def test_backends_threading_result_timeout_while_running(threading_backend: ThreadingBackend) -> None:
    threading_backend.configure(1)
    gate = threading.Event()
    out = threading_backend.submit(batch((gate.wait, 30)))
    with pytest.raises(FuturesTimeoutError):
        out.result(timeout=0.01)
    assert not out.done()
    gate.set()
    assert out.result(timeout=30) == [True]


def test_backends_threading_abort_cancels_queued_batches(threading_backend: ThreadingBackend) -> None:
    before = threading.active_count()
    threading_backend.configure(1)
    gate, started = threading.Event(), threading.Event()
    rec = Recorder()
    running = threading_backend.submit(batch((started.set,), (gate.wait, 30)), callback=rec)
    assert started.wait(30)
    queued = [threading_backend.submit(batch((abs, -i)), callback=rec) for i in range(3)]
    threading_backend.abort_everything(ensure_ready=True)
    for out in queued:
        with pytest.raises(CancelledError):
            out.result(timeout=0)
    assert len(rec.outs) == 3  # every dropped batch got its callback
    # The fresh pool works while the old thread is still blocked in its task.
    assert threading_backend.submit(batch((abs, -7))).result(timeout=30) == [7]
    gate.set()
    assert running.result(timeout=30) == [None, True]
    rec.wait_for(4)
    threading_backend.terminate()
    deadline = time.monotonic() + 10  # the abandoned thread exits once its task returned
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before


def test_backends_threading_failing_callback_does_not_kill_the_pool(
    threading_backend: ThreadingBackend,
) -> None:
    threading_backend.configure(1)

    def bad_callback(out: Any) -> None:
        raise RuntimeError("callback failed")

    first = threading_backend.submit(batch((abs, -1)), callback=bad_callback)
    assert first.result(timeout=30) == [1]
    assert threading_backend.submit(batch((abs, -2))).result(timeout=30) == [2]
