"""Quickstart: a loop run in parallel, then the same loop with the threading backend.

Run: python docs/examples/quickstart.py
"""

from math import sqrt

from par import Parallel, delayed, parallel_config


def main() -> None:
    # The spec's first example: 2 worker processes (the default loky backend).
    print(Parallel(n_jobs=2)(delayed(sqrt)(i**2) for i in range(10)))

    # Swapping backends: parallel_config applies to every Parallel call in the block.
    with parallel_config(backend="threading", n_jobs=2):
        print(Parallel()(delayed(pow)(i, 2) for i in range(5)))


if __name__ == "__main__":  # needed by process backends on spawn-based platforms
    main()
