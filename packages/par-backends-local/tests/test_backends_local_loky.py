"""The loky backend, driven directly with batches and callbacks.

Tasks use standard-library callables only, so they unpickle in any worker process
whatever the test module's import name.
"""

from __future__ import annotations

import decimal
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest
from par_api import BatchedCalls, RemoteTraceback, Task, TransportHooks, WorkerDiedError
from par_backends_local import LokyBackend

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


def worker_pids(backend: LokyBackend, want: int, rounds: int = 20) -> set[int]:
    """pids seen running batches; submit pairs of slow-ish batches until ``want`` are seen."""
    seen: set[int] = set()
    for _ in range(rounds):
        outs = [backend.submit(batch((time.sleep, 0.1), (os.getpid,))) for _ in range(2)]
        seen.update(out.result(timeout=30)[1] for out in outs)
        if len(seen) >= want:
            break
    return seen


@pytest.fixture
def loky_backend():
    backend = LokyBackend()
    yield backend
    backend.terminate()


def test_backends_loky_results_and_single_callback(loky_backend: LokyBackend) -> None:
    assert loky_backend.configure(n_jobs=2) == 2
    rec = Recorder()
    outs = [loky_backend.submit(batch((pow, i, 2), (abs, -i)), callback=rec) for i in range(6)]
    rec.wait_for(6)
    time.sleep(0.05)
    assert len(rec.outs) == 6 and all(isinstance(o, Future) for o in rec.outs)
    assert [loky_backend.retrieve_result_callback(o) for o in outs] == [[i * i, i] for i in range(6)]
    assert os.getpid() not in worker_pids(loky_backend, 1, rounds=1)


def test_backends_loky_exception_type_and_worker_traceback(loky_backend: LokyBackend) -> None:
    loky_backend.configure(2)
    rec = Recorder()
    out = loky_backend.submit(batch((abs, -1), (int, "not a number")), callback=rec)
    rec.wait_for(1)
    assert rec.outs == [out]
    with pytest.raises(ValueError, match="invalid literal") as info:
        loky_backend.retrieve_result_callback(out)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "Traceback (most recent call last)" in str(cause) and "ValueError" in str(cause)
    # The pool survives an ordinary task error.
    assert loky_backend.submit(batch((abs, -3))).result(timeout=30) == [3]


def test_backends_loky_workers_are_reused_between_calls() -> None:
    first = LokyBackend()
    first.configure(2)
    pids1 = worker_pids(first, 2)
    first.terminate()  # end of a call: the reusable executor stays
    assert len(pids1) == 2 and all(pid_alive(p) for p in pids1)
    second = LokyBackend()
    second.configure(2)
    try:
        pids2 = worker_pids(second, 2)
    finally:
        second.terminate()
    assert pids2 <= pids1


def test_backends_loky_more_workers_mean_new_processes() -> None:
    backend = LokyBackend()
    backend.configure(1)
    pids1 = worker_pids(backend, 1, rounds=1)
    backend.terminate()
    backend.configure(2)
    try:
        pids2 = worker_pids(backend, 2)
    finally:
        backend.terminate()
    assert len(pids2) == 2 and pids2 - pids1


def test_backends_loky_configure_starts_the_workers() -> None:
    """A new executor's workers start at configure, not at the first batch (so that the
    caller's set-up runs while they start), and run the batches."""
    from par_backends_local.loky import _worker_processes

    backend = LokyBackend()
    # a worker environment of its own: a new executor, whatever earlier tests left
    backend.configure(2, hooks=TransportHooks(env={"PAR_BACKENDS_LOCAL_PRESTART": str(os.getpid())}))
    try:
        started = set(_worker_processes(backend._executor))
        assert len(started) == 2
        assert worker_pids(backend, 2) <= started
    finally:
        backend.terminate()


def test_backends_loky_configure_again_while_the_workers_start() -> None:
    """A configure with more workers right after one whose workers are still starting
    (no batch in between) waits for them without loky's "resize an executor with running
    jobs" warning, and gets its workers."""
    import warnings

    from par_backends_local.loky import _worker_processes

    hooks = TransportHooks(env={"PAR_BACKENDS_LOCAL_RESIZE": str(os.getpid())})
    backend = LokyBackend()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            backend.configure(1, hooks=hooks)
            backend.configure(2, hooks=hooks)
        assert len(_worker_processes(backend._executor)) == 2
        assert backend.submit(batch((abs, -2))).result(timeout=30) == [2]
    finally:
        backend.terminate()


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="process priorities (POSIX)")
def test_backends_loky_trackers_started_by_configure_run_nicer() -> None:
    """The resource trackers that a first configure starts (with the executor and its
    workers) run TRACKER_NICENESS nicer than the caller; one already running is left
    alone; the workers keep the caller's priority."""
    import json
    import subprocess
    import textwrap

    code = textwrap.dedent(
        """
        import multiprocessing.resource_tracker as mp_tracker
        import os
        from par_backends_local import LokyBackend
        from par_backends_local.loky import _worker_processes

        mp_tracker.ensure_running()  # started before par: not par's to change
        backend = LokyBackend()
        backend.configure(2)
        import loky.backend.resource_tracker as loky_tracker

        def nice(pid):
            return os.getpriority(os.PRIO_PROCESS, pid)

        workers = _worker_processes(backend._executor)
        print(json.dumps({
            "own": nice(0),
            "loky_tracker": nice(loky_tracker._resource_tracker._pid),
            "mp_tracker": nice(mp_tracker._resource_tracker._pid),
            "workers": [nice(pid) for pid in workers],
        }))
        backend.terminate()
        """
    )
    proc = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr
    from par_backends_local.loky import TRACKER_NICENESS

    seen = json.loads(proc.stdout)
    own = seen["own"]
    if own >= 19:
        pytest.skip("already the lowest priority")
    assert seen == {
        "own": own,
        "loky_tracker": min(own + TRACKER_NICENESS, 19),
        "mp_tracker": own,
        "workers": [own, own],
    }


def test_backends_loky_hooks_env_initializer_and_serializer() -> None:
    serialized: list[Any] = []

    def serialize_batch(b: Any) -> Any:
        serialized.append(b)
        return b

    hooks = TransportHooks(
        serialize_batch=serialize_batch,
        env={"PAR_BACKENDS_LOCAL_TEST": "one"},
        initializer=sys.setrecursionlimit,
        initargs=(4321,),
    )
    backend = LokyBackend(initializer=sys.setswitchinterval, initargs=(0.0123,))
    backend.configure(2, hooks=hooks)
    try:
        task = batch(
            (os.getenv, "PAR_BACKENDS_LOCAL_TEST"),
            (sys.getrecursionlimit,),
            (sys.getswitchinterval,),
            (type, decimal.Decimal("1.5")),
            (os.getpid,),
        )
        env_value, limit, interval, received_type, pid1 = backend.submit(task).result(timeout=30)
        assert serialized == [task]
        assert (env_value, limit, interval, received_type) == ("one", 4321, 0.0123, decimal.Decimal)
        backend.terminate()

        # A new worker environment means new workers.
        hooks2 = TransportHooks(env={"PAR_BACKENDS_LOCAL_TEST": "two"})
        backend.configure(1, hooks=hooks2)
        env_value, pid2 = backend.submit(batch((os.getenv, "PAR_BACKENDS_LOCAL_TEST"), (os.getpid,))).result(
            timeout=30
        )
        assert env_value == "two" and pid2 != pid1
        assert wait_gone(pid1)
    finally:
        backend.terminate()


def test_backends_loky_serialization_errors_propagate_from_submit(loky_backend: LokyBackend) -> None:
    def serialize_batch(b: Any) -> Any:
        raise TypeError("cannot pickle this task")

    loky_backend.configure(1, hooks=TransportHooks(serialize_batch=serialize_batch))
    rec = Recorder()
    with pytest.raises(TypeError, match="cannot pickle"):
        loky_backend.submit(batch((abs, 1)), callback=rec)
    assert rec.outs == []


def _expect_worker_death(backend: LokyBackend, task: BatchedCalls) -> WorkerDiedError:
    rec = Recorder()
    out = backend.submit(task, callback=rec)
    rec.wait_for(1)
    with pytest.raises(WorkerDiedError) as info:
        backend.retrieve_result_callback(out)
    err = info.value
    assert isinstance(err, BrokenProcessPool)
    assert type(err.__cause__).__name__ == "TerminatedWorkerError"
    # The next batch runs on fresh workers.
    assert backend.submit(batch((abs, -5))).result(timeout=30) == [5]
    return err


def test_backends_loky_os_exit_gives_worker_died_error(loky_backend: LokyBackend) -> None:
    loky_backend.configure(1)
    pid = loky_backend.submit(batch((os.getpid,))).result(timeout=30)[0]
    err = _expect_worker_death(loky_backend, batch((os._exit, 1)))
    assert err.exitcode == 1 and err.pid == pid
    assert "exited with code 1" in str(err) and "os._exit" in str(err) and str(pid) in str(err)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_backends_loky_sigkill_gives_worker_died_error(loky_backend: LokyBackend) -> None:
    loky_backend.configure(2)
    err = _expect_worker_death(loky_backend, batch((signal.raise_signal, signal.SIGKILL)))
    assert err.exitcode == -signal.SIGKILL
    assert "SIGKILL" in str(err) and "memory" in str(err)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_backends_loky_segfault_gives_worker_died_error(loky_backend: LokyBackend) -> None:
    import ctypes

    loky_backend.configure(1)
    # faulthandler in the worker prints its traceback to stderr: expected noise.
    err = _expect_worker_death(loky_backend, batch((ctypes.string_at, 0)))
    assert err.exitcode == -signal.SIGSEGV and "SIGSEGV" in str(err) and "native" in str(err)


def test_backends_loky_abort_everything_kills_a_stuck_worker(loky_backend: LokyBackend) -> None:
    loky_backend.configure(1)
    pid = loky_backend.submit(batch((os.getpid,))).result(timeout=30)[0]
    rec = Recorder()
    stuck = loky_backend.submit(batch((time.sleep, 60)), callback=rec)
    loky_backend.abort_everything(ensure_ready=True)
    assert wait_gone(pid), "the stuck worker is still running"
    rec.wait_for(1)
    assert rec.outs == [stuck] and stuck.exception(timeout=0) is not None
    new_pid = loky_backend.submit(batch((os.getpid,))).result(timeout=30)[0]
    assert new_pid != pid


def test_backends_loky_pickles_after_configure(loky_backend: LokyBackend) -> None:
    import pickle

    loky_backend.configure(2)
    clone = pickle.loads(pickle.dumps(loky_backend))
    assert isinstance(clone, LokyBackend) and clone.get_nested_backend() == loky_backend.get_nested_backend()
