"""``cpu_count``: the CPUs this process may really use.

Honours, in order: the number of CPUs of the host, the CPU affinity of the process
(``os.sched_getaffinity``, e.g. ``taskset``), and cgroup v2 (``cpu.max``) or cgroup v1
(``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) quotas, as set by containers. A quota
of 1.5 CPUs gives 1: the count is rounded down, and is at least 1.
``only_physical_cores=True`` counts distinct (package, core) pairs from sysfs.

The file-system root is a parameter of the helpers so that tests can point them at a
fake ``/sys``-style tree.
"""

from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from os import PathLike

#: The file-system root, a string: the files are read with ``os.path`` and ``open``,
#: without pathlib (urllib and ipaddress come with it: ~5 ms of the first call's CPU,
#: spent before its workers start).
_ROOT = "/"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


def _cgroup_v2_dirs(root: str) -> list[str]:
    """The cgroup v2 directories whose ``cpu.max`` limits this process: its own cgroup
    (from ``/proc/self/cgroup``) and each ancestor up to the mount point, leaf first.
    The mount point itself is always considered (a container sees its own cgroup there)."""
    base = os.path.join(root, "sys", "fs", "cgroup")
    candidates: list[str] = []
    content = _read(os.path.join(root, "proc", "self", "cgroup"))
    if content is not None:
        for line in content.splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3 and parts[0] == "0" and parts[1] == "":
                segments = [seg for seg in parts[2].strip().split("/") if seg]
                if ".." not in segments:
                    for i in range(len(segments), 0, -1):
                        candidates.append(os.path.join(base, *segments[:i]))
                break
    candidates.append(base)
    return [folder for folder in candidates if os.path.exists(os.path.join(folder, "cpu.max"))]


def _parse_cpu_max(content: str | None) -> float | None:
    """``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``) as CPUs, None if unlimited."""
    if not content:
        return None
    fields = content.split()
    if fields[0] == "max":
        return None
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        return None
    if quota > 0 and period > 0:
        return quota / period
    return None


def cgroup_cpu_limit(root: str | PathLike[str] = _ROOT) -> float | None:
    """The CPU quota of this process's cgroup as a number of CPUs, or None when unlimited.

    cgroup v2: the smallest ``cpu.max`` of the process's cgroup and its ancestors.
    cgroup v1 (read only when no v2 ``cpu.max`` exists): ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``. Unreadable or malformed files count as "no limit".
    """
    root = os.fspath(root)
    v2_dirs = _cgroup_v2_dirs(root)
    if v2_dirs:
        limits = [
            limit for d in v2_dirs if (limit := _parse_cpu_max(_read(os.path.join(d, "cpu.max")))) is not None
        ]
        return min(limits) if limits else None
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        folder = os.path.join(root, "sys", "fs", "cgroup", name)
        quota_s = _read(os.path.join(folder, "cpu.cfs_quota_us"))
        period_s = _read(os.path.join(folder, "cpu.cfs_period_us"))
        if quota_s is not None and period_s is not None:
            try:
                quota, period = int(quota_s), int(period_s)
            except ValueError:
                return None
            if quota > 0 and period > 0:
                return quota / period
            return None
    return None


def _affinity() -> set[int] | None:
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is None:
        return None
    try:
        return set(getaffinity(0))
    except OSError:
        return None


def affinity_cpu_count() -> int | None:
    """The number of CPUs in this process's affinity mask, where the OS tells it."""
    cpus = _affinity()
    return len(cpus) if cpus else None


def physical_core_count(root: str | PathLike[str] = _ROOT, cpus: set[int] | None = None) -> int | None:
    """Distinct physical cores, from sysfs topology (restricted to ``cpus`` when given)."""
    base = os.path.join(os.fspath(root), "sys", "devices", "system", "cpu")
    cores: set[tuple[str, str]] = set()
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return None
    for name in names:
        # the cpu<N> folders (sysfs also has cpufreq, cpuidle, ...)
        if not (name.startswith("cpu") and name[3:].isdigit() and name[3:].isascii()):
            continue
        index = int(name[3:])
        if cpus is not None and index not in cpus:
            continue
        entry = os.path.join(base, name)
        core = _read(os.path.join(entry, "topology", "core_id"))
        package = _read(os.path.join(entry, "topology", "physical_package_id"))
        if core is None:
            continue
        cores.add((package or "0", core))
    return len(cores) or None


def cpu_count(only_physical_cores: bool = False) -> int:
    """Return the number of CPUs the current process can use.

    The smallest of: the host's CPUs (``os.cpu_count()``), the CPU affinity mask,
    and the cgroup CPU quota rounded down (at least 1). With
    ``only_physical_cores=True``, hyper-threads of one core count once (when the OS
    exposes the topology; otherwise the logical count is used).
    """
    if not isinstance(only_physical_cores, bool):
        raise TypeError(
            f"cpu_count(only_physical_cores=...): expected True or False, got {only_physical_cores!r}"
        )
    cpus = _affinity()
    key = (len(cpus) if cpus else None, only_physical_cores)
    now = time.monotonic()
    cached = _CACHE.get(key)
    if cached is not None and now - cached[0] < _CACHE_SECONDS:
        return cached[1]
    value = _cpu_count(_ROOT, only_physical_cores)
    _CACHE[key] = (now, value)
    return value


#: cgroup quotas and the topology are read from files (~0.4 ms): every Parallel call
#: asks several times, so the answer is kept for a few seconds per affinity mask size.
_CACHE: dict[tuple[int | None, bool], tuple[float, int]] = {}
_CACHE_SECONDS = 5.0


def _cpu_count(root: str | PathLike[str], only_physical_cores: bool) -> int:
    """``cpu_count`` with the file-system root as a parameter (tests use a fake tree).

    The affinity mask is always the real one (``os.sched_getaffinity``): it is a
    property of the process, not of the file system.
    """
    root = os.fspath(root)
    counts = [os.cpu_count() or 1]
    cpus = _affinity()
    if cpus:
        counts.append(len(cpus))
    quota = cgroup_cpu_limit(root)
    if quota is not None:
        counts.append(max(math.floor(quota), 1))
    if only_physical_cores:
        physical = physical_core_count(root, cpus or None)
        if physical:
            counts.append(physical)
    return max(min(counts), 1)


def cpu_count_report() -> dict[str, int | float | None]:
    """Each figure behind ``cpu_count``, for diagnostics (``python -m par info``)."""
    return {
        "os_cpu_count": os.cpu_count(),
        "affinity": affinity_cpu_count(),
        "cgroup_quota": cgroup_cpu_limit(),
        "physical_cores": physical_core_count(),
        "cpu_count": cpu_count(),
        "cpu_count_physical": cpu_count(only_physical_cores=True),
    }
