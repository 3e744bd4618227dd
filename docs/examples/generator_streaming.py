"""Stream results as they are computed, with a progress listener.

``return_as='generator'`` yields results in submission order as soon as each is ready;
``'generator_unordered'`` yields them as they complete. A ``progress=`` callable receives
``par.ProgressEvent`` objects (a notebook widget or a logger can subscribe the same way).

Run: python docs/examples/generator_streaming.py
"""

import time

from par import Parallel, ProgressEvent, delayed


def slow_square(x: int) -> int:
    time.sleep(0.01 * (x % 3))
    return x * x


def main() -> None:
    events: list[ProgressEvent] = []
    parallel = Parallel(n_jobs=2, return_as="generator", progress=events.append)
    # The input is a generator too: tasks are pulled lazily (pre_dispatch='2 * n_jobs').
    total = 0
    for i, result in enumerate(parallel(delayed(slow_square)(x) for x in range(8))):
        assert result == i * i  # in submission order
        total += result
    print(f"sum of squares: {total}")
    last = events[-1]
    print(f"last event: {last.kind}, {last.n_completed}/{last.total} tasks")

    unordered = Parallel(n_jobs=2, backend="threading", return_as="generator_unordered")
    print(sorted(unordered(delayed(slow_square)(x) for x in range(5))))


if __name__ == "__main__":
    main()
