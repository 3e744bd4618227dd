"""Shared fixtures of the integration tests: leak checks around process-heavy tests."""

from __future__ import annotations

import os
import threading

import pytest


@pytest.fixture
def no_thread_leak():
    """Fail a test that leaves more threads running than it found (after a grace period)."""
    import time

    before = {t.ident for t in threading.enumerate()}
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
        if not extra:
            return
        time.sleep(0.05)
    raise AssertionError(f"threads left running: {[t.name for t in extra]}")


# -- process probes for the fault-injection suite (test_faults_*.py) ------------------
# Linux /proc only (no psutil): processes, threads, file descriptors, memory.

_HELPER_PROCESSES = ("resource_tracker", "forkserver")


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data.rsplit(b")", 1)[1].decode().split()


class Probe:
    """What a process holds, read from /proc: children, threads, fds, memory, files."""

    @staticmethod
    def alive(pid: int) -> bool:
        """True while ``pid`` exists and is not a zombie."""
        stat = _proc_stat(pid)
        return stat is not None and stat[0] not in ("Z", "X")

    @staticmethod
    def children(pid: int | None = None, helpers: bool = False) -> set[int]:
        """Live child processes of ``pid`` (default: this process); the resource trackers
        and the forkserver (one per process, by design) are left out unless ``helpers``."""
        parent = str(os.getpid() if pid is None else pid)
        out: set[int] = set()
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            stat = _proc_stat(int(name))
            if stat is None or stat[1] != parent or stat[0] in ("Z", "X"):
                continue
            if not helpers:
                try:
                    with open(f"/proc/{name}/cmdline", "rb") as f:
                        cmd = f.read().decode(errors="replace")
                except OSError:
                    continue
                if any(h in cmd for h in _HELPER_PROCESSES):
                    continue
            out.add(int(name))
        return out

    @staticmethod
    def os_threads() -> int:
        return len(os.listdir("/proc/self/task"))

    @staticmethod
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    @staticmethod
    def rss_kb() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc/self/status")

    @staticmethod
    def files(path: str | os.PathLike[str]) -> list[str]:
        """Every file and folder under ``path`` (relative paths)."""
        out: list[str] = []
        for root, dirs, names in os.walk(path):
            for n in dirs + names:
                out.append(os.path.relpath(os.path.join(root, n), path))
        return sorted(out)

    @staticmethod
    def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
        """Poll ``predicate`` until it is true (True) or ``timeout`` seconds passed (False)."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)

    @staticmethod
    def kill_all(pids) -> None:
        """Test clean-up: SIGKILL the given pids that are still alive."""
        import signal

        for pid in pids:
            if Probe.alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


@pytest.fixture
def probe() -> type[Probe]:
    """The /proc probes of the fault-injection suite (Linux only)."""
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("needs Linux /proc")
    return Probe
