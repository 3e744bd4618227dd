"""A ``distributed.Client`` that par opens for ``scheduler_address=`` is par's to close:
it is closed when the ``parallel_config`` block ends, so a cluster shut down afterwards
finds no client still reconnecting, and a clean shutdown prints nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("distributed")

SCRIPT = textwrap.dedent(
    """
    import gc, time
    import distributed
    from distributed import LocalCluster
    from par import Parallel, delayed, parallel_config

    if __name__ == "__main__":
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0")
        with parallel_config(backend="dask", scheduler_address=cluster.scheduler_address):
            print(Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(4)))
            inside = [o for o in gc.get_objects() if isinstance(o, distributed.Client) and o.status == "running"]
        print("clients in the block:", len(inside))
        print("still running after it:", sum(c.status == "running" for c in inside))
        cluster.close()
        time.sleep(2)  # a leftover client would now log its failed reconnections
    """
)


@pytest.mark.timeout(120)
def test_the_client_par_opened_for_an_address_is_closed_with_the_block_and_exit_is_quiet(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=110, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[0, 1, 2, 3]" in proc.stdout
    assert "clients in the block: 1" in proc.stdout, proc.stdout
    assert "still running after it: 0" in proc.stdout, proc.stdout
    assert proc.stderr == "", proc.stderr[-3000:]
