"""par on a real Ray cluster started as an operator starts one (`ray start --head
--num-cpus 2`, a 100 MB object store, ports and a temp dir of its own), driven through
par.Parallel with backend='ray' and connecting by address.

One cluster serves the module; at its end the driver disconnects, the cluster's
processes are ended (by their session, not `ray stop`, which would end every Ray
process of the machine) and none may be left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("par_backends_ray")

from par import Parallel, WorkerDiedError, delayed, parallel_config  # noqa: E402
from par_backends_ray import LocalCluster, RayBackend, shutdown  # noqa: E402
from par_backends_ray._cluster import session_members  # noqa: E402

# method="thread": see packages/par-backends-ray/tests/test_ray_backend.py
pytestmark = [pytest.mark.ray, pytest.mark.timeout(180, method="thread")]


@pytest.fixture(scope="module")
def cluster():
    cluster = LocalCluster(num_cpus=2, object_store_memory=100_000_000).start()
    try:
        yield cluster
    finally:
        shutdown()  # the driver connection par opened
        if ray.is_initialized():
            ray.shutdown()
        cluster.stop()
        assert cluster.pids() == []


@pytest.fixture()
def on_ray(cluster):
    with parallel_config(backend="ray", address=cluster.address):
        yield cluster


# -- functions run on the workers (by value: the workers cannot import this module) ------
def _worker_functions():
    def square_pid(x):
        return x * x, os.getsid(0)

    def fail_at(x, bad, marks):
        if x == bad:
            raise LookupError(f"no item {x}")
        time.sleep(0.3)
        with open(os.path.join(marks, str(x)), "w"):
            pass
        return x

    def nbytes(a, i):
        return int(a.nbytes) + i

    def inner(i, log):
        start = time.time()
        time.sleep(0.05)
        with open(log, "a") as f:
            f.write(f"{start} {time.time()}\n")
        return i * i

    def outer(n, log):
        from par import Parallel, delayed

        return sum(Parallel()(delayed(inner)(i, log) for i in range(n)))

    def pid_then_sleep(path, x):
        if x == 0:
            with open(path, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(60)
        return x

    def exit_at(i, bad, folder):
        """Task ``bad`` ends its worker process each time it runs (one file per run)."""
        if i == bad:
            runs = len([n for n in os.listdir(folder) if n.startswith("run-")])
            open(os.path.join(folder, f"run-{runs}"), "w").close()
            os._exit(3)
        return i

    def fail_when_exists(path, x):
        """Raise once ``path`` exists: the other batch has started (the abort is then
        sure to find it running, however slowly its actor started)."""
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.02)
        raise LookupError(f"no item {x}")

    def init_state(tag):
        import par

        state = par.worker_state()
        state["tag"] = tag
        state["inits"] = state.get("inits", 0) + 1
        state["n"] = 0

    def count_in_state(i):
        import par

        state = par.worker_state()
        state["n"] += 1
        time.sleep(0.01)
        return os.getpid(), state["tag"], state["inits"], state["n"]

    return square_pid, fail_at, nbytes, inner, outer, pid_then_sleep, exit_at, fail_when_exists, init_state, count_in_state


square_pid, fail_at, nbytes, inner, outer, pid_then_sleep, exit_at, fail_when_exists, init_state, count_in_state = _worker_functions()


def test_parallel_on_ray_in_order_on_the_clusters_workers(on_ray):
    out = Parallel()(delayed(square_pid)(i) for i in range(20))
    assert [r for r, _ in out] == [i * i for i in range(20)]
    assert {sid for _, sid in out} == {on_ray.session}  # run by the cluster's workers


@pytest.mark.parametrize("return_as", ["list", "generator", "generator_unordered"])
def test_parallel_on_ray_return_as(on_ray, return_as):
    out = Parallel(return_as=return_as, batch_size=2)(delayed(pow)(i, 2) for i in range(30))
    if return_as != "list":
        assert not isinstance(out, list)
        out = list(out)
    if return_as == "generator_unordered":
        out = sorted(out)
    assert out == [i * i for i in range(30)]


def test_first_error_keeps_type_traceback_and_cancels_the_rest(on_ray, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    with pytest.raises(LookupError, match="no item 3") as info:
        Parallel(batch_size=1)(delayed(fail_at)(i, 3, str(marks)) for i in range(40))
    assert type(info.value) is LookupError
    text = "".join(traceback.format_exception(info.value))
    assert "in fail_at" in text and 'raise LookupError(f"no item {x}")' in text
    time.sleep(1.5)  # what was not cancelled would have finished by now
    ran = len(list(marks.iterdir()))
    assert ran < 39, f"{ran} tasks ran after the error: the rest was not cancelled"


def test_large_argument_crosses_once_per_call(cluster):
    np = pytest.importorskip("numpy")
    a = np.ones(50 * 1000 * 1000 // 8)  # 50 MB
    backend = RayBackend(address=cluster.address)
    with parallel_config(backend=backend):
        out = Parallel(batch_size=1)(delayed(nbytes)(a, i) for i in range(20))
    assert out == [a.nbytes + i for i in range(20)]
    assert (backend.n_put, backend.bytes_put) == (1, a.nbytes)


def test_nested_parallel_no_deadlock_no_oversubscription(on_ray, tmp_path):
    log = tmp_path / "inner.log"
    # two outer tasks take the two CPUs; their inner calls can only run on what they give back
    out = Parallel(n_jobs=2, batch_size=1)(delayed(outer)(n, str(log)) for n in (12, 16))
    assert out == [sum(i * i for i in range(n)) for n in (12, 16)]
    events = []
    for line in log.read_text().split("\n"):
        if line:
            start, end = map(float, line.split())
            events += [(start, 1), (end, -1)]
    running = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        running += step
        peak = max(peak, running)
    assert len(events) == 2 * 28
    assert peak <= 2, f"{peak} inner tasks ran at once on a 2-CPU cluster"


def test_killed_worker_gives_a_clear_error_not_a_hang(cluster, tmp_path):
    path = tmp_path / "pid"
    outcome = {}

    def call():  # in a thread: this one kills the worker meanwhile
        try:
            with parallel_config(backend="ray", address=cluster.address, max_retries=0):
                outcome["results"] = Parallel(batch_size=1)(delayed(pid_then_sleep)(str(path), i) for i in range(4))
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 60
    while not (path.exists() and path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(int(path.read_text()), signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive(), "the call hangs after its worker was killed"
    error = outcome.get("error")
    assert isinstance(error, WorkerDiedError), outcome
    assert "par-pid_then_sleep" in str(error) and "max_retries=0" in str(error)


def test_failure_policy_runs_inside_the_ray_tasks(on_ray):
    # on_error/retries are applied by the scheduler's Guard in the task: nothing to map
    out = Parallel(on_error="return", batch_size=2)(delayed(fail_at)(i, 2, "/nonexistent") for i in (2,))
    assert len(out) == 1 and type(out[0]) is LookupError and str(out[0]) == "no item 2"


@pytest.mark.parametrize(("max_retries", "retries", "runs"), [(0, 0, 1), (0, 2, 3), (1, 1, 4)])
def test_a_task_killing_its_worker_is_isolated_and_the_layers_retry_it(cluster, tmp_path, max_retries, retries, runs):
    """Crash isolation on Ray: the task that ends its worker gets a WorkerDiedError
    naming it, the others their results; Ray re-runs it ``max_retries`` times, and par
    ``retries`` times on top of that (each with Ray's own retries)."""
    with parallel_config(backend="ray", address=cluster.address, max_retries=max_retries):
        out = Parallel(on_error="return", retries=retries)(delayed(exit_at)(i, 3, str(tmp_path)) for i in range(6))
    assert [o for i, o in enumerate(out) if i != 3] == [0, 1, 2, 4, 5]
    assert isinstance(out[3], WorkerDiedError) and "task 3 (" in str(out[3]), out[3]
    assert len(list(tmp_path.iterdir())) == runs  # 1 + retries, times 1 + max_retries


def test_initializer_runs_once_per_actor_and_worker_state_lasts_the_with_block(on_ray, probe):
    """With an initializer the batches run on n_jobs actors: each runs the initializer
    once, and its worker_state() carries over from one call of the block to the next."""
    with Parallel(n_jobs=2, initializer=init_state, initargs=("x",), batch_size=1) as parallel:
        first = parallel(delayed(count_in_state)(i) for i in range(10))
        second = parallel(delayed(count_in_state)(i) for i in range(10))
    pids = {r[0] for r in first + second}
    assert len(pids) == 2, pids  # n_jobs actors, the same in both calls
    assert {(r[1], r[2]) for r in first + second} == {("x", 1)}  # initialised once each
    for pid in pids:  # each actor's counter runs on across the two calls: 1..k
        counts = [r[3] for r in first + second if r[0] == pid]
        assert sorted(counts) == list(range(1, len(counts) + 1))
    assert sum(len([r for r in first + second if r[0] == pid]) for pid in pids) == 20
    # the block's end kills the actors
    assert probe.wait_until(lambda: not any(map(probe.alive, pids)), 30), "the actors outlive their Parallel block"


def test_initializer_error_fails_the_call_with_a_worker_died_error(on_ray):
    def bad_init():
        raise ValueError("cannot load the model")

    with pytest.raises(WorkerDiedError, match=r"could not start: its initializer \S*bad_init raised") as info:
        Parallel(n_jobs=2, initializer=bad_init)(delayed(abs)(-i) for i in range(4))
    assert "cannot load the model" in str(info.value.__cause__)
    # the dead actors' replacements fail too: the call still ends (the error names the
    # initializer), and par does not start actors forever
    with Parallel(n_jobs=2, initializer=bad_init, on_error="return") as parallel:
        out = parallel(delayed(abs)(-i) for i in range(6))
    assert all(isinstance(o, WorkerDiedError) and "bad_init raised" in str(o) for o in out), out


def test_per_task_timeout_on_actors_restarts_the_actor(on_ray, tmp_path):
    """Ray cannot force-cancel an actor task: the actor is killed and replaced (the new
    one runs the initializer); batches queued on it are run again, not failed."""
    out = Parallel(n_jobs=2, initializer=init_state, initargs=("t",), timeout=1, on_error="return")(
        delayed(pid_then_sleep)(str(tmp_path / "pid"), i) for i in range(6)
    )
    assert isinstance(out[0], TimeoutError) and "its actor was killed and replaced" in str(out[0])
    assert out[1:] == [1, 2, 3, 4, 5]


def test_an_error_stops_the_running_actor_batches(on_ray, tmp_path, probe):
    """Ray does not interrupt a running actor task on ray.cancel: on the first error the
    busy actors are killed and replaced (as a loky abort ends its workers), so the next
    call of the block does not queue behind a batch of the failed one."""
    path = tmp_path / "pid"
    with Parallel(n_jobs=2, initializer=init_state, initargs=("a",), batch_size=1) as parallel:
        with pytest.raises(LookupError, match="no item 1"):
            # task 1 fails once task 0 has started (before: when task 0's actor started
            # after task 1 failed, the abort came first and task 0 never ran). Only task
            # 1 fails: task 3, queued behind it on the same actor, failed too, and under
            # load its error could reach the driver first ("no item 3", 1 run in 30).
            parallel(
                delayed(fail_when_exists)(str(path), i) if i == 1 else delayed(pid_then_sleep)(str(path), i)
                for i in range(4)
            )
        assert probe.wait_until(lambda: path.exists() and path.read_text(), 10)
        # the actor would live on to the block's end (its batch sleeps 60 s): it was killed
        assert probe.wait_until(lambda: not probe.alive(int(path.read_text())), 60), "the busy actor still runs its batch"
        assert parallel(delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]


def test_timeout_is_honoured(on_ray):
    with pytest.raises(TimeoutError):
        Parallel(timeout=1, batch_size=1)(delayed(time.sleep)(s) for s in (0.1, 30, 30, 30))


SCRIPT = textwrap.dedent(
    """
    import os
    from par import Parallel, delayed, effective_n_jobs

    def pid(i):
        return os.getpid(), os.getsid(0)

    print("n_jobs", effective_n_jobs(-1))
    print("pids", sorted(set(Parallel(n_jobs=-1)(delayed(pid)(i) for i in range(20)))))
    print("me", os.getpid(), os.getsid(0))
    """
)


def test_par_backend_env_runs_an_unchanged_script_on_ray(cluster, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PAR_BACKEND": "ray", "RAY_ADDRESS": cluster.address}
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert lines["n_jobs"] == "2"  # the cluster's CPUs
    pids = eval(lines["pids"])
    assert {sid for _, sid in pids} == {cluster.session}  # run by the cluster's workers
    assert int(lines["me"].split()[0]) not in {pid for pid, _ in pids}


@pytest.mark.slow
def test_par_backend_env_without_address_starts_a_local_ray(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    # Ray's defaults (token auth on, a token written to ~/.ray), kept out of the real home
    # and the machine's /tmp/ray (where `ray.init()` would find other clusters)
    ray_tmp = tempfile.mkdtemp(prefix="par-ray-", dir="/tmp")
    env.update(PAR_BACKEND="ray", RAY_USAGE_STATS_ENABLED="0", HOME=str(tmp_path), RAY_TMPDIR=ray_tmp)
    # its own session: what the local Ray started must be gone when it exits
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=tmp_path, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=150)
    finally:
        for pid in session_members(proc.pid):  # only on failure: leave nothing behind
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in stdout.splitlines() if " " in line)
    assert int(lines["n_jobs"]) >= 1
    me, _ = map(int, lines["me"].split())
    assert me not in {pid for pid, _ in eval(lines["pids"])}
    deadline = time.monotonic() + 30
    while session_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_members(proc.pid) == [], "the local Ray left processes behind"
    shutil.rmtree(ray_tmp, ignore_errors=True)
