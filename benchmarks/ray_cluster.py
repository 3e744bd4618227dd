"""par's ray backend on a two-CPU local Ray cluster, next to loky and the dask backend.

Starts ``ray start --head --num-cpus 2`` (``par_backends_ray.LocalCluster``: free
loopback ports, a temp dir of its own) and a dask scheduler with two ``dask worker
--nthreads 1`` processes (as benchmarks/dask_cluster.py does), then measures:

1. the wall time of 200 tasks of ~10 ms of CPU work with ``backend='ray'`` on that
   cluster, with ``backend='loky', n_jobs=2``, with ``backend='dask'``, and with Ray
   alone (one ``ray.remote`` task per task, ``ray.get``), alternating, ``--reps`` times
   (medians, and the median of the per-repetition ratios ray/loky);
2. the bytes put into the object store for 20 tasks (one per batch) that all take the
   same 50 MB numpy array: what par puts (``ray.put``, counted by wrapping it) and what
   the tasks carry as arguments (each task's arguments pickled with protocol 5, buffers
   included: Ray stores a task's arguments above 100 KiB in the object store, per task),
   with par's put-once (the default) and without (``put_threshold=None``).

    hatch run bench:ray                # 5 repetitions
    hatch run bench:ray --reps 3

The clusters are torn down at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import distributed
import numpy as np
import ray
from par import Parallel, delayed, parallel_config
from par_backends_ray import LocalCluster, RayBackend
from par_backends_ray import backend as ray_backend_module

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from dask_cluster import _free_port, _kill, _spawn  # noqa: E402


def busy(ms: float) -> int:
    """About ``ms`` milliseconds of CPU work (defined in __main__: sent by value)."""
    end = time.perf_counter() + ms / 1000
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def nbytes_of(a: Any, i: int) -> int:
    return int(a.nbytes) + i


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class PutCounter:
    """Counts ``ray.put`` calls and the bytes of what they store (pickled size)."""

    def __init__(self) -> None:
        self.calls = 0
        self.bytes = 0
        self._original = ray.put
        counter = self

        def put(value: Any, *args: Any, **kwargs: Any) -> Any:
            counter.calls += 1
            counter.bytes += _pickled_size(value)
            return counter._original(value, *args, **kwargs)

        ray.put = put

    def close(self) -> None:
        ray.put = self._original


def _pickled_size(obj: Any) -> int:
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return len(data) + sum(memoryview(b).nbytes for b in buffers)


class TaskArgumentCounter:
    """Bytes of the arguments of every Ray task the backend submits."""

    def __init__(self) -> None:
        self.tasks = 0
        self.bytes = 0
        self._original = ray_backend_module._remote
        counter = self
        original = self._original

        class Options:
            def __init__(self, wrapped: Any) -> None:
                self._wrapped = wrapped

            def remote(self, *args: Any) -> Any:
                counter.tasks += 1
                counter.bytes += sum(_pickled_size(a) for a in args if not isinstance(a, ray.ObjectRef))
                return self._wrapped.remote(*args)

        class Remote:
            def options(self, **kwargs: Any) -> Options:
                return Options(original().options(**kwargs))

        ray_backend_module._remote = Remote  # type: ignore[assignment]

    def close(self) -> None:
        ray_backend_module._remote = self._original  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--ms", type=float, default=10.0)
    args = parser.parse_args()

    (HERE / "results").mkdir(exist_ok=True)
    load_before = os.getloadavg()
    port = _free_port()
    dask_address = f"tcp://127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []
    cluster = LocalCluster(num_cpus=2, object_store_memory=300_000_000)
    t0 = time.perf_counter()
    cluster.start()
    ray_start_s = time.perf_counter() - t0
    try:
        with open(HERE / "results" / "ray-bench-dask.log", "wb") as log:
            procs.append(
                _spawn(["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], log)
            )
            for i in range(2):
                procs.append(
                    _spawn(["worker", dask_address, "--host", "127.0.0.1", "--nthreads", "1",
                            "--no-dashboard", "--name", f"bench-{i}"], log)
                )  # fmt: skip
            report = run(cluster.address, dask_address, args)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for proc in reversed(procs):
            _kill(proc)
        cluster.stop()
    report["ray_cluster_start_s"] = ray_start_s
    report["loadavg_before"] = load_before
    report["loadavg_after"] = os.getloadavg()
    out = HERE / "results" / f"ray-{time.strftime('%Y-%m-%d-%H%M')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average (1, 5, 15 min) before {load_before}, after {report['loadavg_after']}")
    print(f"wrote {out}")


def run(ray_address: str, dask_address: str, args: argparse.Namespace) -> dict[str, Any]:
    tasks, ms = args.tasks, args.ms
    ray.init(address=ray_address, logging_level="WARNING")
    remote_busy = ray.remote(busy)
    with distributed.Client(dask_address, timeout=60, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)

        def on_ray() -> None:
            with parallel_config(backend="ray"):
                out = Parallel()(delayed(busy)(ms) for _ in range(tasks))
            assert len(out) == tasks

        def on_loky() -> None:
            out = Parallel(n_jobs=2, backend="loky")(delayed(busy)(ms) for _ in range(tasks))
            assert len(out) == tasks

        def on_dask() -> None:
            with parallel_config(backend="dask", client=client):
                out = Parallel()(delayed(busy)(ms) for _ in range(tasks))
            assert len(out) == tasks

        def on_ray_native() -> None:  # Ray alone: one task per task, no par
            out = ray.get([remote_busy.remote(ms) for _ in range(tasks)])
            assert len(out) == tasks

        runs = {"ray": on_ray, "loky": on_loky, "dask": on_dask, "ray_native": on_ray_native}
        for fn in runs.values():  # warm-up: workers started, imports done
            fn()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for rep in range(args.reps):
            for name, fn in runs.items():
                times[name].append(timed(fn))
            print(
                f"rep {rep + 1}: " + ", ".join(f"{name} {times[name][-1]:.3f} s" for name in runs),
                flush=True,
            )
    ratios = [r / lk for r, lk in zip(times["ray"], times["loky"], strict=True)]

    a = np.ones(50 * 1000 * 1000 // 8)  # 50 MB
    expected = [a.nbytes + i for i in range(20)]
    measured: dict[str, dict[str, int]] = {}
    for label, threshold in (("put_once", "1M"), ("no_put", None)):
        puts, task_args = PutCounter(), TaskArgumentCounter()
        backend = RayBackend(put_threshold=threshold)
        try:
            with parallel_config(backend=backend):
                out = Parallel(batch_size=1)(delayed(nbytes_of)(a, i) for i in range(20))
        finally:
            puts.close()
            task_args.close()
        assert out == expected
        measured[label] = {
            "ray_put_calls": puts.calls,
            "ray_put_bytes": puts.bytes,
            "backend_n_put": backend.n_put,
            "backend_bytes_put": backend.bytes_put,
            "tasks": task_args.tasks,
            "task_argument_bytes": task_args.bytes,
        }
    ray.shutdown()

    report = {
        "tasks": tasks,
        "task_ms": ms,
        "reps": args.reps,
        **{f"{name}_s": t for name, t in times.items()},
        **{f"{name}_median_s": statistics.median(t) for name, t in times.items()},
        "ratio_ray_over_loky_median": statistics.median(ratios),
        "array_mb": a.nbytes / 1e6,
        "bytes": measured,
        "cpus": os.cpu_count(),
        "ray_version": ray.__version__,
    }
    med = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"\n{tasks} tasks of ~{ms:g} ms, median of {args.reps}: par on ray (2 CPUs) {med['ray']:.3f} s, "
        f"loky n_jobs=2 {med['loky']:.3f} s, par on dask (2 workers x 1 thread) {med['dask']:.3f} s, "
        f"Ray alone (one task per task) {med['ray_native']:.3f} s; ratio ray/loky "
        f"{report['ratio_ray_over_loky_median']:.2f}"
    )
    for label, m in measured.items():
        print(
            f"50 MB array used by 20 tasks, {label}: ray.put {m['ray_put_calls']} x = "
            f"{m['ray_put_bytes'] / 1e6:.1f} MB; task arguments {m['task_argument_bytes'] / 1e6:.1f} MB "
            f"over {m['tasks']} tasks"
        )
    return report


if __name__ == "__main__":
    main()
