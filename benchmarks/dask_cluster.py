"""par's dask backend on a two-worker cluster, next to loky on this machine.

Starts ``dask scheduler`` and two ``dask worker --nthreads 1`` processes on loopback
ports (as the integration tests do), then measures:

1. the wall time of 200 tasks of ~10 ms of CPU work with ``backend='dask'`` on that
   cluster, with ``backend='loky', n_jobs=2``, and with dask alone (``client.map``, one
   future per task), alternating, ``--reps`` times (medians, and the medians of the
   per-repetition ratios); and with per-task timeouts (``on_error='return',
   timeout=60``: each batch reports its start and the backend keeps its deadline),
   whose ratio to the plain dask run is the cost of that watch;
2. the bytes this process sends to the scheduler for 20 tasks that all take the same
   50 MB numpy array, with scattering (the default) and without
   (``scatter_threshold=None``).

    hatch run bench:dask                # 5 repetitions
    hatch run bench:dask --reps 3

The cluster is torn down at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import distributed
import numpy as np
from distributed.comm.tcp import TCP
from par import Parallel, delayed, parallel_config

HERE = Path(__file__).resolve().parent


def busy(ms: float) -> int:
    """About ``ms`` milliseconds of CPU work (defined in __main__: sent by value)."""
    end = time.perf_counter() + ms / 1000
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def nbytes_of(a: Any, i: int) -> int:
    return int(a.nbytes) + i


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(args: list[str], log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dask", *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(5)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


class ByteCounter:
    """Bytes this process writes over TCP to one address (distributed's TCP.write
    returns the number of bytes written)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.bytes = 0
        self._original = TCP.write
        counter = self

        async def write(comm: Any, msg: Any, *args: Any, **kwargs: Any) -> int:
            n: int = await counter._original(comm, msg, *args, **kwargs)
            if comm.peer_address == address:
                counter.bytes += n
            return n

        TCP.write = write  # type: ignore[method-assign]

    def close(self) -> None:
        TCP.write = self._original  # type: ignore[method-assign]


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--ms", type=float, default=10.0)
    args = parser.parse_args()

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    log_path = HERE / "results" / "dask-cluster.log"
    log_path.parent.mkdir(exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    with open(log_path, "wb") as log:
        try:
            procs.append(
                _spawn(["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], log)
            )
            for i in range(2):
                procs.append(
                    _spawn(["worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard",
                            "--name", f"bench-{i}"], log)
                )  # fmt: skip
            report = run(address, args)
        finally:
            for proc in reversed(procs):
                _kill(proc)
    out = HERE / "results" / f"dask-{time.strftime('%Y-%m-%d-%H%M')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def run(address: str, args: argparse.Namespace) -> dict[str, Any]:
    tasks, ms = args.tasks, args.ms
    with distributed.Client(address, timeout=60, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
        expected = None

        def on_dask() -> None:
            with parallel_config(backend="dask", client=client):
                out = Parallel()(delayed(busy)(ms) for _ in range(tasks))
            assert len(out) == tasks

        def on_dask_timed() -> None:  # per-task timeouts: start reports and deadlines
            with parallel_config(backend="dask", client=client):
                out = Parallel(on_error="return", timeout=60)(delayed(busy)(ms) for _ in range(tasks))
            assert len(out) == tasks and not any(isinstance(r, BaseException) for r in out)

        def on_loky() -> None:
            out = Parallel(n_jobs=2, backend="loky")(delayed(busy)(ms) for _ in range(tasks))
            assert len(out) == tasks

        def on_dask_native() -> None:  # dask alone: one future per task, no par
            out = client.gather(client.map(busy, [ms] * tasks, pure=False))
            assert len(out) == tasks

        on_dask(), on_loky(), on_dask_native(), on_dask_timed()  # warm-up: imports, loky's pool
        dask_t, loky_t, native_t, timed_t = [], [], [], []
        for rep in range(args.reps):
            dask_t.append(timed(on_dask))
            loky_t.append(timed(on_loky))
            native_t.append(timed(on_dask_native))
            timed_t.append(timed(on_dask_timed))
            print(
                f"rep {rep + 1}: par on dask {dask_t[-1]:.3f} s, par on loky {loky_t[-1]:.3f} s, "
                f"dask's client.map {native_t[-1]:.3f} s, par on dask with per-task timeouts "
                f"{timed_t[-1]:.3f} s",
                flush=True,
            )
        ratios = [d / lk for d, lk in zip(dask_t, loky_t, strict=True)]
        native_ratios = [d / n for d, n in zip(dask_t, native_t, strict=True)]
        timed_ratios = [t / d for t, d in zip(timed_t, dask_t, strict=True)]

        a = np.ones(50 * 1000 * 1000 // 8)  # 50 MB
        counter = ByteCounter(address)
        try:
            # a client of its own, created after the counter, so its connections are counted
            with distributed.Client(address, timeout=60, set_as_default=False) as counted:
                with parallel_config(backend="dask", client=counted):
                    before = counter.bytes
                    scattered_out = Parallel(batch_size=1)(delayed(nbytes_of)(a, i) for i in range(20))
                    scattered = counter.bytes - before
                    before = counter.bytes
                    with parallel_config(backend="dask", client=counted, scatter_threshold=None):
                        inline_out = Parallel(batch_size=1)(delayed(nbytes_of)(a, i) for i in range(20))
                    inline = counter.bytes - before
        finally:
            counter.close()
        expected = [a.nbytes + i for i in range(20)]
        assert scattered_out == inline_out == expected

    report = {
        "tasks": tasks,
        "task_ms": ms,
        "reps": args.reps,
        "dask_s": dask_t,
        "loky_s": loky_t,
        "dask_median_s": statistics.median(dask_t),
        "loky_median_s": statistics.median(loky_t),
        "ratio_dask_over_loky_median": statistics.median(ratios),
        "dask_client_map_s": native_t,
        "dask_client_map_median_s": statistics.median(native_t),
        "ratio_dask_over_client_map_median": statistics.median(native_ratios),
        "dask_task_timeout_s": timed_t,
        "dask_task_timeout_median_s": statistics.median(timed_t),
        "ratio_dask_task_timeout_over_dask_median": statistics.median(timed_ratios),
        "array_mb": a.nbytes / 1e6,
        "bytes_to_scheduler_scattered": scattered,
        "bytes_to_scheduler_not_scattered": inline,
        "cpus": os.cpu_count(),
    }
    print(
        f"\n{tasks} tasks of ~{ms:g} ms, median of {args.reps}: dask (2 workers x 1 thread) "
        f"{report['dask_median_s']:.3f} s, loky n_jobs=2 {report['loky_median_s']:.3f} s, "
        f"ratio dask/loky {report['ratio_dask_over_loky_median']:.2f}; dask's own client.map "
        f"{report['dask_client_map_median_s']:.3f} s (par on dask / client.map "
        f"{report['ratio_dask_over_client_map_median']:.2f}); with per-task timeouts "
        f"{report['dask_task_timeout_median_s']:.3f} s (over plain dask "
        f"{report['ratio_dask_task_timeout_over_dask_median']:.2f})"
    )
    print(
        f"50 MB array used by 20 tasks: {scattered / 1e6:.1f} MB sent to the scheduler when "
        f"scattered, {inline / 1e6:.1f} MB with scatter_threshold=None"
    )
    return report


if __name__ == "__main__":
    main()
