"""Per-worker state (``par.worker_state``) and logs/prints of process workers that reach
the parent (``forward_output``), on every bundled local backend where they apply."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import par
import pytest
from par import Parallel, delayed, parallel_config, worker_state

pytestmark = pytest.mark.timeout(120)

PROCESS_BACKENDS = ["loky", "multiprocessing"]
logger = logging.getLogger("par_test_workers")


def count_in_state(i):
    state = worker_state()
    state["n"] = state.get("n", 0) + 1
    state.setdefault("ids", []).append(i)
    return os.getpid(), id(state), state["n"]


@pytest.mark.parametrize("backend", [*PROCESS_BACKENDS, "threading"])
def test_worker_state_lives_as_long_as_the_worker_across_calls(backend):
    with Parallel(n_jobs=2, backend=backend, batch_size=1) as parallel:
        first = parallel(delayed(count_in_state)(i) for i in range(20))
        second = parallel(delayed(count_in_state)(i) for i in range(20))
    # Each worker's dict counts the tasks that worker ran, over both calls: the counts
    # seen by one dict are 1, 2, 3, ... without gaps or repeats.
    by_state: dict = {}
    for pid, state_id, n in first + second:
        by_state.setdefault((pid, state_id), []).append(n)
    assert sum(len(v) for v in by_state.values()) == 40
    for counts in by_state.values():
        assert sorted(counts) == list(range(1, len(counts) + 1))
    if backend == "threading":
        assert {pid for pid, _ in by_state} == {os.getpid()}
        assert len(by_state) <= 2  # one dict per worker thread, not the parent's
        assert worker_state().get("n") is None
    else:
        assert os.getpid() not in {pid for pid, _ in by_state}


def test_worker_state_in_the_caller_for_sequential():
    worker_state().pop("n", None)
    out = Parallel(n_jobs=1)(delayed(count_in_state)(i) for i in range(3))
    assert [n for _, _, n in out] == [1, 2, 3]
    assert worker_state()["n"] == 3
    worker_state().clear()


def test_worker_state_from_functions_defined_in_main(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, time
            from par import Parallel, delayed, worker_state

            def model():
                state = worker_state()
                if "weights" not in state:
                    state["weights"] = (os.getpid(), time.monotonic())
                    state["built"] = state.get("built", 0) + 1
                return state["weights"], state["built"]

            if __name__ == "__main__":
                for backend in ("loky", "multiprocessing"):
                    with Parallel(n_jobs=2, backend=backend, batch_size=1) as p:
                        out = p(delayed(model)() for _ in range(30)) + p(delayed(model)() for _ in range(30))
                    assert all(built == 1 for _, built in out), out
                    assert len({w for w, _ in out}) <= 2, out
                    print(backend, "ok", len({w for w, _ in out}))
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr
    assert "loky ok" in proc.stdout and "multiprocessing ok" in proc.stdout


# -- logs and prints ----------------------------------------------------------------


def log_and_print(i):
    print(f"task {i} line 1")
    logger.info("info from task %d", i)
    logger.debug("debug from task %d", i)
    print(f"task {i} line 2")
    print(f"task {i} error line", file=sys.stderr)
    return os.getpid()


def fail_with_log(i):
    try:
        raise KeyError(i)
    except KeyError:
        logger.exception("task %d failed", i)
    return i


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_logging_records_reach_the_parent_handlers(backend, caplog):
    caplog.set_level(logging.INFO, logger="par_test_workers")
    pids = Parallel(n_jobs=2, backend=backend)(delayed(log_and_print)(i) for i in range(10))
    records = [r for r in caplog.records if r.name == "par_test_workers"]
    # The parent's level applies: INFO records, no DEBUG ones; all of them, before return.
    assert sorted(r.getMessage() for r in records) == sorted(f"info from task {i}" for i in range(10))
    for record in records:
        assert record.process in pids and record.process != os.getpid()
        assert record.par_worker == f"{record.processName} (pid {record.process})"


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_exception_tracebacks_of_worker_records(backend, caplog):
    caplog.set_level(logging.INFO, logger="par_test_workers")
    Parallel(n_jobs=2, backend=backend)(delayed(fail_with_log)(i) for i in range(2))
    records = [r for r in caplog.records if r.name == "par_test_workers"]
    assert len(records) == 2
    for record in records:
        assert "Traceback" in record.exc_text and "KeyError" in record.exc_text
        assert "KeyError" in caplog.text


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_prints_reach_the_parent_in_order_within_each_task(backend, capfd):
    Parallel(n_jobs=2, backend=backend, batch_size=1)(delayed(log_and_print)(i) for i in range(12))
    out, err = capfd.readouterr()
    lines = out.splitlines()
    for i in range(12):
        first = lines.index(f"task {i} line 1")
        assert lines[first + 1] == f"task {i} line 2"  # never split by another task's lines
    assert sorted(err.splitlines()) == sorted(f"task {i} error line" for i in range(12))


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_forward_output_false_turns_forwarding_off(backend, caplog):
    caplog.set_level(logging.INFO, logger="par_test_workers")
    Parallel(n_jobs=2, backend=backend, forward_output=False)(delayed(log_and_print)(i) for i in range(4))
    assert not [r for r in caplog.records if r.name == "par_test_workers"]
    with parallel_config(forward_output=False):
        Parallel(n_jobs=2, backend=backend)(delayed(log_and_print)(i) for i in range(4))
    assert not [r for r in caplog.records if r.name == "par_test_workers"]


def test_parallel_config_sets_and_par_exports_the_options():
    with parallel_config(max_tasks_per_child=5, max_worker_memory="1G", forward_output=False):
        p = Parallel(n_jobs=2)
    assert (p.max_tasks_per_child, p.max_worker_memory, p.forward_output) == (5, 1024**3, False)
    p = Parallel(n_jobs=2)
    assert (p.max_tasks_per_child, p.max_worker_memory, p.forward_output) == (None, None, True)
    assert par.worker_state is worker_state


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_tasks_per_child": 0}, "max_tasks_per_child must be a positive int"),
        ({"max_tasks_per_child": "3"}, "max_tasks_per_child must be a positive int"),
        ({"max_worker_memory": "lots"}, r"max_worker_memory must be .*'2G'"),
        ({"max_worker_memory": 0}, "max_worker_memory must be"),
        ({"forward_output": "yes"}, "forward_output must be True or False"),
    ],
)
def test_options_are_validated(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        Parallel(n_jobs=2, **kwargs)
    with pytest.raises((TypeError, ValueError), match=match):
        parallel_config(**kwargs)


def test_limits_need_a_process_backend():
    with pytest.raises(ValueError, match=r"max_tasks_per_child .* 'loky' and 'multiprocessing'"):
        Parallel(n_jobs=2, backend="threading", max_tasks_per_child=3)
    with parallel_config(max_worker_memory="1G"):  # configured globally: ignored by threads
        assert Parallel(n_jobs=2, backend="threading")(delayed(abs)(-i) for i in range(3)) == [0, 1, 2]


def _log_to_worker_file(path):
    handler = logging.FileHandler(path)
    logging.getLogger().addHandler(handler)


def test_handlers_set_up_by_an_initializer_keep_working(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="par_test_workers")
    path = tmp_path / "worker.log"
    Parallel(n_jobs=2, backend="multiprocessing", initializer=_log_to_worker_file, initargs=(str(path),))(
        delayed(log_and_print)(i) for i in range(4)
    )
    assert sorted(path.read_text().splitlines()) == sorted(f"info from task {i}" for i in range(4))
    records = [r for r in caplog.records if r.name == "par_test_workers"]
    assert len(records) == 4  # forwarded once each, not once more by an inherited handler
