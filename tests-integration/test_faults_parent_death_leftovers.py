"""Nothing that par writes outlives a parent killed with SIGKILL, once another par
process has run: the memmap folders (``par_memmap_<pid>_*``), the exchange folders in
``/dev/shm`` (``par-xchg-<pid>-*``) and the files of large callables pickled by value
(written in the call's memmap folder; ``par-blobs-<pid>-*`` for a serializer used alone).

The child runs a call whose function is a lambda capturing a list of over 1 MB (pickled
by value, so it travels as a blob), with a 2 MB argument and 2 MB results (which travel
through the exchange folder), and is killed while its tasks hang.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.path.isdir("/proc"), reason="Linux /proc"),
]

CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from par import Parallel, delayed

    out = sys.argv[1]
    big = list(range(400_000))           # pickled by value with the lambda: > 1 MB
    payload = b"x" * (2 * 2**20)         # a 2 MB argument: the batch is spilled
    work = lambda i, p: (time.sleep(120) if i >= 2 else None, bytes(len(p)), len(big))[1]

    with Parallel(n_jobs=2) as parallel:
        parallel(delayed(work)(i, payload) for i in range(2))   # blobs, exchange files, results
        with open(os.path.join(out, "ready.tmp"), "w") as f:
            json.dump({"pid": os.getpid()}, f)
        os.replace(os.path.join(out, "ready.tmp"), os.path.join(out, "ready.json"))
        parallel(delayed(work)(i, payload) for i in range(4))   # hangs: killed here
    """
)

LATER = "from par import Parallel, delayed; print(Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(4)))"


def _leftovers(pid: int, roots: list[str]) -> list[str]:
    marks = (f"par-blobs-{pid}-", f"par-xchg-{pid}-", f"par_memmap_{pid}_")
    found = []
    for root in roots:
        try:
            names = os.listdir(root)
        except OSError:
            continue
        found += [os.path.join(root, n) for n in names if n.startswith(marks)]
    return found


def test_nothing_of_a_sigkilled_parent_remains_after_the_next_par_process(tmp_path, probe):
    tmp = tmp_path / "tmp"
    out = tmp_path / "out"
    tmp.mkdir()
    out.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    roots = [str(tmp), "/dev/shm", tempfile.gettempdir()]
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    log = open(tmp_path / "child.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not (out / "ready.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "child.log").read_text()[
                -3000:
            ]
            time.sleep(0.05)
        pid = json.loads((out / "ready.json").read_text())["pid"]
        time.sleep(1.0)  # the hanging call is running
        workers = sorted(probe.children(proc.pid))
        assert _leftovers(pid, roots), "the child wrote nothing: the test exercises nothing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert probe.wait_until(lambda: not any(probe.alive(p) for p in workers), 15), workers
        later = subprocess.run(
            [sys.executable, "-c", LATER], env=env, capture_output=True, text=True, timeout=60
        )
        assert later.returncode == 0, later.stderr[-3000:]
        assert _leftovers(pid, roots) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
