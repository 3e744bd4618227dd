"""The failure policy (issue 17): on_error, retries/retry_on, crash isolation.

On every bundled local backend; process tests check that no worker is left behind.
"""

from __future__ import annotations

import os
import sys

import pytest
from par import Parallel, ProgressEvent, WorkerDiedError, delayed, parallel_config

if sys.version_info >= (3, 11):
    from builtins import ExceptionGroup
else:  # pragma: no cover
    from exceptiongroup import ExceptionGroup

pytestmark = [pytest.mark.timeout(120)]

BACKENDS = ["sequential", "threading", "loky", "multiprocessing"]
PROCESS_BACKENDS = ["loky", "multiprocessing"]
GONE_WITHIN = 10.0


def _bad(i):
    if i % 5 == 3:
        raise ValueError(f"bad {i}")
    return i * 10


def _note(exc):
    return getattr(exc, "__notes__", [])


def _expected(i):
    return i * 10


@pytest.fixture
def no_leftover(probe):
    """No worker process of the call survives it (loky's reusable workers are shut down
    first: they are kept between calls by design)."""
    before = probe.children()
    yield
    from loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True, kill_workers=True)
    assert probe.wait_until(lambda: not (probe.children() - before), GONE_WITHIN), probe.children() - before


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("return_as", ["list", "generator", "generator_unordered"])
def test_on_error_return_puts_the_exception_in_place(backend, return_as, no_leftover):
    out = list(
        Parallel(n_jobs=2, backend=backend, on_error="return", return_as=return_as)(
            delayed(_bad)(i) for i in range(20)
        )
    )
    assert len(out) == 20
    if return_as == "generator_unordered":
        errors = [r for r in out if isinstance(r, ValueError)]
        assert sorted(str(e) for e in errors) == sorted(f"bad {i}" for i in (3, 8, 13, 18))
        assert sorted(r for r in out if not isinstance(r, Exception)) == [
            _expected(i) for i in range(20) if i % 5 != 3
        ]
        return
    for i, r in enumerate(out):
        if i % 5 == 3:
            assert isinstance(r, ValueError) and str(r) == f"bad {i}"
            assert f"par: task {i} (" in _note(r)[0] and "_bad" in _note(r)[0]
        else:
            assert r == _expected(i)


@pytest.mark.parametrize("backend", BACKENDS)
def test_on_error_collect_raises_a_group_with_the_results(backend, no_leftover):
    with pytest.raises(ExceptionGroup) as info:
        Parallel(n_jobs=2, backend=backend, on_error="collect")(delayed(_bad)(i) for i in range(20))
    group = info.value
    assert [str(e) for e in sorted(group.exceptions, key=str)] == sorted(f"bad {i}" for i in (3, 8, 13, 18))
    assert all("par: task" in _note(e)[0] for e in group.exceptions)
    assert len(group.results) == 20
    assert [r for i, r in enumerate(group.results) if i % 5 != 3] == [
        _expected(i) for i in range(20) if i % 5 != 3
    ]
    assert "4 of 20 tasks failed" in str(group)


@pytest.mark.parametrize("backend", ["sequential", "loky"])
def test_on_error_collect_generator_yields_successes_then_raises(backend, no_leftover):
    gen = Parallel(n_jobs=2, backend=backend, on_error="collect", return_as="generator")(
        delayed(_bad)(i) for i in range(10)
    )
    got = []
    with pytest.raises(ExceptionGroup) as info:
        for r in gen:
            got.append(r)
    assert got == [_expected(i) for i in range(10) if i % 5 != 3]
    assert len(info.value.exceptions) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_collect_without_failure_returns_the_list(backend, no_leftover):
    assert Parallel(n_jobs=2, backend=backend, on_error="collect")(
        delayed(_expected)(i) for i in range(9)
    ) == [_expected(i) for i in range(9)]


def _flaky(i, folder, fails):
    """Fails ``fails`` times (counted in a file, so across processes) then returns."""
    path = os.path.join(folder, str(i))
    with open(path, "a") as f:
        f.write("x")
    with open(path) as f:
        runs = len(f.read())
    if runs <= fails:
        raise ConnectionError(f"flaky {i} run {runs}")
    return i


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("on_error", ["raise", "return"])
def test_retries_on_listed_exceptions(backend, on_error, tmp_path, no_leftover):
    events: list[ProgressEvent] = []
    out = Parallel(
        n_jobs=2,
        backend=backend,
        on_error=on_error,
        retries=2,
        retry_on=(ConnectionError,),
        progress=events.append,
    )(delayed(_flaky)(i, str(tmp_path), 2 if i == 4 else 0) for i in range(8))
    assert out == list(range(8))
    assert events[-1].n_retried == 2 and events[-1].n_failed == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_retries_spent_then_the_policy_applies(backend, tmp_path, no_leftover):
    with pytest.raises(ConnectionError, match="flaky 4 run 3"):
        Parallel(n_jobs=2, backend=backend, retries=2, retry_on=(ConnectionError,))(
            delayed(_flaky)(i, str(tmp_path), 5 if i == 4 else 0) for i in range(8)
        )
    out = Parallel(n_jobs=2, backend=backend, on_error="return", retries=2, retry_on=ConnectionError)(
        delayed(_flaky)(i, str(tmp_path / "x"), 5 if i == 1 else 0)
        for i in range(4)
        if (tmp_path / "x").mkdir(exist_ok=True) or True
    )
    assert isinstance(out[1], ConnectionError) and out[0] == 0 and out[2:] == [2, 3]


@pytest.mark.parametrize("backend", BACKENDS)
def test_exceptions_not_listed_are_not_retried(backend, tmp_path, no_leftover):
    out = Parallel(n_jobs=2, backend=backend, on_error="return", retries=3, retry_on=(KeyError,))(
        delayed(_flaky)(i, str(tmp_path), 1 if i == 2 else 0) for i in range(4)
    )
    assert isinstance(out[2], ConnectionError)
    assert (tmp_path / "2").read_text() == "x"  # ran once


def _die_at(i, at, marker):
    """``os._exit(1)`` at task ``at`` (only while ``marker`` does not exist, when given)."""
    if i == at:
        if marker is None:
            os._exit(1)
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
    return i


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
@pytest.mark.parametrize("batch_size", [4, "auto"])
def test_crash_isolation_only_the_killer_fails(backend, batch_size, no_leftover):
    out = Parallel(n_jobs=2, backend=backend, on_error="return", batch_size=batch_size)(
        delayed(_die_at)(i, 5, None) for i in range(40)
    )
    assert isinstance(out[5], WorkerDiedError)
    assert "task 5 " in str(out[5]) and "exit" in str(out[5])
    assert "par: task 5 (" in _note(out[5])[0]
    assert [r for i, r in enumerate(out) if i != 5] == [i for i in range(40) if i != 5]


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_crash_collect_and_retry_on_a_fresh_worker(backend, tmp_path, no_leftover):
    with pytest.raises(ExceptionGroup) as info:
        Parallel(n_jobs=2, backend=backend, on_error="collect", batch_size=3)(
            delayed(_die_at)(i, 4, None) for i in range(12)
        )
    (exc,) = info.value.exceptions
    assert isinstance(exc, WorkerDiedError) and "task 4 " in str(exc)
    # dies once, then succeeds on a fresh worker thanks to retries=1
    out = Parallel(n_jobs=2, backend=backend, retries=1, batch_size=3)(
        delayed(_die_at)(i, 4, str(tmp_path / "died")) for i in range(12)
    )
    assert out == list(range(12))


def test_default_policy_raises_the_first_error():
    with pytest.raises(ValueError, match="bad 3"):
        Parallel(n_jobs=2, backend="threading")(delayed(_bad)(i) for i in range(10))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"on_error": "ignore"}, ["on_error", "'raise'", "'return'", "'collect'"]),
        ({"retries": -1}, ["retries", "int >= 0"]),
        ({"retries": True}, ["retries", "int >= 0"]),
        ({"retry_on": "ValueError"}, ["retry_on", "exception classes"]),
        ({"retry_on": (ValueError, 3)}, ["retry_on", "exception classes"]),
    ],
)
def test_validation_names_the_parameter(kwargs, words):
    for make in (lambda: Parallel(**kwargs), lambda: parallel_config(**kwargs)):
        with pytest.raises(ValueError) as info:
            make()
        assert all(w in str(info.value) for w in words)


def test_parallel_config_sets_the_policy():
    with parallel_config(on_error="return", retries=1, retry_on=(KeyError,)):
        p = Parallel(n_jobs=2, backend="threading")
        assert (p.on_error, p.retries, p.retry_on) == ("return", 1, (KeyError,))
        assert isinstance(p(delayed(_bad)(i) for i in range(4))[3], ValueError)
        assert Parallel(on_error="raise").on_error == "raise"


@pytest.mark.parametrize("backend", ["sequential", "threading", "loky"])
def test_progress_and_verbose_count_failures(backend, capsys, no_leftover):
    events: list[ProgressEvent] = []
    Parallel(n_jobs=2, backend=backend, on_error="return", verbose=100, progress=events.append)(
        delayed(_bad)(i) for i in range(20)
    )
    assert events[-1].kind == "finished" and events[-1].n_failed == 4 and events[-1].n_retried == 0
    captured = capsys.readouterr()
    assert "finished | failed: 4, retried: 0" in captured.out + captured.err
