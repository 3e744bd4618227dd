import os
import sys
import threading

import pytest
from par_api import ProcessLocal


def test_process_local_builds_once_per_process_even_under_concurrent_first_use() -> None:
    built: list[object] = []

    def factory() -> object:
        obj = object()
        built.append(obj)
        return obj

    local = ProcessLocal(factory)
    assert local.peek() is None
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(local.get())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and all(g is built[0] for g in got)
    assert local.peek() is built[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_process_local_is_rebuilt_in_a_forked_child() -> None:
    local = ProcessLocal(lambda: os.getpid())
    assert local.get() == os.getpid()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the parent's value must not be seen, a fresh one is built
        try:
            ok = local.peek() is None and local.get() == os.getpid()
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    answer = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert local.get() == os.getpid()  # the parent keeps its own


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork")
def test_process_local_lock_held_at_fork_does_not_block_the_child() -> None:
    local = ProcessLocal(object)
    r, w = os.pipe()
    with local._lock:  # another thread in the middle of get() when the fork happens
        pid = os.fork()
        if pid == 0:
            try:
                local.get()
                os.write(w, b"1")
            finally:
                os._exit(0)
    os.close(w)
    answer = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    assert answer == b"1"
