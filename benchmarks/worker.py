"""Runs one repetition of one workload with one library, in this (fresh) process.

Usage: ``python benchmarks/worker.py WORKLOAD LIB [--quick]``

Prints one line ``BENCH_RESULT {json}`` on stdout: ``{"metrics": {...}}`` on success,
``{"error": "..."}`` when the workload raised. ``run.py`` starts one such process per
(workload, library, repetition), so that no state (a started pool, an imported module,
a warm cache) leaks from one measurement to the next.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

MARKER = "BENCH_RESULT "


def main(argv: list[str]) -> int:
    """Runs the workload named in ``argv`` and prints its result line; returns the exit code."""
    if len(argv) < 2 or argv[1] not in ("par", "joblib", "mpire", "pebble", "loky"):
        print("usage: worker.py WORKLOAD {par,joblib,mpire,pebble,loky} [--quick]", file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from workloads import WORKLOADS

    name, lib = argv[0], argv[1]
    if name not in WORKLOADS:
        print(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}", file=sys.stderr)
        return 2
    workload = WORKLOADS[name]
    params = workload.quick if "--quick" in argv[2:] else workload.params
    try:
        metrics = workload.func(lib, dict(params))
        result: dict[str, object] = {"metrics": metrics}
    except BaseException as exc:  # reported to run.py, which goes on with the next run
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    print(MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
