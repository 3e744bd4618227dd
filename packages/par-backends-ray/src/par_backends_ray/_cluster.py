"""A one-node Ray cluster started the way an operator starts one, for tests and benchmarks.

``LocalCluster(num_cpus=2, object_store_memory=100_000_000)`` runs
``ray start --head --block`` in a session of its own, on free loopback ports and
with a temp dir of its own, so that several clusters (pytest-xdist workers, other
users of the machine) never share a port or a session. :meth:`LocalCluster.stop` ends
exactly the processes of that session (``ray stop`` would end every Ray process of the
machine, other people's too) and checks that none is left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["LocalCluster", "session_members"]

#: What ``ray start`` prints when its raylet did not register with the GCS within Ray's
#: fixed 30 s (a loaded machine), the one failure :meth:`LocalCluster.start` retries.
_RAY_START_TIMED_OUT = "timed out during startup"


def _free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of the session ``sid`` (Linux ``/proc``). Ray puts its
    workers in process groups of their own, but they stay in the session."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _end_with_parent() -> None:
    """In the child before ``exec``: SIGTERM when the parent thread ends (Linux
    ``prctl(PR_SET_PDEATHSIG)``; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


class LocalCluster:
    """``ray start --head --block --num-cpus N`` on 127.0.0.1 (see the module docstring).

    Use it as a context manager or call :meth:`start` and :meth:`stop`. ``address`` is
    ``'127.0.0.1:PORT'``, for ``ray.init(address=...)``, ``RAY_ADDRESS`` or
    ``parallel_config(backend='ray', address=...)``; ``log`` is the file holding the
    output of ``ray start``. ``end_with_parent`` (Linux): ``ray start`` gets SIGTERM, and
    stops the node, when the thread that started it ends, even by ``os._exit`` (a test
    process ended by pytest-timeout), so that no cluster outlives its test run.
    """

    def __init__(
        self,
        num_cpus: int = 2,
        object_store_memory: int = 100_000_000,
        start_timeout: float = 120,
        extra_args: list[str] | None = None,
        end_with_parent: bool = True,
    ) -> None:
        self.num_cpus = num_cpus
        self.end_with_parent = end_with_parent
        self.object_store_memory = object_store_memory
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args or [])
        self.address: str | None = None
        self.temp_dir: str | None = None
        self.log: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalCluster:
        """Start the head node; return when it accepts drivers (``RuntimeError`` with the
        end of its log if it does not within ``start_timeout`` seconds).

        Ray gives its raylet a fixed 30 s to register with the GCS; on a loaded machine
        ``ray start`` can give up with "timed out during startup". That attempt's
        processes are ended and the node is started again, on new ports and a new temp
        dir, while ``start_timeout`` lasts (at most :attr:`START_ATTEMPTS` attempts)."""
        deadline = time.monotonic() + self.start_timeout
        attempts = 0
        while True:
            attempts += 1
            self._launch()
            started, tail = self._wait_started(deadline)
            if started:
                return self
            self.stop()
            retry = _RAY_START_TIMED_OUT in tail and time.monotonic() < deadline
            if not retry or attempts == self.START_ATTEMPTS:
                raise RuntimeError(
                    f"`ray start --head` did not start within {self.start_timeout} s "
                    f"({attempts} attempt{'s' if attempts > 1 else ''}):\n{tail}"
                )

    #: Attempts of :meth:`start` when Ray's own start-up wait gives up.
    START_ATTEMPTS = 3

    def _command(self) -> list[str]:
        """The command before ``start ...``: Ray's CLI in this interpreter."""
        return [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]

    def _launch(self) -> None:
        # short: Ray's unix sockets live under it (a path is at most 107 bytes)
        self.temp_dir = tempfile.mkdtemp(prefix="par-ray-", dir="/tmp")
        self.log = Path(self.temp_dir) / "ray-start.log"
        gcs, node_manager, object_manager, agent, agent_grpc, env_agent, metrics = _free_ports(7)
        self.address = f"127.0.0.1:{gcs}"
        args = [
            *self._command(), "start", "--head", "--block",
            "--node-ip-address", "127.0.0.1",
            "--port", str(gcs),
            "--num-cpus", str(self.num_cpus),
            "--object-store-memory", str(self.object_store_memory),
            "--temp-dir", self.temp_dir,
            "--include-dashboard", "false",
            "--disable-usage-stats",
            "--node-manager-port", str(node_manager),
            "--object-manager-port", str(object_manager),
            "--dashboard-agent-listen-port", str(agent),
            "--dashboard-agent-grpc-port", str(agent_grpc),
            "--runtime-env-agent-port", str(env_agent),
            "--metrics-export-port", str(metrics),
            # Workers (and each driver's core worker) bind ports the OS picks, as a
            # ray.init() node's do: `ray start` otherwise gives every node the same
            # range from 10002, and two nodes on one machine (pytest-xdist workers) can
            # hand out the same port, which aborts the process that loses (Ray's
            # "Failed to start the grpc server ... port is 10002": a pytest worker
            # crashed so in CI).
            "--min-worker-port", "0",
            "--max-worker-port", "0",
            *self.extra_args,
        ]  # fmt: skip
        # RAY_AUTH_MODE=disabled: a loopback test cluster; without it, `ray start` turns
        # token authentication on whenever ~/.ray/auth_token exists (Ray >= 2.5x)
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        with open(self.log, "wb") as log:
            self._proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                preexec_fn=_end_with_parent if self.end_with_parent else None,
            )  # fmt: skip

    def _wait_started(self, deadline: float) -> tuple[bool, str]:
        """(started, the end of the log) once ``ray start`` says the node runs, exits,
        or the deadline passes."""
        assert self._proc is not None and self.log is not None
        while time.monotonic() < deadline:
            if "Ray runtime started" in self.log.read_text(errors="replace"):
                return True, ""
            if self._proc.poll() is not None:
                break
            time.sleep(0.2)
        return False, self.log.read_text(errors="replace")[-4000:]

    @property
    def session(self) -> int | None:
        """The session id of the cluster's processes (``os.getsid`` in a task)."""
        return self._proc.pid if self._proc is not None else None

    def pids(self) -> list[int]:
        """The live processes of the cluster (its session: ``ray start`` runs in a new
        one), workers included."""
        return session_members(self._proc.pid) if self._proc is not None else []

    def stop(self, timeout: float = 30) -> None:
        """End the cluster's processes (SIGTERM to ``ray start --block``, which stops the
        node's processes; then SIGKILL to each process left in its session) and remove
        its temp dir. ``RuntimeError`` if one of them is still alive afterwards."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            deadline = time.monotonic() + timeout
            while session_members(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            left = session_members(proc.pid)
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + 10
                while session_members(proc.pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
            left = session_members(proc.pid)
            if left:
                raise RuntimeError(f"Ray processes {left} of the cluster at {self.address} are still alive")
        finally:
            if self.temp_dir is not None:
                shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalCluster(address={self.address!r}, num_cpus={self.num_cpus})"
