"""Prints and logging records of process workers show in a Jupyter cell's outputs: a
real kernel (ipykernel) runs a notebook through nbclient, as Jupyter would."""

from __future__ import annotations

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

pytestmark = pytest.mark.timeout(180)

CELL = """
import logging, os, sys
from par import Parallel, delayed

logging.basicConfig(level=logging.INFO, format="LOG %(levelname)s %(par_worker)s %(message)s", force=True)
log = logging.getLogger("nb")

def work(i):
    print(f"print from task {i}")
    print(f"second line of task {i}")
    log.info("record from task %d", i)
    return os.getpid()

pids = Parallel(n_jobs=2, batch_size=1)(delayed(work)(i) for i in range(6))
print("parent", os.getpid(), "workers", sorted(set(pids)))
"""


def test_notebook_cell_shows_worker_prints_and_logs():
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(CELL))
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=False)
    client.execute()
    outputs = nb.cells[0].outputs
    stdout = "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")
    stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    lines = stdout.splitlines()
    for i in range(6):
        first = lines.index(f"print from task {i}")
        assert lines[first + 1] == f"second line of task {i}"
    parent_line = [line for line in lines if line.startswith("parent ")]
    assert parent_line, stdout
    parent_pid = int(parent_line[0].split()[1])
    records = [line for line in stderr.splitlines() if line.startswith("LOG INFO")]
    assert sorted(r.rsplit(" ", 1)[1] for r in records) == [str(i) for i in range(6)], stderr
    for record in records:
        pid = int(record.split("(pid ")[1].split(")")[0])
        assert pid != parent_pid
