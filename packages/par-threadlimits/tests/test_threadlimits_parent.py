"""parent_limits: threadpoolctl limits in this process for thread backends."""

from __future__ import annotations

import threading

import par_threadlimits as tl
import pytest

pytest.importorskip("numpy")  # loads OpenBLAS (or MKL) into this process


def _controlled() -> list[dict]:
    libs = [i for i in tl.threadpool_report() if i["internal_api"] in ("openblas", "mkl", "blis")]
    if not libs:
        pytest.skip("no BLAS library controllable by threadpoolctl is loaded")
    return libs


def _num_threads() -> list[int]:
    return [i["num_threads"] for i in _controlled()]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*tl.THREAD_LIMIT_VARS, "PAR_THREAD_LIMITED_VARS"):
        monkeypatch.delenv(name, raising=False)


def test_threadlimits_parent_limits_restores_previous_value() -> None:
    before = _num_threads()
    limit = 3 if before != [3] * len(before) else 1
    with tl.parent_limits(limit) as block:
        assert isinstance(block, tl.parent_limits)
        assert _num_threads() == [limit] * len(before)
        assert tl.current_parent_limit() == limit
    assert _num_threads() == before
    assert tl.current_parent_limit() is None


def test_threadlimits_parent_limits_restores_on_exception() -> None:
    before = _num_threads()
    with pytest.raises(RuntimeError, match="boom"), tl.parent_limits(3):
        assert _num_threads() == [3] * len(before)
        raise RuntimeError("boom")
    assert _num_threads() == before


def test_threadlimits_parent_limits_nesting_and_reentry() -> None:
    before = _num_threads()
    outer = tl.parent_limits(3)
    with outer:
        with tl.parent_limits(1):
            assert _num_threads() == [1] * len(before)
            with tl.parent_limits(3):  # the smallest active limit applies
                assert _num_threads() == [1] * len(before)
        assert _num_threads() == [3] * len(before)
        with outer:  # the same instance, re-entered
            assert _num_threads() == [3] * len(before)
        assert _num_threads() == [3] * len(before)
    assert _num_threads() == before


def test_threadlimits_parent_limits_overlapping_threads() -> None:
    """Thread A limits, B joins, A leaves first: B's limit must hold until B leaves,
    and the original value must come back at the end (no leaked limit)."""
    before = _num_threads()
    a_in, a_go = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def a() -> None:
        try:
            with tl.parent_limits(1):
                a_in.set()
                assert a_go.wait(30)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=a)
    thread.start()
    try:
        assert a_in.wait(30)
        assert _num_threads() == [1] * len(before)
        with tl.parent_limits(3):
            assert _num_threads() == [1] * len(before)  # A's stricter limit still active
            a_go.set()
            thread.join(30)
            assert _num_threads() == [3] * len(before)
        assert _num_threads() == before
    finally:
        a_go.set()
        thread.join(30)
    assert not errors


def test_threadlimits_parent_limits_user_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    libs = _controlled()
    before = _num_threads()
    for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
        monkeypatch.setenv(name, str(libs[0]["num_threads"]))
    with tl.parent_limits(3):
        assert _num_threads() == before


def test_threadlimits_parent_limits_none_is_a_no_op() -> None:
    before = _num_threads()
    with tl.parent_limits(None):
        assert _num_threads() == before
        assert tl.current_parent_limit() is None


@pytest.mark.parametrize(("value", "exc"), [(0, ValueError), (1.5, TypeError), ("2", TypeError)])
def test_threadlimits_parent_limits_bad_limit(value: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="limit"):
        tl.parent_limits(value)  # type: ignore[arg-type]
