"""Fault injection: bad input to every public entry point (table-driven).

Each wrong type or value of a parameter of ``Parallel``, ``parallel_config``,
``parallel_backend``, ``delayed`` and ``register_parallel_backend`` raises
``TypeError``/``ValueError`` at the call, naming the parameter and the accepted values;
nothing is started (no thread, no process) and nothing is left behind (no temp file,
no configuration layer). ``pre_dispatch`` is never evaluated as code, and ``load``
refuses to run code from a file.
"""

from __future__ import annotations

import math
import os
import pickle
import threading

import numpy as np
import par
import pytest
from par import Parallel, delayed, parallel_backend, parallel_config, register_parallel_backend
from par_api import get_active_config

pytestmark = pytest.mark.timeout(60)


def _config_depth():
    from par_api.config import _stack

    return len(_stack())


# (id, callable, kwargs, exception type, words the message must contain)
P = Parallel
ROWS = [
    # -- Parallel ------------------------------------------------------------------
    ("Parallel-n_jobs-str", P, {"n_jobs": "two"}, ValueError, ["n_jobs", "-1"]),  # as joblib
    ("Parallel-n_jobs-zero", P, {"n_jobs": 0}, ValueError, ["n_jobs", "-1"]),
    ("Parallel-n_jobs-bool", P, {"n_jobs": True}, TypeError, ["n_jobs"]),
    ("Parallel-n_jobs-nan", P, {"n_jobs": math.nan}, ValueError, ["n_jobs", "finite"]),
    ("Parallel-backend-int", P, {"backend": 42}, TypeError, ["backend", "name"]),
    ("Parallel-backend-unknown", P, {"backend": "nope"}, ValueError, ["nope", "loky"]),
    ("Parallel-return_as", P, {"return_as": "dict"}, ValueError, ["return_as", "generator_unordered"]),
    ("Parallel-return_as-int", P, {"return_as": 1}, ValueError, ["return_as", "list"]),
    ("Parallel-verbose-neg", P, {"verbose": -1}, ValueError, ["verbose", ">= 0"]),
    ("Parallel-verbose-str", P, {"verbose": "loud"}, TypeError, ["verbose", "int"]),
    ("Parallel-timeout-neg", P, {"timeout": -1}, ValueError, ["timeout", "positive"]),
    ("Parallel-timeout-zero", P, {"timeout": 0}, ValueError, ["timeout", "positive"]),
    ("Parallel-timeout-str", P, {"timeout": "1s"}, ValueError, ["timeout", "seconds"]),
    ("Parallel-timeout-inf", P, {"timeout": math.inf}, ValueError, ["timeout", "finite"]),
    ("Parallel-pre_dispatch-zero", P, {"pre_dispatch": 0}, ValueError, ["pre_dispatch", "'all'"]),
    ("Parallel-pre_dispatch-pow", P, {"pre_dispatch": "n_jobs ** 9"}, ValueError, ["pre_dispatch", "'all'"]),
    ("Parallel-pre_dispatch-name", P, {"pre_dispatch": "cpus * 2"}, ValueError, ["pre_dispatch", "n_jobs"]),
    ("Parallel-pre_dispatch-list", P, {"pre_dispatch": [2]}, ValueError, ["pre_dispatch", "'all'"]),
    ("Parallel-pre_dispatch-bool", P, {"pre_dispatch": True}, ValueError, ["pre_dispatch", "'all'"]),
    ("Parallel-batch_size-zero", P, {"batch_size": 0}, ValueError, ["batch_size", "'auto'"]),
    ("Parallel-batch_size-str", P, {"batch_size": "big"}, ValueError, ["batch_size", "'auto'"]),
    ("Parallel-batch_size-float", P, {"batch_size": 1.5}, ValueError, ["batch_size", "positive int"]),
    ("Parallel-temp_folder-int", P, {"temp_folder": 42}, TypeError, ["temp_folder", "path"]),
    ("Parallel-max_nbytes-neg", P, {"max_nbytes": -1}, ValueError, ["max_nbytes", ">= 0"]),
    ("Parallel-max_nbytes-str", P, {"max_nbytes": "lots"}, ValueError, ["max_nbytes", "'1M'"]),
    ("Parallel-max_nbytes-list", P, {"max_nbytes": [1]}, TypeError, ["max_nbytes", "'1M'"]),
    ("Parallel-mmap_mode", P, {"mmap_mode": "rw"}, ValueError, ["mmap_mode", "'r+'"]),
    ("Parallel-prefer", P, {"prefer": "gpu"}, ValueError, ["prefer", "'threads'"]),
    ("Parallel-require", P, {"require": "fast"}, ValueError, ["require", "'sharedmem'"]),
    ("Parallel-progress-int", P, {"progress": 42}, TypeError, ["progress"]),
    ("Parallel-backend_kwarg", P, {"backend": "loky", "colour": 1}, TypeError, ["colour", "initializer"]),
    (
        "Parallel-backend_kwarg-2",
        P,
        {"n_jobs": 2, "backend": "loky", "colour": 1},
        TypeError,
        ["colour", "initializer"],
    ),
    (
        "Parallel-initializer",
        P,
        {"backend": "loky", "initializer": 3},
        TypeError,
        ["initializer", "callable"],
    ),
    ("Parallel-thread-kwarg", P, {"n_jobs": 2, "backend": "threading", "x": 1}, TypeError, ["'x'", "none"]),
    # -- parallel_config -----------------------------------------------------------
    ("config-backend-int", parallel_config, {"backend": 42}, TypeError, ["backend", "name"]),
    ("config-backend-unknown", parallel_config, {"backend": "nope"}, ValueError, ["nope", "loky"]),
    ("config-n_jobs", parallel_config, {"n_jobs": "x"}, ValueError, ["n_jobs", "-1"]),
    ("config-n_jobs-zero", parallel_config, {"n_jobs": 0}, ValueError, ["n_jobs", "-1"]),
    ("config-verbose", parallel_config, {"verbose": -3}, ValueError, ["verbose", ">= 0"]),
    ("config-verbose-str", parallel_config, {"verbose": "x"}, TypeError, ["verbose", "int"]),
    ("config-temp_folder", parallel_config, {"temp_folder": 3.5}, TypeError, ["temp_folder", "path"]),
    ("config-max_nbytes", parallel_config, {"max_nbytes": "1 gallon"}, ValueError, ["max_nbytes", "'1M'"]),
    ("config-mmap_mode", parallel_config, {"mmap_mode": "x"}, ValueError, ["mmap_mode", "'r+'"]),
    ("config-prefer", parallel_config, {"prefer": "x"}, ValueError, ["prefer", "'processes'"]),
    ("config-require", parallel_config, {"require": "x"}, ValueError, ["require", "'sharedmem'"]),
    (
        "config-inner-zero",
        parallel_config,
        {"inner_max_num_threads": 0},
        ValueError,
        ["inner_max_num_threads"],
    ),
    (
        "config-inner-str",
        parallel_config,
        {"inner_max_num_threads": "2"},
        TypeError,
        ["inner_max_num_threads"],
    ),
    ("config-progress", parallel_config, {"progress": 42}, TypeError, ["progress"]),
    ("config-param-no-backend", parallel_config, {"colour": 1}, ValueError, ["colour", "backend"]),
    ("config-backend-param", parallel_config, {"backend": "threading", "colour": 1}, TypeError, ["colour"]),
    # -- parallel_backend ----------------------------------------------------------
    ("backend-int", parallel_backend, {"backend": 42}, TypeError, ["backend", "name"]),
    ("backend-unknown", parallel_backend, {"backend": "nope"}, ValueError, ["nope", "loky"]),
    ("backend-n_jobs", parallel_backend, {"backend": "threading", "n_jobs": 0}, ValueError, ["n_jobs", "-1"]),
    (
        "backend-inner",
        parallel_backend,
        {"backend": "sequential", "inner_max_num_threads": 2},
        ValueError,
        ["inner_max_num_threads", "'loky'"],
    ),
    # -- delayed -------------------------------------------------------------------
    ("delayed-int", delayed, {"function": 42}, TypeError, ["function", "callable"]),
    ("delayed-none", delayed, {"function": None}, TypeError, ["function", "callable"]),
    # -- register_parallel_backend --------------------------------------------------
    (
        "register-name-int",
        register_parallel_backend,
        {"name": 1, "factory": object},
        TypeError,
        ["name", "str"],
    ),
    ("register-name-empty", register_parallel_backend, {"name": "", "factory": object}, TypeError, ["name"]),
    (
        "register-factory",
        register_parallel_backend,
        {"name": "x", "factory": 3},
        TypeError,
        ["factory", "callable"],
    ),
    (
        "register-make_default",
        register_parallel_backend,
        {"name": "x", "factory": object, "make_default": "yes"},
        TypeError,
        ["make_default", "True or False"],
    ),
]


def _param(row):
    if not hasattr(row, "marks"):  # a plain row (pytest.param gives a ParameterSet)
        return pytest.param(*row[1:], id=row[0])
    values = row.values
    return pytest.param(*values[1:], id=values[0], marks=row.marks)


@pytest.mark.parametrize(("func", "kwargs", "exc", "words"), [_param(r) for r in ROWS])
def test_faults_bad_input_is_refused_at_the_call(func, kwargs, exc, words, tmp_path, probe, monkeypatch):
    monkeypatch.setenv("PAR_TEMP_FOLDER", str(tmp_path))
    threads, children, depth, files = (
        {t.ident for t in threading.enumerate()},
        probe.children(),
        _config_depth(),
        probe.files(tmp_path),
    )
    backend_before = get_active_config().backend
    with pytest.raises(exc) as info:
        obj = func(**kwargs)
        if isinstance(obj, parallel_config):  # accepted: undo it before failing
            obj.unregister()
        if isinstance(obj, P):  # a Parallel that accepted its arguments must still fail at the call
            obj(delayed(abs)(i) for i in range(2))
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    # nothing started, nothing left behind
    assert {t.ident for t in threading.enumerate()} <= threads
    assert probe.children() <= children
    assert _config_depth() == depth
    assert get_active_config().backend is backend_before
    assert probe.files(tmp_path) == files


def test_faults_pre_dispatch_is_never_evaluated(tmp_path):
    marker = tmp_path / "evaluated"
    code = f"__import__('os').mkdir({str(marker)!r}) or 2"
    with pytest.raises(ValueError, match="pre_dispatch"):
        Parallel(n_jobs=2, pre_dispatch=code)
    # an expression that would be valid arithmetic if evaluated with side effects
    with pytest.raises(ValueError, match="pre_dispatch"):
        Parallel(n_jobs=2, pre_dispatch=f"n_jobs * len({str(marker)!r})")
    assert not marker.exists()
    # the accepted arithmetic still works
    out = Parallel(n_jobs=2, backend="threading", pre_dispatch="(n_jobs + 1) * 2")(
        delayed(abs)(-i) for i in range(5)
    )
    assert out == [0, 1, 2, 3, 4]


class _Payload:
    """Unpickling it would create a folder: a stand-in for arbitrary code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_faults_load_refuses_to_run_code_from_a_file(tmp_path):
    marker = str(tmp_path / "code_ran")
    # 1. a plain pickle file crafted to run code: not a par dump, refused before unpickling
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"x": _Payload(marker)}))
    with pytest.raises(ValueError, match="not a par dump"):
        par.load(evil)
    with pytest.raises(ValueError, match="not a par dump"):
        par.load(evil, allow_pickle=True)
    assert not os.path.exists(marker)
    # 2. a par dump holding an arbitrary object: refused unless allow_pickle=True
    dumped = tmp_path / "obj.par"
    par.dump({"array": np.arange(3.0), "obj": _Payload(marker)}, dumped)
    with pytest.raises(ValueError, match="allow_pickle"):
        par.load(dumped)
    assert not os.path.exists(marker)
    par.load(dumped, allow_pickle=True)  # explicit consent: the object is rebuilt
    assert os.path.exists(marker)
    # 3. arrays and plain containers load without it
    plain = tmp_path / "plain.par"
    value = {"a": np.arange(6.0).reshape(2, 3), "b": [1, 2.5, "x", None, (True, b"y")]}
    par.dump(value, plain)
    back = par.load(plain)
    np.testing.assert_array_equal(back["a"], value["a"])
    assert back["b"] == value["b"]
    mm = par.load(plain, mmap_mode="r")
    assert isinstance(mm["a"], np.memmap)


def _set_flag(value):
    os.environ["PAR_FAULTS_FLAG"] = value


def _read_flag(_i):
    return os.environ.get("PAR_FAULTS_FLAG")


@pytest.mark.timeout(60)
def test_faults_backend_arguments_with_one_worker_are_honoured(probe):
    # n_jobs=1 usually runs in the caller's thread; with backend arguments (initializer)
    # the chosen backend runs the tasks in one worker, where the initializer ran.
    assert "PAR_FAULTS_FLAG" not in os.environ
    out = Parallel(n_jobs=1, backend="loky", initializer=_set_flag, initargs=("set",))(
        delayed(_read_flag)(i) for i in range(3)
    )
    assert out == ["set"] * 3
    assert "PAR_FAULTS_FLAG" not in os.environ  # not run in the caller
