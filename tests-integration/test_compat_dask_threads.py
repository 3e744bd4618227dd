"""The threads left after a call on the dask backend, par side by side with joblib 1.6
(issue 22 point 8).

The same script runs once with ``from joblib import ...`` and once with
``from par import ...``, each in a fresh interpreter, against a local dask cluster of
worker processes. It prints the names of the threads of the calling process that were
not there before the calls (numbers removed: ``Dask-Offload_0`` -> ``Dask-Offload_#``),
a moment after the calls return. The client's own threads, started with the client
before the calls, are not counted. distributed's ``Dask-Callback-Thread`` (made by
``Future.add_done_callback``, which par no longer uses) and par's completion watch
(``par-dask-watch``) must not be among them.

joblib is a test-only reference (``joblib==1.6.0`` in the hatch-test environment).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("joblib")
pytest.importorskip("distributed")
pytest.importorskip("par_backends_dask")

pytestmark = [pytest.mark.dask, pytest.mark.timeout(180)]

SCRIPT = textwrap.dedent(
    """
    import json, re, sys, threading, time
    import distributed

    if sys.argv[1] == "joblib":
        from joblib import Parallel, delayed, parallel_config
    else:
        from par import Parallel, delayed, parallel_config

    def names():
        return sorted(re.sub(r"\\d+", "#", t.name) for t in threading.enumerate() if t.is_alive())

    if __name__ == "__main__":
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=":0") as cluster:
            with distributed.Client(cluster) as client:
                client.wait_for_workers(2)
                before = {t.ident for t in threading.enumerate()}
                with parallel_config(backend="dask"):
                    out = [Parallel()(delayed(abs)(-i) for i in range(20)) for _ in range(3)]
                assert out == [list(range(20))] * 3, out
                time.sleep(1.0)  # threads that end with the call have ended by now
                left = sorted(
                    re.sub(r"\\d+", "#", t.name)
                    for t in threading.enumerate()
                    if t.ident not in before and t.is_alive()
                )
                print("@@" + json.dumps({"left": left}))
    """
)


def _threads_left(lib: str, tmp_path) -> list[str]:
    script = tmp_path / f"threads_{lib}.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), lib],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    assert proc.returncode == 0, f"{lib} run failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    line = [x for x in proc.stdout.splitlines() if x.startswith("@@")][-1]
    return json.loads(line[2:])["left"]


def test_no_callback_or_watch_thread_outlives_a_dask_call(tmp_path):
    joblib_left = _threads_left("joblib", tmp_path)
    par_left = _threads_left("par", tmp_path)
    for name in par_left:
        assert not name.startswith("Dask-Callback-Thread") and not name.startswith("par-"), par_left
    # par leaves no thread that joblib does not leave
    assert set(par_left) <= set(joblib_left), f"joblib: {joblib_left}\npar:    {par_left}"
