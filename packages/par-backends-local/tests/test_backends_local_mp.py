"""The multiprocessing backend, driven directly with batches and callbacks.

Tasks use standard-library callables only, so they unpickle in spawned workers whatever
the test module's import name.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from concurrent.futures import CancelledError, Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest
from par_api import BatchedCalls, RemoteTraceback, Task, TransportHooks, WorkerDiedError, make_backend
from par_backends_local import MultiprocessingBackend
from par_backends_local.multiprocessing import resolve_context

pytestmark = pytest.mark.timeout(60)


def batch(*calls: tuple[Any, ...]) -> BatchedCalls:
    return BatchedCalls([Task(call[0], tuple(call[1:]), {}) for call in calls])


class Recorder:
    def __init__(self) -> None:
        self.outs: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, out: Any) -> None:
        with self._cond:
            self.outs.append(out)
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 30) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.outs) >= n, timeout), (
                f"{len(self.outs)} of {n} callbacks"
            )


def started_by_spawn(pid: int) -> bool:
    """Whether worker ``pid`` was started by the spawn method (a fresh interpreter running
    multiprocessing.spawn), as opposed to a fork of this process."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return b"multiprocessing.spawn" in f.read()


needs_procfs = pytest.mark.skipif(not os.path.exists("/proc/self/cmdline"), reason="needs /proc")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its parent's wait() counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no procfs
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def mp_backend():
    backend = MultiprocessingBackend()
    yield backend
    backend.terminate()


def test_backends_mp_results_callbacks_and_clean_terminate() -> None:
    backend = MultiprocessingBackend()
    assert backend.configure(n_jobs=2) == 2
    rec = Recorder()
    outs = [backend.submit(batch((pow, i, 2), (os.getpid,)), callback=rec) for i in range(6)]
    rec.wait_for(6)
    assert len(rec.outs) == 6 and all(isinstance(o, Future) for o in rec.outs)
    results = [backend.retrieve_result_callback(o) for o in outs]
    assert [r[0] for r in results] == [i * i for i in range(6)]
    pids = {r[1] for r in results}
    assert os.getpid() not in pids
    if os.path.exists("/proc/self/cmdline") and multiprocessing.get_start_method() == "fork":
        assert not any(started_by_spawn(p) for p in pids)  # the check below can fail
    backend.terminate()  # closes and joins the pool: no worker is left behind
    assert not any(pid_alive(p) for p in pids)


def test_backends_mp_exception_type_and_worker_traceback(mp_backend: MultiprocessingBackend) -> None:
    mp_backend.configure(1)
    rec = Recorder()
    out = mp_backend.submit(batch((abs, -1), (int, "not a number")), callback=rec)
    rec.wait_for(1)
    assert rec.outs == [out]
    with pytest.raises(ValueError, match="invalid literal") as info:
        mp_backend.retrieve_result_callback(out)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback) and "Traceback (most recent call last)" in str(cause)
    assert mp_backend.submit(batch((abs, -3))).result(timeout=30) == [3]


@needs_procfs
def test_backends_mp_spawn_context_object_selects_the_start_method() -> None:
    backend = make_backend("multiprocessing", context=multiprocessing.get_context("spawn"))
    assert backend.context.get_start_method() == "spawn" and "spawn" in repr(backend)
    clone = pickle.loads(pickle.dumps(backend))  # unconfigured, with a context: picklable
    assert clone.context.get_start_method() == "spawn"
    backend.configure(1)
    try:
        assert started_by_spawn(backend.submit(batch((os.getpid,))).result(timeout=30)[0])
    finally:
        backend.terminate()


@needs_procfs
def test_backends_mp_start_method_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBLIB_START_METHOD", raising=False)
    monkeypatch.setenv("PAR_START_METHOD", "spawn")
    backend = MultiprocessingBackend()
    backend.configure(1)
    try:
        assert started_by_spawn(backend.submit(batch((os.getpid,))).result(timeout=30)[0])
    finally:
        backend.terminate()


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver")
def test_backends_mp_start_method_variables_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAR_START_METHOD", raising=False)
    monkeypatch.setenv("JOBLIB_START_METHOD", "forkserver")
    assert resolve_context().get_start_method() == "forkserver"
    monkeypatch.setenv("PAR_START_METHOD", "spawn")  # par's variable wins
    assert resolve_context().get_start_method() == "spawn"
    assert resolve_context("forkserver").get_start_method() == "forkserver"  # the argument wins


def test_backends_mp_bad_start_method_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAR_START_METHOD", "teleport")
    with pytest.raises(ValueError, match=r"PAR_START_METHOD='teleport'.*'spawn'"):
        MultiprocessingBackend().configure(1)
    with pytest.raises(ValueError, match=r"context='teleport'"):
        MultiprocessingBackend(context="teleport")
    with pytest.raises(TypeError, match="multiprocessing context"):
        MultiprocessingBackend(context=3)


def test_backends_mp_hooks_env_initializer_and_serializer() -> None:
    serialized: list[Any] = []

    def serialize_batch(b: Any) -> Any:
        serialized.append(b)
        return b

    hooks = TransportHooks(
        serialize_batch=serialize_batch,
        env={"PAR_BACKENDS_LOCAL_TEST": "mp"},
        initializer=sys.setrecursionlimit,
        initargs=(4321,),
    )
    backend = MultiprocessingBackend(initializer=sys.setswitchinterval, initargs=(0.0123,))
    backend.configure(1, hooks=hooks)
    try:
        task = batch(
            (os.getenv, "PAR_BACKENDS_LOCAL_TEST"), (sys.getrecursionlimit,), (sys.getswitchinterval,)
        )
        assert backend.submit(task).result(timeout=30) == ["mp", 4321, 0.0123]
        assert serialized == [task]
    finally:
        backend.terminate()
    assert os.environ.get("PAR_BACKENDS_LOCAL_TEST") is None  # only the workers' environment


def _expect_worker_death(backend: MultiprocessingBackend, task: BatchedCalls) -> WorkerDiedError:
    rec = Recorder()
    out = backend.submit(task, callback=rec)
    rec.wait_for(1)  # a plain multiprocessing.Pool would wait here forever
    with pytest.raises(WorkerDiedError) as info:
        backend.retrieve_result_callback(out)
    assert isinstance(info.value, BrokenProcessPool)
    assert backend.submit(batch((abs, -5))).result(timeout=30) == [5]  # a fresh pool
    return info.value


def test_backends_mp_os_exit_gives_worker_died_error(mp_backend: MultiprocessingBackend) -> None:
    mp_backend.configure(1)
    pid = mp_backend.submit(batch((os.getpid,))).result(timeout=30)[0]
    err = _expect_worker_death(mp_backend, batch((os._exit, 1)))
    assert err.exitcode == 1 and err.pid == pid
    assert "exited with code 1" in str(err) and "os._exit" in str(err) and f"pid {pid}" in str(err)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_backends_mp_sigkill_gives_worker_died_error(mp_backend: MultiprocessingBackend) -> None:
    mp_backend.configure(2)
    rec = Recorder()
    other = mp_backend.submit(batch((time.sleep, 0.5)), callback=rec)
    err = _expect_worker_death(mp_backend, batch((signal.raise_signal, signal.SIGKILL)))
    assert err.exitcode == -signal.SIGKILL and "SIGKILL" in str(err) and "memory" in str(err)
    rec.wait_for(1)  # the batch pending on the broken pool got its callback too
    assert rec.outs == [other] and other.done()


@pytest.mark.parametrize("maxtasksperchild", [None, 5])
def test_backends_mp_worker_dead_before_the_watcher_looks_still_fails_its_batch(
    monkeypatch: pytest.MonkeyPatch, maxtasksperchild: int | None
) -> None:
    # The watcher thread of a new pool may first run after a worker already died (a task
    # that dies at once, on a busy machine): reading ``exitcode`` then reaps that worker,
    # whose sentinel is never waited on. The batch must still fail, not wait for ever.
    from par_backends_local.multiprocessing import _PoolState

    watch = _PoolState._watch

    def late_watch(self: _PoolState) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and all(p.exitcode is None for p in self.processes.values()):
            time.sleep(0.01)
        watch(self)

    monkeypatch.setattr(_PoolState, "_watch", late_watch)
    backend = MultiprocessingBackend(maxtasksperchild=maxtasksperchild)
    try:
        backend.configure(1)
        dying = backend.submit(batch((os._exit, 3)))
        with pytest.raises(WorkerDiedError, match="exited with code 3"):
            dying.result(timeout=15)
    finally:
        backend.terminate()


def test_backends_mp_callback_submitting_after_a_worker_death_does_not_deadlock(
    mp_backend: MultiprocessingBackend,
) -> None:
    # The scheduler submits the next batch from a completion callback, which runs in the
    # pool's result thread. When a worker has just died, the watcher shuts that pool down
    # and joins that thread: the submit must start a new pool, not wait for the watcher.
    mp_backend.configure(2)
    state = mp_backend._state
    assert state is not None
    submitted = threading.Event()
    out: dict[str, Any] = {}

    def on_first(_: Any) -> None:
        deadline = time.monotonic() + 20
        while state.broken is None and time.monotonic() < deadline:
            time.sleep(0.01)
        out["broken"] = state.broken is not None
        out["next"] = mp_backend.submit(batch((abs, -3)))
        submitted.set()

    mp_backend.submit(batch((abs, -1)), callback=on_first)
    dying = mp_backend.submit(batch((time.sleep, 0.2), (os._exit, 1)))
    assert submitted.wait(30), "submit from the callback is blocked (deadlock with the watcher)"
    assert out["broken"]
    with pytest.raises(WorkerDiedError):
        dying.result(timeout=30)
    assert out["next"].result(timeout=30) == [3]  # on a fresh pool
    assert mp_backend._state is not state


def test_backends_mp_abort_everything_kills_a_stuck_worker(mp_backend: MultiprocessingBackend) -> None:
    mp_backend.configure(1)
    pid = mp_backend.submit(batch((os.getpid,))).result(timeout=30)[0]
    rec = Recorder()
    stuck = mp_backend.submit(batch((time.sleep, 60)), callback=rec)
    mp_backend.abort_everything(ensure_ready=True)
    assert wait_gone(pid), "the stuck worker is still running"
    rec.wait_for(1)
    assert rec.outs == [stuck]
    with pytest.raises(CancelledError):
        stuck.result(timeout=0)
    assert mp_backend.submit(batch((os.getpid,))).result(timeout=30)[0] != pid


def test_backends_mp_abort_without_ensure_ready_then_reconfigure(mp_backend: MultiprocessingBackend) -> None:
    mp_backend.configure(1)
    pid = mp_backend.submit(batch((os.getpid,))).result(timeout=30)[0]
    mp_backend.abort_everything(ensure_ready=False)
    assert wait_gone(pid)
    mp_backend.configure(1)
    assert mp_backend.submit(batch((abs, -2))).result(timeout=30) == [2]


def test_backends_mp_nested_daemon_process_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from par_api import BackendNotAvailableError

    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
    with pytest.raises(BackendNotAvailableError, match="daemonic"):
        MultiprocessingBackend().configure(1)


def test_backends_mp_terminate_with_a_pending_batch_does_not_hang() -> None:
    backend = MultiprocessingBackend()
    backend.configure(1)
    pid = backend.submit(batch((os.getpid,))).result(timeout=30)[0]
    rec = Recorder()
    stuck = backend.submit(batch((time.sleep, 60)), callback=rec)
    backend.terminate()  # the batch is still running: the workers are terminated
    assert wait_gone(pid)
    assert rec.outs == [stuck]
    with pytest.raises(RuntimeError, match="shut down"):
        stuck.result(timeout=0)



def _take_and_die(lock: Any) -> None:
    lock.acquire()
    os._exit(0)  # dies holding it, as a worker killed while writing its result does


def _hold_the_result_lock() -> None:
    """In a pool worker: take the result queue's write lock and keep it, as a worker
    writing a large result that nobody reads any more does."""
    frame = sys._getframe()
    while frame.f_code.co_name != "worker":
        frame = frame.f_back
    frame.f_locals["outqueue"]._wlock.acquire()
    time.sleep(120)


def _terminate_in_thread(pool: Any) -> threading.Thread:
    from par_backends_local.multiprocessing import terminate_pool

    runner = threading.Thread(target=terminate_pool, args=(pool, 0.5), daemon=True)
    runner.start()
    runner.join(30)
    return runner


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_backends_mp_terminate_frees_the_result_queue_lock_a_dead_worker_held() -> None:
    """CPython gh-96995: ``Pool.terminate`` waits for ever for the result queue's lock
    when a process died holding it; ``terminate_pool`` (used on abort) does not."""
    ctx = multiprocessing.get_context("fork")
    pool = ctx.Pool(1)
    assert pool.apply_async(abs, (-1,)).get(timeout=30) == 1
    lock = pool._outqueue._wlock
    holder = ctx.Process(target=_take_and_die, args=(lock,))
    holder.start()
    holder.join(30)
    assert not lock.acquire(timeout=0.1), "the scenario needs the lock held by a dead process"
    assert not _terminate_in_thread(pool).is_alive(), "terminate_pool hung"
    assert all(p.exitcode is not None for p in pool._pool)


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_backends_mp_terminate_ends_a_worker_that_holds_the_result_queue_lock() -> None:
    ctx = multiprocessing.get_context("fork")
    pool = ctx.Pool(2)
    pool.apply_async(_hold_the_result_lock)
    lock = pool._outqueue._wlock
    deadline = time.monotonic() + 30
    while lock.acquire(timeout=0.05):  # until the worker has it
        lock.release()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workers = [p.pid for p in pool._pool]
    assert not _terminate_in_thread(pool).is_alive(), "terminate_pool hung"
    assert all(wait_gone(pid) for pid in workers)
    assert not any(t.name == "par-mp-terminate" and t.is_alive() for t in threading.enumerate())


# Run in a child interpreter: audit hooks and fork hooks cannot be removed again.
_FORK_OVERLAP_SCRIPT = r"""
import functools, json, multiprocessing, os, sys, threading, time

inside, overlaps = set(), []

def before():
    inside.add(threading.get_ident())
    time.sleep(0.05)  # a slow fork (Python-level fork hooks let other threads run)

def after():
    inside.discard(threading.get_ident())

def audit(event, args):
    # what filelock >= 4.3's audit hook refuses on Python >= 3.12 (RuntimeError there)
    if event == "os.fork" and inside - {threading.get_ident()}:
        overlaps.append(threading.current_thread().name)

os.register_at_fork(before=before, after_in_parent=after)
sys.addaudithook(audit)

from par_backends_local import MultiprocessingBackend

ctx = multiprocessing.get_context("fork")

def start_and_stop():
    backend = MultiprocessingBackend(context=ctx)
    backend.configure(n_jobs=2)
    backend.terminate()

# two pools started at once, from two threads
threads = [threading.Thread(target=start_and_stop, name=f"caller-{i}") for i in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
# a worker death: the old pool's thread forks a replacement, this thread the next pool
backend = MultiprocessingBackend(context=ctx)
backend.configure(n_jobs=2)
died = backend.submit(functools.partial(os._exit, 1))
assert died.exception(timeout=30) is not None
assert backend.submit(functools.partial(abs, -3)).result(timeout=30) == 3
backend.terminate()
print(json.dumps(overlaps))
"""


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_backends_mp_forks_one_worker_at_a_time_across_pools() -> None:
    """par's pools never fork from two threads at once: with filelock >= 4.3 imported
    (``import ray`` does) on Python >= 3.12, the second fork raises RuntimeError (a
    flake of the crash-and-retry test on 3.13). A child records overlapping forks with
    its own audit hook, as filelock's does."""
    import json
    import subprocess

    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _FORK_OVERLAP_SCRIPT],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == []
