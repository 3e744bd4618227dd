"""Fault injection: exceptions raised by tasks, on every backend.

The caller gets the original type and message and the worker's traceback; an exception
that cannot be pickled back still arrives as an error naming its type and message; a
``BaseException`` such as ``SystemExit`` is reported, not swallowed (nor does it kill a
``multiprocessing`` worker).
"""

from __future__ import annotations

import os
import threading
import traceback

import pytest
from par import Parallel, delayed

pytestmark = pytest.mark.timeout(60)

BACKENDS = ["sequential", "threading", "loky", "multiprocessing"]
PROCESS_BACKENDS = {"loky", "multiprocessing"}


class Unpicklable(Exception):
    """Carries a lock: neither pickle nor cloudpickle can send it back."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


class Stop(BaseException):
    """A BaseException that is not an Exception (like SystemExit or KeyboardInterrupt)."""


def _raise(i, kind):
    if i == 2:
        if kind == "value":
            raise ValueError(f"bad value {i}")  # the line the remote traceback must show
        if kind == "unpicklable":
            raise Unpicklable(f"holds a lock, task {i}")
        if kind == "system_exit":
            raise SystemExit(3)
        if kind == "base":
            raise Stop(f"stop at {i}")
    return i


def _full_text(err: BaseException) -> str:
    """The caller's traceback, with the chained remote traceback (as a user sees it)."""
    return "".join(traceback.format_exception(type(err), err, err.__traceback__))


@pytest.mark.parametrize("backend", BACKENDS)
def test_faults_exception_keeps_type_message_and_remote_traceback(backend):
    with pytest.raises(ValueError, match=r"^bad value 2$") as info:
        Parallel(n_jobs=2, backend=backend)(delayed(_raise)(i, "value") for i in range(6))
    assert type(info.value) is ValueError
    text = _full_text(info.value)
    assert "in _raise" in text and 'raise ValueError(f"bad value {i}")' in text, text
    if backend in PROCESS_BACKENDS:
        assert type(info.value.__cause__).__name__ == "RemoteTraceback"


@pytest.mark.parametrize("backend", BACKENDS)
def test_faults_unpicklable_exception_still_names_its_type_and_message(backend):
    with pytest.raises(Exception) as info:
        Parallel(n_jobs=2, backend=backend)(delayed(_raise)(i, "unpicklable") for i in range(6))
    err = info.value
    if backend in PROCESS_BACKENDS:
        # Not a dead worker, not a pool error: an error naming the original.
        from par_serialization import UnpicklableExceptionError

        assert type(err) is UnpicklableExceptionError
        assert "Unpicklable" in str(err) and "holds a lock, task 2" in str(err)
        assert err.exc_type.endswith("Unpicklable") and err.exc_message == "holds a lock, task 2"
        assert "in _raise" in _full_text(err)
    else:
        assert type(err) is Unpicklable and str(err) == "holds a lock, task 2"
    # the next call is fine
    assert Parallel(n_jobs=2, backend=backend)(delayed(_raise)(i, "none") for i in range(4)) == [0, 1, 2, 3]


@pytest.mark.parametrize("backend", BACKENDS)
def test_faults_system_exit_in_a_task_is_reported(backend):
    with pytest.raises(SystemExit) as info:
        Parallel(n_jobs=2, backend=backend)(delayed(_raise)(i, "system_exit") for i in range(6))
    assert type(info.value) is SystemExit and info.value.code == 3
    if backend in PROCESS_BACKENDS:
        assert "in _raise" in _full_text(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_faults_base_exception_subclass_in_a_task_is_reported(backend):
    with pytest.raises(Stop, match="stop at 2"):
        Parallel(n_jobs=2, backend=backend)(delayed(_raise)(i, "base") for i in range(6))
    assert Parallel(n_jobs=2, backend=backend)(delayed(os.getpid)() for _ in range(2))
