"""The cost of per-task timeouts on the ray backend (issue 17).

On a two-CPU ``LocalCluster``, 200 tasks of ~10 ms of CPU work, alternating, ``--reps``
times: ``on_error='return', batch_size=1`` (plain Ray tasks, one per task) and
``on_error='return', timeout=60`` (the scheduler forces one task per batch; each runs
as a Ray generator task watched by the driver). Prints the medians and the median of
the per-repetition ratios timed/plain, and writes them to ``benchmarks/results``.

    hatch run bench:ray-timeout            # 5 repetitions
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import ray
from par import Parallel, delayed, parallel_config
from par_backends_ray import LocalCluster, shutdown


def work(ms: float) -> float:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()
    rows = []
    load_before = os.getloadavg()
    with LocalCluster(num_cpus=2, object_store_memory=100_000_000) as cluster:
        try:
            with parallel_config(backend="ray", address=cluster.address):
                Parallel(batch_size=1)(delayed(work)(1) for _ in range(20))  # warm the workers
                for rep in range(args.reps):
                    t0 = time.perf_counter()
                    Parallel(batch_size=1, on_error="return")(delayed(work)(10) for _ in range(args.tasks))
                    plain = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    Parallel(on_error="return", timeout=60)(delayed(work)(10) for _ in range(args.tasks))
                    timed = time.perf_counter() - t0
                    rows.append({"plain_s": plain, "timed_s": timed, "ratio": timed / plain})
                    print(f"rep {rep + 1}: plain {plain:.3f} s, per-task timeout {timed:.3f} s", flush=True)
        finally:
            shutdown()
            if ray.is_initialized():
                ray.shutdown()
    report = {
        "tasks": args.tasks,
        "ms": 10,
        "reps": rows,
        "median": {k: statistics.median(r[k] for r in rows) for k in ("plain_s", "timed_s", "ratio")},
        "ray": ray.__version__,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    m = report["median"]
    print(f"median: plain {m['plain_s']:.3f} s, per-task timeout {m['timed_s']:.3f} s, ratio {m['ratio']:.2f}")
    out = Path(__file__).parent / "results" / time.strftime("ray-timeout-%Y-%m-%d-%H%M.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
