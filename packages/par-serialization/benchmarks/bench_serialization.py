"""Quick measurement (not a test) of BatchSerializer against cloudpickle.dumps / pickle.dumps.

Run: python packages/par-serialization/benchmarks/bench_serialization.py
Prints the best of a few runs for large plain-data arguments and for many tasks
sharing one lambda (which must be pickled by value only once per call).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from typing import Any

import cloudpickle
from par_serialization import BatchSerializer


class Batch:
    """A BatchedCalls-like batch."""

    def __init__(self, tasks: list[Any], nested: Any = None, index: int = 0) -> None:
        self.tasks, self.nested, self.index = tasks, nested, index

    def __call__(self) -> list[Any]:
        return [f(*a, **k) for f, a, k in self.tasks]


def best(fn: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved(fns: list[Callable[[], object]], repeat: int = 7) -> list[float]:
    """Best time of each function, the runs alternating so that machine noise hits all alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - start)
    return [min(t) for t in times]


def main() -> None:
    data = {
        "dict of 1e6 int->str": {i: str(i) for i in range(1_000_000)},
        "list of 1e6 floats": [i * 0.5 for i in range(1_000_000)],
    }
    for name, value in data.items():
        ser = BatchSerializer()
        t_ser, t_cloud, t_pickle = interleaved(
            [
                lambda: ser(Batch([(len, (value,), {})])),  # noqa: B023
                lambda: cloudpickle.dumps(value),  # noqa: B023
                lambda: pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL),  # noqa: B023
            ]
        )
        print(
            f"{name}: BatchSerializer {t_ser * 1e3:.1f} ms, cloudpickle.dumps {t_cloud * 1e3:.1f} ms, "
            f"pickle.dumps {t_pickle * 1e3:.1f} ms (BatchSerializer / cloudpickle = {t_ser / t_cloud:.2f})"
        )

    func = lambda x: x * 2  # noqa: E731
    tasks = [(func, (i,), {}) for i in range(10_000)]
    ser = BatchSerializer()
    start = time.perf_counter()
    ser(Batch(tasks))
    one = time.perf_counter() - start
    print(f"10,000 tasks of one lambda in one batch: {one * 1e3:.1f} ms, {ser.stats}")
    ser = BatchSerializer()
    start = time.perf_counter()
    for k in range(0, 10_000, 100):
        ser(Batch(tasks[k : k + 100], index=k))
    many = time.perf_counter() - start
    print(f"10,000 tasks of one lambda in 100 batches: {many * 1e3:.1f} ms, {ser.stats}")
    t_cloud = best(lambda: cloudpickle.dumps(Batch(tasks)), repeat=3)
    print(f"cloudpickle.dumps of the 10,000-task batch: {t_cloud * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
