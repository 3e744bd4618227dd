"""A one-node Ray cluster started the way an operator starts one, for tests and benchmarks.

``LocalCluster(num_cpus=2, object_store_memory=100_000_000)`` runs
``ray start --head --block`` in a session of its own, on free loopback ports and
with a temp dir of its own, so that several clusters (pytest-xdist workers, other
users of the machine) never share a port or a session. :meth:`LocalCluster.stop` ends
exactly the processes of that session (``ray stop`` would end every Ray process of the
machine, other people's too) and checks that none is left.

The node is started by a *guard* process (:mod:`par_backends_ray._session`), which ends
the session, as :meth:`LocalCluster.stop` does, when the process that started the
cluster dies in any way (``SIGKILL`` included): no cluster outlives its owner.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import _session
from ._session import alive, end_session, session_members

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


class LocalCluster:
    """``ray start --head --block --num-cpus N`` on 127.0.0.1 (see the module docstring).

    Use it as a context manager or call :meth:`start` and :meth:`stop`. ``address`` is
    ``'127.0.0.1:PORT'``, for ``ray.init(address=...)``, ``RAY_ADDRESS`` or
    ``parallel_config(backend='ray', address=...)``; ``log`` is the file holding the
    output of ``ray start``.

    ``end_with_parent`` (Linux): when the process that started the cluster ends, however
    it ends (``os._exit`` when pytest-timeout ends a test process, ``SIGKILL``, a crash),
    its guard process ends the session as :meth:`stop` does, within
    :data:`~par_backends_ray._session.GRACE` seconds and a few more: every process of the
    node and its temp dir are gone. ``end_with_parent=False``: the node outlives its
    owner, until ``ray stop`` (the guard then removes what is left, temp dir included).
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
        self._guard: subprocess.Popen[bytes] | None = None
        self._leader: int | None = None  # `ray start`'s pid, the id of the Ray session

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
        # RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0: on SIGTERM, `ray start` stops its node at
        # once instead of draining it first (up to 30 s since Ray 2.5x; a test cluster
        # serves no traffic to drain)
        env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
        spec = {
            "owner": os.getpid(), "args": args, "log": str(self.log), "temp_dir": self.temp_dir,
            "end_with_parent": self.end_with_parent,
        }  # fmt: skip
        # the guard: a session of its own (the owner's terminal signals and process group
        # kills do not reach it); -I: it imports nothing but the standard library
        self._guard = guard = subprocess.Popen(
            [sys.executable, "-I", _session.__file__, json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True,
        )  # fmt: skip
        assert guard.stdout is not None
        line = guard.stdout.readline()
        try:
            self._leader = int(json.loads(line)["leader"])
        except (ValueError, KeyError, TypeError):
            guard.kill()
            guard.wait()
            self._guard = None
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            raise RuntimeError(
                f"the guard of the Ray node did not start ray start (it said {line!r})"
            ) from None

    def _wait_started(self, deadline: float) -> tuple[bool, str]:
        """(started, the end of the log) once ``ray start`` says the node runs, exits,
        or the deadline passes."""
        assert self._leader is not None and self.log is not None
        while time.monotonic() < deadline:
            if "Ray runtime started" in self.log.read_text(errors="replace"):
                return True, ""
            if not alive(self._leader):
                break
            time.sleep(0.2)
        return False, self.log.read_text(errors="replace")[-4000:]

    @property
    def session(self) -> int | None:
        """The session id of the cluster's processes (``os.getsid`` in a task)."""
        return self._leader

    @property
    def guard_pid(self) -> int | None:
        """The pid of the guard process, which started ``ray start`` and ends the session
        when the owner dies (not in the session)."""
        return self._guard.pid if self._guard is not None else None

    def pids(self) -> list[int]:
        """The live processes of the cluster (its session: ``ray start`` runs in a new
        one), workers included."""
        return session_members(self._leader) if self._leader is not None else []

    def stop(self, timeout: float = 30) -> None:
        """End the cluster's processes and remove its temp dir, by the rule of
        :func:`par_backends_ray._session.end_session` (``SIGTERM`` to ``ray start --block``,
        which stops the node's processes; ``SIGKILL`` to each process left in its
        session after a few seconds), which the guard applies (and would apply had the
        owner died). If the guard is gone or does not answer within ``timeout`` seconds,
        this process applies the rule itself. ``RuntimeError`` if a process of the
        session is still alive afterwards."""
        guard, self._guard = self._guard, None
        leader, self._leader = self._leader, None
        if guard is None or leader is None:
            return
        left: list[int] | None = None
        try:
            out, _ = guard.communicate(b"stop\n", timeout=timeout)
            for line in reversed(out.decode(errors="replace").splitlines()):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    left = [int(pid) for pid in json.loads(line)["left"]]
                    break
        except subprocess.TimeoutExpired:
            guard.kill()
            guard.wait()
        if left is None:  # the guard was killed, or stuck: the same rule, from here
            left = end_session(leader, self.temp_dir)
        left = [pid for pid in left if alive(pid)]
        if left:
            raise RuntimeError(f"Ray processes {left} of the cluster at {self.address} are still alive")

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalCluster(address={self.address!r}, num_cpus={self.num_cpus})"
