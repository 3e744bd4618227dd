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
from pathlib import Path

_ROOT = Path("/")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_v2_path(root: Path) -> Path | None:
    """The cgroup v2 directory of this process (from /proc/self/cgroup), if any."""
    content = _read(root / "proc/self/cgroup")
    if content is None:
        return None
    for line in content.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0] == "0" and parts[1] == "":
            rel = parts[2].lstrip("/")
            candidate = root / "sys/fs/cgroup" / rel
            if (candidate / "cpu.max").exists():
                return candidate
    if (root / "sys/fs/cgroup/cpu.max").exists():
        return root / "sys/fs/cgroup"
    return None


def cgroup_cpu_limit(root: Path | str = _ROOT) -> float | None:
    """The CPU quota of this process's cgroup as a number of CPUs, or None when unlimited."""
    root = Path(root)
    v2 = _cgroup_v2_path(root)
    if v2 is not None:
        content = _read(v2 / "cpu.max")
        if content:
            fields = content.split()
            if fields[0] != "max" and len(fields) >= 1:
                quota = int(fields[0])
                period = int(fields[1]) if len(fields) > 1 else 100_000
                if quota > 0 and period > 0:
                    return quota / period
        return None
    for folder in ("sys/fs/cgroup/cpu", "sys/fs/cgroup/cpu,cpuacct", "sys/fs/cgroup/cpuacct,cpu"):
        quota_s = _read(root / folder / "cpu.cfs_quota_us")
        period_s = _read(root / folder / "cpu.cfs_period_us")
        if quota_s is not None and period_s is not None:
            quota, period = int(quota_s), int(period_s)
            if quota > 0 and period > 0:
                return quota / period
            return None
    return None


def affinity_cpu_count() -> int | None:
    """The number of CPUs in this process's affinity mask, where the OS tells it."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is None:
        return None
    try:
        return len(getaffinity(0))
    except OSError:  # pragma: no cover
        return None


def physical_core_count(root: Path | str = _ROOT, cpus: set[int] | None = None) -> int | None:
    """Distinct physical cores, from sysfs topology (restricted to ``cpus`` when given)."""
    base = Path(root) / "sys/devices/system/cpu"
    cores: set[tuple[str, str]] = set()
    try:
        entries = sorted(base.glob("cpu[0-9]*"))
    except OSError:  # pragma: no cover
        return None
    for entry in entries:
        try:
            index = int(entry.name[3:])
        except ValueError:
            continue
        if cpus is not None and index not in cpus:
            continue
        core = _read(entry / "topology/core_id")
        package = _read(entry / "topology/physical_package_id")
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
    return _cpu_count(_ROOT, only_physical_cores)


def _cpu_count(root: Path, only_physical_cores: bool) -> int:
    counts = [os.cpu_count() or 1]
    affinity = affinity_cpu_count() if root == _ROOT else None
    if affinity:
        counts.append(affinity)
    quota = cgroup_cpu_limit(root)
    if quota is not None:
        counts.append(max(int(math.floor(quota)), 1))
    if only_physical_cores:
        cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") and root == _ROOT else None
        physical = physical_core_count(root, cpus)
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
