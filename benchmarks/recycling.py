"""Worker recycling measured (issue 18): a leaking task under ``max_worker_memory``, and
what ``max_tasks_per_child`` costs.

    hatch run bench:recycling            # both measurements, par and joblib
    hatch run bench:recycling --quick    # small sizes (smoke test)

1. **Leak.** Each task keeps 50 MB more in its worker (pages written, so resident);
   200 tasks at ``n_jobs=2``. par runs with ``max_worker_memory='300M'``; joblib runs
   the same loop as it is (its loky restarts a worker that grew by 300 MB, checked at
   most once a second). A sampler thread records the peak of the summed RSS of the
   process tree (parent + workers); the bound of the issue is 2 x 300 MB plus the
   parent's RSS before the call. A run whose tree passes ``--abort-mb`` is stopped
   (its peak is then reported as "> abort").
2. **Replacement cost.** 1,000 trivial tasks at ``n_jobs=2``, with
   ``max_tasks_per_child=10`` and without limit (the pool started before the timing,
   so the difference is the cost of the ~100 replacements), for loky and
   multiprocessing.

Each measurement runs in a fresh process (``--one``), repeated ``--reps`` times; the
script prints medians and writes ``benchmarks/results/recycling-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MB = 1024 * 1024
MARKER = "RECYCLING_RESULT "

_kept: list[bytearray] = []


def leak_task(i: int, mb: int) -> int:
    """Keep ``mb`` MB more in this worker, for ever."""
    _kept.append(bytearray(b"\x01") * (mb * MB))
    return len(_kept)


def trivial(i: int) -> int:
    return i


class TreePeak:
    """Peak of the summed RSS of this process and its descendants (psutil), sampled
    every ``interval`` s; calls ``on_over`` once when it passes ``abort_mb``."""

    def __init__(self, abort_mb: float, on_over: Any, interval: float = 0.01) -> None:
        import psutil

        self.root = psutil.Process()
        self.abort_mb, self.on_over, self.interval = abort_mb, on_over, interval
        self.base_mb = self.sample()
        self.peak_mb = self.base_mb
        self.aborted = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> float:
        import psutil

        total = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return 0.0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total / MB

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            mb = self.sample()
            self.peak_mb = max(self.peak_mb, mb)
            if mb > self.abort_mb and not self.aborted:
                self.aborted = True
                self.on_over()

    def __enter__(self) -> TreePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_leak(lib: str, p: dict[str, Any]) -> dict[str, Any]:
    import psutil

    if lib == "par":
        from par import Parallel, delayed

        kwargs: dict[str, Any] = {"max_worker_memory": f"{p['limit_mb']}M"}
    else:
        from joblib import Parallel, delayed

        kwargs = {}

    def kill_workers() -> None:
        for child in psutil.Process().children(recursive=True):
            try:
                child.kill()
            except psutil.Error:
                pass

    out: dict[str, Any] = {}
    with TreePeak(p["abort_mb"], kill_workers) as peak:
        t0 = time.perf_counter()
        try:
            res = Parallel(n_jobs=2, **kwargs)(delayed(leak_task)(i, p["mb"]) for i in range(p["tasks"]))
            out["succeeded"] = len(res)
        except Exception as exc:
            out["succeeded"] = 0
            cause = exc.__cause__
            out["error"] = f"{type(exc).__name__}: {str(exc)[:200]}" + (f" (cause: {cause})" if cause else "")
        out["time_s"] = time.perf_counter() - t0
    out["parent_mb"] = peak.base_mb
    out["peak_mb"] = peak.peak_mb
    out["aborted"] = peak.aborted
    out["bound_mb"] = 2 * p["limit_mb"] + peak.base_mb
    return out


def run_cost(lib: str, p: dict[str, Any]) -> dict[str, Any]:
    from par import Parallel, delayed

    out: dict[str, Any] = {}
    for label, limit in (("unlimited_s", None), ("limited_s", p["limit"])):
        with Parallel(n_jobs=2, backend=lib, max_tasks_per_child=limit) as parallel:
            parallel(delayed(trivial)(i) for i in range(4))  # workers started
            t0 = time.perf_counter()
            res = parallel(delayed(trivial)(i) for i in range(p["tasks"]))
            out[label] = time.perf_counter() - t0
        assert res == list(range(p["tasks"]))
    out["extra_ms_per_replacement"] = (
        (out["limited_s"] - out["unlimited_s"]) / (p["tasks"] / p["limit"]) * 1000
    )
    return out


MEASUREMENTS = {
    "leak": (run_leak, ("par", "joblib")),
    "cost": (run_cost, ("loky", "multiprocessing")),
}
FULL = {
    "leak": {"tasks": 200, "mb": 50, "limit_mb": 300, "abort_mb": 8000},
    "cost": {"tasks": 1000, "limit": 10},
}
QUICK = {
    "leak": {"tasks": 20, "mb": 20, "limit_mb": 100, "abort_mb": 3000},
    "cost": {"tasks": 100, "limit": 10},
}


def one(name: str, lib: str, quick: bool) -> None:
    func, _ = MEASUREMENTS[name]
    params = dict((QUICK if quick else FULL)[name])
    print(MARKER + json.dumps(func(lib, params)), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--one", nargs=2, metavar=("MEASUREMENT", "LIB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        # Through the module, not __main__: the tasks must be importable by reference
        # in the workers (the leak lives in a module global of the worker).
        import recycling

        recycling.one(*args.one, quick=args.quick)
        return 0
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name, (_, libs) in MEASUREMENTS.items():
        for rep in range(args.reps):
            for lib in libs:
                cmd = [sys.executable, __file__, "--one", name, lib] + (["--quick"] if args.quick else [])
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=HERE)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARKER)]
                res = json.loads(lines[-1][len(MARKER) :]) if lines else {"error": proc.stderr[-500:]}
                results.setdefault(name, {}).setdefault(lib, []).append(res)
                print(f"{name:5} rep {rep + 1} {lib:16} {res}", flush=True)
    print()
    print(f"{'measurement':12} {'variant':16} {'metric':26} median")
    for name, by_lib in results.items():
        for lib, runs in by_lib.items():
            keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
            for key in keys:
                values = [r[key] for r in runs if key in r]
                print(f"{name:12} {lib:16} {key:26} {statistics.median(values):.4g}")
            aborted = sum(bool(r.get("aborted")) for r in runs)
            if aborted:
                print(f"{name:12} {lib:16} {'runs stopped at abort_mb':26} {aborted}/{len(runs)}")
    stamp = _dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    path = HERE / "results" / f"recycling-{stamp}{'-quick' if args.quick else ''}.json"
    path.parent.mkdir(exist_ok=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    path.write_text(
        json.dumps({"params": QUICK if args.quick else FULL, "load": load, "results": results}, indent=1)
    )
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
