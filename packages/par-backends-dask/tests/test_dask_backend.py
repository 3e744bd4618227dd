"""DaskBackend against a real distributed.LocalCluster (two worker processes on 127.0.0.1).

The backend is driven directly with par_api.BatchedCalls (the par scheduler and
Parallel are not dependencies of this package; tests-integration/test_dask_cluster.py
covers them).
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import socket
import threading
import time
import traceback

import distributed
import pytest
from par_api import (
    DEFAULT_STORE_THRESHOLD,
    BackendNotAvailableError,
    BatchedCalls,
    Task,
    WorkerDiedError,
    available_backends,
    make_backend,
)
from par_backends_dask import DEFAULT_SCATTER_THRESHOLD, DaskBackend, close_clients

pytestmark = [pytest.mark.dask, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def cluster():
    # allowed_failures=0: a batch whose worker dies fails at once (no rerun), so the
    # KilledWorker path is tested without killing a worker four times.
    # distributed's nannies write their pre-spawn environment (OMP_NUM_THREADS=1, ...)
    # into this process's os.environ for good: restore it so that later tests in the
    # same process do not see thread settings they did not make.
    saved = dict(os.environ)
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"allowed_failures": 0},
    ) as cluster:
        os.environ.clear()
        os.environ.update(saved)
        yield cluster


@pytest.fixture(scope="module")
def client(cluster):
    # Not the default client: tests choose when a "current client" exists.
    with distributed.Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
        yield client
    close_clients()


@pytest.fixture()
def backend(client):
    backend = DaskBackend(client=client)
    assert backend.configure(n_jobs=-1) == 2
    yield backend
    backend.terminate()


def run_batches(backend, batches, timeout=30):
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
        deadline = time.monotonic() + timeout
        while len(done) < len(outs) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(id(o) for o in done) == sorted(id(o) for o in outs)  # each callback once
        return [backend.retrieve_result_callback(out) for out in outs] if results else []
    finally:
        backend.stop_call()


def one(func, *args, **kwargs):
    return BatchedCalls([Task(func, args, kwargs)])


# -- functions run on the workers -----------------------------------------------------
def _worker_functions():
    """The functions the tests send to the workers. Defined in a closure (and using no
    other name of this module), so that pickling them by reference fails and distributed
    pickles them by value with cloudpickle: the worker processes cannot import this
    test module (its name depends on how pytest was started)."""

    def fails(x):
        raise KeyError(f"task failed on {x!r}")

    def in_worker_store(*args, **kwargs):
        """For each argument: is it the very object held in the worker's data store
        (i.e. it arrived as scattered data, not inline with the task)?"""
        values = list(distributed.get_worker().data.values())
        return [any(v is a for v in values) for a in (*args, *kwargs.values())]

    def nested_sum(backend, n, me, other):
        """A nested call on the same cluster through the backend, once the other outer
        task runs too (both worker threads are then taken)."""
        distributed.Event(me).set()
        if not distributed.Event(other).wait(timeout=15):
            raise RuntimeError("the two outer tasks did not run at the same time")
        backend.configure(n_jobs=-1)
        backend.start_call()
        try:
            outs = [backend.submit(BatchedCalls([Task(pow, (i, 2), {})])) for i in range(n)]
            return sum(backend.retrieve_result(out, timeout=10)[0] for out in outs)
        finally:
            backend.stop_call()
            backend.terminate()

    def die():
        os._exit(3)

    return fails, in_worker_store, nested_sum, die


fails, in_worker_store, nested_sum, die = _worker_functions()


# -- registry and arguments -----------------------------------------------------------
def test_dask_registered_through_entry_point():
    assert "dask" in available_backends()
    backend = make_backend("dask", scatter_threshold="2M", scheduler_address="tcp://127.0.0.1:1")
    assert isinstance(backend, DaskBackend)
    assert backend.scatter_threshold == 2 * 1024**2
    # the default is the one rule of par_api for both cluster backends, 1 MiB
    default = DaskBackend(scheduler_address="tcp://127.0.0.1:1").scatter_threshold
    assert default == DEFAULT_SCATTER_THRESHOLD == DEFAULT_STORE_THRESHOLD == 1024**2


def test_no_cluster_fails_when_the_backend_is_chosen_with_joblibs_phrase(monkeypatch):
    monkeypatch.delenv("PAR_DASK_SCHEDULER", raising=False)
    with pytest.raises(
        ValueError, match=r"first create a Dask Client\. backend='dask' found no dask cluster"
    ):
        DaskBackend()


def test_submit_keywords_are_checked_against_client_submit():
    b = DaskBackend(scheduler_address="tcp://127.0.0.1:1", workers=["tcp://w:1"], retries=2)
    assert b.submit_kwargs == {"workers": ["tcp://w:1"], "retries": 2}
    with pytest.raises(TypeError, match=r"unexpected arguments \['bogus'\].*Client.submit.*retries"):
        DaskBackend(scheduler_address="tcp://127.0.0.1:1", bogus=1)
    with pytest.raises(ValueError, match="wait_for_workers_timeout must be"):
        DaskBackend(scheduler_address="tcp://127.0.0.1:1", wait_for_workers_timeout=-1)


def test_dask_capability_flags():
    b = DaskBackend(scheduler_address="tcp://127.0.0.1:1")  # nothing connects before a call
    assert (b.supports_timeout, b.supports_return_generator, b.supports_auto_batching) == (True,) * 3
    assert (b.uses_threads, b.supports_sharedmem, b.supports_transport_hooks) == (False,) * 3
    assert not b.supports_inner_max_num_threads


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"bogus": 1}, TypeError, "bogus.*accepted: client, scheduler_address"),
        ({"scheduler_address": 8786}, TypeError, "scheduler_address must be"),
        ({"client": "tcp://x:1"}, TypeError, "client must be a distributed.Client"),
        ({"scatter_threshold": "lots"}, ValueError, "scatter_threshold='lots' is not a size"),
        ({"scatter_threshold": -1}, ValueError, "scatter_threshold must be a finite size >= 0"),
    ],
)
def test_dask_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        DaskBackend(**kwargs)


def test_dask_configure_rejects_unknown_kwargs(client):
    with pytest.raises(TypeError, match="unexpected arguments \\['initializer'\\]"):
        DaskBackend(client=client).configure(n_jobs=2, initializer=print)


def test_dask_no_client_error_says_how_to_start_one(monkeypatch):
    monkeypatch.delenv("PAR_DASK_SCHEDULER", raising=False)
    with pytest.raises(ValueError) as info:
        DaskBackend().configure(n_jobs=2)
    msg = str(info.value)
    assert "from distributed import Client; client = Client()" in msg
    assert "scheduler_address=" in msg and "PAR_DASK_SCHEDULER" in msg


def test_dask_unreachable_scheduler_names_the_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    address = f"tcp://127.0.0.1:{port}"
    with pytest.raises(OSError, match=f"could not connect to the dask scheduler at '{address}'"):
        DaskBackend(scheduler_address=address, connect_timeout=1).configure(n_jobs=2)


# -- the cluster ----------------------------------------------------------------------
def test_dask_effective_n_jobs_counts_cluster_threads(client):
    backend = DaskBackend(client=client)
    assert backend.effective_n_jobs(-1) == 2
    assert backend.effective_n_jobs(None) == 2
    assert backend.effective_n_jobs(-2) == 1
    assert backend.effective_n_jobs(-5) == 1
    assert backend.effective_n_jobs(7) == 7
    with pytest.raises(ValueError, match="n_jobs=0 is not allowed"):
        backend.effective_n_jobs(0)


def test_dask_uses_current_client(client):
    with client.as_current():
        backend = make_backend("dask")
        assert backend.configure(n_jobs=-1) == 2
        assert backend.get_client() is client
        assert run_batches(backend, [one(abs, -3)]) == [[3]]


def test_dask_env_var_names_the_scheduler(client, monkeypatch):
    monkeypatch.setenv("PAR_DASK_SCHEDULER", client.scheduler.address)
    backend = make_backend("dask")
    try:
        assert backend.configure(n_jobs=-1) == 2
        assert backend.get_client().scheduler.address == client.scheduler.address
        assert backend.get_client() is not client  # opened from the address, cached
        assert DaskBackend().get_client() is backend.get_client()
        assert run_batches(backend, [one(pow, 2, 5)]) == [[32]]
    finally:
        backend.terminate()
        close_clients()


def test_dask_runs_batches_in_order(backend):
    batches = [BatchedCalls([Task(pow, (i, 2), {}) for i in range(j, j + 3)], None, j) for j in (0, 3, 6)]
    assert run_batches(backend, batches) == [[0, 1, 4], [9, 16, 25], [36, 49, 64]]


def test_dask_task_error_keeps_type_and_remote_traceback(backend):
    backend.start_call()
    try:
        out = backend.submit(one(fails, 7))
        with pytest.raises(KeyError, match="task failed on 7") as info:
            backend.retrieve_result(out, timeout=30)
        with pytest.raises(KeyError):
            backend.retrieve_result_callback(out)
    finally:
        backend.stop_call()
    text = "".join(traceback.format_exception(info.value))
    assert "in fails" in text  # the worker's frame
    assert 'raise KeyError(f"task failed on {x!r}")' in text


def test_dask_abort_cancels_pending_futures(backend, client):
    backend.start_call()
    running = backend.submit(one(time.sleep, 0.5))
    pending = [backend.submit(one(time.sleep, 1)) for _ in range(6)]
    backend.abort_everything(ensure_ready=True)
    backend.stop_call()
    deadline = time.monotonic() + 10
    while any(f.status != "cancelled" for f in pending) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(f.status == "cancelled" for f in pending)
    with pytest.raises(distributed.CancelledError):
        backend.retrieve_result_callback(pending[0])
    # The futures are released when no object refers to them any more; the exception
    # raised just above (traceback -> frames -> futures) may sit in a reference cycle
    # until the collector runs, which can be long after: run it now.
    del running, pending
    gc.collect()

    def par_keys(dask_scheduler):  # with their state and who wants them, for the report
        return [
            (k, ts.state, sorted(str(c.client_key) for c in ts.who_wants or ()))
            for k, ts in dask_scheduler.tasks.items()
            if str(k).startswith("par-sleep")
        ]

    deadline = time.monotonic() + 10
    while client.run_on_scheduler(par_keys) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.run_on_scheduler(par_keys) == [], f"this client: {client.id}"
    # ensure_ready: the backend still works
    assert run_batches(backend, [one(abs, -1)]) == [[1]]


# -- completion watch: a lost message costs seconds, not a hang -------------------------
@pytest.fixture()
def quick_watch(backend):
    backend.watch_interval, backend.watch_after, backend.watch_grace = 0.1, 0.5, 0.3
    return backend


def _submit_and_wait(backend, batch, timeout=20):
    """Submit one batch as the par scheduler does; wait for its callback (not for the
    returned future, which a recovery replaces); return (returned future, callback's)."""
    got = []
    event = threading.Event()

    def callback(out):
        got.append(out)
        event.set()

    backend.start_call()
    try:
        future = backend.submit(batch, callback=callback)
        assert event.wait(timeout), "the batch's completion never reached the caller"
        time.sleep(0.5)  # a second callback would arrive by now
        return future, got
    finally:
        backend.stop_call()


def test_dask_watch_completes_a_batch_whose_completion_is_not_reported(quick_watch, monkeypatch, caplog):
    # as_completed never reports the future (it is never given it): the watch sees the
    # future done and completes it
    monkeypatch.setattr(distributed.as_completed, "update", lambda self, futures: None)
    with caplog.at_level("WARNING", logger="par_backends_dask"):
        future, got = _submit_and_wait(quick_watch, one(abs, -5))
    assert got == [future]  # once, with the batch's own future
    assert quick_watch.retrieve_result_callback(future) == [5]
    assert "was not reported within" in caplog.text


def _drop_completion_reports(client, monkeypatch, times):
    """Make ``client`` ignore the scheduler's 'key-in-memory' reports of par batches,
    ``times`` times: the scheduler has the result, the client never hears of it."""
    original = client._stream_handlers["key-in-memory"]
    dropped = []

    def handler(key=None, **kwargs):
        if str(key).startswith("par-") and len(dropped) < times:
            dropped.append(key)
            return None
        return original(key=key, **kwargs)

    monkeypatch.setitem(client._stream_handlers, "key-in-memory", handler)
    return dropped


def test_dask_watch_resubmits_a_batch_whose_completion_report_is_lost(
    quick_watch, client, monkeypatch, caplog
):
    dropped = _drop_completion_reports(client, monkeypatch, times=1)
    with caplog.at_level("WARNING", logger="par_backends_dask"):
        future, got = _submit_and_wait(quick_watch, one(abs, -7))
    assert dropped == [future.key]
    assert len(got) == 1 and got[0].key != future.key  # the resubmitted batch's future
    assert quick_watch.retrieve_result_callback(got[0]) == [7]
    assert "has it in state 'memory'" in caplog.text and "submitting the batch again (1 of 3)" in caplog.text


def test_dask_watch_gives_up_with_a_clear_error(quick_watch, client, monkeypatch):
    quick_watch.max_recoveries = 1
    dropped = _drop_completion_reports(client, monkeypatch, times=10)
    _, got = _submit_and_wait(quick_watch, one(abs, -7))
    assert len(dropped) == 2 and len(got) == 1
    with pytest.raises(RuntimeError, match="never told that it finished, 1 times"):
        quick_watch.retrieve_result_callback(got[0])


def _is_batch(key):
    return str(key).startswith("par-") and not str(key).startswith("par-probe-")


def _register_late(monkeypatch, seconds):
    """Make the scheduler (in this process) register each submitted par graph, batches
    and probes, ``seconds`` late, as a scheduler under load may: until then it does not
    know the keys (``get_task_status`` answers None). Returns the keys delayed."""
    import distributed.scheduler as scheduler_module

    original = scheduler_module._materialize_graph  # run in the scheduler's offload thread
    delayed = []

    def materialize(*args, **kwargs):
        out = original(*args, **kwargs)
        keys = [str(k) for k in out[0] if str(k).startswith("par-")]
        if keys:
            delayed.extend(keys)
            time.sleep(seconds)
        return out

    monkeypatch.setattr(scheduler_module, "_materialize_graph", materialize)
    return delayed


def test_dask_watch_waits_for_a_scheduler_slow_to_register_a_batch(quick_watch, monkeypatch, caplog):
    # The scheduler does not know the batch for 2 s, far beyond watch_after + watch_grace:
    # slow, not lost. The watch sees it from a probe submitted after the batch that the
    # scheduler does not know either, and neither submits the batch again nor gives up
    # (before: resubmitted at 0.8 s, then a RuntimeError after max_recoveries).
    quick_watch.max_recoveries = 1
    delayed = _register_late(monkeypatch, 2.0)
    with caplog.at_level("WARNING", logger="par_backends_dask"):
        future, got = _submit_and_wait(quick_watch, one(abs, -4))
    assert got == [future]  # its own future: not submitted again
    assert quick_watch.retrieve_result_callback(future) == [4]
    assert [r.getMessage() for r in caplog.records if r.name == "par_backends_dask"] == []
    assert [k for k in delayed if _is_batch(k)] == [future.key]
    assert any(k.startswith("par-probe-") for k in delayed)  # the watch looked and probed


def test_dask_watch_fails_a_batch_when_the_scheduler_stalls_past_watch_stall(quick_watch, monkeypatch):
    # never a hang: a scheduler that has not registered the probe after watch_stall
    # seconds fails the waiting batch with an error naming the stall
    quick_watch.watch_stall = 0.5
    _register_late(monkeypatch, 3.0)
    _, got = _submit_and_wait(quick_watch, one(abs, -4))
    assert len(got) == 1
    with pytest.raises(RuntimeError, match=r"has not registered the par batch .*watch_stall=0\.5 s"):
        quick_watch.retrieve_result_callback(got[0])


def _drop_submissions(scheduler, monkeypatch, times):
    """Make ``scheduler`` ignore the first ``times`` submissions of par batches (not of
    probes): a submission lost on its way, which it never registers."""
    original = scheduler.stream_handlers["update-graph"]
    dropped = []

    async def update_graph(**kwargs):
        keys = [str(k) for k in kwargs.get("keys") or ()]
        if len(dropped) < times and any(_is_batch(k) for k in keys):
            dropped.extend(keys)
            return
        await original(**kwargs)

    monkeypatch.setitem(scheduler.stream_handlers, "update-graph", update_graph)
    return dropped


def test_dask_watch_resubmits_a_batch_the_scheduler_never_registered(
    quick_watch, cluster, monkeypatch, caplog
):
    dropped = _drop_submissions(cluster.scheduler, monkeypatch, times=1)
    with caplog.at_level("WARNING", logger="par_backends_dask"):
        future, got = _submit_and_wait(quick_watch, one(abs, -6))
    assert dropped == [future.key]
    assert len(got) == 1 and got[0].key != future.key
    assert quick_watch.retrieve_result_callback(got[0]) == [6]
    assert "does not know it" in caplog.text and "submitting the batch again (1 of 3)" in caplog.text


def test_dask_watch_gives_up_on_a_batch_the_scheduler_never_registers(quick_watch, cluster, monkeypatch):
    quick_watch.max_recoveries = 1
    dropped = _drop_submissions(cluster.scheduler, monkeypatch, times=10)
    _, got = _submit_and_wait(quick_watch, one(abs, -6))
    assert len(dropped) == 2 and len(got) == 1
    with pytest.raises(RuntimeError, match=r"does not know it .* 1 times"):
        quick_watch.retrieve_result_callback(got[0])


def test_dask_watch_leaves_long_running_batches_alone(quick_watch, caplog):
    # older than watch_after, but the scheduler has it processing: no recovery
    with caplog.at_level("WARNING", logger="par_backends_dask"):
        future, got = _submit_and_wait(quick_watch, one(time.sleep, 2))
    assert got == [future]
    assert [r.getMessage() for r in caplog.records if r.name == "par_backends_dask"] == []
    assert not quick_watch._pending
    assert quick_watch._watch_state is None  # stop_call ended the watch


def _watch_threads():
    return [t for t in threading.enumerate() if t.name == "par-dask-watch" and t.is_alive()]


def test_dask_no_thread_outlives_the_call(backend):
    """The completion watch ends with the call, and no ``Dask-Callback-Thread`` is made
    (``Future.add_done_callback`` is not used)."""
    before = {t.ident for t in threading.enumerate()}
    assert run_batches(backend, [one(abs, -i) for i in range(6)]) == [[i] for i in range(6)]
    new = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert not [n for n in new if n == "par-dask-watch" or n.startswith("Dask-Callback-Thread")], new


def test_dask_watch_ends_when_idle_without_stop_call(backend):
    backend.watch_idle, backend.watch_interval = 0.3, 0.1
    backend.start_call()
    out = backend.submit(one(abs, -3))
    assert backend.retrieve_result(out, timeout=30) == [3]
    deadline = time.monotonic() + 10
    while _watch_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _watch_threads()
    backend.stop_call()


# -- per-task timeouts ------------------------------------------------------------------
def _hang_in_python(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # Python code: the interruption stops it
        pass
    return "finished"


def _worker_busy(client):
    """Keys the workers are executing now (including cancelled ones still running)."""

    def executing(dask_worker):
        return [str(ts.key) for ts in dask_worker.state.executing]

    return {k for keys in client.run(executing).values() for k in keys}


def _submit_timed(backend, batches, timeout):
    """Submit ``batches`` with a per-task timeout, as the scheduler does; wait for every
    callback; return the futures they were given, in submission order."""
    got: dict[int, object] = {}
    event = threading.Event()

    def callback(i, out):
        got[i] = out
        if len(got) == len(batches):
            event.set()

    backend.task_timeout = timeout
    backend.start_call()
    try:
        for i, b in enumerate(batches):
            backend.submit(b, callback=lambda out, i=i: callback(i, out))
        assert event.wait(60), got
        return [got[i] for i in range(len(batches))]
    finally:
        backend.stop_call()
        backend.task_timeout = None


def test_dask_task_timeout_fails_the_overrunning_batch_only(backend, client):
    t0 = time.monotonic()
    outs = _submit_timed(backend, [one(_hang_in_python, 60), one(abs, -1), one(abs, -2)], timeout=1.0)
    took = time.monotonic() - t0
    with pytest.raises(TimeoutError, match=r"cancelled after .* interrupted if it runs Python code"):
        backend.retrieve_result_callback(outs[0])
    assert [backend.retrieve_result_callback(o) for o in outs[1:]] == [[1], [2]]
    assert took < 30
    # the hung batch ran Python code: its thread was interrupted, the worker is free
    deadline = time.monotonic() + 10
    while _worker_busy(client) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _worker_busy(client)


def test_dask_task_timeout_counts_from_the_start_on_the_worker(backend):
    # 8 batches of 0.3 s on 2 worker threads: 1.2 s in all, none over 0.8 s alone
    outs = _submit_timed(backend, [one(time.sleep, 0.3) for _ in range(8)], timeout=0.8)
    assert [backend.retrieve_result_callback(o) for o in outs] == [[None]] * 8


def test_dask_run_timed_reports_the_start_and_withdraws_a_late_interrupt():
    from par_backends_dask import _timeouts

    assert _timeouts.run_timed("k-1", one(abs, -4)) == [4]  # not on a worker: no event
    assert not _timeouts.interrupt("k-1")  # not running any more
    assert not _timeouts._running


# -- arguments: scattered once per call -----------------------------------------------
def test_dask_large_array_scattered_once(backend):
    np = pytest.importorskip("numpy")
    big = np.ones(200_000)  # 1.6 MB > 1 MiB
    small = np.ones(10)
    batches = [one(in_worker_store, big, small, i) for i in range(4)]
    assert run_batches(backend, batches) == [[[True, False, False]]] * 4


def test_dask_repeated_argument_scattered_from_second_batch(backend):
    shared = list(range(5000))  # no known size, not small; repeated in every batch
    batches = [one(in_worker_store, shared, list(range(i + 50))) for i in range(4)]
    # the first batch carries it inline; from the second on it is scattered data
    assert run_batches(backend, batches) == [[[False, False]]] + [[[True, False]]] * 3


def test_dask_repeated_within_one_batch_stays_inline(backend):
    shared = {"weights": list(range(3000))}
    batch = BatchedCalls([Task(in_worker_store, (shared,), {}) for _ in range(3)])
    assert run_batches(backend, [batch]) == [[[False], [False], [False]]]


def test_dask_bytes_keyword_argument_scattered(backend):
    payload = b"x" * (2 * 1024**2)
    batch = BatchedCalls([Task(in_worker_store, (), {"data": payload}) for _ in range(2)])
    assert run_batches(backend, [batch]) == [[[True], [True]]]


def test_dask_scatter_threshold_none_never_scatters(client):
    backend = DaskBackend(client=client, scatter_threshold=None)
    backend.configure(n_jobs=2)
    payload = b"y" * (2 * 1024**2)
    assert run_batches(backend, [one(in_worker_store, payload) for _ in range(3)]) == [[[False]]] * 3


# -- nesting, pickling, dead workers --------------------------------------------------
def test_dask_backend_pickles_without_client(backend, client):
    clone = pickle.loads(pickle.dumps(backend))
    assert clone.client is None
    assert clone.scheduler_address == client.scheduler.address
    nested, n_jobs = backend.get_nested_backend()
    assert isinstance(nested, DaskBackend) and n_jobs is None
    assert pickle.loads(pickle.dumps(nested)).scheduler_address == client.scheduler.address


def test_dask_nested_calls_secede_instead_of_deadlocking(backend, client):
    # Two outer tasks, one pinned to each worker, hold both worker threads; their inner
    # tasks can only run if the waiting outer tasks leave the thread pool.
    nested, _ = backend.get_nested_backend()
    names = [f"par-test-outer-{i}-{time.monotonic_ns()}" for i in range(2)]
    batches = [one(nested_sum, nested, 4, names[0], names[1]), one(nested_sum, nested, 4, names[1], names[0])]
    workers = sorted(client.nthreads())
    assert len(workers) == 2
    futures = [
        client.submit(batch, workers=[worker], allow_other_workers=False, pure=False)
        for batch, worker in zip(batches, workers, strict=True)
    ]
    assert [f.result(timeout=60) for f in futures] == [[14], [14]]


@pytest.mark.slow
def test_dask_dead_worker_raises_worker_died_error(backend, client):
    backend.start_call()
    try:
        out = backend.submit(one(die))
        with client.as_current():
            distributed.wait([out], timeout=60)
        with pytest.raises(WorkerDiedError, match=r"died 1 times.*allowed-failures=0") as info:
            backend.retrieve_result_callback(out)
    finally:
        backend.stop_call()
    assert isinstance(info.value.__cause__, distributed.KilledWorker)
    client.wait_for_workers(2, timeout=60)  # the nanny restarts it
    assert run_batches(backend, [one(abs, -2)]) == [[2]]


def test_dask_unknown_backend_error_names_the_package():
    # par_api's registry knows which package provides 'dask'; here it is installed, so
    # the check is that another unknown name is refused with the list of backends.
    with pytest.raises(BackendNotAvailableError, match="dask"):
        make_backend("dask-typo")


def _count_in_worker_state():
    from par_api import worker_state

    state = worker_state()
    state["n"] = state.get("n", 0) + 1
    return distributed.get_worker().address, state["n"]


def test_dask_worker_state_lives_on_each_worker(backend):
    batches = [BatchedCalls([Task(_count_in_worker_state, (), {})]) for _ in range(12)]
    results = [r for batch in run_batches(backend, batches) for r in batch]
    results += [r for batch in run_batches(backend, batches) for r in batch]  # reused workers
    by_worker: dict = {}
    for address, n in results:
        by_worker.setdefault(address, []).append(n)
    assert sum(len(v) for v in by_worker.values()) == 24
    for counts in by_worker.values():  # one dict per dask worker, kept across calls
        assert sorted(counts) == list(range(1, len(counts) + 1))


def test_dask_abort_forgets_the_start_reports_it_awaited(backend):
    from par_backends_dask import _timeouts

    backend.task_timeout = 30.0
    try:
        backend.start_call()
        backend.submit(one(time.sleep, 5))
        assert len(_timeouts._handlers) >= 1
        backend.abort_everything()
        assert _timeouts._handlers == {}
    finally:
        backend.stop_call()
        backend.task_timeout = None


# -- the watch after review (issue 17): late recoveries, early start reports, cleanup ---
def _silent_runner():
    """A stand-in for ``_timeouts.run_timed`` that runs the batch without reporting its
    start (pickled by value: defined in a function, see _worker_functions)."""

    def run_silently(key, batch, *values):
        from par_backends_dask._pickling import KeepCode
        from par_backends_dask._scatter import run_batch

        if isinstance(batch, KeepCode):
            batch = batch.load()
        return run_batch(batch, *values)

    return run_silently


def test_dask_start_report_before_the_future_is_known_still_times_the_batch(backend, client, monkeypatch):
    # The start report can reach the client's loop before client.submit has returned to
    # _send: here it is delivered right then, and the batch itself reports nothing.
    from par_backends_dask import _timeouts
    from par_backends_dask import backend as backend_module

    monkeypatch.setattr(backend_module, "run_timed", _silent_runner())
    real_submit = client.submit
    reported = []

    def submit(*args, key, **kwargs):
        future = real_submit(*args, key=key, **kwargs)
        _timeouts._on_event((time.time(), {"key": key, "worker": None}))
        reported.append(key)
        return future

    monkeypatch.setattr(client, "submit", submit)
    (out,) = _submit_timed(backend, [one(time.sleep, 3)], timeout=0.5)
    assert len(reported) == 1
    with pytest.raises(TimeoutError, match="cancelled after"):
        backend.retrieve_result_callback(out)


def _started_entry(backend, seconds=3):
    backend.start_call()
    future = backend.submit(one(time.sleep, seconds))
    with backend._lock:
        entry = backend._pending[future]
    return future, entry


def _par_sleep_keys(client):
    def keys(dask_scheduler):
        return sorted(str(k) for k in dask_scheduler.tasks if str(k).startswith("par-sleep"))

    return client.run_on_scheduler(keys)


def test_dask_recovery_of_an_aborted_call_resubmits_nothing(backend, client):
    # The watch looked the batch up before the abort and recovers it after a new call
    # started: that call must not get the old call's batch.
    future, entry = _started_entry(backend)
    try:
        backend.abort_everything()
        backend.start_call()
        backend._recover(entry, str(future.key), "memory")
        assert entry.future is future
        assert backend._pending == {}
        assert backend._watch_state is None and not _watch_threads()
    finally:
        backend.stop_call()


def test_dask_abort_during_a_recovery_resubmits_nothing(backend, client):
    # abort_everything runs while _recover is between its check and the resubmission
    # (here: when it logs that it submits again)
    # keys an earlier test's cancelled batches may still hold on the shared scheduler
    earlier = set(_par_sleep_keys(client))
    future, entry = _started_entry(backend)

    class AbortOnResubmit(logging.Handler):
        def emit(self, record):
            if "submitting the batch again" in record.getMessage():
                backend.abort_everything()

    handler = AbortOnResubmit(level=logging.WARNING)
    logger = logging.getLogger("par_backends_dask")
    logger.addHandler(handler)
    try:
        backend._recover(entry, str(future.key), "memory")
    finally:
        logger.removeHandler(handler)
        backend.stop_call()
    assert entry.future is future  # nothing submitted under a new key
    assert backend._pending == {}
    assert backend._watch_state is None and not _watch_threads()
    assert [k for k in _par_sleep_keys(client) if k != future.key and k not in earlier] == []


def test_dask_timed_calls_leave_no_start_report_awaited_nor_subscription(backend):
    from par_backends_dask import _timeouts

    for _ in range(2):  # the second call subscribes the client again
        outs = _submit_timed(backend, [one(time.sleep, 3), one(abs, -1)], timeout=0.5)
        with pytest.raises(TimeoutError):
            backend.retrieve_result_callback(outs[0])
        assert backend.retrieve_result_callback(outs[1]) == [1]
        assert _timeouts._handlers == {}
        assert _timeouts._subscribed == {}


def test_dask_stop_call_forgets_the_start_reports_it_awaited(backend):
    from par_backends_dask import _timeouts

    backend.task_timeout = 30.0
    try:
        backend.start_call()
        backend.submit(one(time.sleep, 5))
        assert len(_timeouts._handlers) == 1 and len(_timeouts._subscribed) == 1
        backend.stop_call()
        assert _timeouts._handlers == {}
        assert _timeouts._subscribed == {}
    finally:
        backend.abort_everything()  # cancels the batch still pending
        backend.task_timeout = None


def test_dask_watch_not_ending_in_time_is_logged(backend, caplog):
    backend.watch_join_timeout = 0.2
    entered, release = threading.Event(), threading.Event()

    def stuck_callback(out):
        entered.set()
        release.wait(30)

    backend.start_call()
    backend.submit(one(abs, -1), callback=stuck_callback)
    assert entered.wait(30)
    (thread,) = _watch_threads()
    try:
        with caplog.at_level("WARNING", logger="par_backends_dask"):
            backend.stop_call()
        assert thread.is_alive()
        assert "did not end within 0.2 s" in caplog.text
    finally:
        release.set()
        thread.join(10)
    assert not thread.is_alive()


class _CountingDict(dict):
    walks = 0

    def values(self):
        type(self).walks += 1
        return super().values()


def test_dask_watch_does_not_walk_the_pending_batches_per_completion(backend):
    # Between the periodic checks (every watch_interval) the watch finds completions
    # and deadlines without looking at every pending batch.
    backend.watch_interval = 60.0
    backend._pending = _CountingDict()
    _CountingDict.walks = 0
    outs = _submit_timed(backend, [one(abs, -i) for i in range(30)], timeout=30)
    assert [backend.retrieve_result_callback(o) for o in outs] == [[i] for i in range(30)]
    assert _CountingDict.walks == 0
