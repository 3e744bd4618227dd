"""The workloads of the par-vs-joblib benchmark (issue 8).

Each workload is a function ``run(lib, params) -> dict[str, float]`` that runs one
repetition in the current process and returns its metrics. ``lib`` is ``"par"`` or
``"joblib"``; the only difference between the two is the module that ``Parallel``,
``delayed``, ``parallel_config`` and ``cpu_count`` come from (:func:`api`). Some
workloads also accept ``"mpire"`` (a third reference library, where the issue or the
comparison needs one); references that the issue names inside a workload (a
sequential loop, ``concurrent.futures.ThreadPoolExecutor``) run in the same process
as the library and are reported as extra metrics of the same repetition.

``WORKLOADS`` describes every workload: its parameters (full and ``--quick`` sizes),
its metrics (unit, whether lower or higher is better) and its targets. A target is
either a ``"ratio"`` (the median of the per-repetition ratios par/joblib) or a
``"par"`` value (par's own median, e.g. the speed-up over a sequential loop).

Unless a workload says otherwise, the pool is warmed up with one small call before the
measured section, so that the metric is the cost of the call itself; ``first_call``
measures the start-up.

This module is imported by ``worker.py`` (in a fresh subprocess per repetition) and by
``run.py`` / ``chart.py`` (for the descriptions only: importing it imports neither
library nor numpy).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

N_JOBS = 2

# --------------------------------------------------------------------------- tasks
# Module-level task functions: importable by reference in the workers.


def noop(x: Any) -> Any:
    """The trivial task: returns its argument."""
    return x


def cpu_task(n: int) -> int:
    """Pure-Python work, about 25 ms for the default ``n`` on the reference machine."""
    s = 0
    for i in range(n):
        s += i * i % 7
    return s


def sleep_task(seconds: float) -> float:
    """Sleeps ``seconds`` and returns it (tasks of a known duration that need no CPU)."""
    time.sleep(seconds)
    return seconds


def sum_slice(arr: Any, start: int, stop: int) -> float:
    """Sum of ``arr[start:stop]``."""
    return float(arr[start:stop].sum())


def make_array(i: int, n: int) -> Any:
    """A float64 array of ``n`` items (``8 * n`` bytes), filled with ``i``."""
    import numpy as np

    return np.full(n, float(i))


def size_of(obj: Any) -> int:
    """``len(obj)``: a task that reads a large argument."""
    return len(obj)


def matmul_trace(a: Any, b: Any) -> float:
    """Trace of ``a @ b`` (the product runs in BLAS threads)."""
    return float((a @ b).trace())


# A module-level lambda: plain pickle cannot send it by reference (its name is <lambda>).
lambda_task = lambda x: x + 1  # noqa: E731


# --------------------------------------------------------------------------- helpers


def api(lib: str) -> ModuleType:
    """The module that ``Parallel``/``delayed``/``parallel_config``/``cpu_count`` come from."""
    if lib == "par":
        import par as module
    elif lib == "joblib":
        import joblib as module
    else:
        raise ValueError(f"lib must be 'par' or 'joblib' for this workload, got {lib!r}")
    return module


def warm_task(x: Any) -> Any:
    """A task long enough (20 ms) that a warm-up call reaches every worker."""
    time.sleep(0.02)
    return x


def warm_up(m: ModuleType, **kwargs: Any) -> None:
    """One small call, so that the measured call finds the pool started and every worker
    warm: with instant tasks one worker could take them all, and the other would import
    this module and the library's worker-side modules during the measured call (seen as
    a 6-47 ms late start of the second worker in ``cpu``, for par and for joblib)."""
    m.Parallel(n_jobs=N_JOBS, **kwargs)(m.delayed(warm_task)(i) for i in range(2 * N_JOBS))


def _loky_executor() -> Any:
    """Raw loky's reusable executor with the two workers warm: the pool under par's and
    joblib's default backend, without either library."""
    from loky import get_reusable_executor

    executor = get_reusable_executor(max_workers=N_JOBS)
    list(executor.map(warm_task, range(2 * N_JOBS)))
    return executor


def _loky_map(executor: Any, n: int) -> list[Any]:
    """``noop`` over ``range(n)`` with raw loky's ``map``: plain ints, no ``delayed``
    objects for the caller to make, in chunks of at most 10,000 (par's largest auto
    batch) and at least 4 per worker. The floor that par's dispatch is compared with."""
    chunk = min(10_000, max(1, n // (4 * N_JOBS)))
    return list(executor.map(noop, range(n), chunksize=chunk))


def _mpire_pool(**kwargs: Any) -> Any:
    from mpire import WorkerPool

    return WorkerPool(n_jobs=N_JOBS, **kwargs)


class PeakMemory:
    """Samples the summed memory of this process and all its descendants in a thread.

    ``rss_mb`` is the peak of the summed RSS (what the issue asks for; pages shared
    between processes, such as a memmapped array, count once per process), ``pss_mb``
    the peak of the summed PSS (shared pages split between the processes that map them,
    so the sum is the real footprint; Linux only). Both are 0.0 when psutil is missing.
    """

    def __init__(self, interval: float = 0.02, pss: bool = True) -> None:
        self.interval = interval
        self.pss = pss
        self.rss_mb = 0.0
        self.pss_mb = 0.0
        self.base_rss_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self, root: Any) -> tuple[float, float]:
        import psutil

        rss = pss = 0.0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0, 0.0
        for p in procs:
            try:
                if self.pss:
                    info = p.memory_full_info()
                    rss += info.rss
                    pss += getattr(info, "pss", 0)
                else:
                    rss += p.memory_info().rss
            except psutil.Error:
                continue
        return rss / 2**20, pss / 2**20

    def _loop(self, root: Any) -> None:
        while not self._stop.wait(self.interval):
            rss, pss = self._sample(root)
            self.rss_mb = max(self.rss_mb, rss)
            self.pss_mb = max(self.pss_mb, pss)

    def __enter__(self) -> PeakMemory:
        try:
            import psutil
        except ImportError:
            return self
        root = psutil.Process(os.getpid())
        self.base_rss_mb, _ = self._sample(root)
        self.rss_mb, self.pss_mb = self._sample(root)
        self._thread = threading.Thread(target=self._loop, args=(root,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()


@contextlib.contextmanager
def timer(out: dict[str, float], key: str) -> Iterator[None]:
    """Stores the wall time of the block in ``out[key]`` (seconds)."""
    gc.collect()
    t0 = time.perf_counter()
    yield
    out[key] = time.perf_counter() - t0


# --------------------------------------------------------------------------- workloads


def generator_floor_us(m: ModuleType, n: int) -> float:
    """CPU time (µs per task, this thread) to make and free the tasks of ``micro``'s call
    without running them: the user's ``m.delayed(noop)(i) for i in range(n)`` read in
    chunks of 10,000 (the size par's auto batching reaches) and dropped. What any library
    pays in the caller's thread before its own work; measured in the same process and
    under the same load as the call."""
    tasks = (m.delayed(noop)(i) for i in range(n))
    gc.collect()
    gc.disable()  # as par and joblib pause it while they pull tasks
    try:
        t0 = time.thread_time()
        while chunk := list(itertools.islice(tasks, 10_000)):
            del chunk
        return (time.thread_time() - t0) / n * 1e6
    finally:
        gc.enable()


def w_micro(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """``n`` calls of a trivial module-level function: dispatch overhead and auto-batching.

    CPU time per task during the call, less sensitive to other processes than the wall
    time: ``parent_cpu_us`` for all the parent's threads (compare libraries by it),
    ``main_cpu_us`` for the calling thread alone (par dispatches there and it is par's
    bottleneck; joblib dispatches from its callback thread). ``generator_us``: what the
    user's generator alone costs in the calling thread (:func:`generator_floor_us`)."""
    n, out = p["n"], {}
    if lib == "loky":
        executor = _loky_executor()
        with timer(out, "time_s"):
            c0, p0 = time.thread_time(), time.process_time()
            res = _loky_map(executor, n)
            cpu, pcpu = time.thread_time() - c0, time.process_time() - p0
    elif lib == "mpire":
        with _mpire_pool() as pool:
            pool.map(noop, range(4))
            with timer(out, "time_s"):
                c0, p0 = time.thread_time(), time.process_time()
                res = pool.map(noop, range(n))
                cpu, pcpu = time.thread_time() - c0, time.process_time() - p0
    else:
        m = api(lib)
        warm_up(m)
        with timer(out, "time_s"):
            c0, p0 = time.thread_time(), time.process_time()
            res = m.Parallel(n_jobs=N_JOBS)(m.delayed(noop)(i) for i in range(n))
            cpu, pcpu = time.thread_time() - c0, time.process_time() - p0
        out["generator_us"] = generator_floor_us(m, n)
    assert len(res) == n and res[-1] == n - 1
    out["us_per_task"] = out["time_s"] / n * 1e6
    out["parent_cpu_us"] = pcpu / n * 1e6
    out["main_cpu_us"] = cpu / n * 1e6
    return out


def w_micro_threads(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """``n`` trivial calls with ``prefer='threads'``."""
    n, out = p["n"], {}
    m = api(lib)
    warm_up(m, prefer="threads")
    with timer(out, "time_s"):
        res = m.Parallel(n_jobs=N_JOBS, prefer="threads")(m.delayed(noop)(i) for i in range(n))
    assert len(res) == n
    return out


def w_cpu(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """``tasks`` pure-Python tasks of ~25 ms: speed-up over a sequential loop in the same run."""
    n, tasks, out = p["work"], p["tasks"], {}
    with timer(out, "sequential_s"):
        expected = [cpu_task(n) for _ in range(tasks)]
    if lib == "mpire":
        with _mpire_pool() as pool:
            pool.map(noop, range(4))
            with timer(out, "parallel_s"):
                res = pool.map(cpu_task, [n] * tasks)
    else:
        m = api(lib)
        warm_up(m)
        with timer(out, "parallel_s"):
            res = m.Parallel(n_jobs=N_JOBS)(m.delayed(cpu_task)(n) for _ in range(tasks))
    assert res == expected
    out["speedup"] = out["sequential_s"] / out["parallel_s"]
    return out


def w_many_calls(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """``calls`` consecutive ``Parallel`` calls of 4 trivial tasks; then the same in one ``with``."""
    calls, out = p["calls"], {}
    m = api(lib)
    warm_up(m)
    with timer(out, "separate_s"):
        for _ in range(calls):
            m.Parallel(n_jobs=N_JOBS)(m.delayed(noop)(i) for i in range(4))
    with m.Parallel(n_jobs=N_JOBS) as par:
        par(m.delayed(noop)(i) for i in range(4))
        with timer(out, "context_s"):
            for _ in range(calls):
                par(m.delayed(noop)(i) for i in range(4))
    out["separate_ms_per_call"] = out["separate_s"] / calls * 1e3
    out["context_ms_per_call"] = out["context_s"] / calls * 1e3
    return out


def w_first_call(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """The import and the first call in a fresh process (pool start-up); then a second call."""
    out: dict[str, float] = {}
    with timer(out, "import_s"):
        m = api(lib)
    with timer(out, "first_call_s"):
        m.Parallel(n_jobs=N_JOBS)(m.delayed(noop)(i) for i in range(4))
    with timer(out, "second_call_s"):
        m.Parallel(n_jobs=N_JOBS)(m.delayed(noop)(i) for i in range(4))
    return out


def _numpy_large(lib: str, p: dict[str, Any], **kwargs: Any) -> dict[str, float]:
    import numpy as np

    n, tasks, out = p["mb"] * 2**20 // 8, p["tasks"], {}
    arr = np.arange(n, dtype=np.float64)
    bounds = [(i * n // tasks, (i + 1) * n // tasks) for i in range(tasks)]
    m = api(lib)
    warm_up(m, **kwargs)
    with PeakMemory() as mem, timer(out, "time_s"):
        res = m.Parallel(n_jobs=N_JOBS, **kwargs)(m.delayed(sum_slice)(arr, a, b) for a, b in bounds)
    assert abs(sum(res) - n * (n - 1) / 2) < 1e-6 * n * n
    out["peak_rss_mb"] = mem.rss_mb
    out["peak_pss_mb"] = mem.pss_mb
    out["base_rss_mb"] = mem.base_rss_mb
    return out


def w_numpy_large(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """One large float64 array passed to 16 tasks summing disjoint slices (default memmapping)."""
    return _numpy_large(lib, p)


def w_numpy_large_nomemmap(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """``numpy_large`` with memmapping disabled (``max_nbytes=None``): the array is pickled."""
    return _numpy_large(lib, p, max_nbytes=None)


def w_large_results(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """``tasks`` tasks each returning a ``mb``-MB float64 array."""
    tasks, n, out = p["tasks"], p["mb"] * 2**20 // 8, {}
    if lib == "mpire":
        with _mpire_pool() as pool:
            pool.map(noop, range(4))
            with PeakMemory(pss=False) as mem, timer(out, "time_s"):
                res = pool.map(make_array, [(i, n) for i in range(tasks)], concatenate_numpy_output=False)
    else:
        m = api(lib)
        warm_up(m)
        with PeakMemory(pss=False) as mem, timer(out, "time_s"):
            res = m.Parallel(n_jobs=N_JOBS)(m.delayed(make_array)(i, n) for i in range(tasks))
    assert len(res) == tasks and res[-1][0] == tasks - 1 and res[-1].nbytes == n * 8
    out["peak_rss_mb"] = mem.rss_mb
    return out


def _generator(lib: str, p: dict[str, Any], return_as: str) -> dict[str, float]:
    """``tasks`` sleeping tasks of 0-100 ms (seeded) with ``return_as``: the time to the
    first result and to the last."""
    rng = random.Random(8)
    durations = [rng.uniform(0.0, p["max_s"]) for _ in range(p["tasks"])]
    out: dict[str, float] = {}
    m = api(lib)
    warm_up(m)
    gc.collect()
    t0 = time.perf_counter()
    gen = m.Parallel(n_jobs=N_JOBS, return_as=return_as)(m.delayed(sleep_task)(d) for d in durations)
    got = [next(gen)]
    out["first_result_s"] = time.perf_counter() - t0
    got.extend(gen)
    out["total_s"] = time.perf_counter() - t0
    if return_as == "generator":
        assert got == durations
    else:
        assert sorted(got) == sorted(durations)
    out["ideal_total_s"] = sum(durations) / N_JOBS
    return out


def w_generator_unordered(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """``tasks`` sleeping tasks of 0-100 ms with ``return_as='generator_unordered'``."""
    return _generator(lib, p, "generator_unordered")


def w_generator_ordered(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """The same tasks as ``generator_unordered`` with ``return_as='generator'`` (results
    in task order)."""
    return _generator(lib, p, "generator")


def _heartbeat_lateness(run: Callable[[], Any], interval: float = 0.001) -> tuple[Any, float, list[float]]:
    """Run the coroutine function ``run`` in a fresh event loop next to a heartbeat that
    sleeps ``interval`` seconds in a loop and records how late each wake-up is (s).
    Returns (result of run, its wall time, the lateness samples)."""
    import asyncio

    late: list[float] = []

    async def heartbeat(stop: asyncio.Event) -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(interval)
            late.append(time.perf_counter() - t - interval)

    async def main() -> tuple[Any, float]:
        stop = asyncio.Event()
        beat = asyncio.ensure_future(heartbeat(stop))
        await asyncio.sleep(0.01)  # the heartbeat is running
        t0 = time.perf_counter()
        result = await run()
        elapsed = time.perf_counter() - t0
        stop.set()
        await beat
        return result, elapsed

    result, elapsed = asyncio.run(main())
    return result, elapsed, late


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def w_asyncio_heartbeat(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """``tasks`` tasks of ``task_s`` on n_jobs=2 while a coroutine sleeps 1 ms in a loop.

    par: ``await Parallel(...).acall(tasks)`` and ``async for`` over
    ``return_as='generator_unordered'``: p99 lateness of the heartbeat and throughput
    against the plain synchronous call (no loop). Both libraries: the same heartbeat while
    a plain synchronous ``Parallel`` call runs in the loop's thread (what users have
    today; the heartbeat only wakes after it)."""
    out: dict[str, float] = {}
    m = api(lib)
    n, task_s = p["tasks"], p["task_s"]
    expected = [task_s] * n

    def tasks() -> Iterator[Any]:
        return (m.delayed(sleep_task)(task_s) for _ in range(n))

    def sync_call() -> float:
        gc.collect()
        t0 = time.perf_counter()
        assert m.Parallel(n_jobs=N_JOBS)(tasks()) == expected
        return time.perf_counter() - t0

    warm_up(m)
    sync_before = sync_call()

    async def blocking() -> Any:
        return m.Parallel(n_jobs=N_JOBS)(tasks())

    res, _, late = _heartbeat_lateness(blocking)
    assert res == expected
    out["blocking_p99_late_ms"] = _percentile(late, 0.99) * 1e3
    out["blocking_max_late_ms"] = max(late) * 1e3
    if lib != "par":
        out["sync_s"] = sync_before
        return out

    async def awaited() -> Any:
        return await m.Parallel(n_jobs=N_JOBS).acall(tasks())

    res, async_s, late = _heartbeat_lateness(awaited)
    assert res == expected
    out["acall_s"] = async_s
    out["acall_p99_late_ms"] = _percentile(late, 0.99) * 1e3
    out["heartbeats"] = float(len(late))

    async def iterated() -> Any:
        return [r async for r in m.Parallel(n_jobs=N_JOBS, return_as="generator_unordered")(tasks())]

    res, async_s, late = _heartbeat_lateness(iterated)
    assert res == expected
    out["async_for_s"] = async_s
    out["async_for_p99_late_ms"] = _percentile(late, 0.99) * 1e3
    # the synchronous reference: the mean of a call before and one after the async ones
    sync_s = out["sync_s"] = (sync_before + sync_call()) / 2
    out["acall_over_sync"] = out["acall_s"] / sync_s
    out["async_for_over_sync"] = async_s / sync_s
    return out


def w_scaling(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """``micro`` at growing sizes: the cost per task (µs) at each size."""
    out: dict[str, float] = {}
    if lib == "loky":
        executor = _loky_executor()
        call = functools.partial(_loky_map, executor)
    else:
        m = api(lib)
        warm_up(m)

        def call(n: int) -> list[Any]:
            return m.Parallel(n_jobs=N_JOBS)(m.delayed(noop)(i) for i in range(n))

    for exp in p["exps"]:
        n = 10**exp
        gc.collect()
        t0 = time.perf_counter()
        res = call(n)
        out[f"us_per_task_1e{exp}"] = (time.perf_counter() - t0) / n * 1e6
        assert len(res) == n
        del res
    ref = 4 if 4 in p["exps"] else min(p["exps"])  # the issue compares 10^6 with 10^4
    out["flatness"] = out[f"us_per_task_1e{max(p['exps'])}"] / out[f"us_per_task_1e{ref}"]
    return out


def w_batch_adapt(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """``fast`` no-op tasks then ``slow`` tasks of ``slow_s``: wall time against the ideal."""
    out: dict[str, float] = {}
    m = api(lib)
    warm_up(m)
    tasks = itertools.chain(
        (m.delayed(noop)(i) for i in range(p["fast"])),
        (m.delayed(sleep_task)(p["slow_s"]) for _ in range(p["slow"])),
    )
    with timer(out, "wall_s"):
        res = m.Parallel(n_jobs=N_JOBS)(tasks)
    assert len(res) == p["fast"] + p["slow"]
    out["ideal_s"] = p["slow"] * p["slow_s"] / N_JOBS
    out["wall_over_ideal"] = out["wall_s"] / out["ideal_s"]
    return out


_BIG_GLOBAL_SOURCE = """
def uses_big_global(i):
    return i + len(BIG_GLOBAL)
"""


def _big_object(mb: int) -> list[str]:
    """About ``mb`` MB of Python objects: a list of 64-character strings (~113 bytes each)."""
    n = mb * 2**20 // 113
    return [f"{i:064d}" for i in range(n)]


def w_closure_large(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """``calls`` calls of a function of ``__main__`` that reads a 50 MB global, then of a closure.

    ``uses_big_global`` is defined in the namespace of the script's ``__main__`` (this
    process runs ``worker.py`` as a script), so it can only be sent by value, with the
    global it reads; ``closure`` captures the same object in a cell. The results are
    consumed through ``return_as='generator'`` and the call is abandoned after
    ``budget_s`` seconds: a library that sends the object with every batch would take
    many minutes for the 2,000 calls; the tasks per second are those completed in time.
    """
    calls, out = p["calls"], {}
    main = sys.modules["__main__"]
    big = _big_object(p["mb"])
    main.BIG_GLOBAL = big  # type: ignore[attr-defined]
    exec(_BIG_GLOBAL_SOURCE, main.__dict__)
    uses_big_global: Callable[[int], int] = main.uses_big_global  # type: ignore[attr-defined]

    def closure(i: int) -> int:
        return i + len(big)

    m = api(lib)
    for name, func in (("main_global", uses_big_global), ("closure", closure)):
        warm_up(m)  # also restarts a pool that the abandoned call of the previous variant ended
        gc.collect()
        done = 0
        t0 = time.perf_counter()
        gen = m.Parallel(n_jobs=N_JOBS, return_as="generator")(m.delayed(func)(i) for i in range(calls))
        for res in gen:
            assert res == done + len(big)
            done += 1
            if time.perf_counter() - t0 > p["budget_s"]:
                break
        elapsed = time.perf_counter() - t0
        gen.close()
        out[f"{name}_s"] = elapsed
        out[f"{name}_done"] = done
        out[f"{name}_tasks_per_s"] = done / elapsed
    return out


def w_threads_overhead(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """``n`` no-op tasks with ``backend='threading'``, against ``ThreadPoolExecutor(2).map``."""
    from concurrent.futures import ThreadPoolExecutor

    n, out = p["n"], {}
    m = api(lib)
    warm_up(m, backend="threading")
    with timer(out, "threadpoolexecutor_s"), ThreadPoolExecutor(N_JOBS) as ex:
        ref = list(ex.map(noop, range(n)))
    with timer(out, "time_s"):
        res = m.Parallel(n_jobs=N_JOBS, backend="threading")(m.delayed(noop)(i) for i in range(n))
    assert res == ref
    out["over_threadpoolexecutor"] = out["time_s"] / out["threadpoolexecutor_s"]
    return out


def w_large_dict(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """A dict of ``n`` int→str items passed as an argument to ``tasks`` tasks."""
    return _large_argument(lib, p, {i: str(i) for i in range(p["n"])})


def w_large_list(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """A list of ``n`` floats passed as an argument to ``tasks`` tasks."""
    return _large_argument(lib, p, [i * 0.5 for i in range(p["n"])])


def _large_argument(lib: str, p: dict[str, Any], arg: Any) -> dict[str, float]:
    """``p["calls"]`` calls passing ``arg`` to ``p["tasks"]`` tasks: the median call time (one
    call of ~0.1 s varies by 2x on a shared machine) and the peak RSS over all calls."""
    m = api(lib)
    warm_up(m)
    times: list[float] = []
    with PeakMemory(pss=False) as mem:
        for _ in range(p["calls"]):
            one: dict[str, float] = {}
            with timer(one, "time_s"):
                res = m.Parallel(n_jobs=N_JOBS)(m.delayed(size_of)(arg) for _ in range(p["tasks"]))
            assert res == [p["n"]] * p["tasks"]
            times.append(one["time_s"])
    return {"time_s": statistics.median(times), "peak_rss_mb": mem.rss_mb}


def w_lambda_tasks(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """``n`` tasks of a module-level lambda (sent by value: cloudpickle)."""
    n, out = p["n"], {}
    m = api(lib)
    warm_up(m)
    with timer(out, "time_s"):
        res = m.Parallel(n_jobs=N_JOBS)(m.delayed(lambda_task)(i) for i in range(n))
    assert res[-1] == n
    return out


def crash_at(i: int, at: int) -> int:
    """A trivial task; task ``at`` ends its worker process with ``os._exit(1)``."""
    if i == at:
        os._exit(1)
    return i


def w_crash(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """``n`` trivial tasks, task ``n // 2`` kills its worker (auto batching). par with
    ``on_error='return'`` keeps the other results (the crashed batch runs again task by
    task); joblib can only abort: ``results`` is 0 for it."""
    n, at, out = p["n"], p["n"] // 2, {}
    m = api(lib)
    warm_up(m)
    kwargs = {"on_error": "return"} if lib == "par" else {}
    with timer(out, "time_s"):
        try:
            res = m.Parallel(n_jobs=N_JOBS, **kwargs)(m.delayed(crash_at)(i, at) for i in range(n))
        except Exception:
            res = []
    if lib == "par":
        assert len(res) == n and isinstance(res[at], Exception) and f"task {at} " in str(res[at]), res[at]
        assert [r for i, r in enumerate(res) if i != at] == [i for i in range(n) if i != at]
    out["results"] = float(sum(1 for r in res if not isinstance(r, Exception)))
    return out


def sleep_or_hang(i: int, hang: frozenset[int], seconds: float) -> int:
    """Sleeps ``seconds``; the tasks in ``hang`` never return."""
    if i in hang:
        while True:
            time.sleep(3600)
    time.sleep(seconds)
    return i


def _worker_restart_s() -> float:
    """What one worker restart costs here: start a one-worker loky executor and run a
    trivial task (median of 3)."""
    from loky import get_reusable_executor

    times = []
    for _ in range(3):
        get_reusable_executor(max_workers=1).shutdown(wait=True, kill_workers=True)
        t0 = time.perf_counter()
        get_reusable_executor(max_workers=1).submit(noop, 0).result()
        times.append(time.perf_counter() - t0)
    get_reusable_executor(max_workers=1).shutdown(wait=True, kill_workers=True)
    return statistics.median(times)


def w_hanging(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """``n`` tasks of ``seconds``, of which ``n_hang`` (evenly spread) never return;
    n_jobs=2, ``timeout``. par: ``on_error='return'`` puts a ``TimeoutError`` in each hung
    task's place and replaces only its worker; pebble: ``ProcessPool.schedule(timeout=)``
    does the same per future; joblib can only abort at the first timeout (``results`` 0).
    ``over_ideal``: the time over (n - n_hang) * seconds + n_hang * timeout, divided by
    n_jobs, plus the measured restart of n_hang workers (``restart_s`` each)."""
    n, n_hang, seconds, timeout = p["n"], p["n_hang"], p["seconds"], p["timeout"]
    hang = frozenset(range(n // (2 * n_hang), n, n // n_hang))
    assert len(hang) == n_hang
    out: dict[str, float] = {}
    if lib == "pebble":
        from concurrent.futures import TimeoutError as FutureTimeout

        from pebble import ProcessPool

        results: list[Any] = []
        with timer(out, "time_s"), ProcessPool(max_workers=N_JOBS) as pool:
            futures = [pool.schedule(sleep_or_hang, (i, hang, seconds), timeout=timeout) for i in range(n)]
            for f in futures:
                try:
                    results.append(f.result())
                except FutureTimeout as exc:
                    results.append(exc)
    else:
        m = api(lib)
        warm_up(m)
        kwargs = {"on_error": "return"} if lib == "par" else {}
        with timer(out, "time_s"):
            try:
                results = m.Parallel(n_jobs=N_JOBS, timeout=timeout, **kwargs)(
                    m.delayed(sleep_or_hang)(i, hang, seconds) for i in range(n)
                )
            except Exception:  # joblib: its timeout aborts the call (multiprocessing.TimeoutError)
                results = []
    if lib != "joblib":
        failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
        assert failed == sorted(hang) and all(isinstance(results[i], TimeoutError) for i in failed), failed
    out["results"] = float(sum(1 for r in results if not isinstance(r, BaseException)))
    restart = _worker_restart_s()
    ideal = ((n - n_hang) * seconds + n_hang * timeout) / N_JOBS + n_hang * restart
    out["restart_s"] = restart
    out["over_ideal"] = out["time_s"] / ideal
    return out


def w_policy_cost(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """``micro`` with ``on_error='return'`` and no failure, over ``on_error='raise'`` (par);
    joblib runs its only policy twice (its ratio is its noise)."""
    n, out = p["n"], {}
    m = api(lib)
    warm_up(m)
    policy = {"on_error": "return"} if lib == "par" else {}
    raise_s, return_s, raise_cpu, return_cpu = [], [], [], []
    for _ in range(p["rounds"]):
        t0, c0 = time.perf_counter(), time.process_time()
        m.Parallel(n_jobs=N_JOBS)(m.delayed(noop)(i) for i in range(n))
        raise_s.append(time.perf_counter() - t0)
        raise_cpu.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        res = m.Parallel(n_jobs=N_JOBS, **policy)(m.delayed(noop)(i) for i in range(n))
        return_s.append(time.perf_counter() - t0)
        return_cpu.append(time.process_time() - c0)
        assert len(res) == n and res[-1] == n - 1
    out["raise_s"] = min(raise_s)
    out["return_s"] = min(return_s)
    out["return_over_raise"] = out["return_s"] / out["raise_s"]
    # The parent's CPU time (all its threads): what the policy adds to dispatching,
    # less sensitive than the wall time to other load on a shared machine.
    out["return_over_raise_cpu"] = min(return_cpu) / min(raise_cpu)
    return out


def w_matmul(lib: str, p: dict[str, Any]) -> dict[str, float]:
    """``tasks`` BLAS products of ``size`` by ``size`` matrices with n_jobs=2.

    ``default_s``: the library's default thread limits in the workers (BLAS threads =
    cpu_count() // n_jobs); ``unlimited_s``: the limits lifted with
    ``parallel_config(inner_max_num_threads=cpu_count())``.
    """
    import numpy as np

    rng = np.random.default_rng(8)
    a = rng.random((p["size"], p["size"]))
    b = rng.random((p["size"], p["size"]))
    expected = float((a @ b).trace())
    out: dict[str, float] = {}
    m = api(lib)
    warm_up(m)
    with timer(out, "default_s"):
        res = m.Parallel(n_jobs=N_JOBS)(m.delayed(matmul_trace)(a, b) for _ in range(p["tasks"]))
    assert all(abs(r - expected) <= 1e-6 * abs(expected) for r in res)
    # joblib accepts inner_max_num_threads only together with a backend name.
    with m.parallel_config(backend="loky", inner_max_num_threads=m.cpu_count()):
        warm_up(m)
        with timer(out, "unlimited_s"):
            res = m.Parallel(n_jobs=N_JOBS)(m.delayed(matmul_trace)(a, b) for _ in range(p["tasks"]))
    assert all(abs(r - expected) <= 1e-6 * abs(expected) for r in res)
    out["default_over_unlimited"] = out["default_s"] / out["unlimited_s"]
    return out


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Metric:
    """A metric of a workload: its unit and whether lower values are better."""

    unit: str
    lower_is_better: bool = True
    chart: bool = True  # drawn in the chart's panel of the workload


@dataclass(frozen=True)
class Target:
    """A target of the issue.

    ``kind="ratio"``: the median of the per-repetition ratios par/joblib of ``metric``;
    ``kind="mpire"``: par's median over mpire's median; ``kind="par"``: par's own median
    of ``metric``. Met when ``value <op> threshold``.
    """

    metric: str
    kind: str
    op: str
    threshold: float

    def met(self, value: float | None) -> bool | None:
        """Whether ``value`` meets the target (None when there is no value)."""
        if value is None:
            return None
        return value <= self.threshold if self.op == "<=" else value >= self.threshold

    def label(self) -> str:
        """Human-readable form, e.g. ``ratio <= 0.3`` or ``par >= 1.9``."""
        name = {"ratio": "ratio", "mpire": "par/mpire"}.get(self.kind, "par")
        return f"{name} {self.op} {self.threshold:g}"


@dataclass(frozen=True)
class Workload:
    """A workload: its function, parameters, metrics and targets."""

    name: str
    func: Callable[[str, dict[str, Any]], dict[str, float]]
    params: dict[str, Any]
    quick: dict[str, Any]
    metrics: dict[str, Metric]
    targets: tuple[Target, ...] = ()
    refs: tuple[str, ...] = ()  # extra libraries this workload runs (e.g. "mpire")
    numpy: bool = False  # needs numpy (OPENBLAS_* variables are unset for it)
    doc: str = field(default="")

    def libs(self, wanted: list[str]) -> list[str]:
        """The libraries of ``wanted`` that this workload runs, in the order given."""
        return [lib for lib in wanted if lib in ("par", "joblib") or lib in self.refs]


S = "s"
#: The parameters (full, quick) and metrics of the two generator workloads.
_GENERATOR_SHAPE: tuple[dict[str, Any], dict[str, Any], dict[str, Metric]] = (
    {"tasks": 40, "max_s": 0.1},
    {"tasks": 6, "max_s": 0.02},
    {"first_result_s": Metric(S), "total_s": Metric(S), "ideal_total_s": Metric(S, chart=False)},
)
_W: list[Workload] = [
    Workload(
        "micro",
        w_micro,
        {"n": 100_000},
        {"n": 2_000},
        {
            "time_s": Metric(S),
            "us_per_task": Metric("µs", chart=False),
            "parent_cpu_us": Metric("µs", chart=False),
            "main_cpu_us": Metric("µs", chart=False),
            "generator_us": Metric("µs", chart=False),
        },
        (Target("time_s", "ratio", "<=", 0.3), Target("us_per_task", "par", "<=", 0.5)),
        refs=("mpire", "loky"),
    ),
    Workload(
        "micro_threads",
        w_micro_threads,
        {"n": 20_000},
        {"n": 1_000},
        {"time_s": Metric(S)},
        (Target("time_s", "ratio", "<=", 0.2),),
    ),
    Workload(
        "cpu",
        w_cpu,
        {"tasks": 48, "work": 350_000},
        {"tasks": 8, "work": 50_000},
        {
            "sequential_s": Metric(S, chart=False),
            "parallel_s": Metric(S, chart=False),
            "speedup": Metric("x", lower_is_better=False),
        },
        (Target("speedup", "par", ">=", 1.9), Target("parallel_s", "ratio", "<=", 1.0)),
        refs=("mpire",),
    ),
    Workload(
        "many_calls",
        w_many_calls,
        {"calls": 300},
        {"calls": 10},
        {
            "separate_s": Metric(S),
            "context_s": Metric(S),
            "separate_ms_per_call": Metric("ms", chart=False),
            "context_ms_per_call": Metric("ms", chart=False),
        },
        (Target("separate_s", "ratio", "<=", 0.1), Target("context_s", "ratio", "<=", 0.1)),
    ),
    Workload(
        "first_call",
        w_first_call,
        {},
        {},
        {"import_s": Metric(S), "first_call_s": Metric(S), "second_call_s": Metric(S)},
        (Target("first_call_s", "ratio", "<=", 0.6),),
    ),
    Workload(
        "numpy_large",
        w_numpy_large,
        {"mb": 160, "tasks": 16},
        {"mb": 8, "tasks": 4},
        {
            "time_s": Metric(S),
            "peak_rss_mb": Metric("MB"),
            "peak_pss_mb": Metric("MB"),
            "base_rss_mb": Metric("MB", chart=False),
        },
        (Target("time_s", "ratio", "<=", 1.0), Target("peak_rss_mb", "ratio", "<=", 1.0)),
        numpy=True,
    ),
    Workload(
        "numpy_large_nomemmap",
        w_numpy_large_nomemmap,
        {"mb": 160, "tasks": 16},
        {"mb": 8, "tasks": 4},
        {
            "time_s": Metric(S),
            "peak_rss_mb": Metric("MB"),
            "peak_pss_mb": Metric("MB"),
            "base_rss_mb": Metric("MB", chart=False),
        },
        numpy=True,
    ),
    Workload(
        "large_results",
        w_large_results,
        {"tasks": 64, "mb": 2},
        {"tasks": 8, "mb": 1},
        {"time_s": Metric(S), "peak_rss_mb": Metric("MB")},
        (Target("time_s", "ratio", "<=", 0.9),),
        refs=("mpire",),
        numpy=True,
    ),
    Workload(
        "generator_unordered",
        w_generator_unordered,
        *_GENERATOR_SHAPE,
        (Target("first_result_s", "ratio", "<=", 0.9), Target("total_s", "ratio", "<=", 1.0)),
    ),
    Workload("generator_ordered", w_generator_ordered, *_GENERATOR_SHAPE, (Target("total_s", "ratio", "<=", 1.0),)),
    Workload(
        "asyncio_heartbeat",
        w_asyncio_heartbeat,
        {"tasks": 1_000, "task_s": 0.005},
        {"tasks": 40, "task_s": 0.005},
        {
            "sync_s": Metric(S),
            "acall_s": Metric(S),
            "async_for_s": Metric(S),
            "acall_over_sync": Metric("x", chart=False),
            "async_for_over_sync": Metric("x", chart=False),
            "acall_p99_late_ms": Metric("ms"),
            "async_for_p99_late_ms": Metric("ms"),
            "blocking_p99_late_ms": Metric("ms"),
            "blocking_max_late_ms": Metric("ms", chart=False),
            "heartbeats": Metric("beats", lower_is_better=False, chart=False),
        },
        (
            Target("acall_p99_late_ms", "par", "<=", 5.0),
            Target("async_for_p99_late_ms", "par", "<=", 5.0),
            Target("acall_over_sync", "par", "<=", 1.05),
            Target("async_for_over_sync", "par", "<=", 1.05),
        ),
    ),
    Workload(
        "scaling",
        w_scaling,
        {"exps": [3, 4, 5, 6]},
        {"exps": [2, 3]},
        {
            "us_per_task_1e2": Metric("µs"),
            "us_per_task_1e3": Metric("µs"),
            "us_per_task_1e4": Metric("µs"),
            "us_per_task_1e5": Metric("µs"),
            "us_per_task_1e6": Metric("µs"),
            "flatness": Metric("x", chart=False),
        },
        (Target("us_per_task_1e6", "par", "<=", 0.4), Target("flatness", "par", "<=", 1.5)),
        refs=("loky",),
    ),
    Workload(
        "batch_adapt",
        w_batch_adapt,
        {"fast": 5_000, "slow": 40, "slow_s": 0.05},
        {"fast": 200, "slow": 4, "slow_s": 0.02},
        {"wall_s": Metric(S), "ideal_s": Metric(S, chart=False), "wall_over_ideal": Metric("x", chart=False)},
        (Target("wall_over_ideal", "par", "<=", 1.15),),
    ),
    Workload(
        "closure_large",
        w_closure_large,
        {"calls": 2_000, "mb": 50, "budget_s": 10.0},
        {"calls": 20, "mb": 2, "budget_s": 5.0},
        {
            "main_global_s": Metric(S, chart=False),
            "closure_s": Metric(S, chart=False),
            "main_global_done": Metric("tasks", chart=False),
            "closure_done": Metric("tasks", chart=False),
            "main_global_tasks_per_s": Metric("tasks/s", lower_is_better=False),
            "closure_tasks_per_s": Metric("tasks/s", lower_is_better=False),
        },
        (
            Target("main_global_tasks_per_s", "ratio", ">=", 50),
            Target("closure_tasks_per_s", "ratio", ">=", 50),
        ),
    ),
    Workload(
        "threads_overhead",
        w_threads_overhead,
        {"n": 10_000},
        {"n": 500},
        {
            "time_s": Metric(S),
            "threadpoolexecutor_s": Metric(S),
            "over_threadpoolexecutor": Metric("x", chart=False),
        },
        (Target("over_threadpoolexecutor", "par", "<=", 1.0),),
    ),
    Workload(
        "large_dict",
        w_large_dict,
        {"n": 1_000_000, "tasks": 2, "calls": 5},
        {"n": 10_000, "tasks": 2, "calls": 1},
        {"time_s": Metric(S), "peak_rss_mb": Metric("MB")},
        (Target("time_s", "ratio", "<=", 1.0),),
    ),
    Workload(
        "large_list",
        w_large_list,
        {"n": 1_000_000, "tasks": 2, "calls": 5},
        {"n": 10_000, "tasks": 2, "calls": 1},
        {"time_s": Metric(S), "peak_rss_mb": Metric("MB")},
        (Target("time_s", "ratio", "<=", 1.0),),
    ),
    Workload(
        "lambda_tasks",
        w_lambda_tasks,
        {"n": 10_000},
        {"n": 200},
        {"time_s": Metric(S)},
    ),
    Workload(
        "matmul",
        w_matmul,
        {"tasks": 4, "size": 1500},
        {"tasks": 2, "size": 200},
        {
            "default_s": Metric(S),
            "unlimited_s": Metric(S),
            "default_over_unlimited": Metric("x", chart=False),
        },
        numpy=True,
    ),
    Workload(
        "crash",
        w_crash,
        {"n": 1_000},
        {"n": 200},
        {"time_s": Metric(S), "results": Metric("", lower_is_better=False)},
        (Target("results", "par", ">=", 999),),
        doc="1,000 trivial tasks, task 500 calls os._exit(1): par on_error='return' keeps 999 results",
    ),
    Workload(
        "hanging",
        w_hanging,
        {"n": 100, "n_hang": 5, "seconds": 0.1, "timeout": 2.0},
        {"n": 20, "n_hang": 2, "seconds": 0.05, "timeout": 1.0},
        {
            "time_s": Metric(S),
            "results": Metric("", lower_is_better=False),
            "restart_s": Metric(S, chart=False),
            "over_ideal": Metric("x", chart=False),
        },
        (Target("results", "par", ">=", 95), Target("over_ideal", "par", "<=", 1.3)),
        refs=("pebble",),
        doc="100 tasks of 0.1 s, 5 hang; n_jobs=2, timeout=2: par on_error='return' keeps 95 results",
    ),
    Workload(
        "policy_cost",
        w_policy_cost,
        {"n": 100_000, "rounds": 3},
        {"n": 2_000, "rounds": 1},
        {
            "raise_s": Metric(S),
            "return_s": Metric(S),
            "return_over_raise": Metric("x", chart=False),
            "return_over_raise_cpu": Metric("x", chart=False),
        },
        (Target("return_over_raise", "par", "<=", 1.05),),
        doc="micro with on_error='return' (no failure) over on_error='raise'",
    ),
]

# mpire's three-workload benchmark (issue 19): benchmarks/workloads_mpire.py.
from workloads_mpire import w_expensive_init, w_numerical, w_stateful  # noqa: E402

_CHECK = Metric("", chart=False)  # the same value for every library: a correctness check
_W += [
    Workload(
        "mpire_numerical",
        w_numerical,
        {"size": 5000},
        {"size": 300},
        {"time_s": Metric(S), "checksum": _CHECK},
        (Target("time_s", "ratio", "<=", 0.5), Target("time_s", "mpire", "<=", 1.0)),
        refs=("mpire",),
        numpy=True,
        doc="convolve2d of one 5000x5000 image with 10*n_jobs 4x4 filters, [::5, ::5]",
    ),
    Workload(
        "mpire_stateful",
        w_stateful,
        {"docs": 2000, "words": 10_000, "spread": 5_000},
        {"docs": 40, "words": 1_000, "spread": 500},
        {"time_s": Metric(S), "checksum": _CHECK},
        (Target("time_s", "ratio", "<=", 0.5), Target("time_s", "mpire", "<=", 1.0)),
        refs=("mpire",),
        numpy=True,
        doc="per-worker counts of word prefixes over 2,000 unbalanced documents, combined at the end",
    ),
    Workload(
        "mpire_expensive_init",
        w_expensive_init,
        {"size": 2000, "load_s": 1.0, "tasks": 500, "batch": 8},
        {"size": 200, "load_s": 0.1, "tasks": 20, "batch": 4},
        {"time_s": Metric(S), "checksum": _CHECK},
        (Target("time_s", "ratio", "<=", 0.5), Target("time_s", "mpire", "<=", 1.0)),
        refs=("mpire",),
        numpy=True,
        doc="a model built once per worker (2,000x2,000 weights + 1 s), 500 evaluations",
    ),
]

WORKLOADS: dict[str, Workload] = {w.name: w for w in _W}
