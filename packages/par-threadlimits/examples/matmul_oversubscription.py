"""Over-subscription by BLAS thread pools in process workers, with and without par's budget.

Runs a numpy matrix-multiplication workload as 4 tasks on 2 worker processes
(``concurrent.futures``, 'spawn'), twice:

- "budget": workers get ``par_threadlimits.worker_env(2)`` before they start and
  ``worker_initializer(budget)`` at start-up, i.e. ``max(cpu_count() // 2, 1)`` BLAS
  threads each;
- "unlimited": workers inherit this environment unchanged, so each BLAS uses every CPU
  (2 workers x cpu_count() threads).

Usage: python examples/matmul_oversubscription.py [--size 1200] [--reps 4] [--rounds 3]
Prints the best wall time of each configuration over ``--rounds`` and the threads the
workers' BLAS reported. Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor

import par_threadlimits as tl
from par_api import cpu_count

N_WORKERS = 2
N_TASKS = 4


def matmul_task(size: int, reps: int, seed: int) -> tuple[float, list[int]]:
    """A BLAS-bound task: ``reps`` products of two ``size``x``size`` matrices.
    Returns a checksum and the BLAS thread counts seen in this worker."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a = rng.standard_normal((size, size))
    b = rng.standard_normal((size, size))
    total = 0.0
    for _ in range(reps):
        total += float((a @ b)[0, 0])
    return total, [i["num_threads"] for i in tl.threadpool_report()]


def warm_up(_: int) -> int:
    import numpy  # noqa: F401  (loads the BLAS so that start-up is not timed)

    return os.getpid()


@contextlib.contextmanager
def patched_environ(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``env`` inside the block, exactly restored after."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run(limited: bool, size: int, reps: int, rounds: int) -> tuple[float, set[int]]:
    ctx = multiprocessing.get_context("spawn")
    budget = tl.thread_budget(N_WORKERS)
    env = tl.worker_env(N_WORKERS) if limited else {}
    initializer = tl.worker_initializer if limited else None
    initargs = (budget,) if limited else ()
    with patched_environ(env):  # spawn children copy os.environ when they start
        pool = ProcessPoolExecutor(N_WORKERS, mp_context=ctx, initializer=initializer, initargs=initargs)
        # Start both workers (and load numpy) while the environment is patched.
        list(pool.map(warm_up, range(N_WORKERS)))
    try:
        best = float("inf")
        threads: set[int] = set()
        for _ in range(rounds):
            start = time.perf_counter()
            futures = [pool.submit(matmul_task, size, reps, seed) for seed in range(N_TASKS)]
            for future in futures:
                _, seen = future.result(timeout=600)
                threads.update(seen)
            best = min(best, time.perf_counter() - start)
        return best, threads
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1200)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(
        f"cpu_count()={cpu_count()}, {N_TASKS} tasks on {N_WORKERS} worker processes, "
        f"{args.reps} products of {args.size}x{args.size} per task, best of {args.rounds}"
    )
    results = {}
    for name, limited in (("budget", True), ("unlimited", False)):
        seconds, threads = run(limited, args.size, args.reps, args.rounds)
        results[name] = seconds
        print(f"  {name:9s}: {seconds:7.3f} s   (BLAS threads per worker: {sorted(threads)})")
    print(f"  unlimited / budget = {results['unlimited'] / results['budget']:.2f}")


if __name__ == "__main__":
    main()
