"""par on a real dask cluster started from the command line: `dask scheduler` and two
`dask worker` processes (one thread each) on loopback ports, driven through
par.Parallel with backend='dask'.

The processes are started in their own process groups and killed at the end of the
module, also when a test fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings

import pytest

distributed = pytest.importorskip("distributed")
pytest.importorskip("par_backends_dask")

from par import Parallel, WorkerDiedError, delayed, parallel_config  # noqa: E402
from par_backends_dask import close_clients  # noqa: E402

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import ExceptionGroup

pytestmark = [pytest.mark.dask, pytest.mark.timeout(120)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _end_with_this_process() -> None:
    """(In the child, before exec.) On Linux, a SIGTERM when the process that started it
    ends, so that a test process killed before the fixture's teardown (pytest-timeout's
    thread method, a killed xdist worker) leaves no cluster behind: the scheduler and
    the nannies shut down cleanly on SIGTERM, ending their workers."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _spawn(args: list[str], log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dask", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: killed as a whole at the end
        preexec_fn=_end_with_this_process,
    )


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; make sure no child (the worker under the nanny) survives
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


_CLUSTER_LOG: dict = {}  # the running cluster's log file, for failure reports


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory):
    """(address, client) of a scheduler and two workers started with the dask CLI."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("dask-cli") / "cluster.log"
    _CLUSTER_LOG["path"] = log_path
    procs: list[subprocess.Popen] = []
    client = None
    with open(log_path, "wb") as log:
        try:
            procs.append(
                _spawn(["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], log)
            )
            for i in range(2):
                procs.append(
                    _spawn(
                        [
                            "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                            "--no-dashboard", "--name", f"par-test-{i}", "--death-timeout", "60",
                        ],
                        log,
                    )
                )  # fmt: skip
            client = distributed.Client(address, timeout=60, set_as_default=False)
            client.wait_for_workers(2, timeout=60)
            yield address, client
        except BaseException:
            log.flush()
            print(log_path.read_text(errors="replace")[-5000:])
            raise
        finally:
            close_clients()
            if client is not None:
                client.close(timeout=10)
            for proc in reversed(procs):
                _kill_group(proc)


@pytest.fixture()
def cluster(cli_cluster):
    _, client = cli_cluster
    client.wait_for_workers(2, timeout=60)  # after a test that killed one
    return cli_cluster


def _par_tasks(client):
    """Keys of par batches still queued or running on the cluster (a failed batch stays
    known, in state 'erred', while its exception is referenced)."""

    def pending(dask_scheduler):
        return [
            k
            for k, ts in dask_scheduler.tasks.items()
            if str(k).startswith("par-") and ts.state in ("waiting", "queued", "processing", "no-worker")
        ]

    return client.run_on_scheduler(pending)


def _wait_no_par_tasks(client, timeout=15):
    deadline = time.monotonic() + timeout
    while _par_tasks(client) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _par_tasks(client)


# -- functions run on the workers -----------------------------------------------------
def _worker_functions():
    """The functions the tests send to the workers, defined in a closure (using no other
    name of this module) so that distributed pickles them by value with cloudpickle:
    the workers cannot import this test module."""

    def square_pid(x):
        return x * x, os.getpid()

    def fail_on(x, bad, release):
        if x == bad:
            raise LookupError(f"no item {x}")
        distributed.Event(release).wait(timeout=20)  # blocks until the test releases it
        return x

    def inner_sum(n, me, other):
        # Wait (a little) for the other outer task, so that usually both worker threads
        # are held when the inner calls start (the unit tests pin this case exactly).
        distributed.Event(me).set()
        distributed.Event(other).wait(timeout=5)
        return sum(Parallel()(delayed(pow)(i, 2) for i in range(n)))

    def slow_pid(x, seconds):
        time.sleep(seconds)
        return x, os.getpid()

    def nbytes_of(a, i):
        return int(a.nbytes) + i

    def thread_stacks():
        import sys
        import threading
        import traceback

        names = {t.ident: t.name for t in threading.enumerate()}
        return {
            names.get(ident, str(ident)): "".join(traceback.format_stack(frame)[-12:])
            for ident, frame in sys._current_frames().items()
        }

    def client_state(dask_worker):
        """The worker's own client: its id, status, connection and the state of each
        future it holds (what the nested calls wait on)."""
        client = dask_worker._client
        if client is None:
            return "no worker client"
        comm = getattr(client, "scheduler_comm", None)
        futures = {str(k): st.status for k, st in list(client.futures.items())}
        return {
            "id": client.id,
            "status": client.status,
            "comm_closed": None if comm is None else comm.comm.closed(),
            "futures": futures,
            "callback_executor": repr(distributed.client.Future._cb_executor),
        }

    return square_pid, fail_on, inner_sum, slow_pid, nbytes_of, thread_stacks, client_state


square_pid, fail_on, inner_sum, slow_pid, nbytes_of, thread_stacks, client_state = _worker_functions()


def _scheduler_view(client):
    """The scheduler's clients and every par task it knows, with who wants it."""

    def view(dask_scheduler):
        return {
            "clients": sorted(str(c) for c in dask_scheduler.clients),
            "par_tasks": {
                str(k): (ts.state, sorted(str(c.client_key) for c in ts.who_wants or ()))
                for k, ts in dask_scheduler.tasks.items()
                if str(k).startswith("par-")
            },
        }

    return client.run_on_scheduler(view)


def _hang_report(client, log_path=None):
    """Everything known about a hung call: scheduler view, worker clients, all threads,
    and the end of the cluster's log (each part best effort)."""
    import concurrent.futures

    parts = []
    ex = concurrent.futures.ThreadPoolExecutor(2)
    try:
        for title, fn in (
            ("scheduler", lambda: _scheduler_view(client)),
            ("worker clients", lambda: client.run(client_state, on_error="return")),
        ):
            try:
                parts.append(f"{title}: {ex.submit(fn).result(timeout=15)!r}")
            except Exception as exc:
                parts.append(f"{title}: <unavailable: {exc!r}>")
    finally:
        ex.shutdown(wait=False)
    parts.append(f"all threads of the workers:\n{_all_thread_stacks(client)}")
    if log_path is not None:
        try:
            parts.append("cluster log (end):\n" + log_path.read_text(errors="replace")[-6000:])
        except OSError as exc:
            parts.append(f"cluster log: <unavailable: {exc!r}>")
    return "\n".join(parts)


def _all_thread_stacks(client, timeout=15):
    """Every thread's stack on every worker (from a helper thread: a blocked worker loop
    must not hang the report)."""
    import concurrent.futures

    ex = concurrent.futures.ThreadPoolExecutor(1)
    future = ex.submit(client.run, thread_stacks, on_error="return")
    try:
        stacks = future.result(timeout=timeout)
    except Exception as exc:  # the report must not hide the failure
        return f"<could not get the workers' threads: {exc!r}>"
    finally:
        ex.shutdown(wait=False)  # not `with`: its exit would wait for a blocked client.run
    return "\n".join(
        f"--- {worker} / {name}:\n{stack}"
        for worker, threads in stacks.items()
        for name, stack in threads.items()
    )


# -- tests ----------------------------------------------------------------------------
def test_dask_scheduler_address_and_all_threads(cluster):
    address, client = cluster
    workers = set(client.run(os.getpid).values())
    with parallel_config(backend="dask", scheduler_address=address):
        with Parallel(n_jobs=-1) as parallel:
            assert parallel._effective_n_jobs == 2
            out = parallel(delayed(square_pid)(i) for i in range(20))
    assert [r for r, _ in out] == [i * i for i in range(20)]
    assert {pid for _, pid in out} <= workers


def test_dask_current_client(cluster):
    address, _ = cluster
    with distributed.Client(address, timeout=30) as client, parallel_config(backend="dask"):
        assert client is distributed.get_client()
        assert Parallel()(delayed(abs)(-i) for i in range(6)) == list(range(6))


def test_dask_client_instance(cluster):
    _, client = cluster
    with parallel_config(backend="dask", client=client):
        assert Parallel(n_jobs=2)(delayed(pow)(2, i) for i in range(5)) == [1, 2, 4, 8, 16]


@pytest.mark.slow
def test_dask_env_vars_switch_backend_without_code_change(cluster):
    address, client = cluster
    workers = set(client.run(os.getpid).values())
    script = (
        "import os\n"
        "from par import Parallel, delayed\n"
        "print(sorted(set(Parallel(n_jobs=-1)(delayed(os.getpid)() for _ in range(8)))))\n"
        "print(os.getpid())\n"
    )
    env = dict(os.environ, PAR_BACKEND="dask", PAR_DASK_SCHEDULER=address)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pids_line, own_pid = proc.stdout.strip().splitlines()[-2:]
    pids = set(eval(pids_line))  # a list of ints printed by the child
    assert pids and pids <= workers
    assert int(own_pid) not in pids


def test_dask_error_type_traceback_and_cancel(cluster):
    _, client = cluster
    release = distributed.Event(f"par-it-release-{time.monotonic_ns()}", client=client)
    try:
        with parallel_config(backend="dask", client=client):
            with pytest.raises(LookupError, match="no item 0") as info:
                Parallel(n_jobs=2, batch_size=1)(delayed(fail_on)(i, 0, release.name) for i in range(40))
        text = "".join(traceback.format_exception(info.value))
        assert "in fail_on" in text and 'raise LookupError(f"no item {x}")' in text
        # The other batches block until released: they leave the cluster only because
        # the first error cancelled them.
        assert _wait_no_par_tasks(client, timeout=10) == []
    finally:
        release.set()


def test_dask_timeout_is_honoured(cluster):
    _, client = cluster
    release = distributed.Event(f"par-it-release-{time.monotonic_ns()}", client=client)
    t0 = time.monotonic()
    try:
        with parallel_config(backend="dask", client=client):
            with pytest.raises(TimeoutError):
                Parallel(n_jobs=2, timeout=0.5, batch_size=1)(
                    delayed(fail_on)(i, -1, release.name) for i in range(6)
                )
        assert time.monotonic() - t0 < 15  # generous: "does not hang"
        assert _wait_no_par_tasks(client, timeout=10) == []  # cancelled, not finished
    finally:
        release.set()


@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_dask_return_as_generators(cluster, return_as):
    _, client = cluster
    with parallel_config(backend="dask", client=client):
        gen = Parallel(n_jobs=2, return_as=return_as)(delayed(pow)(i, 2) for i in range(30))
        assert not isinstance(gen, list)
        out = list(gen)
    if return_as == "generator":
        assert out == [i * i for i in range(30)]
    else:
        assert sorted(out) == [i * i for i in range(30)]


# Known flake (issue 7): under load, par's completion watch gave up with a RuntimeError
# ("the dask scheduler does not know it ... 3 times in a row") after 3 resubmissions
# (full suite runs on 2026-12-06, load 10-14). Every recorded failure was that message:
# a scheduler not yet registering an inner batch, which the watch counted as lost. Since
# par-backends-dask's watch treats an unknown batch as lost only once the scheduler knows a
# probe submitted after it (test_dask_watch_waits_for_a_scheduler_slow_to_register_a_batch),
# such a delay no longer fails the call. The rerun stays until full loaded runs confirm it.
@pytest.mark.flaky(reruns=1, only_rerun=["RuntimeError"])
def test_dask_nested_parallel_does_not_deadlock(cluster):
    _, client = cluster
    names = [f"par-it-outer-{i}-{time.monotonic_ns()}" for i in range(2)]
    with parallel_config(backend="dask", client=client):
        try:
            out = Parallel(n_jobs=2, batch_size=1, timeout=60)(
                [delayed(inner_sum)(5, names[0], names[1]), delayed(inner_sum)(5, names[1], names[0])]
            )
        except TimeoutError:
            # hangs about 1 run in 17 of the full suite (issue 7, open): say where the tasks are
            pytest.fail(
                f"the nested call did not finish in 60 s\n{_hang_report(client, _CLUSTER_LOG.get('path'))}"
            )
    assert out == [30, 30]
    # A completion that the worker's client missed is recovered by par's completion
    # watch (a warning in the worker's log): say so, since it means dask lost a message.
    log_path = _CLUSTER_LOG.get("path")
    recovered = [
        line
        for line in (log_path.read_text(errors="replace").splitlines() if log_path else [])
        if line.startswith("par: ")
    ]
    if recovered:
        warnings.warn(f"par's dask completion watch acted on the cluster: {recovered}", stacklevel=1)


def _count_bytes_to(address, monkeypatch):
    """Count the bytes this process writes to ``address`` over TCP (distributed's
    TCP.write returns the number of bytes it wrote)."""
    from distributed.comm.tcp import TCP

    counter = {"bytes": 0}
    original = TCP.write

    async def write(self, msg, *args, **kwargs):
        n = await original(self, msg, *args, **kwargs)
        if self.peer_address == address:
            counter["bytes"] += n
        return n

    monkeypatch.setattr(TCP, "write", write)
    return counter


def test_dask_large_array_sent_once(cluster, monkeypatch):
    np = pytest.importorskip("numpy")
    address, _ = cluster
    # a client of its own, created after the counter, so its connections are counted
    counter = _count_bytes_to(address, monkeypatch)
    a = np.ones(1_000_000)  # 8 MB
    with distributed.Client(address, timeout=30, set_as_default=False) as client:
        with parallel_config(backend="dask", client=client):
            before = counter["bytes"]
            out = Parallel(n_jobs=2, batch_size=1)(delayed(nbytes_of)(a, i) for i in range(10))
            scattered = counter["bytes"] - before
            before = counter["bytes"]
            with parallel_config(backend="dask", client=client, scatter_threshold=None):
                inline = Parallel(n_jobs=2, batch_size=1)(delayed(nbytes_of)(a, i) for i in range(10))
            not_scattered = counter["bytes"] - before
    assert out == inline == [a.nbytes + i for i in range(10)]
    assert a.nbytes <= scattered < 2 * a.nbytes  # once
    assert not_scattered >= 10 * a.nbytes  # with every task


@pytest.mark.slow
def test_dask_worker_killed_mid_call_is_rerun(cluster):
    _, client = cluster
    pids = client.run(os.getpid)  # worker address -> pid of the worker process
    with parallel_config(backend="dask", client=client):
        gen = Parallel(n_jobs=2, batch_size=1, return_as="generator")(
            delayed(slow_pid)(i, 1.5) for i in range(4)
        )
        # wait until a worker is running one of the tasks, then SIGKILL that worker
        victim = None
        deadline = time.monotonic() + 20
        while victim is None and time.monotonic() < deadline:
            for worker, keys in client.processing().items():
                if any(str(k).startswith("par-slow_pid") for k in keys) and worker in pids:
                    victim = pids[worker]
                    break
            time.sleep(0.05)
        assert victim is not None, "no task started on the cluster"
        time.sleep(0.3)  # mid-task
        os.kill(victim, signal.SIGKILL)
        out = list(gen)  # dask reruns the lost task: the call completes
    assert [x for x, _ in out] == [0, 1, 2, 3]
    assert victim not in {pid for _, pid in out}
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker


def test_dask_no_thread_left_behind_by_calls(cluster):
    _, client = cluster
    before = threading.active_count()
    with parallel_config(backend="dask", client=client):
        for _ in range(3):
            assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(10)) == list(range(10))
    # par's completion watch ends with the call (stop_call joins it), and no
    # Dask-Callback-Thread is started (par does not use Future.add_done_callback)
    names = [t.name for t in threading.enumerate()]
    assert [n for n in names if n == "par-dask-watch" or n.startswith("Dask-Callback-Thread")] == []
    assert threading.active_count() <= before


def _fails_on_three(i):
    if i % 4 == 3:
        raise ValueError(f"bad {i}")
    return i


def test_dask_on_error_return_and_collect(cluster):
    """The failure policy on dask: failures in place (with their notes), or grouped."""
    _, client = cluster
    with parallel_config(backend="dask", client=client):
        out = Parallel(n_jobs=2, on_error="return")(delayed(_fails_on_three)(i) for i in range(12))
        assert [r for i, r in enumerate(out) if i % 4 != 3] == [i for i in range(12) if i % 4 != 3]
        assert all(isinstance(out[i], ValueError) and f"par: task {i} (" in out[i].__notes__[0] for i in (3, 7, 11))
        with pytest.raises(ExceptionGroup) as info:
            Parallel(n_jobs=2, on_error="collect")(delayed(_fails_on_three)(i) for i in range(12))
    assert sorted(str(e) for e in info.value.exceptions) == ["bad 11", "bad 3", "bad 7"]
    assert info.value.results[:3] == [0, 1, 2]
    _wait_no_par_tasks(client)
    assert not _par_tasks(client)


def _flaky_file(i, folder, fails):
    """Raises ConnectionError ``fails`` times (counted in a file: the attempts may run on
    different workers), then returns ``i``."""
    path = os.path.join(folder, str(i))
    with open(path, "a") as f:
        f.write("x")
    with open(path) as f:
        runs = len(f.read())
    if runs <= fails:
        raise ConnectionError(f"flaky {i} run {runs}")
    return i


@pytest.mark.parametrize("on_error", ["raise", "return"])
def test_dask_retries_on_listed_exceptions(cluster, tmp_path, on_error):
    """retries/retry_on on dask: a listed exception is retried, an unlisted one is not."""
    _, client = cluster
    events = []
    with parallel_config(backend="dask", client=client):
        out = Parallel(
            n_jobs=2, on_error=on_error, retries=2, retry_on=(ConnectionError,), progress=events.append
        )(delayed(_flaky_file)(i, str(tmp_path), 2 if i == 4 else 0) for i in range(8))
        assert out == list(range(8))
        assert events[-1].n_retried == 2 and events[-1].n_failed == 0
        (tmp_path / "other").mkdir()
        out = Parallel(n_jobs=2, on_error="return", retries=3, retry_on=(KeyError,))(
            delayed(_flaky_file)(i, str(tmp_path / "other"), 1 if i == 2 else 0) for i in range(4)
        )
    assert isinstance(out[2], ConnectionError) and out[:2] == [0, 1] and out[3] == 3
    assert (tmp_path / "other" / "2").read_text() == "x"  # ran once: not listed
    _wait_no_par_tasks(client)


def _exit_at(i, at, marker):
    """``os._exit(1)`` at task ``at`` (while ``marker`` does not exist, when given)."""
    if i == at and (marker is None or not os.path.exists(marker)):
        if marker is not None:
            open(marker, "w").close()
        os._exit(1)
    return i


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_dask_crash_isolation_only_the_killer_fails(cluster, tmp_path):
    """A task that kills its dask worker, in a batch of three. dask reruns the batch on
    other workers until it gives up (KilledWorker after allowed-failures + 1 = 4 deaths);
    par then runs the batch's tasks one by one, and only the killer fails (4 more
    deaths), with a WorkerDiedError in its place: its batch neighbours get their
    results. (1-2.5 minutes here: 8 worker restarts by the nannies.) A task that kills
    its worker only once gets its result (dask's own rerun)."""
    _, client = cluster
    with parallel_config(backend="dask", client=client):
        out = Parallel(n_jobs=2, on_error="return", batch_size=3)(
            delayed(_exit_at)(i, 4, None) for i in range(6)
        )
        assert isinstance(out[4], WorkerDiedError) and "par: task 4 (" in out[4].__notes__[0]
        assert [r for i, r in enumerate(out) if i != 4] == [0, 1, 2, 3, 5]
        client.wait_for_workers(2, timeout=60)
        out = Parallel(n_jobs=2, batch_size=3)(delayed(_exit_at)(i, 4, str(tmp_path / "died")) for i in range(6))
    assert out == list(range(6))
    client.wait_for_workers(2, timeout=60)
