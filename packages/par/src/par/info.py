"""``python -m par info``: what a user needs when asking for help.

:func:`collect_info` gathers, through public names only, the versions of par's
packages, Python, the CPU counts behind ``cpu_count()``, the backends found (and the
distribution providing each), the folder memmapped arrays would go to (and its free
space), the native thread pools loaded (threadpoolctl) and the environment variables
par reads. :func:`format_info` renders it as aligned ``key: value`` sections;
``--json`` prints :func:`collect_info` as one JSON object.

Collecting is read-only: no pool is started, no file or folder is created.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from importlib import metadata
from typing import Any

import par_api
import par_memmap
import par_threadlimits

__all__ = ["DISTRIBUTIONS", "ENV_VARS", "collect_info", "format_info", "temp_folder_choice"]

#: par's distributions, in the order they are reported (None when not installed).
DISTRIBUTIONS: tuple[str, ...] = (
    "par",
    "par-api",
    "par-scheduler",
    "par-backends-local",
    "par-serialization",
    "par-memmap",
    "par-threadlimits",
    "par-backends-dask",
)

#: The third-party libraries par builds on (None when not installed).
LIBRARIES: tuple[str, ...] = ("loky", "cloudpickle", "numpy", "threadpoolctl", "tqdm", "distributed")

#: Environment variables that change what par does; reported when set.
ENV_VARS: tuple[str, ...] = (
    "PAR_BACKEND",
    "PAR_MULTIPROCESSING",
    "PAR_START_METHOD",
    "JOBLIB_START_METHOD",
    *par_memmap.ENV_VARS,
    "LOKY_PICKLER",
    par_threadlimits.THREAD_BACKEND_OPT_IN_VAR,
    par_threadlimits.BUDGET_VAR,
    *par_threadlimits.THREAD_LIMIT_VARS,
    "TMPDIR",
    "TEMP",
    "TMP",
)

_SHM = par_memmap.SHM_FOLDER


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _free_space(path: str) -> dict[str, int | None]:
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return {"free_bytes": None, "total_bytes": None}
    return {"free_bytes": int(usage.free), "total_bytes": int(usage.total)}


def temp_folder_choice(temp_folder: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Where ``par_memmap.TempFolderManager`` would put the memmapped arrays of a call,
    and why, as ``par_memmap.choose_temp_folder`` answers (nothing is created).

    The order is the manager's documented one: the ``temp_folder`` argument; the
    ``PAR_TEMP_FOLDER``/``JOBLIB_TEMP_FOLDER`` environment variables; ``/dev/shm`` when it
    exists, is writable and has room (beyond a reserve of 8 MiB) for a small array; the
    system temp folder (``TMPDIR``, ``TEMP``, ``TMP``, else :func:`tempfile.gettempdir`).
    The manager decides again for each array: a large array may go to the system temp
    folder when ``/dev/shm`` is short of room.

    Returns:
        ``{"folder", "reason", "exists", "free_bytes", "total_bytes"}``.
    """
    folder, reason = par_memmap.choose_temp_folder(temp_folder, shm_folder=_SHM)
    return {"folder": folder, "reason": reason, "exists": os.path.isdir(folder), **_free_space(folder)}


def _safe(fn: Any, *args: Any) -> Any:
    """``fn(*args)``, or ``{"error": "..."}``: a report must never fail on one section."""
    try:
        return fn(*args)
    except Exception as exc:  # pragma: no cover - depends on the machine
        return {"error": f"{type(exc).__name__}: {exc}"}


def _backends() -> dict[str, Any]:
    providers = par_api.backend_providers()
    return {
        "default": _safe(par_api.default_backend_name),
        "multiprocessing_available": _safe(par_api.multiprocessing_available),
        "available": {name: providers.get(name, "?") for name in par_api.available_backends()},
    }


def _threadpools() -> list[dict[str, Any]]:
    return [
        {k: v for k, v in pool.items() if isinstance(v, (str, int, float, bool, type(None)))}
        for pool in par_threadlimits.threadpool_report()
    ]


def collect_info() -> dict[str, Any]:
    """Everything ``python -m par info`` reports, as JSON-serialisable data.

    Keys: ``versions`` (each par distribution, None when not installed), ``libraries``,
    ``python`` (version, implementation, executable, platform), ``cpu``
    (``par_api.cpu_count_report()``), ``backends`` (default, whether multiprocessing is
    usable, each available backend and its provider), ``temp_folder``
    (:func:`temp_folder_choice`), ``workers`` (the worker options in force:
    ``max_tasks_per_child``, ``max_worker_memory``, ``forward_output``), ``threadpools`` (threadpoolctl's report of the native
    thread pools loaded in this process) and ``environment`` (the variables of
    :data:`ENV_VARS` that are set).
    """
    return {
        "versions": {dist: _version(dist) for dist in DISTRIBUTIONS},
        "libraries": {lib: _version(lib) for lib in LIBRARIES},
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "platform": platform.platform(),
        },
        "cpu": _safe(par_api.cpu_count_report),
        "backends": _safe(_backends),
        "temp_folder": _safe(temp_folder_choice),
        "threadpools": _safe(_threadpools),
        "environment": {name: os.environ[name] for name in ENV_VARS if name in os.environ},
        "workers": _safe(_workers),
    }


def _workers() -> dict[str, Any]:
    """The worker options in force here (``parallel_config`` or the defaults)."""
    cfg = par_api.get_active_config()
    return {
        "max_tasks_per_child": cfg.max_tasks_per_child,
        "max_worker_memory": cfg.max_worker_memory,
        "forward_output": cfg.forward_output,
        "loky_memory_recycling": os.environ.get("LOKY_MAX_MEMORY_LEAK_SIZE", "300M (loky's default)"),
    }


def _human_bytes(n: Any) -> str:
    if not isinstance(n, int):
        return "unknown"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


_CPU_LABELS = {
    "os_cpu_count": "logical (os.cpu_count)",
    "affinity": "affinity",
    "cgroup_quota": "cgroup quota",
    "physical_cores": "physical cores",
    "cpu_count": "cpu_count()",
    "cpu_count_physical": "cpu_count(only_physical_cores=True)",
}


def _section(title: str, rows: list[tuple[str, Any]]) -> list[str]:
    lines = [f"{title}:"]
    if not rows:
        return [*lines, "  (none)"]
    width = max(len(k) for k, _ in rows) + 1
    lines += [f"  {k + ':':<{width}} {_show(v)}" for k, v in rows]
    return lines


def format_info(info: dict[str, Any]) -> str:
    """:func:`collect_info`'s data as aligned ``key: value`` sections (one blank line
    between sections; ``-`` for a value that is not available)."""
    sections: list[list[str]] = [
        _section("par", [(k, v if v is not None else "not installed") for k, v in info["versions"].items()]),
        _section(
            "libraries", [(k, v if v is not None else "not installed") for k, v in info["libraries"].items()]
        ),
        _section("python", list(info["python"].items())),
        _section("cpu", [(_CPU_LABELS.get(k, k), v) for k, v in info["cpu"].items()]),
    ]
    backends = info["backends"]
    if "error" in backends:
        sections.append(_section("backends", [("error", backends["error"])]))
    else:
        default = backends["default"]
        rows: list[tuple[str, Any]] = [
            (name, f"{provider} (default)" if name == default else provider)
            for name, provider in backends["available"].items()
        ]
        if default not in backends["available"]:
            rows.append(("default", default))
        rows.append(("multiprocessing usable", backends["multiprocessing_available"]))
        sections.append(_section("backends", rows))
    temp = info["temp_folder"]
    if "error" in temp:
        sections.append(_section("temp folder", [("error", temp["error"])]))
    else:
        free = (
            f"{_human_bytes(temp['free_bytes'])} of {_human_bytes(temp['total_bytes'])}"
            if temp["exists"]
            else "unknown: the folder does not exist yet (par creates it on first use)"
        )
        sections.append(
            _section("temp folder", [("folder", temp["folder"]), ("reason", temp["reason"]), ("free", free)])
        )
    pools = info["threadpools"]
    if isinstance(pools, dict):  # an error
        sections.append(_section("threadpools", [("error", pools.get("error"))]))
    else:
        sections.append(
            _section(
                "threadpools",
                [
                    (
                        f"{p.get('user_api', '?')}/{p.get('internal_api', '?')}",
                        f"{p.get('num_threads', '?')} threads, version {p.get('version') or '?'}, "
                        f"{p.get('filepath', '?')}",
                    )
                    for p in pools
                ],
            )
        )
    workers = info.get("workers")
    if isinstance(workers, dict):
        sections.append(
            _section(
                "workers",
                [
                    (
                        k,
                        "no limit"
                        if v is None and k.startswith("max_")
                        else _human_bytes(par_api.parse_nbytes(v))
                        if k == "max_worker_memory"
                        else v,
                    )
                    for k, v in workers.items()
                ],
            )
        )
    sections.append(_section("environment", list(info["environment"].items())))
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"
