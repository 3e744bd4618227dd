"""Per-task timeouts (issue 17): with ``on_error`` other than ``'raise'``, a task that
runs longer than ``timeout`` in its worker gets a ``TimeoutError`` in its place; only
its worker is ended and replaced, and every other task gets its result.

Process backends (``loky``, ``multiprocessing``). Thread backends keep joblib's
call-level ``timeout`` (a thread cannot be stopped): tested here as documented.
"""

from __future__ import annotations

import os
import time

import pytest
from par import Parallel, ProgressEvent, delayed

pytestmark = [pytest.mark.timeout(120)]

PROCESS_BACKENDS = ["loky", "multiprocessing"]
GONE_WITHIN = 10.0


def _hangs_at(i, hang):
    if i in hang:
        time.sleep(600)
    time.sleep(0.02)
    return i * 10


def _hangs_once(i, folder):
    """Task 3 hangs the first time only (a marker file remembers the first run)."""
    marker = os.path.join(folder, f"ran-{i}")
    if i == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(600)
    return i * 10


def _slow_then_fast(i):
    time.sleep(0.6 if i == 0 else 0.01)
    return i


@pytest.fixture
def no_leftover(probe):
    before = probe.children()
    yield
    from loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True, kill_workers=True)
    assert probe.wait_until(lambda: not (probe.children() - before), GONE_WITHIN), probe.children() - before


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
@pytest.mark.parametrize("return_as", ["list", "generator_unordered"])
def test_a_hung_task_gets_a_timeout_error_and_the_others_their_results(backend, return_as, no_leftover):
    events: list[ProgressEvent] = []
    t0 = time.monotonic()
    out = list(
        Parallel(n_jobs=2, backend=backend, timeout=1, on_error="return", return_as=return_as, progress=events.append)(
            delayed(_hangs_at)(i, {2, 9}) for i in range(16)
        )
    )
    took = time.monotonic() - t0
    failed = [o for o in out if isinstance(o, BaseException)]
    assert len(out) == 16 and len(failed) == 2
    assert all(type(e) is TimeoutError for e in failed)
    assert sorted(o for o in out if not isinstance(o, BaseException)) == [i * 10 for i in range(16) if i not in (2, 9)]
    messages = sorted(str(e) for e in failed)
    assert "task 2 (" in messages[0] and "timeout=1 seconds" in messages[0] and "replaced" in messages[0]
    for error in failed:
        assert any(note.startswith("par: task ") for note in error.__notes__)
    if return_as == "list":
        assert isinstance(out[2], TimeoutError) and isinstance(out[9], TimeoutError)
    assert took < 60  # two timeouts of 1 s, not the 600 s the tasks would sleep
    last = events[-1]
    assert last.n_failed == 2 and last.n_timed_out == 2


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_the_clock_starts_when_the_task_starts_in_its_worker(backend, no_leftover):
    """40 tasks queued behind one another on 2 workers take longer than ``timeout`` in
    all, but none runs longer than it: none times out."""
    out = Parallel(n_jobs=2, backend=backend, timeout=0.5, on_error="return")(
        delayed(time.sleep)(0.05) for _ in range(40)
    )
    assert out == [None] * 40


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_a_timed_out_task_is_retried_on_a_fresh_worker(backend, tmp_path, no_leftover):
    events: list[ProgressEvent] = []
    out = Parallel(n_jobs=2, backend=backend, timeout=1, on_error="return", retries=1, progress=events.append)(
        delayed(_hangs_once)(i, str(tmp_path)) for i in range(6)
    )
    assert out == [i * 10 for i in range(6)]
    assert events[-1].n_retried == 1 and events[-1].n_failed == 0


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_collect_groups_the_timeouts(backend, no_leftover):
    from par_scheduler._policy import ExceptionGroup

    with pytest.raises(ExceptionGroup) as info:
        Parallel(n_jobs=2, backend=backend, timeout=1, on_error="collect")(delayed(_hangs_at)(i, {1}) for i in range(4))
    assert [type(e) for e in info.value.exceptions] == [TimeoutError]
    assert info.value.results[0] == 0 and isinstance(info.value.results[1], TimeoutError)


def test_with_on_error_raise_timeout_keeps_its_joblib_meaning(no_leftover):
    with pytest.raises(TimeoutError, match="No task result arrived within timeout"):
        Parallel(n_jobs=2, backend="loky", timeout=0.3)(delayed(_slow_then_fast)(i) for i in range(2))


def test_thread_backends_keep_the_call_level_timeout():
    """Documented: a thread cannot be stopped, so on ``threading`` the timeout aborts
    the call as in joblib, whatever ``on_error`` is."""
    with pytest.raises(TimeoutError, match="threads, which cannot be stopped"):
        Parallel(n_jobs=2, backend="threading", timeout=0.3, on_error="return")(
            delayed(_slow_then_fast)(i) for i in range(2)
        )


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_verbose_counts_the_timeouts(backend, capsys, no_leftover):
    Parallel(n_jobs=2, backend=backend, timeout=1, on_error="return", verbose=10)(
        delayed(_hangs_at)(i, {0}) for i in range(3)
    )
    assert "timed out: 1" in capsys.readouterr().err
