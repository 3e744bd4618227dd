"""The guard of a :class:`par_backends_ray.LocalCluster`: the one rule that ends its Ray
session, and the process that applies it when the cluster's owner dies.

Standard library only: besides being imported by ``_cluster``, this file is run as a
script (``python -I _session.py SPEC``), the *guard*, which must not import Ray (seconds,
and memory, for a process that only waits).

The owner (the process that creates the ``LocalCluster``) starts the guard in a session
of its own; the guard starts ``ray start --head --block`` in a new session (the Ray
session: every process of the node, workers included, stays in it), prints that
session's id on its stdout, then waits for one of:

- ``stop`` on its stdin: :meth:`LocalCluster.stop`;
- its stdin closed, or its parent pid no longer the owner's: the owner is gone, however
  it ended (``SIGKILL`` included; a forked child of the owner may still hold the pipe,
  hence the parent check), or dropped the cluster; ignored with ``end_with_parent=False``;
- ``SIGTERM`` to the guard itself;

and then ends the session with :func:`end_session` (the rule :meth:`LocalCluster.stop`
also applies itself if the guard is gone), prints the pids it could not end as its last
line (``{"left": [...]}``) and exits. When ``ray start`` exits by itself (a failed start,
``ray stop``), the guard ends what is left of its session, and keeps the temp dir (its
log says why) until the owner stops the cluster or is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["GRACE", "POLL", "alive", "end_session", "session_members"]

#: Seconds ``ray start`` gets after ``SIGTERM`` to stop its node's processes before every
#: process left in its session is ended with ``SIGKILL``.
GRACE = 5.0
#: Seconds between two checks of the guard (owner alive, ``ray start`` alive).
POLL = 0.2
#: Seconds for the processes to be gone after ``SIGKILL``.
KILL_WAIT = 10.0


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
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _wait_empty(sid: int, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while True:
        left = session_members(sid)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def end_session(leader: int, temp_dir: str | None, grace: float = GRACE) -> list[int]:
    """End the Ray session whose leader (``ray start``) is ``leader``: ``SIGTERM`` to
    ``ray start``, which stops its node; after ``grace`` seconds, ``SIGKILL`` to every
    process still in the session (until none is left, at most :data:`KILL_WAIT` s); then
    remove ``temp_dir``. Returns the processes still alive (none, normally)."""
    try:
        if alive(leader):
            with contextlib.suppress(ProcessLookupError):
                os.kill(leader, signal.SIGTERM)
        left = _wait_empty(leader, grace)
        deadline = time.monotonic() + KILL_WAIT
        while left and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            left = _wait_empty(leader, 0.5)
        return left
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _end_with_parent() -> None:
    """In ``ray start`` before ``exec``: ``SIGTERM`` when the guard dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``), so that even a killed guard leaves no node behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _say(message: dict[str, object]) -> None:
    """One line to the owner (unbuffered: nothing left to flush at exit if it is gone)."""
    with contextlib.suppress(OSError):
        os.write(sys.stdout.fileno(), (json.dumps(message) + "\n").encode())


def guard(spec: dict[str, object]) -> int:
    """The guard's main (see the module docstring); ``spec`` holds ``owner`` (pid),
    ``args`` (the ``ray start`` command), ``log``, ``temp_dir``, ``end_with_parent``."""
    owner = int(spec["owner"])  # type: ignore[call-overload]
    temp_dir = str(spec["temp_dir"])
    end_with_parent = bool(spec["end_with_parent"])
    signalled: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: signalled.append(signum))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the owner's business
    with open(str(spec["log"]), "wb") as log:
        proc = subprocess.Popen(
            list(spec["args"]),  # type: ignore[call-overload]
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_end_with_parent,
        )  # fmt: skip
    _say({"leader": proc.pid})
    stdin = sys.stdin.buffer
    orphaned = False  # the owner is gone (only looked at with end_with_parent=False)
    node_ended = False
    while True:
        if signalled:
            break
        readable, _, _ = select.select([] if orphaned else [stdin], [], [], POLL)
        if readable:
            line = stdin.readline()
            if line.strip() == b"stop":
                break
            if not line:  # EOF: the owner is gone, or dropped the cluster
                orphaned = True
        if os.getppid() != owner:
            orphaned = True
        if orphaned and end_with_parent:
            break
        if not node_ended and proc.poll() is not None:
            # ray start ended by itself (a failed start, `ray stop`): end what is left
            # of its session; the temp dir (its log) stays for the owner
            node_ended = True
            end_session(proc.pid, None)
        if node_ended and orphaned:
            break
    left = end_session(proc.pid, temp_dir)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(1)
    _say({"left": left})
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(guard(json.loads(sys.argv[1])))
