"""``cpu_count``: host count, CPU affinity, cgroup v1/v2 quotas, physical cores.

The cgroup and topology logic runs against fake ``/proc`` and ``/sys`` trees in a
temporary folder; the host count and the affinity mask are monkeypatched.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

import par_api
import pytest
from par_api import cpu, cpu_count, cpu_count_report
from par_api.cpu import _cpu_count, cgroup_cpu_limit, physical_core_count

Tree = Callable[..., pathlib.Path]


@pytest.fixture
def tree(tmp_path: pathlib.Path) -> Tree:
    """``tree({"sys/fs/cgroup/cpu.max": "150000 100000"})`` writes the files, returns the root."""

    def make(files: dict[str, str] | None = None) -> pathlib.Path:
        for rel, content in (files or {}).items():
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content + "\n")
        return tmp_path

    return make


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``host(cpus=8, affinity={0, 1})``: fake the host's CPU count and affinity mask
    (``affinity=None`` makes ``os.sched_getaffinity`` unavailable)."""

    def set_host(cpus: int | None = 8, affinity: set[int] | str | None = "all") -> None:
        monkeypatch.setattr(os, "cpu_count", lambda: cpus)
        if affinity is None:
            monkeypatch.delattr(os, "sched_getaffinity", raising=False)
        else:
            mask = set(range(cpus or 1)) if affinity == "all" else set(affinity)  # type: ignore[arg-type]
            monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(mask), raising=False)

    set_host()
    return set_host


def topology(*cores: tuple[int, int]) -> dict[str, str]:
    """sysfs topology files: ``cores[i] = (package, core_id)`` of logical CPU i."""
    files: dict[str, str] = {}
    for index, (package, core) in enumerate(cores):
        base = f"sys/devices/system/cpu/cpu{index}/topology"
        files[f"{base}/core_id"] = str(core)
        files[f"{base}/physical_package_id"] = str(package)
    return files


# -- no limits --------------------------------------------------------------------------


def test_no_cgroup_files_means_the_host_count(tree: Tree, host: Callable[..., None]) -> None:
    root = tree()
    assert cgroup_cpu_limit(root) is None
    assert _cpu_count(root, False) == 8


def test_host_count_unknown_means_one(tree: Tree, host: Callable[..., None]) -> None:
    host(cpus=None, affinity=None)
    assert _cpu_count(tree(), False) == 1


# -- cgroup v2 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpu_max", "limit", "count"),
    [
        ("150000 100000", 1.5, 1),  # 1.5 CPUs -> 1, not the host's 8
        ("400000 100000", 4.0, 4),
        ("250000 100000", 2.5, 2),
        ("50000 100000", 0.5, 1),  # at least 1
        ("1600000 100000", 16.0, 8),  # a quota above the host count changes nothing
        ("200000", 2.0, 2),  # period defaults to 100000
        ("max 100000", None, 8),
        ("max", None, 8),
        ("garbage here", None, 8),  # malformed: no limit rather than a crash
        ("", None, 8),
    ],
)
def test_cgroup_v2_quota(
    tree: Tree, host: Callable[..., None], cpu_max: str, limit: float | None, count: int
) -> None:
    root = tree({"proc/self/cgroup": "0::/", "sys/fs/cgroup/cpu.max": cpu_max})
    assert cgroup_cpu_limit(root) == limit
    assert _cpu_count(root, False) == count


def test_cgroup_v2_without_proc_self_cgroup_reads_the_mount_point(
    tree: Tree, host: Callable[..., None]
) -> None:
    root = tree({"sys/fs/cgroup/cpu.max": "300000 100000"})
    assert cgroup_cpu_limit(root) == 3.0
    assert _cpu_count(str(root), False) == 3  # the root may be given as a str


def test_cgroup_v2_uses_the_process_cgroup(tree: Tree, host: Callable[..., None]) -> None:
    root = tree(
        {
            "proc/self/cgroup": "0::/machine.slice/job-7",
            "sys/fs/cgroup/machine.slice/job-7/cpu.max": "200000 100000",
            "sys/fs/cgroup/machine.slice/other-job/cpu.max": "100000 100000",
        }
    )
    assert cgroup_cpu_limit(root) == 2.0
    assert _cpu_count(root, False) == 2


def test_cgroup_v2_limit_of_an_ancestor_applies(tree: Tree, host: Callable[..., None]) -> None:
    root = tree(
        {
            "proc/self/cgroup": "0::/machine.slice/job-7",
            "sys/fs/cgroup/machine.slice/job-7/cpu.max": "max 100000",
            "sys/fs/cgroup/machine.slice/cpu.max": "150000 100000",
        }
    )
    assert cgroup_cpu_limit(root) == 1.5
    assert _cpu_count(root, False) == 1


def test_cgroup_v2_smallest_limit_on_the_path_wins(tree: Tree, host: Callable[..., None]) -> None:
    root = tree(
        {
            "proc/self/cgroup": "0::/a/b",
            "sys/fs/cgroup/a/b/cpu.max": "300000 100000",
            "sys/fs/cgroup/a/cpu.max": "600000 100000",
            "sys/fs/cgroup/cpu.max": "max 100000",
        }
    )
    assert cgroup_cpu_limit(root) == 3.0


def test_cgroup_v2_path_missing_from_the_mount_falls_back_to_the_mount_point(
    tree: Tree, host: Callable[..., None]
) -> None:
    # A container without a cgroup namespace sees the host's path in /proc/self/cgroup
    # but has its own cgroup mounted at /sys/fs/cgroup.
    root = tree({"proc/self/cgroup": "0::/docker/abc123", "sys/fs/cgroup/cpu.max": "150000 100000"})
    assert cgroup_cpu_limit(root) == 1.5


def test_cgroup_v2_unlimited_does_not_fall_back_to_v1(tree: Tree, host: Callable[..., None]) -> None:
    root = tree(
        {
            "sys/fs/cgroup/cpu.max": "max 100000",
            "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "100000",
            "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000",
        }
    )
    assert cgroup_cpu_limit(root) is None


# -- cgroup v1 ------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["cpu", "cpu,cpuacct", "cpuacct,cpu"])
def test_cgroup_v1_quota(tree: Tree, host: Callable[..., None], folder: str) -> None:
    root = tree(
        {
            "proc/self/cgroup": "1:cpu:/\n0::/",  # hybrid host: no v2 cpu controller
            f"sys/fs/cgroup/{folder}/cpu.cfs_quota_us": "150000",
            f"sys/fs/cgroup/{folder}/cpu.cfs_period_us": "100000",
        }
    )
    assert cgroup_cpu_limit(root) == 1.5
    assert _cpu_count(root, False) == 1


@pytest.mark.parametrize(
    ("quota", "period", "limit"),
    [("-1", "100000", None), ("300000", "100000", 3.0), ("100000", "0", None), ("x", "100000", None)],
)
def test_cgroup_v1_values(
    tree: Tree, host: Callable[..., None], quota: str, period: str, limit: float | None
) -> None:
    root = tree({"sys/fs/cgroup/cpu/cpu.cfs_quota_us": quota, "sys/fs/cgroup/cpu/cpu.cfs_period_us": period})
    assert cgroup_cpu_limit(root) == limit


def test_cgroup_v1_needs_both_files(tree: Tree, host: Callable[..., None]) -> None:
    root = tree({"sys/fs/cgroup/cpu/cpu.cfs_quota_us": "100000"})
    assert cgroup_cpu_limit(root) is None


# -- affinity ---------------------------------------------------------------------------


def test_affinity_mask_limits_the_count(tree: Tree, host: Callable[..., None]) -> None:
    host(cpus=8, affinity={0, 5, 6})
    assert _cpu_count(tree(), False) == 3
    assert par_api.cpu.affinity_cpu_count() == 3


def test_smallest_of_affinity_and_quota_wins(tree: Tree, host: Callable[..., None]) -> None:
    host(cpus=8, affinity={0, 1, 2})
    assert _cpu_count(tree({"sys/fs/cgroup/cpu.max": "500000 100000"}), False) == 3
    assert _cpu_count(tree({"sys/fs/cgroup/cpu.max": "200000 100000"}), False) == 2


def test_without_sched_getaffinity_the_host_count_is_used(tree: Tree, host: Callable[..., None]) -> None:
    host(cpus=6, affinity=None)
    assert par_api.cpu.affinity_cpu_count() is None
    assert _cpu_count(tree(), False) == 6


def test_affinity_error_is_ignored(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(pid: int) -> set[int]:
        raise OSError("not permitted")

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "sched_getaffinity", broken, raising=False)
    assert _cpu_count(tree(), False) == 4


def test_real_cpu_count_honours_a_narrow_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert cpu_count() == 1
    assert cpu_count(only_physical_cores=True) == 1


# -- physical cores ---------------------------------------------------------------------


def test_hyperthreads_of_one_core_count_once(tree: Tree, host: Callable[..., None]) -> None:
    host(cpus=4)
    root = tree(topology((0, 0), (0, 0), (0, 1), (0, 1)))
    assert physical_core_count(root) == 2
    assert _cpu_count(root, True) == 2
    assert _cpu_count(root, False) == 4


def test_same_core_id_on_two_packages_are_two_cores(tree: Tree, host: Callable[..., None]) -> None:
    host(cpus=4)
    root = tree(topology((0, 0), (1, 0), (0, 0), (1, 0)))
    assert physical_core_count(root) == 2


def test_physical_cores_are_restricted_to_the_affinity_mask(tree: Tree, host: Callable[..., None]) -> None:
    host(cpus=4, affinity={0, 1})  # two hyper-threads of core 0
    root = tree(topology((0, 0), (0, 0), (0, 1), (0, 1)))
    assert physical_core_count(root, cpus={0, 1}) == 1
    assert _cpu_count(root, True) == 1
    assert _cpu_count(root, False) == 2


def test_quota_also_limits_the_physical_count(tree: Tree, host: Callable[..., None]) -> None:
    host(cpus=8)
    files = topology(*[(0, core) for core in range(8)])
    files["sys/fs/cgroup/cpu.max"] = "250000 100000"
    assert _cpu_count(tree(files), True) == 2


def test_without_topology_the_logical_count_is_used(tree: Tree, host: Callable[..., None]) -> None:
    host(cpus=4)
    root = tree({"sys/devices/system/cpu/cpufreq/policy0": "x", "sys/devices/system/cpu/cpu0/online": "1"})
    assert physical_core_count(root) is None
    assert _cpu_count(root, True) == 4


def test_physical_cores_never_exceed_logical_cpus(tree: Tree, host: Callable[..., None]) -> None:
    host(cpus=2)
    root = tree(topology(*[(0, core) for core in range(4)]))  # more cores listed than usable
    assert _cpu_count(root, True) == 2


# -- the public function -----------------------------------------------------------------


def test_cpu_count_is_positive_and_bounded_by_the_host() -> None:
    logical = cpu_count()
    physical = cpu_count(only_physical_cores=True)
    assert 1 <= physical <= logical <= (os.cpu_count() or 1)
    assert cpu_count(False) == logical


@pytest.mark.parametrize("value", [1, "yes", None])
def test_cpu_count_flag_must_be_a_bool(value: object) -> None:
    with pytest.raises(TypeError, match=r"cpu_count\(only_physical_cores=...\): expected True or False"):
        cpu_count(only_physical_cores=value)  # type: ignore[arg-type]


def test_cpu_count_reads_the_real_root(monkeypatch: pytest.MonkeyPatch) -> None:
    roots: list[object] = []
    real = cpu._cpu_count

    def spy(root: pathlib.Path, only_physical_cores: bool) -> int:
        roots.append((root, only_physical_cores))
        return real(root, only_physical_cores)

    monkeypatch.setattr(cpu, "_cpu_count", spy)
    monkeypatch.setattr(cpu, "_CACHE", {})
    cpu_count(only_physical_cores=True)
    assert roots == [("/", True)]
    cpu_count(only_physical_cores=True)  # answered from the cache: the files are read once
    assert roots == [("/", True)]
    monkeypatch.setattr(cpu, "_CACHE_SECONDS", 0.0)
    cpu_count(only_physical_cores=True)  # expired: read again
    assert len(roots) == 2


def test_cpu_count_report_lists_each_figure() -> None:
    report = cpu_count_report()
    assert set(report) == {
        "os_cpu_count",
        "affinity",
        "cgroup_quota",
        "physical_cores",
        "cpu_count",
        "cpu_count_physical",
    }
    assert report["cpu_count"] == cpu_count()
    assert report["cpu_count_physical"] == cpu_count(only_physical_cores=True)
    assert report["os_cpu_count"] == os.cpu_count()
