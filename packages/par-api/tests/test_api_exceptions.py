"""Exception types and the public surface of ``par_api``."""

from __future__ import annotations

import ast
import pathlib
import pickle
from concurrent.futures.process import BrokenProcessPool

import par_api
import pytest
from par_api import BackendNotAvailableError, RemoteTraceback, WorkerDiedError


def test_worker_died_error_is_a_broken_process_pool() -> None:
    err = WorkerDiedError("worker 123 died (SIGKILL)", exitcode=-9, pid=123, task="f(1)")
    assert isinstance(err, BrokenProcessPool)
    assert str(err) == "worker 123 died (SIGKILL)"
    assert (err.exitcode, err.pid, err.task) == (-9, 123, "f(1)")
    with pytest.raises(BrokenProcessPool, match="worker 123 died"):
        raise err


def test_worker_died_error_details_are_optional() -> None:
    err = WorkerDiedError("a worker died")
    assert (err.exitcode, err.pid, err.task) == (None, None, None)


def test_remote_traceback_shows_the_worker_frames_as_cause() -> None:
    tb = 'Traceback (most recent call last):\n  File "job.py", line 3, in f\nValueError: bad'
    remote = RemoteTraceback(tb)
    assert str(remote) == tb
    assert remote.tb == tb
    try:
        raise ValueError("bad") from remote
    except ValueError as exc:
        assert exc.__cause__ is remote
    assert pickle.loads(pickle.dumps(remote)).tb == tb


def test_backend_not_available_is_a_value_error() -> None:
    assert issubclass(BackendNotAvailableError, ValueError)


def test_version() -> None:
    about = pathlib.Path(par_api.__file__).with_name("__about__.py").read_text()
    assert par_api.__version__ == ast.literal_eval(about.split("=", 1)[1].strip())


def test_every_public_name_exists() -> None:
    for name in par_api.__all__:
        assert hasattr(par_api, name), name
    assert len(set(par_api.__all__)) == len(par_api.__all__)


def test_package_is_typed() -> None:
    assert pathlib.Path(par_api.__file__).with_name("py.typed").exists()
