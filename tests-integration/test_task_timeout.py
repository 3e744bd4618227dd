"""Per-task timeouts (issue 17): with ``on_error`` other than ``'raise'``, a task that
runs longer than ``timeout`` in its worker gets a ``TimeoutError`` in its place; only
its worker is ended and replaced, and every other task gets its result.

Process backends (``loky``, ``multiprocessing``): the worker ends itself and is
replaced. ``threading``: a thread cannot be stopped, so the hung task's thread is
abandoned (interrupted when it runs Python code) and a new one takes its place.
``dask``: the backend counts from each task's start report, cancels the overrunning
future and interrupts its thread on the worker (Python code stops; a task blocked in C
keeps its worker thread until it returns).
``ray`` (at the end, on one local cluster for the module): the driver cancels the
overrunning Ray task with ``force=True``, which ends its worker process.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from par import Parallel, ProgressEvent, delayed

pytestmark = [pytest.mark.timeout(120)]

PROCESS_BACKENDS = ["loky", "multiprocessing"]
GONE_WITHIN = 10.0


def _hangs_at(i, hang):
    if i in hang:
        time.sleep(600)
    time.sleep(0.02)
    return i * 10


def _hangs_once(i, folder):
    """Task 3 hangs the first time only (a marker file remembers the first run)."""
    marker = os.path.join(folder, f"ran-{i}")
    if i == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(600)
    return i * 10


def _slow_then_fast(i):
    time.sleep(0.6 if i == 0 else 0.01)
    return i


@pytest.fixture
def no_leftover(probe):
    before = probe.children()
    yield
    from loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True, kill_workers=True)
    assert probe.wait_until(lambda: not (probe.children() - before), GONE_WITHIN), probe.children() - before


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
@pytest.mark.parametrize("return_as", ["list", "generator_unordered"])
def test_a_hung_task_gets_a_timeout_error_and_the_others_their_results(backend, return_as, no_leftover):
    events: list[ProgressEvent] = []
    t0 = time.monotonic()
    out = list(
        Parallel(n_jobs=2, backend=backend, timeout=1, on_error="return", return_as=return_as, progress=events.append)(
            delayed(_hangs_at)(i, {2, 9}) for i in range(16)
        )
    )
    took = time.monotonic() - t0
    failed = [o for o in out if isinstance(o, BaseException)]
    assert len(out) == 16 and len(failed) == 2
    assert all(type(e) is TimeoutError for e in failed)
    assert sorted(o for o in out if not isinstance(o, BaseException)) == [i * 10 for i in range(16) if i not in (2, 9)]
    messages = sorted(str(e) for e in failed)
    assert "task 2 (" in messages[0] and "timeout=1 seconds" in messages[0] and "replaced" in messages[0]
    for error in failed:
        assert any(note.startswith("par: task ") for note in error.__notes__)
    if return_as == "list":
        assert isinstance(out[2], TimeoutError) and isinstance(out[9], TimeoutError)
    assert took < 60  # two timeouts of 1 s, not the 600 s the tasks would sleep
    last = events[-1]
    assert last.n_failed == 2 and last.n_timed_out == 2


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_the_clock_starts_when_the_task_starts_in_its_worker(backend, no_leftover):
    """40 tasks queued behind one another on 2 workers take longer than ``timeout`` in
    all, but none runs longer than it: none times out."""
    out = Parallel(n_jobs=2, backend=backend, timeout=0.5, on_error="return")(
        delayed(time.sleep)(0.05) for _ in range(40)
    )
    assert out == [None] * 40


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_a_timed_out_task_is_retried_on_a_fresh_worker(backend, tmp_path, no_leftover):
    events: list[ProgressEvent] = []
    out = Parallel(n_jobs=2, backend=backend, timeout=1, on_error="return", retries=1, progress=events.append)(
        delayed(_hangs_once)(i, str(tmp_path)) for i in range(6)
    )
    assert out == [i * 10 for i in range(6)]
    assert events[-1].n_retried == 1 and events[-1].n_failed == 0


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_collect_groups_the_timeouts(backend, no_leftover):
    from par_scheduler._policy import ExceptionGroup

    with pytest.raises(ExceptionGroup) as info:
        Parallel(n_jobs=2, backend=backend, timeout=1, on_error="collect")(delayed(_hangs_at)(i, {1}) for i in range(4))
    assert [type(e) for e in info.value.exceptions] == [TimeoutError]
    assert info.value.results[0] == 0 and isinstance(info.value.results[1], TimeoutError)


def test_with_on_error_raise_timeout_keeps_its_joblib_meaning(no_leftover):
    with pytest.raises(TimeoutError, match="No task result arrived within timeout"):
        Parallel(n_jobs=2, backend="loky", timeout=0.3)(delayed(_slow_then_fast)(i) for i in range(2))


_release = threading.Event()


def _blocks_in_c_at(i, hang):
    if i in hang:
        _release.wait(60)  # blocked in C: the thread cannot be interrupted
        return "late"
    time.sleep(0.02)
    return i * 10


def _spins_at(i, hang):
    if i in hang:
        while True:  # Python code: the abandoned thread is interrupted
            pass
    return i * 10


def _par_threads():
    return {t for t in threading.enumerate() if t.name.startswith("par-threading-") and t.is_alive()}


def test_threading_a_hung_task_is_abandoned_and_its_thread_replaced(probe):
    """A thread cannot be stopped: the hung task gets its ``TimeoutError``, its thread is
    abandoned and a new thread takes its place, so ``n_jobs`` threads keep working."""
    _release.clear()
    before = _par_threads()
    try:
        t0 = time.monotonic()
        out = Parallel(n_jobs=2, backend="threading", timeout=0.5, on_error="return")(
            delayed(_blocks_in_c_at)(i, {1, 5}) for i in range(30)
        )
        took = time.monotonic() - t0
        assert [type(o) for o in out if isinstance(o, BaseException)] == [TimeoutError, TimeoutError]
        assert isinstance(out[1], TimeoutError) and isinstance(out[5], TimeoutError)
        assert "abandoned" in str(out[1]) and "task 1 (" in str(out[1])
        assert [o for i, o in enumerate(out) if i not in (1, 5)] == [i * 10 for i in range(30) if i not in (1, 5)]
        assert took < 10  # 28 x 20 ms on two threads plus two timeouts: both threads kept working
    finally:
        _release.set()  # the abandoned threads return, drop their result and exit
    assert probe.wait_until(lambda: len(_par_threads() - before) == 0, 10), _par_threads() - before


def test_threading_a_task_spinning_in_python_is_interrupted(probe):
    before = {t.ident for t in threading.enumerate()}
    out = Parallel(n_jobs=2, backend="threading", timeout=0.3, on_error="return")(
        delayed(_spins_at)(i, {0}) for i in range(6)
    )
    assert isinstance(out[0], TimeoutError) and out[1:] == [10, 20, 30, 40, 50]
    spinning = lambda: [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("par-threading")]  # noqa: E731
    # the call's pool is stopped after it, and the spinning thread was interrupted
    assert probe.wait_until(lambda: not spinning(), 10), spinning()


def test_sequential_applies_no_timeout():
    with pytest.warns(UserWarning, match="timeout"):
        out = Parallel(n_jobs=1, timeout=0.1, on_error="return")(delayed(_slow_then_fast)(i) for i in range(2))
    assert out == [0, 1]


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_verbose_counts_the_timeouts(backend, capsys, no_leftover):
    Parallel(n_jobs=2, backend=backend, timeout=1, on_error="return", verbose=10)(
        delayed(_hangs_at)(i, {0}) for i in range(3)
    )
    assert "timed out: 1" in capsys.readouterr().err


# -- dask: the backend measures the timeout from the task's start on its worker ---------
@pytest.fixture(scope="module")
def dask_client():
    """A two-worker LocalCluster (one thread each) and its client, closed at the end."""
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("par_backends_dask")
    saved = dict(os.environ)  # the nannies write their environment into os.environ
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as cluster:
        os.environ.clear()
        os.environ.update(saved)
        with distributed.Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
            yield client


def _dask_workers_idle(client):
    """Whether no worker runs a task (a cancelled task still running counts)."""

    def executing(dask_worker):
        return len(dask_worker.state.executing)

    return not any(client.run(executing).values())


@pytest.mark.dask
@pytest.mark.parametrize("return_as", ["list", "generator_unordered"])
def test_dask_a_hung_task_gets_a_timeout_error_and_the_others_their_results(dask_client, return_as, probe):
    """The hung tasks spin in Python: their futures are cancelled, their threads on the
    workers interrupted, and both workers go on with the other tasks."""
    from par import parallel_config

    events: list[ProgressEvent] = []
    t0 = time.monotonic()
    with parallel_config(backend="dask", client=dask_client):
        out = list(
            Parallel(n_jobs=2, timeout=1, on_error="return", return_as=return_as, progress=events.append)(
                delayed(_spins_at)(i, {2, 9}) for i in range(16)
            )
        )
    took = time.monotonic() - t0
    failed = [o for o in out if isinstance(o, BaseException)]
    assert len(out) == 16 and [type(e) for e in failed] == [TimeoutError, TimeoutError]
    assert sorted(o for o in out if not isinstance(o, BaseException)) == [i * 10 for i in range(16) if i not in (2, 9)]
    message = sorted(str(e) for e in failed)[0]
    assert "task 2 (" in message and "timeout=1 seconds" in message and "dask future" in message
    if return_as == "list":
        assert isinstance(out[2], TimeoutError) and isinstance(out[9], TimeoutError)
    assert took < 60
    assert events[-1].n_failed == 2 and events[-1].n_timed_out == 2
    assert probe.wait_until(lambda: _dask_workers_idle(dask_client), 10)  # the spinning tasks were stopped


@pytest.mark.dask
def test_dask_the_clock_starts_when_the_task_starts_on_its_worker(dask_client):
    from par import parallel_config

    with parallel_config(backend="dask", client=dask_client):
        out = Parallel(n_jobs=2, timeout=0.5, on_error="return")(delayed(time.sleep)(0.05) for _ in range(40))
    assert out == [None] * 40


@pytest.mark.dask
def test_dask_a_timed_out_task_is_retried(dask_client, tmp_path):
    from par import parallel_config

    events: list[ProgressEvent] = []
    with parallel_config(backend="dask", client=dask_client):
        out = Parallel(n_jobs=2, timeout=1, on_error="return", retries=1, progress=events.append)(
            delayed(_spins_once)(i, str(tmp_path)) for i in range(6)
        )
    assert out == [i * 10 for i in range(6)]
    assert events[-1].n_retried == 1 and events[-1].n_failed == 0


@pytest.mark.dask
def test_dask_a_task_blocked_in_c_keeps_its_worker_thread_until_it_returns(dask_client, probe):
    """A thread blocked in C code cannot be interrupted: the task gets its
    ``TimeoutError`` at once, but its worker's thread stays taken until the call returns
    (here 3 s); the other tasks run on the other worker meanwhile, then on both."""
    from par import parallel_config

    with parallel_config(backend="dask", client=dask_client):
        out = Parallel(n_jobs=2, timeout=0.5, on_error="return")(
            delayed(_sleeps_at)(i, {0}, 3) for i in range(8)
        )
    assert isinstance(out[0], TimeoutError) and out[1:] == [i * 10 for i in range(1, 8)]
    assert probe.wait_until(lambda: _dask_workers_idle(dask_client), 10)


def _spins_once(i, folder):
    """Task 3 spins (in Python) the first time only."""
    marker = os.path.join(folder, f"ran-{i}")
    if i == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        while True:
            pass
    return i * 10


def _sleeps_at(i, hang, seconds):
    if i in hang:
        time.sleep(seconds)  # blocked in C
    time.sleep(0.02)
    return i * 10


# -- ray: one local cluster (2 CPUs, a small object store) for these tests -------------
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    par_backends_ray = pytest.importorskip("par_backends_ray")
    cluster = par_backends_ray.LocalCluster(num_cpus=2, object_store_memory=100_000_000).start()
    try:
        yield cluster
    finally:
        par_backends_ray.shutdown()
        if ray.is_initialized():
            ray.shutdown()
        cluster.stop()  # ends its session's processes, fails if one is left
        assert cluster.pids() == []


@pytest.fixture
def on_ray(ray_cluster):
    from par import parallel_config

    with parallel_config(backend="ray", address=ray_cluster.address):
        yield ray_cluster


def _ray_functions():
    """Defined in a closure so that Ray pickles them by value (its workers cannot import
    this test module)."""

    def hangs_at(i, hang, folder):
        if i in hang:
            with open(os.path.join(folder, f"pid-{i}"), "w") as f:
                f.write(str(os.getpid()))
            time.sleep(600)
        time.sleep(0.02)
        return i * 10

    def hangs_once(i, folder):
        marker = os.path.join(folder, f"ran-{i}")
        if i == 3 and not os.path.exists(marker):
            open(marker, "w").close()
            time.sleep(600)
        return i * 10

    return hangs_at, hangs_once


_ray_hangs_at, _ray_hangs_once = _ray_functions()


@pytest.mark.ray
@pytest.mark.parametrize("return_as", ["list", "generator_unordered"])
def test_ray_a_hung_task_gets_a_timeout_error_and_its_worker_is_ended(on_ray, return_as, tmp_path, probe):
    events: list[ProgressEvent] = []
    t0 = time.monotonic()
    out = list(
        Parallel(n_jobs=2, timeout=1, on_error="return", return_as=return_as, progress=events.append)(
            delayed(_ray_hangs_at)(i, {2, 9}, str(tmp_path)) for i in range(16)
        )
    )
    took = time.monotonic() - t0
    failed = [o for o in out if isinstance(o, BaseException)]
    assert len(out) == 16 and [type(e) for e in failed] == [TimeoutError, TimeoutError]
    assert sorted(o for o in out if not isinstance(o, BaseException)) == [i * 10 for i in range(16) if i not in (2, 9)]
    message = sorted(str(e) for e in failed)[0]
    assert "task 2 (" in message and "timeout=1 seconds" in message and "ray.cancel(force=True)" in message
    if return_as == "list":
        assert isinstance(out[2], TimeoutError) and isinstance(out[9], TimeoutError)
    assert took < 60
    assert events[-1].n_failed == 2 and events[-1].n_timed_out == 2
    pids = [int((tmp_path / f"pid-{i}").read_text()) for i in (2, 9)]
    assert probe.wait_until(lambda: not any(map(probe.alive, pids)), GONE_WITHIN), "a timed-out task's Ray worker still runs"


@pytest.mark.ray
def test_ray_the_clock_starts_when_the_task_starts_on_its_worker(on_ray):
    """100 tasks queued in Ray behind one another on 2 CPUs take longer than ``timeout``
    in all (2.5 s), but none runs longer than it: none times out. (With timeout=0.5 and
    40 tasks, one task of 0.05 s once timed out on a loaded machine: a task's result
    reaches the driver's watch through Ray's object store, which took more than 10x the
    task there.)"""
    out = Parallel(n_jobs=2, timeout=2, on_error="return")(delayed(time.sleep)(0.05) for _ in range(100))
    assert out == [None] * 100


@pytest.mark.ray
def test_ray_a_timed_out_task_is_retried_by_the_scheduler(on_ray, tmp_path):
    events: list[ProgressEvent] = []
    out = Parallel(n_jobs=2, timeout=1, on_error="return", retries=1, progress=events.append)(
        delayed(_ray_hangs_once)(i, str(tmp_path)) for i in range(6)
    )
    assert out == [i * 10 for i in range(6)]
    assert events[-1].n_retried == 1 and events[-1].n_failed == 0


@pytest.mark.ray
def test_ray_collect_groups_the_timeouts(on_ray, tmp_path):
    from par_scheduler._policy import ExceptionGroup

    with pytest.raises(ExceptionGroup) as info:
        Parallel(n_jobs=2, timeout=1, on_error="collect")(delayed(_ray_hangs_at)(i, {1}, str(tmp_path)) for i in range(4))
    assert [type(e) for e in info.value.exceptions] == [TimeoutError]
    assert info.value.results[0] == 0 and isinstance(info.value.results[1], TimeoutError)
