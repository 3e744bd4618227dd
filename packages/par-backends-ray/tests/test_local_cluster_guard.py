"""A LocalCluster does not outlive the process that started it, however that process
ends: its guard process ends the Ray session (every process, and the temp dir) as
``LocalCluster.stop()`` does. In CI a pytest-xdist worker owning a cluster was SIGKILLed:
the raylet stopped, but ``ray start``, the GCS, the dashboard, monitor and log monitor
lived on for minutes (``ray start`` only had a PDEATHSIG, and drains its node on
SIGTERM).

Each test starts the owner in a subprocess that prints what its cluster is made of, kills
it, and checks that all of it is gone; whatever is left is killed in a ``finally`` (only
processes of the session that test started)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from par_backends_ray import LocalCluster
from par_backends_ray._session import alive, session_members

#: A stand-in for `ray start --block` at its worst: it says the node runs, starts a child
#: in its session (a node process) and, like that child, ignores SIGTERM.
STUBBORN_NODE = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
subprocess.Popen([sys.executable, "-c", child])
print("Ray runtime started.", flush=True)
time.sleep(600)
"""

#: A stand-in for `ray start --block` that stops, with its child, on SIGTERM.
POLITE_NODE = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
signal.signal(signal.SIGTERM, lambda *a: (child.kill(), child.wait(), sys.exit(0)))
print("Ray runtime started.", flush=True)
time.sleep(600)
"""

#: The owner: starts a cluster (a stand-in when argv[1] is a script), prints its
#: session's processes, guard and temp dir, then waits to be killed.
OWNER = """
import json, sys, time
from par_backends_ray import LocalCluster

class Cluster(LocalCluster):
    def _command(self):
        return [sys.executable, sys.argv[1]] if sys.argv[1] != "ray" else super()._command()

keep = len(sys.argv) > 2 and sys.argv[2] == "keep"
cluster = Cluster(num_cpus=1, object_store_memory=80_000_000, start_timeout=90, end_with_parent=not keep).start()
if sys.argv[1] == "ray":  # a driver with busy workers, as a pytest worker running a test
    import ray
    ray.init(address=cluster.address, logging_level="ERROR")

    @ray.remote(num_cpus=0)
    class Sleeper:
        def pid(self):
            import os
            return os.getpid()

    sleepers = [Sleeper.remote() for _ in range(2)]
    workers = ray.get([s.pid.remote() for s in sleepers], timeout=60)
    assert set(workers) <= set(cluster.pids()), (workers, cluster.pids())
deadline = time.monotonic() + 30
while len(cluster.pids()) < 2 and time.monotonic() < deadline:  # the stand-in's child
    time.sleep(0.05)
print(json.dumps({"sid": cluster.session, "pids": cluster.pids(), "guard": cluster.guard_pid,
                  "temp_dir": cluster.temp_dir}), flush=True)
time.sleep(600)
"""


def _wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _cleanup(info):
    """Kill what a failed test left: the processes of its own session, its guard."""
    if not info:
        return
    for pid in session_members(info["sid"]):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    guard = info.get("guard")
    if guard and alive(guard):
        try:
            with open(f"/proc/{guard}/cmdline", "rb") as f:
                if b"_session.py" in f.read():
                    os.kill(guard, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
    shutil.rmtree(info["temp_dir"], ignore_errors=True)


def _end_owner(owner, info):
    """A test's last step, passed or failed: the owner process is gone, and so is what
    its cluster left (:func:`_cleanup`)."""
    if owner.poll() is None:
        owner.kill()
    owner.wait()
    owner.stdout.close()
    _cleanup(info)


def _kill_owner_and_check(tmp_path, node, how=signal.SIGKILL, bound=45):
    """Start the owner with ``node`` ('ray' or a stand-in script), kill it with ``how``,
    return the seconds until its whole cluster was gone."""
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(OWNER))
    owner = subprocess.Popen([sys.executable, str(script), node], stdout=subprocess.PIPE, text=True)
    info = None
    try:
        info = json.loads(owner.stdout.readline())
        sid, pids, guard, temp_dir = info["sid"], info["pids"], info["guard"], info["temp_dir"]
        assert sid in pids and len(pids) >= 2 and Path(temp_dir).is_dir(), info
        assert guard not in pids and alive(guard)
        owner.send_signal(how)
        owner.wait(30)
        t0 = time.monotonic()
        gone = _wait_for(
            lambda: not any(alive(p) for p in pids) and not session_members(sid) and not alive(guard), bound
        )
        took = time.monotonic() - t0
        assert gone, {
            "left": [p for p in pids if alive(p)],
            "session": session_members(sid),
            "guard alive": alive(guard),
        }
        assert _wait_for(lambda: not Path(temp_dir).exists(), 5), f"{temp_dir} was not removed"
        return took
    finally:
        _end_owner(owner, info)


@pytest.mark.timeout(120)
def test_cluster_ends_when_its_owner_is_killed_even_if_its_node_ignores_sigterm(tmp_path):
    """The guard's rule: SIGTERM to `ray start`, then SIGKILL to each process still in its
    session; the temp dir is removed."""
    node = tmp_path / "stubborn_node.py"
    node.write_text(textwrap.dedent(STUBBORN_NODE))
    _kill_owner_and_check(tmp_path, str(node))


@pytest.mark.ray
@pytest.mark.timeout(180, method="thread")
def test_ray_cluster_ends_when_its_owner_is_sigkilled(tmp_path):
    """A real node with a driver and two actors: when the owner is SIGKILLed, every
    process of the Ray session (ray start, GCS, raylet, dashboard agent, monitor, log
    monitor, workers) and the temp dir are gone within seconds."""
    took = _kill_owner_and_check(tmp_path, "ray")
    print(f"the Ray session ended {took:.1f} s after its owner's death")


@pytest.mark.timeout(120)
def test_cluster_with_end_with_parent_false_outlives_its_owner_until_ray_stop(tmp_path):
    """end_with_parent=False: the node keeps running after its owner's death; when it
    stops (`ray stop`: SIGTERM to `ray start`), the guard removes what is left and its
    temp dir, and ends."""
    node = tmp_path / "polite_node.py"
    node.write_text(textwrap.dedent(POLITE_NODE))
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(OWNER))
    owner = subprocess.Popen([sys.executable, str(script), str(node), "keep"], stdout=subprocess.PIPE, text=True)
    info = None
    try:
        info = json.loads(owner.stdout.readline())
        sid, pids, guard, temp_dir = info["sid"], info["pids"], info["guard"], info["temp_dir"]
        owner.kill()
        owner.wait(30)
        time.sleep(1)  # the guard polls every 0.2 s: it would have ended the session by now
        assert all(alive(p) for p in pids) and alive(guard) and Path(temp_dir).is_dir()
        os.kill(sid, signal.SIGTERM)  # what `ray stop` does
        assert _wait_for(lambda: not session_members(sid) and not alive(guard), 30)
        assert _wait_for(lambda: not Path(temp_dir).exists(), 5)
    finally:
        _end_owner(owner, info)


class _Node(LocalCluster):
    def __init__(self, tmp_path, script=STUBBORN_NODE, **kwargs):
        super().__init__(start_timeout=30, **kwargs)
        self.script = tmp_path / "node.py"
        self.script.write_text(textwrap.dedent(script))

    def _command(self):
        return [sys.executable, str(self.script)]


@pytest.mark.timeout(60)
def test_cluster_started_in_a_thread_outlives_the_thread(tmp_path):
    """The cluster belongs to its process, not to the thread that started it (was:
    PR_SET_PDEATHSIG, which fires when the starting *thread* ends)."""
    cluster = _Node(tmp_path, POLITE_NODE)
    try:
        thread = threading.Thread(target=cluster.start)
        thread.start()
        thread.join(30)
        assert not thread.is_alive()
        pids = cluster.pids()
        assert len(pids) == 2
        time.sleep(1)  # a PDEATHSIG would have ended them by now
        assert all(alive(p) for p in pids)
    finally:
        cluster.stop()
    assert not any(alive(p) for p in pids) and not Path(cluster.temp_dir).exists()


@pytest.mark.timeout(60)
def test_stop_ends_the_session_itself_when_the_guard_is_gone(tmp_path):
    """stop() applies the same rule itself if the guard was killed (and then ``ray start``,
    here a stand-in that ignores SIGTERM, did not stop with it)."""
    cluster = _Node(tmp_path).start()
    try:
        pids = cluster.pids()
        guard = cluster.guard_pid
        os.kill(guard, signal.SIGKILL)
        assert _wait_for(lambda: not alive(guard), 10)
        assert all(alive(p) for p in pids)
    finally:
        cluster.stop()
    assert not any(alive(p) for p in pids) and not Path(cluster.temp_dir).exists()


@pytest.mark.timeout(60)
def test_stop_raises_if_a_process_of_the_session_survives(tmp_path, monkeypatch):
    """The guard reports the processes it could not end; stop() names them."""
    from par_backends_ray import _session

    cluster = _Node(tmp_path).start()
    pids = cluster.pids()
    (child,) = [p for p in pids if p != cluster.session]
    try:
        # stands in for a process that survives SIGKILL (uninterruptible sleep): the
        # guard is stuck in the past, stop() applies the rule itself, which sees it alive
        cluster._guard.kill()
        cluster._guard.wait()
        monkeypatch.setattr(_session, "KILL_WAIT", 0.5)
        real_kill = os.kill
        monkeypatch.setattr(
            _session.os, "kill", lambda pid, sig: None if pid == child else real_kill(pid, sig)
        )
        with pytest.raises(RuntimeError, match=rf"Ray processes \[{child}\] of the cluster .* still alive"):
            cluster.stop()
    finally:
        monkeypatch.undo()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
