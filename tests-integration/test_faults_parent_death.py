"""Fault injection: the parent process is killed (SIGKILL) or interrupted (SIGINT) mid-call.

A child Python script runs a ``Parallel`` call on memmapped arrays and writes its worker
pids and memmap folder to a file; the test then signals it and watches ``/proc``:

- SIGKILL: the workers exit within 10 s (each has a watcher thread that notices its
  parent is gone) and the memmap folder, left behind, is removed by
  ``par_memmap.cleanup_stale_folders`` or by the next ``Parallel`` using that folder.
- SIGINT (Ctrl-C): ``KeyboardInterrupt`` reaches the caller within 2 s, the workers are
  stopped and the temp files removed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import par_memmap
import pytest
from par import Parallel, delayed

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(90),
    pytest.mark.skipif(not os.path.isdir("/proc"), reason="Linux /proc"),
]

#: The issue's bounds.
WORKERS_GONE_WITHIN = 10.0
INTERRUPT_WITHIN = 2.0

CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    import numpy as np
    from par import Parallel, delayed

    backend, temp, out = sys.argv[1], sys.argv[2], sys.argv[3]

    def write(name, value):
        with open(os.path.join(out, name + ".tmp"), "w") as f:
            json.dump(value, f)
        os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))

    def where(a):
        time.sleep(0.2)  # spread the tasks over both workers
        return os.getpid(), os.path.dirname(a.filename)

    def stuck(i, a):
        # a busy worker: half spin in Python, half sleep
        end = time.monotonic() + 120
        while time.monotonic() < end:
            if i % 2:
                time.sleep(0.01)
        return float(a[i])

    a = np.arange(5000.0)  # memmapped: above max_nbytes
    with Parallel(n_jobs=2, backend=backend, max_nbytes=1000, temp_folder=temp) as parallel:
        info = parallel(delayed(where)(a) for _ in range(4)) if backend != "threading" else []
        write("info.json", {
            "pids": sorted({p for p, _ in info}),
            "folders": sorted({d for _, d in info}),
        })
        try:
            parallel(delayed(stuck)(i, a) for i in range(4))
        except KeyboardInterrupt:
            write("interrupted.json", {"at": time.time()})
            raise
    """
)


def _start_child(tmp_path, backend):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    temp, out = tmp_path / "memmap", tmp_path / "out"
    temp.mkdir()
    out.mkdir()
    log = open(tmp_path / "child.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, str(script), backend, str(temp), str(out)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    return proc, temp, out, log


def _wait_file(path, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the child did not write {path.name} (exit code {proc.poll()})")
        time.sleep(0.05)
    return json.loads(path.read_text())


def _log(tmp_path):
    return (tmp_path / "child.log").read_text(errors="replace")[-3000:]


@pytest.mark.parametrize("cleanup", ["cleanup_stale_folders", "next_parallel"])
@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_faults_parent_sigkill_workers_exit_and_folder_is_reclaimed(backend, cleanup, tmp_path, probe):
    proc, temp, out, log = _start_child(tmp_path, backend)
    pids: list[int] = []
    try:
        info = _wait_file(out / "info.json", proc)
        folders = info["folders"]
        assert info["pids"] and len(folders) == 1, info
        assert os.path.basename(folders[0]).startswith("par_memmap_")
        time.sleep(1.0)  # the stuck call is running
        # every worker of the child (the ones that reported and any other)
        pids = sorted(set(info["pids"]) | probe.children(proc.pid))
        assert len(pids) == 2 and all(probe.alive(p) for p in pids), (info, pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        t0 = time.monotonic()
        gone = probe.wait_until(lambda: not any(probe.alive(p) for p in pids), WORKERS_GONE_WITHIN)
        assert gone, f"workers still running {time.monotonic() - t0:.1f} s after the parent died"
        print(f"\n{backend}: workers gone {time.monotonic() - t0:.2f} s after the parent's SIGKILL")
        # The folder outlives a SIGKILL; the next start reclaims it.
        assert os.path.isdir(folders[0])
        if cleanup == "cleanup_stale_folders":
            assert par_memmap.cleanup_stale_folders([temp]) == folders
        else:
            assert Parallel(n_jobs=2, backend=backend, max_nbytes=1000, temp_folder=temp)(
                delayed(float)(x) for x in np.arange(3.0)
            ) == [0.0, 1.0, 2.0]
        assert not os.path.exists(folders[0])
        assert probe.files(temp) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        probe.kill_all(pids)
        log.close()


@pytest.mark.parametrize("backend", ["loky", "multiprocessing", "threading"])
def test_faults_parent_sigint_raises_keyboard_interrupt_and_cleans_up(backend, tmp_path, probe):
    proc, temp, out, log = _start_child(tmp_path, backend)
    pids: list[int] = []
    try:
        info = _wait_file(out / "info.json", proc)
        time.sleep(1.0)  # the stuck call is running
        assert proc.poll() is None, _log(tmp_path)
        pids = sorted(set(info["pids"]) | probe.children(proc.pid))
        assert len(pids) == (0 if backend == "threading" else 2), (info, pids)
        sent_at = time.time()
        proc.send_signal(signal.SIGINT)
        interrupted = _wait_file(out / "interrupted.json", proc, timeout=30)
        delay = interrupted["at"] - sent_at
        assert delay < INTERRUPT_WITHIN, delay
        print(f"\n{backend}: KeyboardInterrupt {delay:.2f} s after SIGINT")
        assert proc.wait(30) != 0  # the KeyboardInterrupt propagated out of the script
        assert "KeyboardInterrupt" in _log(tmp_path)
        assert probe.wait_until(lambda: not any(probe.alive(p) for p in pids), 10)
        assert probe.files(temp) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        probe.kill_all(pids)
        log.close()
