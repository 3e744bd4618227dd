"""par_api.worker: worker_state scoping and the validation of the worker options."""

from __future__ import annotations

import os
import threading

import pytest
from par_api import (
    bind_worker_state,
    check_forward_output,
    check_initializer,
    check_max_tasks_per_child,
    check_max_worker_memory,
    get_active_config,
    parallel_config,
    worker_state,
)


def test_process_state_is_one_dict_per_process():
    assert worker_state() is worker_state()
    seen = []
    t = threading.Thread(target=lambda: seen.append(worker_state()))
    t.start()
    t.join()
    assert seen[0] is worker_state()  # an unbound thread shares the process's dict


def test_bound_thread_state_is_the_threads_own():
    mine: dict = {}
    seen = []

    def run():
        bind_worker_state(mine)
        seen.append(worker_state())
        bind_worker_state(None)
        seen.append(worker_state())

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen[0] is mine
    assert seen[1] is worker_state()
    with pytest.raises(TypeError, match="state must be a dict or None"):
        bind_worker_state([])  # type: ignore[arg-type]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_gets_an_empty_state():
    worker_state()["x"] = 1
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.write(w, b"1" if "x" not in worker_state() else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 1) == b"1"
    os.close(r)
    os.close(w)
    del worker_state()["x"]


def test_checks():
    assert check_max_tasks_per_child(None) is None
    assert check_max_tasks_per_child(3) == 3
    for bad in (0, -1, True, 2.5, "3"):
        with pytest.raises(ValueError, match="max_tasks_per_child must be a positive int"):
            check_max_tasks_per_child(bad)
    assert check_max_worker_memory("2G") == 2 * 1024**3
    assert check_max_worker_memory("300M") == 300 * 1024**2
    assert check_max_worker_memory(1000) == 1000
    assert check_max_worker_memory(None) is None
    for bad in ("lots", 0, -5, True, [1]):
        with pytest.raises(ValueError, match=r"max_worker_memory must be .* '500M' or '2G'"):
            check_max_worker_memory(bad)
    assert check_forward_output(False) is False
    with pytest.raises(TypeError, match="forward_output must be True or False"):
        check_forward_output(1)


def test_parallel_config_fields():
    assert get_active_config().max_tasks_per_child is None
    assert get_active_config().forward_output is True
    with parallel_config(max_tasks_per_child=4, max_worker_memory="1G", forward_output=False):
        cfg = get_active_config()
        assert (cfg.max_tasks_per_child, cfg.max_worker_memory, cfg.forward_output) == (4, "1G", False)
        assert cfg.is_set("max_tasks_per_child")
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        parallel_config(max_tasks_per_child=0)


def test_check_initializer_names_the_parameter_and_where_it_runs():
    assert check_initializer(None, None) == (None, ())
    assert check_initializer(print, ["a", 1]) == (print, ("a", 1))
    with pytest.raises(TypeError, match=r"initializer must be a callable run once in each Ray actor .*got int 3"):
        check_initializer(3, (), runs_in="each Ray actor")
    with pytest.raises(TypeError, match="initializer must be a callable run once in each new worker"):
        check_initializer("f", ())
    with pytest.raises(TypeError, match="initargs must be a tuple of arguments for initializer, got str"):
        check_initializer(print, "ab")
