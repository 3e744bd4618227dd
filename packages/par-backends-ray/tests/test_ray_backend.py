"""RayBackend, first without a cluster (arguments, the object-store cache, errors), then
against a real one-node cluster started with ``ray start --head --num-cpus 2`` (a small
object store, a temp dir and ports of its own), shared by this module's tests and ended
at the end of the module, with a check that none of its processes is left.

The backend is driven directly with par_api.BatchedCalls (the par scheduler and Parallel
are not dependencies of this package; tests-integration/test_ray_cluster.py covers them).
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
import traceback
from concurrent.futures import CancelledError

import pytest
import ray
import ray.exceptions
from par_api import (
    DEFAULT_STORE_THRESHOLD,
    BatchedCalls,
    RemoteTraceback,
    Task,
    WorkerDiedError,
    available_backends,
    make_backend,
)
from par_backends_ray import DEFAULT_PUT_THRESHOLD, LocalCluster, RayBackend

# method="thread": a test stuck inside Ray's C++ code (a blocking Ray call from a Ray
# callback thread) never sees the SIGALRM of the default method; the thread method ends
# the process, and LocalCluster(end_with_parent=True) then stops the cluster
pytestmark = [pytest.mark.ray, pytest.mark.timeout(120, method="thread")]


def one(func, *args, **kwargs):
    return BatchedCalls([Task(func, args, kwargs)])


# -- without a cluster -------------------------------------------------------------------
def test_ray_registered_through_entry_point(monkeypatch):
    # nothing starts before the backend is configured (whatever an earlier test of this
    # process left connected: the module's cluster fixture, in random test order)
    def no_init(*args, **kwargs):
        raise AssertionError("ray.init called before the backend is configured")

    monkeypatch.setattr(ray, "init", no_init)
    was_initialized = ray.is_initialized()
    assert "ray" in available_backends()
    backend = make_backend("ray", put_threshold="2M", address="127.0.0.1:1", num_cpus=2)
    assert isinstance(backend, RayBackend)
    assert backend.put_threshold == 2 * 1024**2
    assert backend.ray_options == {"num_cpus": 2}
    # the default is the one rule of par_api for both cluster backends, 1 MiB
    assert RayBackend().put_threshold == DEFAULT_PUT_THRESHOLD == DEFAULT_STORE_THRESHOLD == 1024**2
    assert ray.is_initialized() == was_initialized


def test_ray_capability_flags():
    b = RayBackend()
    assert (b.supports_timeout, b.supports_return_generator, b.supports_auto_batching) == (True,) * 3
    assert (b.uses_threads, b.supports_sharedmem, b.supports_transport_hooks) == (False,) * 3
    assert not b.supports_inner_max_num_threads
    # per-task timeouts: the backend watches them itself (its workers do not end themselves)
    assert (b.supports_task_timeout, b.watches_task_timeout) == (True, True)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"address": 6379}, TypeError, "address must be the address of a Ray cluster"),
        ({"put_threshold": "lots"}, ValueError, "put_threshold='lots' is not a size"),
        ({"put_threshold": -1}, ValueError, "put_threshold must be a finite size >= 0"),
        ({"init_kwargs": {"address": "x"}}, TypeError, "init_kwargs must be a dict of ray.init"),
        ({"bogus": 1}, TypeError, r"invalid Ray task options \['bogus'\].*num_cpus=.*max_retries="),
        ({"num_cpus": "two"}, TypeError, r"invalid Ray task options \['num_cpus'\]"),
        ({"name": "x"}, TypeError, r"sets the Ray task options \['name'\] itself"),
        ({"initializer": 3}, TypeError, "initializer must be a callable run once in each Ray actor"),
        ({"initializer": print, "initargs": "ab"}, TypeError, "initargs must be a tuple"),
        ({"actors": "yes"}, TypeError, r"actors must be True .* False .* or None"),
        ({"actors": False, "initializer": print}, ValueError, "initializer needs actors"),
    ],
)
def test_ray_bad_arguments_name_the_parameter(kwargs, error, match):
    with pytest.raises(error, match=match):
        RayBackend(**kwargs)


def test_ray_backend_pickles_without_ray_objects():
    b = RayBackend(address="10.0.0.5:6379", put_threshold=None, num_cpus=2, max_retries=0)
    c = pickle.loads(pickle.dumps(b))
    assert (c.address, c.put_threshold, c.ray_options) == ("10.0.0.5:6379", None, b.ray_options)
    nested, n_jobs = b.get_nested_backend()
    assert isinstance(nested, RayBackend) and n_jobs is None
    assert nested.nesting_level == 1 and nested.address is None  # the worker's runtime
    assert nested.ray_options == {"num_cpus": 2, "max_retries": 0}


def test_arguments_are_put_one_object_at_a_time(monkeypatch):
    """The rule is ``par_api.arguments`` (tested there); here: ``put_each`` stores with
    ``ray.put``, one object at a time, and the cache counts what it stored."""
    from par_api import CallArguments
    from par_backends_ray import _arguments

    stored = []

    def put(obj):
        stored.append(obj)
        return f"ref{len(stored)}"

    monkeypatch.setattr(_arguments.ray, "put", put)
    big = bytearray(2000)
    args = CallArguments(_arguments.put_each, threshold=1000)
    batch, refs = args.prepare(BatchedCalls([Task(len, (big,), {}), Task(len, (big,), {})]))
    assert refs == ["ref1"] and stored == [big]
    assert (args.n_stored, args.bytes_stored) == (1, 2000)
    assert CallArguments(_arguments.put_each, threshold=None).prepare(batch) == (batch, [])


def test_remote_error_keeps_its_type_and_the_worker_traceback():
    from par_backends_ray.backend import _original

    tb = "Traceback (most recent call last):\n  File \"job.py\", line 3, in f\n    raise KeyError(7)\nKeyError: 7"
    error = ray.exceptions.RayTaskError(
        "f", "\x1b[36mray::f()\x1b[39m\n" + tb, KeyError(7), proctitle="ray::f", pid=1, ip="127.0.0.1"
    )
    raised = error.as_instanceof_cause()
    original = _original(raised)
    assert type(original) is KeyError and original.args == (7,)
    assert isinstance(original.__cause__, RemoteTraceback)
    assert 'File "job.py", line 3, in f' in original.__cause__.tb
    assert "\x1b[" not in original.__cause__.tb


# -- on a cluster started as an operator starts one -----------------------------------
@pytest.fixture(scope="module")
def cluster():
    cluster = LocalCluster(num_cpus=2, object_store_memory=100_000_000)
    cluster.start()
    try:
        ray.init(address=cluster.address, logging_level="WARNING")
        yield cluster
    finally:
        ray.shutdown()
        cluster.stop()  # raises if one of its processes is left
        assert cluster.pids() == []


@pytest.fixture()
def backend(cluster):
    backend = RayBackend()
    assert backend.configure(n_jobs=-1) == 2
    yield backend
    backend.terminate()


def run_batches(backend, batches, timeout=60):
    """Submit batches as the par scheduler does; return their results (or raise)."""
    done = []
    lock = threading.Lock()

    def callback(out):
        with lock:
            done.append(out)

    backend.start_call()
    try:
        outs = [backend.submit(b, callback=callback) for b in batches]
        results = [backend.retrieve_result(out, timeout=timeout) for out in outs]
        _wait_for(lambda: len(done) >= len(outs), timeout)
        assert sorted(id(o) for o in done) == sorted(id(o) for o in outs)  # each callback once
        return results
    finally:
        backend.stop_call()


# Functions run on the workers, defined in a closure so that Ray pickles them by value:
# the workers cannot import this test module.
def _worker_functions():
    def fails(x):
        raise LookupError(f"task failed on {x!r}")

    def info(a, b=None):
        return type(a).__name__, getattr(a, "nbytes", None), os.getpid()

    def pid_then_sleep(path, seconds):
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(seconds)
        return "finished"

    def sleep_then(x, seconds):
        time.sleep(seconds)
        return x

    def fail_first_init(path):
        """An initializer that raises in the first actor to run it, not in the next."""
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        raise ValueError("cannot load the model (first start)")

    def always_fail_init():
        raise ValueError("cannot load the model")

    def gated_init(folder):
        """The first actor to start passes; the others wait until ``folder/gate`` exists."""
        try:
            os.close(os.open(os.path.join(folder, "first"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return
        except FileExistsError:
            pass
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(folder, "gate")) and time.monotonic() < deadline:
            time.sleep(0.05)

    return fails, info, pid_then_sleep, sleep_then, fail_first_init, always_fail_init, gated_init


fails, info, pid_then_sleep, sleep_then, fail_first_init, always_fail_init, gated_init = _worker_functions()


def test_ray_effective_n_jobs_counts_cluster_cpus(cluster):
    backend = RayBackend()
    assert backend.effective_n_jobs(-1) == 2
    assert backend.effective_n_jobs(None) == 2
    assert backend.effective_n_jobs(-2) == 1
    assert backend.effective_n_jobs(-5) == 1
    assert backend.effective_n_jobs(7) == 7
    assert RayBackend(num_cpus=2).effective_n_jobs(-1) == 1
    with pytest.raises(ValueError, match="n_jobs=0"):
        backend.effective_n_jobs(0)


def test_ray_runs_batches_in_order_and_keeps_types(backend):
    batches = [BatchedCalls([Task(pow, (i, 2), {}) for i in range(j, j + 3)], None, j) for j in (0, 3, 6)]
    assert run_batches(backend, batches) == [[0, 1, 4], [9, 16, 25], [36, 49, 64]]
    values = [{"a": (1, 2.5)}, frozenset({3}), b"x", None, 10**30, complex(1, 2)]
    out = run_batches(backend, [BatchedCalls([Task(lambda v: v, (v,), {}) for v in values])])
    assert out == [values] and [type(v) for v in out[0]] == [type(v) for v in values]


def test_ray_task_error_keeps_type_and_remote_traceback(backend):
    backend.start_call()
    try:
        out = backend.submit(one(fails, 7))
        with pytest.raises(LookupError, match="task failed on 7") as info_:
            backend.retrieve_result(out, timeout=60)
    finally:
        backend.stop_call()
    assert type(info_.value) is LookupError
    text = "".join(traceback.format_exception(info_.value))
    assert "in fails" in text  # the worker's frame
    assert 'raise LookupError(f"task failed on {x!r}")' in text


def test_ray_large_argument_is_put_once_per_call(backend):
    big = bytes(5 * 1024**2)
    batches = [BatchedCalls([Task(info, (big,), {"b": i})]) for i in range(10)]
    results = run_batches(backend, batches)
    assert [r[0][:2] for r in results] == [("bytes", None)] * 10
    assert (backend.n_put, backend.bytes_put) == (1, len(big))
    run_batches(backend, batches)  # a new call puts it again, once
    assert (backend.n_put, backend.bytes_put) == (2, 2 * len(big))


def test_ray_abort_cancels_pending_tasks(backend, tmp_path):
    """Queued batches never start; running ones are ended with their worker process
    (``ray.cancel(force=True)``: ``force=False`` raises ``KeyboardInterrupt`` in the task,
    which in CI's fresh environments was not delivered, the running tasks ran to their
    end)."""
    backend.start_call()
    started = [tmp_path / f"started-{i}" for i in range(2)]
    running = [backend.submit(one(pid_then_sleep, str(path), 30)) for path in started]  # both CPUs
    assert _wait_for(lambda: all(path.exists() and path.read_text() for path in started), 60), (
        "the Ray tasks did not start within 60 s"
    )
    pids = [int(path.read_text()) for path in started]
    queued = [backend.submit(one(sleep_then, i, 30)) for i in range(6)]
    t0 = time.monotonic()
    backend.abort_everything(ensure_ready=True)
    backend.stop_call()
    got = []  # what each batch gave, and when: the message says it if one ran
    for k, out in enumerate(running + queued):
        try:
            got.append((k, "value", repr(backend.retrieve_result(out, timeout=45)), round(time.monotonic() - t0, 2)))
        except CancelledError:
            got.append((k, "cancelled"))
        except BaseException as exc:
            got.append((k, type(exc).__name__, str(exc)[:200], round(time.monotonic() - t0, 2)))
    assert all(g[1] == "cancelled" for g in got), got  # none ran to its end
    assert time.monotonic() - t0 < 20, got  # the running ones would end 30 s after the abort
    assert _wait_for(lambda: not any(map(_alive, pids)), 20), "the running tasks' worker processes were not ended"
    assert run_batches(backend, [one(abs, -1)]) == [[1]]  # the backend still works


def test_ray_nested_call_does_not_deadlock_on_a_full_cluster(backend):
    # two outer tasks take both CPUs, each runs its own Parallel-like loop through a
    # nested backend: the children can only run on the CPUs the parents give back
    def outer(n):
        from par_backends_ray import RayBackend as Nested
        from par_backends_ray import in_ray_task

        nested = Nested()
        assert in_ray_task()
        nested.configure(n_jobs=-1)
        nested.start_call()
        try:
            outs = [nested.submit(BatchedCalls([Task(pow, (i, 2), {})])) for i in range(n)]
            return sum(nested.retrieve_result(out, timeout=60)[0] for out in outs)
        finally:
            nested.stop_call()

    results = run_batches(backend, [one(outer, 10), one(outer, 20)], timeout=90)
    assert results == [[285], [2470]]


def test_ray_killed_worker_raises_worker_died_error(cluster, tmp_path):
    backend = RayBackend(max_retries=0)
    backend.configure(n_jobs=2)
    path = tmp_path / "pid"
    backend.start_call()
    try:
        out = backend.submit(one(pid_then_sleep, str(path), 60))
        _wait_for(lambda: path.exists() and path.read_text(), 60)
        os.kill(int(path.read_text()), signal.SIGKILL)
        with pytest.raises(WorkerDiedError, match=r"The Ray worker running the par batch par-pid_then_sleep"):
            backend.retrieve_result(out, timeout=60)
    finally:
        backend.stop_call()
    # Ray's default retries: a killed worker's batch runs again elsewhere
    retried = RayBackend(max_retries=1)
    retried.configure(n_jobs=2)
    path.unlink()
    retried.start_call()
    try:
        out = retried.submit(one(pid_then_sleep, str(path), 1))
        _wait_for(lambda: path.exists() and path.read_text(), 60)
        first = int(path.read_text())
        os.kill(first, signal.SIGKILL)
        assert retried.retrieve_result(out, timeout=60) == ["finished"]
        assert int(path.read_text()) != first
    finally:
        retried.stop_call()


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _wait_for(predicate, timeout):
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds passed (False):
    the one poll of this package's tests (tests-integration has ``probe.wait_until``)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_ray_task_timeout_cancels_the_overrunning_task_and_ends_its_worker(backend, tmp_path):
    """With ``task_timeout`` (set by the scheduler), a batch running longer fails with a
    ``TimeoutError`` and the worker process running it is ended (``ray.cancel`` with
    ``force=True``); batches queued meanwhile are timed from their own start."""
    backend.task_timeout = 1.0
    path = tmp_path / "pid"
    done = []
    backend.start_call()
    try:
        t0 = time.monotonic()
        hung = backend.submit(one(pid_then_sleep, str(path), 600), callback=done.append)
        # one CPU left: six 0.4 s batches queue behind one another (2.4 s in all, each
        # under its timeout once it runs)
        quick = [backend.submit(one(sleep_then, i, 0.4), callback=done.append) for i in range(6)]
        assert [backend.retrieve_result(out, timeout=60) for out in quick] == [[i] for i in range(6)]
        with pytest.raises(TimeoutError, match=r"par-pid_then_sleep\) was cancelled after 1 s of running"):
            backend.retrieve_result(hung, timeout=60)
        assert time.monotonic() - t0 < 30
        pid = int(path.read_text())
        assert _wait_for(lambda: not _alive(pid), 20), f"the Ray worker {pid} of the timed-out task still runs"
        _wait_for(lambda: len(done) >= 7, 10)
        assert sorted(map(id, done)) == sorted(map(id, [hung, *quick]))  # each callback once
        # a task raising under a timeout keeps its type
        with pytest.raises(LookupError, match="task failed on 3"):
            backend.retrieve_result(backend.submit(one(fails, 3)), timeout=60)
    finally:
        backend.stop_call()
        backend.task_timeout = None
    backend._monitor.join(10)
    assert not [t for t in threading.enumerate() if t.name == "par-ray-timeout"]
    assert run_batches(backend, [one(abs, -1)]) == [[1]]  # the backend still works


def test_ray_abort_fires_the_timed_batches_whose_results_are_unknown(backend, tmp_path):
    """Under a per-task timeout a batch's results are known only when its task ends: an
    abort still completes every batch (its callback fires once, with CancelledError),
    so nothing waits for it and the watch thread ends."""
    backend.task_timeout = 60.0
    done = []
    backend.start_call()
    try:
        outs = [backend.submit(one(sleep_then, i, 30), callback=done.append) for i in range(4)]
        backend.abort_everything(ensure_ready=True)
        _wait_for(lambda: len(done) >= 4, 20)
        assert sorted(map(id, done)) == sorted(map(id, outs))
        for out in outs:
            with pytest.raises(CancelledError):
                backend.retrieve_result(out, timeout=20)
    finally:
        backend.stop_call()
        backend.task_timeout = None
    backend._monitor.join(10)
    assert not [t for t in threading.enumerate() if t.name == "par-ray-timeout"]


def test_ray_timeout_watch_that_fails_fails_its_batches_instead_of_hanging(monkeypatch):
    """If the watch itself fails (the runtime went away), every watched batch gets the
    error and the watch thread ends: a call under a per-task timeout never hangs on it."""
    from par_backends_ray import _timeout

    def broken_wait(*args, **kwargs):
        raise RuntimeError("the Ray runtime is gone")

    monkeypatch.setattr(_timeout.ray, "wait", broken_wait)
    failed = []
    monitor = _timeout.Monitor(
        on_result=lambda e, r: None,
        on_timeout=lambda e, s: None,
        cancel=lambda e: None,
        on_error=lambda e, exc: failed.append((e, str(exc))),
    )

    class Entry:
        timeout = None

    entries = [Entry(), Entry()]
    for entry in entries:
        monitor.watch(entry, object(), 5.0)
    monitor.join(10)
    assert sorted(map(id, (e for e, _ in failed))) == sorted(map(id, entries))
    assert all(msg == "the Ray runtime is gone" for _, msg in failed)
    assert not [t for t in threading.enumerate() if t.name == "par-ray-timeout"]


def test_ray_timeout_watch_fails_a_batch_whose_callback_raised(monkeypatch):
    """A batch the watch stopped watching (its results are ready) whose ``on_result``
    raised gets the error through ``on_error``: it is never left without an outcome."""
    from par_backends_ray import _timeout

    gens = [iter(["results-ref"])]
    monkeypatch.setattr(_timeout.ray, "wait", lambda refs, **kw: ([gens[0]], []))

    def no_marker(ref, timeout=None):
        raise ValueError("not a start marker")

    monkeypatch.setattr(_timeout.ray, "get", no_marker)

    def broken_on_result(entry, ref):
        raise RuntimeError("boom")

    failed = []
    monitor = _timeout.Monitor(
        on_result=broken_on_result,
        on_timeout=lambda e, s: None,
        cancel=lambda e: None,
        on_error=lambda e, exc: failed.append((e, str(exc))),
    )

    class Entry:
        timeout = None

    entry = Entry()
    monitor.watch(entry, gens[0], 5.0)
    monitor.join(10)
    assert failed == [(entry, "boom")]


def _outcome(backend, out, timeout=60):
    try:
        return ("value", backend.retrieve_result(out, timeout=timeout))
    except BaseException as exc:
        return (type(exc).__name__, str(exc))


def test_ray_abort_stops_the_batches_running_on_actors(cluster, tmp_path):
    """ray.cancel does not interrupt a running actor task: an abort kills the actors with
    batches of the call and, with ensure_ready, puts new ones in their place; each batch
    gets a CancelledError (not a WorkerDiedError: par killed its actor) at once."""
    backend = RayBackend(actors=True)
    backend.configure(n_jobs=2)
    path = tmp_path / "pid"
    try:
        backend.start_call()
        running = backend.submit(one(pid_then_sleep, str(path), 60))
        queued = [backend.submit(one(sleep_then, i, 60)) for i in range(3)]
        assert _wait_for(lambda: path.exists() and path.read_text(), 60), "the actor did not start the batch"
        pid = int(path.read_text())
        backend.abort_everything(ensure_ready=True)
        backend.stop_call()
        # within 45 s: the running batch would end after 60 s (TimeoutError here)
        got = [_outcome(backend, out, timeout=45) for out in [running, *queued]]
        assert [g[0] for g in got] == ["CancelledError"] * 4, got
        assert _wait_for(lambda: not _alive(pid), 20), "the busy actor still runs its batch"
        assert run_batches(backend, [one(abs, -i) for i in range(4)]) == [[0], [1], [2], [3]]  # new actors
    finally:
        backend.terminate()


def test_ray_abort_kills_an_actor_only_once_ray_created_it(cluster, tmp_path, monkeypatch):
    """A ray.kill that reaches an actor's worker between its lease and the start of its
    creation is ignored by the worker ("Mismatched ActorID: ignoring KillActor ...,
    current actor ID: NIL_ID") while Ray marks the actor dead: the worker keeps its CPU
    (CI, Ray 2.60: after an abort the new actors' batches never ran). The driver cannot
    see that window, so an actor whose creation has not completed (here: held in its
    initializer) is killed only once it has; meanwhile its batches are cancelled and
    none of them runs. Was: killed at once, with the actor that runs a batch."""
    from par_backends_ray import _actors

    kills = []
    real_kill = ray.kill

    def recording_kill(actor, **kwargs):
        kills.append(actor)
        return real_kill(actor, **kwargs)

    monkeypatch.setattr(_actors.ray, "kill", recording_kill)
    gate = tmp_path / "gate"
    backend = RayBackend(initializer=gated_init, initargs=(str(tmp_path),))
    backend.configure(n_jobs=2)
    try:
        backend.start_call()
        paths = [tmp_path / f"pid-{i}" for i in range(4)]
        outs = [backend.submit(one(pid_then_sleep, str(path), 60)) for path in paths]  # two per actor
        assert _wait_for(lambda: any(p.exists() and p.read_text() for p in paths), 60), "no batch started"
        # the actor that passed its initializer runs a batch; the other one waits in it
        (created,) = {out.handle for out, path in zip(outs, paths, strict=True) if path.exists()}
        (held,) = [actor for actor in backend._pool.actors if actor != created]
        backend.abort_everything(ensure_ready=True)
        backend.stop_call()
        assert _wait_for(lambda: created in kills, 10), "the actor running a batch was not killed"
        assert held not in kills, "an actor still being created was killed"
        gate.touch()
        assert _wait_for(lambda: held in kills, 60), "the actor was not killed once created"
        got = [_outcome(backend, out, timeout=45) for out in outs]
        assert [g[0] for g in got] == ["CancelledError"] * 4, got
        assert len([p for p in paths if p.exists()]) == 1  # nothing ran on the held actor
        assert run_batches(backend, [one(abs, -i) for i in range(4)]) == [[0], [1], [2], [3]]  # new actors
    finally:
        gate.touch()
        backend.terminate()


def test_kill_when_created_waits_for_creation_at_most_its_timeout(monkeypatch):
    """The rule, without Ray: an actor whose ready() call is done (or that has none) is
    killed at once; one that Ray has not created is killed once it has or, if that never
    happens, at the timeout (its thread then ends)."""
    from par_backends_ray import _actors

    created = {"ref-a"}
    kills = []

    def fake_wait(refs, num_returns, timeout):
        done = [r for r in refs if r in created][:num_returns]
        if not done:
            time.sleep(min(timeout, 0.05))
        return done, [r for r in refs if r not in done]

    monkeypatch.setattr(_actors.ray, "wait", fake_wait)
    monkeypatch.setattr(_actors.ray, "kill", lambda actor, no_restart: kills.append(actor))
    _actors.kill_when_created([("a", "ref-a"), ("b", None), ("c", "ref-c"), ("d", "ref-d")], timeout=30)
    assert kills == ["a", "b"]  # created (or no ref): at once
    created.add("ref-c")
    assert _wait_for(lambda: "c" in kills, 10)  # once created
    assert "d" not in kills
    _actors.kill_when_created([("e", "ref-e")], timeout=0.2)
    assert _wait_for(lambda: "e" in kills, 10)  # never created: at its timeout
    created.add("ref-d")
    _actors._reaper.join(10)
    assert sorted(kills) == ["a", "b", "c", "d", "e"]
    assert not [t for t in threading.enumerate() if t.name == "par-ray-reaper"]


def test_ray_actor_whose_initializer_raised_is_replaced(cluster, tmp_path):
    """An actor whose initializer raised is dead for good (Ray does not restart it): its
    batch fails with a WorkerDiedError naming the initializer and a new actor takes its
    place for the next batches (was: every next batch went to the dead actor)."""
    backend = RayBackend(initializer=fail_first_init, initargs=(str(tmp_path / "started"),))
    backend.configure(n_jobs=1)
    try:
        with pytest.raises(
            WorkerDiedError, match=r"its initializer \S*fail_first_init raised: ValueError: cannot load"
        ):
            run_batches(backend, [one(abs, -1)])
        assert run_batches(backend, [one(abs, -2), one(abs, -3)]) == [[2], [3]]
    finally:
        backend.terminate()


def test_ray_initializer_failing_again_is_named_and_not_retried_forever(cluster):
    """An initializer that always raises: the first actor's batch says a new actor takes
    its place, the new actor's batch that it raised again and that par starts no more;
    later batches fail at once with the same message."""
    backend = RayBackend(initializer=always_fail_init)
    backend.configure(n_jobs=1)
    try:
        messages = []
        for _ in range(3):
            with pytest.raises(WorkerDiedError, match=r"its initializer \S*always_fail_init raised") as info_:
                run_batches(backend, [one(abs, -1)])
            assert "cannot load the model" in str(info_.value.__cause__)
            messages.append(str(info_.value))
        assert "par starts a new actor in its place" in messages[0] and " again" not in messages[0]
        assert "raised again, in an actor started in place of one" in messages[1], messages[1]
        assert "starts no more" in messages[1] and "starts no more" in messages[2]
        pool = backend._pool
        assert pool is not None and pool.init_replacements == 1
    finally:
        backend.terminate()
