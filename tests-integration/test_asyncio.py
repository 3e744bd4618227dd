"""par in asyncio programs: ``async for`` over the generators of ``Parallel``,
``await Parallel(...).acall(tasks)``, cancellation (task.cancel(), wait_for,
asyncio.timeout, asyncio.run ending), a loop already running, progress=.

No timed assertions: "the loop is not blocked" is shown by tasks that can only end
when a coroutine running on the loop lets them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import types

import numpy as np
import pytest
from par import Parallel, ParallelGenerator, delayed

BACKENDS = ["sequential", "threading", "loky", "multiprocessing"]
PROCESS_BACKENDS = ["loky", "multiprocessing"]


def square(x):
    return x * x


def slow(x, seconds):
    time.sleep(seconds)
    return x


def array_sum(a, seconds):
    time.sleep(seconds)
    return float(a.sum())


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


@contextlib.contextmanager
def no_new_threads(backend):
    """No thread left beyond those there before (after a grace period). loky keeps its
    reusable pool (and its threads) between calls by design: it is started first."""
    if backend == "loky":
        Parallel(n_jobs=2, backend="loky")(delayed(abs)(-i) for i in range(2))
    before = {t.ident for t in threading.enumerate()}
    yield
    extra = lambda: [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]  # noqa: E731
    deadline = time.monotonic() + 30
    while extra() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not extra(), f"threads left running: {extra()}"


def n_jobs_for(backend):
    return 1 if backend == "sequential" else 2


def assert_no_leftovers(probe, tmp_path, before_children):
    """No worker process (beyond those there before), no temp file left."""
    assert probe.wait_until(lambda: probe.children() <= before_children, timeout=30), (
        f"worker processes left: {probe.children() - before_children}"
    )
    assert probe.files(tmp_path) == []


# -- iteration and the awaitable ---------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_async_for_yields_the_results_in_order(backend):
    async def main():
        gen = Parallel(n_jobs=n_jobs_for(backend), backend=backend, return_as="generator")(
            delayed(square)(i) for i in range(30)
        )
        assert isinstance(gen, ParallelGenerator)
        return [r async for r in gen]

    with no_new_threads(backend):
        assert asyncio.run(main()) == [i * i for i in range(30)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_async_for_unordered_yields_every_result(backend):
    async def main():
        out = []
        async for r in Parallel(n_jobs=n_jobs_for(backend), backend=backend, return_as="generator_unordered")(
            delayed(square)(i) for i in range(30)
        ):
            out.append(r)
        return out

    with no_new_threads(backend):
        assert sorted(asyncio.run(main())) == [i * i for i in range(30)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_acall_returns_the_list_in_task_order(backend):
    async def main():
        # return_as does not matter: acall always returns the list.
        p = Parallel(n_jobs=n_jobs_for(backend), backend=backend, return_as="generator_unordered")
        return await p.acall(delayed(square)(i) for i in range(30))

    with no_new_threads(backend):
        assert asyncio.run(main()) == [i * i for i in range(30)]


@pytest.mark.timeout(60)
def test_a_task_error_is_raised_by_async_for_and_acall(no_thread_leak):
    async def main():
        with pytest.raises(ZeroDivisionError):
            async for _ in Parallel(n_jobs=2, backend="threading", return_as="generator")(
                delayed(lambda x: 1 / x)(i) for i in [1, 2, 0, 3]
            ):
                pass
        with pytest.raises(ZeroDivisionError):
            await Parallel(n_jobs=2, backend="threading").acall(delayed(lambda x: 1 / x)(i) for i in [1, 0])

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_the_same_generator_works_with_plain_for_inside_a_coroutine(no_thread_leak):
    async def main():
        gen = Parallel(n_jobs=2, backend="threading", return_as="generator")(delayed(square)(i) for i in range(10))
        return list(gen)

    assert asyncio.run(main()) == [i * i for i in range(10)]


@pytest.mark.timeout(60)
def test_a_generator_made_outside_any_loop_is_joblibs_and_can_be_wrapped(no_thread_leak):
    plain = Parallel(n_jobs=2, backend="threading", return_as="generator")(delayed(square)(i) for i in range(10))
    assert isinstance(plain, types.GeneratorType)  # as in joblib (and the spec's example)
    first = next(plain)
    gen = ParallelGenerator(plain)

    async def main():
        return [r async for r in gen]

    assert [first, *asyncio.run(main())] == [i * i for i in range(10)]


# -- the loop is never blocked -----------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["acall", "generator", "generator_unordered"])
def test_the_loop_runs_while_results_are_awaited(mode, no_thread_leak):
    """Each task waits for an event that only a coroutine on the loop sets: if waiting
    for a result (or reading the tasks) blocked the loop, this would deadlock."""
    released = threading.Event()

    def wait_for_release(i):
        assert released.wait(30), "the event loop was blocked"
        return i

    async def release_soon():
        await asyncio.sleep(0.05)
        released.set()

    async def main():
        releaser = asyncio.ensure_future(release_soon())
        tasks = (delayed(wait_for_release)(i) for i in range(6))
        if mode == "acall":
            out = await Parallel(n_jobs=2, backend="threading").acall(tasks)
        else:
            out = [r async for r in Parallel(n_jobs=2, backend="threading", return_as=mode)(tasks)]
        await releaser
        return sorted(out)

    assert asyncio.run(main()) == list(range(6))


@pytest.mark.timeout(60)
def test_the_iterable_is_read_lazily_and_never_in_the_loop_thread(no_thread_leak):
    readers: list[int] = []
    pulled_at_first_result: list[int] = []

    def tasks():
        for i in range(100):
            readers.append(threading.get_ident())
            yield delayed(square)(i)

    async def main():
        loop_thread = threading.get_ident()
        out = []
        async for r in Parallel(n_jobs=2, backend="threading", return_as="generator", batch_size=1, pre_dispatch=2)(
            tasks()
        ):
            if not out:
                pulled_at_first_result.append(len(readers))
            out.append(r)
        return loop_thread, out

    loop_thread, out = asyncio.run(main())
    assert out == [i * i for i in range(100)]
    assert loop_thread not in readers
    assert pulled_at_first_result[0] <= 10  # pre_dispatch=2 batches of one task ahead, not 100


# -- cancellation --------------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["task.cancel", "wait_for", "asyncio.timeout"])
def test_cancelling_aborts_the_call_and_leaves_nothing(backend, how, tmp_path, probe):
    if how == "asyncio.timeout" and sys.version_info < (3, 11):
        pytest.skip("asyncio.timeout is new in Python 3.11")
    data = np.ones(200_000)  # > max_nbytes: memmapped into the call's temp folder
    started = threading.Event()
    ran: list[int] = []

    def task(a, i):
        ran.append(i)
        started.set()
        time.sleep(0.3)
        return float(a.sum())

    tasks = (delayed(array_sum)(data, 0.3 if backend in PROCESS_BACKENDS else 0) for _ in range(400))
    if backend in ("sequential", "threading"):
        tasks = (delayed(task)(data, i) for i in range(400))
    p = Parallel(n_jobs=n_jobs_for(backend), backend=backend, temp_folder=tmp_path, max_nbytes="1K")

    async def consume():
        return await p.acall(tasks)

    async def main():
        if how == "task.cancel":
            t = asyncio.ensure_future(consume())
            await asyncio.sleep(0.8)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
        elif how == "wait_for":
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(consume(), 0.8)
        else:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.8):  # type: ignore[attr-defined]
                    await consume()

    with no_new_threads(backend):
        before = probe.children()
        asyncio.run(main())
        if backend in ("sequential", "threading"):
            assert len(ran) < 400  # the call was aborted, not run to its end
        assert_no_leftovers(probe, tmp_path, before)
    # The Parallel instance is usable again: the aborted call is over.
    assert p(delayed(square)(i) for i in range(3)) == [0, 1, 4]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_cancelling_an_async_for_aborts_the_call(backend, tmp_path, probe):
    events: list[str] = []
    p = Parallel(
        n_jobs=2, backend=backend, return_as="generator_unordered", temp_folder=tmp_path, progress=events.append
    )

    async def consume(seen):
        async for r in p(delayed(slow)(i, 0.2) for i in range(200)):
            seen.append(r)

    async def main():
        seen: list[int] = []
        t = asyncio.ensure_future(consume(seen))
        while not seen:
            await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        return seen

    with no_new_threads(backend):
        before = probe.children()
        seen = asyncio.run(main())
        assert_no_leftovers(probe, tmp_path, before)
    assert 0 < len(seen) < 200
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "aborted" and "finished" not in kinds


@pytest.mark.timeout(120)
def test_break_then_aclose_or_drop_aborts_the_call(tmp_path, probe):

    async def main():
        gen = Parallel(n_jobs=2, backend="loky", return_as="generator", temp_folder=tmp_path)(
            delayed(slow)(i, 0.1) for i in range(100)
        )
        async for r in gen:
            if r == 2:
                break
        await gen.aclose()
        async for r in Parallel(n_jobs=2, backend="threading", return_as="generator")(
            delayed(slow)(i, 0.05) for i in range(100)
        ):
            if r == 1:
                break  # dropped: its finalizer closes the call
        gc.collect()

    with no_new_threads("loky"):
        before = probe.children()
        asyncio.run(main())
        assert_no_leftovers(probe, tmp_path, before)


SHUTDOWN_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys, threading, time
    from par import Parallel, delayed

    def slow(i):
        time.sleep(0.5)
        return i

    async def forever(seen):
        async for r in Parallel(n_jobs=2, backend=sys.argv[1], return_as="generator",
                                temp_folder=sys.argv[2])(delayed(slow)(i) for i in range(1000)):
            seen.append(r)

    async def main():
        seen = []
        asyncio.ensure_future(forever(seen))  # still pending when main returns
        while not seen:
            await asyncio.sleep(0.05)

    asyncio.run(main())
    # A thread backend's running task cannot be stopped: its thread ends when it returns.
    # The forwarding server's accept thread serves the whole process (one per process,
    # like loky's reusable executor), not a call: it stays; its per-worker readers end.
    par_threads = lambda: sorted(t.name for t in threading.enumerate()
                                 if t.name.startswith("par") and t.name != "par-output-forward")
    deadline = time.monotonic() + 20
    while par_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    print("threads", par_threads())
    """
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["threading", "loky", "multiprocessing"])
def test_asyncio_run_ending_with_a_pending_async_for_leaves_nothing(backend, tmp_path, probe):
    script = tmp_path / "script.py"
    script.write_text(SHUTDOWN_SCRIPT)
    temp = tmp_path / "temp"
    temp.mkdir()
    proc = subprocess.run(
        [sys.executable, str(script), backend, str(temp)], capture_output=True, text=True, timeout=110
    )
    assert proc.returncode == 0, proc.stderr
    assert "threads []" in proc.stdout, proc.stdout + proc.stderr
    assert probe.files(temp) == []
    assert "Traceback" not in proc.stderr, proc.stderr


# -- a loop already running ---------------------------------------------------------------
@pytest.mark.timeout(60)
def test_sync_calls_work_inside_a_running_loop_as_in_jupyter():
    """A Jupyter cell runs synchronous code in the thread of the kernel's running loop."""

    async def cell():
        assert asyncio.get_running_loop().is_running()
        as_list = Parallel(n_jobs=2, backend="threading")(delayed(square)(i) for i in range(10))
        as_gen = list(Parallel(n_jobs=2, return_as="generator")(delayed(square)(i) for i in range(10)))
        awaited = await Parallel(n_jobs=2).acall(delayed(square)(i) for i in range(10))
        return as_list, as_gen, awaited

    expected = [i * i for i in range(10)]
    with no_new_threads("loky"):
        assert asyncio.run(cell()) == (expected, expected, expected)


@pytest.mark.timeout(60)
def test_works_on_a_loop_running_in_another_thread():
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, name="test-loop")
    runner.start()
    try:

        async def job():
            gen = Parallel(n_jobs=2, backend="threading", return_as="generator")(delayed(square)(i) for i in range(10))
            return [r async for r in gen]

        with no_new_threads("threading"):
            fut = asyncio.run_coroutine_threadsafe(job(), loop)
            assert fut.result(60) == [i * i for i in range(10)]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(30)
        loop.close()


# -- progress= -------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_progress_events_are_emitted_for_async_calls(no_thread_leak):
    events = []

    async def main():
        p = Parallel(n_jobs=2, backend="threading", progress=events.append, batch_size=1)
        out = await p.acall(delayed(square)(i) for i in range(8))
        out2 = [r async for r in Parallel(n_jobs=2, return_as="generator", progress=events.append)(
            delayed(square)(i) for i in range(8)
        )]
        return out, out2

    out, out2 = asyncio.run(main())
    assert out == out2 == [i * i for i in range(8)]
    kinds = [e.kind for e in events]
    assert kinds.count("start") == 2 and kinds.count("finished") == 2
    assert [e.n_completed for e in events if e.kind == "finished"] == [8, 8]


# -- dask ----------------------------------------------------------------------------------------
DASK_SCRIPT = textwrap.dedent(
    """
    import asyncio, time
    from distributed import LocalCluster
    from par import Parallel, delayed, parallel_config

    def slow(i):
        time.sleep(0.2)
        return i * i

    async def main():
        got = [r async for r in Parallel(n_jobs=2, return_as="generator_unordered")(
            delayed(slow)(i) for i in range(6))]
        listed = await Parallel(n_jobs=2).acall(delayed(slow)(i) for i in range(6))
        t = asyncio.ensure_future(Parallel(n_jobs=2).acall(delayed(slow)(i) for i in range(500)))
        await asyncio.sleep(1)
        t.cancel()
        try:
            await t
        except asyncio.CancelledError:
            cancelled = True
        return sorted(got), listed, cancelled

    if __name__ == "__main__":
        with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
            with parallel_config(backend="dask", scheduler_address=cluster.scheduler_address):
                print(asyncio.run(main()))
    """
)


@pytest.mark.timeout(180)
def test_async_for_acall_and_cancel_on_dask(tmp_path):
    pytest.importorskip("distributed")
    script = tmp_path / "script.py"
    script.write_text(DASK_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=170, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    squares = [i * i for i in range(6)]
    assert f"({squares}, {squares}, True)" in proc.stdout, proc.stdout + proc.stderr
