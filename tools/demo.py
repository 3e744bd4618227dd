"""The main job: a real parallel run that shows what par does.

Runs a CPU-bound loop sequentially and with ``Parallel(n_jobs=-1)``, prints both times
and the speed-up, then streams results with ``return_as='generator'`` and a progress bar.
Usage: ``hatch run demo [--tasks N] [--size N]``.
"""

from __future__ import annotations

import argparse
import sys
import time

from par import Parallel, cpu_count, delayed


def count_primes(limit: int) -> int:
    """Pure-Python CPU work: the number of primes below ``limit``."""
    count = 0
    for n in range(2, limit):
        d = 2
        while d * d <= n:
            if n % d == 0:
                break
            d += 1
        else:
            count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=32, help="number of tasks (default 32)")
    parser.add_argument("--size", type=int, default=60_000, help="work per task (default 60000)")
    args = parser.parse_args(argv)
    work = [args.size + i for i in range(args.tasks)]

    print(f"par demo: {args.tasks} tasks of count_primes(~{args.size}) on {cpu_count()} CPUs")
    t0 = time.perf_counter()
    expected = [count_primes(n) for n in work]
    t_seq = time.perf_counter() - t0
    print(f"  sequential loop          : {t_seq:6.2f} s")

    t0 = time.perf_counter()
    results = Parallel(n_jobs=-1)(delayed(count_primes)(n) for n in work)
    t_par = time.perf_counter() - t0
    assert results == expected, "parallel results differ from the sequential ones"
    print(f"  Parallel(n_jobs=-1)      : {t_par:6.2f} s   speed-up x{t_seq / t_par:.2f}")

    print("  streaming with return_as='generator' and progress=True:")
    total = 0
    stream = Parallel(n_jobs=-1, return_as="generator", progress=True)(
        delayed(count_primes)(n) for n in work
    )
    for value in stream:
        total += value
    assert total == sum(expected)
    print(f"  streamed {len(work)} results, total primes counted: {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
