"""Registration, capability flags, pickling, nesting and crash diagnosis of the local backends."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap

import par_api
import pytest
from par_api import BackendNotAvailableError, ParallelBackendBase, WorkerDiedError, make_backend
from par_backends_local import (
    LokyBackend,
    MultiprocessingBackend,
    SequentialBackend,
    ThreadingBackend,
    _crash,
)

ALL = {
    "sequential": SequentialBackend,
    "threading": ThreadingBackend,
    "loky": LokyBackend,
    "multiprocessing": MultiprocessingBackend,
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_backends_entry_points_resolve(name: str) -> None:
    backend = make_backend(name)
    assert type(backend) is ALL[name]
    assert isinstance(backend, ParallelBackendBase)
    assert name in par_api.available_backends()
    assert "par-backends-local" in par_api.backend_providers()[name]


def test_backends_registry_imports_them_as_their_entry_points_declare() -> None:
    """par_api's registry imports these backends without reading the entry points
    (``registry.KNOWN_BACKENDS``): each must be the class this package's entry point
    declares, and the table must name every one of them."""
    from importlib import metadata

    declared = {
        ep.name: ep.load()
        for ep in metadata.entry_points(group=par_api.ENTRY_POINT_GROUP)
        if ep.value.startswith("par_backends_local.")
    }
    assert sorted(declared) == sorted(ALL)
    shipped = par_api.registry._SHIPPED
    assert sorted(shipped) == sorted(declared)
    for name, cls in declared.items():
        assert par_api.registry.KNOWN_BACKENDS[name].provider == "par-backends-local"
        assert par_api.registry._load_shipped(name) is cls


@pytest.mark.timeout(60)
def test_backends_default_backend_is_made_without_importlib_metadata() -> None:
    code = (
        "import sys, par_api\n"
        "print(type(par_api.make_backend('loky')).__name__, 'importlib.metadata' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["LokyBackend", "False"]


def test_backends_capability_flags() -> None:
    seq, thr, lok, mp = (ALL[n]() for n in ("sequential", "threading", "loky", "multiprocessing"))
    assert (seq.uses_threads, seq.supports_sharedmem, seq.supports_auto_batching) == (False, True, False)
    assert (thr.uses_threads, thr.supports_sharedmem, thr.supports_timeout) == (True, True, True)
    assert thr.supports_auto_batching is False and thr.compute_batch_size() == 1
    for proc in (lok, mp):
        assert proc.supports_timeout and proc.supports_inner_max_num_threads
        assert proc.supports_auto_batching and proc.supports_transport_hooks
        assert not proc.uses_threads and not proc.supports_sharedmem
    for thread_backend in (seq, thr):
        assert not thread_backend.supports_transport_hooks


@pytest.mark.parametrize("name", sorted(ALL))
def test_backends_constructor_keywords_and_repr(name: str) -> None:
    backend = make_backend(name, nesting_level=2, inner_max_num_threads=3)
    assert backend.nesting_level == 2 and backend.inner_max_num_threads == 3
    text = repr(backend)
    assert text.startswith(type(backend).__name__) and len(text) < 80


@pytest.mark.parametrize("name", sorted(ALL))
def test_backends_unconfigured_backends_pickle(name: str) -> None:
    backend = make_backend(name, inner_max_num_threads=2)
    clone = pickle.loads(pickle.dumps(backend))
    assert type(clone) is type(backend) and clone.inner_max_num_threads == 2


@pytest.mark.parametrize("name", sorted(ALL))
def test_backends_effective_n_jobs_rules(name: str) -> None:
    backend = make_backend(name)
    with pytest.raises(ValueError, match="n_jobs"):
        backend.effective_n_jobs(0)
    if name == "sequential":
        assert backend.effective_n_jobs(-1) == 1
    else:
        assert backend.effective_n_jobs(-1) == par_api.cpu_count()
        assert backend.effective_n_jobs(None) == 1
        assert backend.effective_n_jobs(3) == 3


@pytest.mark.parametrize("name", sorted(ALL))
def test_backends_configure_rejects_unknown_backend_arguments(name: str) -> None:
    backend = make_backend(name)
    with pytest.raises(TypeError, match="bogus"):
        backend.configure(1, bogus=1)


def test_backends_unknown_constructor_argument_is_rejected() -> None:
    with pytest.raises(TypeError, match="bogus"):
        make_backend("loky", bogus=1)


def test_backends_nested_backend_of_thread_backends_is_sequential() -> None:
    assert SequentialBackend().get_nested_backend() == ("sequential", 1)
    backend = ThreadingBackend()
    backend.configure(2)
    try:
        assert backend.get_nested_backend() == ("sequential", 1)
    finally:
        backend.terminate()


@pytest.mark.parametrize("cls", [LokyBackend, MultiprocessingBackend])
def test_backends_nested_backend_of_process_backends(cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    import par_backends_local._process as process_module

    backend = cls()
    backend._n_jobs = 2  # as configure(2) sets it, without starting workers
    monkeypatch.setattr(process_module, "cpu_count", lambda: 8)
    assert backend.get_nested_backend() == ("threading", 4)
    monkeypatch.setattr(process_module, "cpu_count", lambda: 3)
    assert backend.get_nested_backend() == ("sequential", 1)  # 3 // 2 == 1
    backend.inner_max_num_threads = 3
    assert backend.get_nested_backend() == ("threading", 3)
    backend.inner_max_num_threads = 1
    assert backend.get_nested_backend() == ("sequential", 1)


@pytest.mark.parametrize("name", ["loky", "multiprocessing"])
def test_backends_process_backends_refuse_without_multiprocessing(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAR_MULTIPROCESSING", "0")
    backend = make_backend(name)  # constructing is fine, starting workers is not
    with pytest.raises(BackendNotAvailableError, match=r"multiprocessing is not usable.*threading"):
        backend.configure(2)


def test_backends_process_backends_refuse_when_multiprocessing_import_fails() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["_multiprocessing"] = None  # as on Pyodide: the import fails
        import par_api
        from par_api import BackendNotAvailableError, make_backend
        assert not par_api.multiprocessing_available()
        for name in ("loky", "multiprocessing"):
            try:
                make_backend(name).configure(2)
            except BackendNotAvailableError as exc:
                assert "multiprocessing is not usable" in str(exc), exc
            else:
                raise SystemExit(name + " started without multiprocessing")
        backend = make_backend("threading")
        assert backend.configure(2) == 2
        backend.terminate()
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PAR_MULTIPROCESSING"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


# -- crash diagnosis ----------------------------------------------------------------------


def test_backends_crash_message_for_sigkill_names_memory() -> None:
    err = _crash.worker_died_error(-signal.SIGKILL, pid=4321)
    assert isinstance(err, WorkerDiedError)
    assert err.exitcode == -9 and err.pid == 4321
    text = str(err)
    assert "SIGKILL" in text and "memory" in text and "4321" in text


def test_backends_crash_message_for_segfault_names_native_code() -> None:
    text = _crash.describe_worker_death(-signal.SIGSEGV)
    assert "SIGSEGV" in text and "native" in text


def test_backends_crash_message_for_exit_code_names_os_exit() -> None:
    text = _crash.describe_worker_death(3, pid=7)
    assert "exited with code 3" in text and "os._exit" in text and "pid 7" in text


def test_backends_crash_message_without_exit_code_lists_causes() -> None:
    text = _crash.describe_worker_death(None)
    assert "unknown" in text and "memory" in text and "segmentation fault" in text


def test_backends_crash_parse_loky_exit_codes() -> None:
    message = "unexpectedly terminated.\n\nThe exit codes of the workers are {SIGKILL(-9), EXIT(1)}\n"
    assert _crash.parse_exitcodes(message) == [-9, 1]
    assert _crash.parse_exitcodes("no codes here") == []


class _FakeProcess:
    def __init__(self, pid: int, exitcode: int | None) -> None:
        self.pid = pid
        self.exitcode = exitcode


def test_backends_crash_abnormal_exits_keeps_only_the_workers_that_failed() -> None:
    procs = {1: _FakeProcess(1, None), 2: _FakeProcess(2, -11), 3: _FakeProcess(3, 0)}
    assert _crash.abnormal_exits(procs) == [(2, -11)]


def test_backends_crash_death_report_names_the_worker_whose_task_is_known_first() -> None:
    tasks = {7: "task 3 (function f)"}
    make = _crash.death_report([(5, -9), (7, 1)], tasks.get)
    err = make()
    assert (err.pid, err.exitcode, err.task) == (7, 1, "task 3 (function f)")
    assert "Other workers that ended: pid 5 (SIGKILL)" in str(err)
    assert make() is not err  # one error object per failed batch


def test_backends_crash_death_report_reads_loky_exit_codes_and_keeps_the_cause() -> None:
    cause = RuntimeError("pool broke: {EXIT(1)}")
    err = _crash.death_report([], cause=cause)()
    assert err.pid is None and err.exitcode == 1 and "exited with code 1" in str(err)
    assert err.__cause__ is cause


def test_fill_source_lines_adds_only_missing_source_from_the_parents_linecache():
    import linecache

    from par_backends_local._common import fill_source_lines

    cell = "/nonexistent/ipykernel_1/cell_7.py"
    linecache.cache[cell] = (30, None, ["x = 1\n", "raise ValueError('boom')\n"], cell)
    try:
        text = "\n".join(
            [
                "Traceback (most recent call last):",
                '  File "/work/lib.py", line 3, in run',
                "    return f()",
                f'  File "{cell}", line 2, in f',
                "ValueError: boom",
            ]
        )
        out = fill_source_lines(text).split("\n")
    finally:
        linecache.cache.pop(cell, None)
    assert out == [
        "Traceback (most recent call last):",
        '  File "/work/lib.py", line 3, in run',
        "    return f()",  # the worker's own source line is kept, not doubled
        f'  File "{cell}", line 2, in f',
        "    raise ValueError('boom')",
        "ValueError: boom",
    ]
