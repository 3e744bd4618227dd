"""LocalCluster.start against a stand-in for Ray's CLI (no Ray process): it starts the
node again when Ray's own start-up wait gives up, and only then."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from par_backends_ray import LocalCluster

pytestmark = pytest.mark.timeout(60)


class _FakeCluster(LocalCluster):
    """``ray start`` replaced by a script that fails its first ``failures`` runs with
    ``message`` and then says the node runs (and blocks, as ``--block`` does)."""

    def __init__(self, tmp_path: Path, failures: int, message: str, **kwargs):
        super().__init__(**kwargs)
        self.runs = tmp_path / "runs"
        self.runs.mkdir()
        self.script = tmp_path / "fake_ray.py"
        self.script.write_text(
            textwrap.dedent(
                f"""
                import os, sys, time
                runs = {str(self.runs)!r}
                n = len(os.listdir(runs))
                with open(os.path.join(runs, str(n)), "w") as f:
                    f.write(" ".join(sys.argv[1:]))
                if n < {failures}:
                    print({message!r}, flush=True)
                    sys.exit(1)
                print("Ray runtime started.", flush=True)
                time.sleep(600)
                """
            )
        )

    def _command(self):
        return [sys.executable, str(self.script)]


def test_start_retries_when_ray_times_out_during_startup(tmp_path):
    message = "Exception: The current node timed out during startup. This could happen because..."
    cluster = _FakeCluster(tmp_path, failures=2, message=message, start_timeout=30)
    try:
        cluster.start()
        temp_dir = cluster.temp_dir
        assert len(list(cluster.runs.iterdir())) == 3  # two timed out, the third started
        assert cluster.pids()  # the third is running
    finally:
        cluster.stop()
    assert cluster.pids() == [] and not Path(temp_dir).exists()


def test_start_gives_up_after_its_attempts(tmp_path):
    message = "The current node timed out during startup."
    cluster = _FakeCluster(tmp_path, failures=10, message=message, start_timeout=30)
    with pytest.raises(RuntimeError, match=r"did not start within 30 s \(3 attempts\):\n.*timed out during startup"):
        cluster.start()
    assert len(list(cluster.runs.iterdir())) == LocalCluster.START_ATTEMPTS


def test_other_start_failures_are_not_retried(tmp_path):
    cluster = _FakeCluster(tmp_path, failures=10, message="ValueError: bad --num-cpus", start_timeout=30)
    with pytest.raises(RuntimeError, match=r"\(1 attempt\):\n.*bad --num-cpus"):
        cluster.start()
    assert len(list(cluster.runs.iterdir())) == 1


def test_workers_bind_ports_the_os_picks(tmp_path):
    """Two nodes on one machine (two pytest-xdist workers) with `ray start`'s default
    worker port range (10002 on) could both hand out port 10002; the process that lost
    aborted (a pytest worker crashed so in CI). The node is started with the range 0-0:
    ports the OS picks, as a ray.init() node's workers do."""
    cluster = _FakeCluster(tmp_path, failures=0, message="", start_timeout=30)
    try:
        cluster.start()
        (run,) = cluster.runs.iterdir()
        args = run.read_text().split()
    finally:
        cluster.stop()
    assert args[args.index("--min-worker-port") + 1] == "0"
    assert args[args.index("--max-worker-port") + 1] == "0"
