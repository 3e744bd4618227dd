"""The benchmark harness (benchmarks/run.py) runs end to end and writes its JSON.

A smoke run with par alone (joblib is a bench-only dependency) and the ``--quick``
sizes: it checks the shape of the results, not the numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"


@pytest.mark.timeout(90)
def test_bench_quick_par_only_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(RUN),
            "--workloads",
            "micro,many_calls",
            "--quick",
            "--reps",
            "1",
            "--libs",
            "par",
            "--out",
            str(out),
            "--no-chart",
        ],
        capture_output=True,
        text=True,
        timeout=80,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["config"] == {
        "reps": 1,
        "quick": True,
        "libs": ["par"],
        "workloads": ["micro", "many_calls"],
    }
    assert set(results["machine"]) >= {"date", "cpu", "usable_cpus", "python", "versions"}
    for name, metrics in (("micro", {"time_s", "us_per_task"}), ("many_calls", {"separate_s", "context_s"})):
        wres = results["workloads"][name]
        assert list(wres["runs"]) == ["par"]  # mpire is not asked for; joblib neither
        (run,) = wres["runs"]["par"]
        assert "error" not in run, run
        assert metrics <= set(run["metrics"])
        assert all(v > 0 for v in run["metrics"].values())
        for metric in metrics:
            assert wres["summary"][metric]["par"] == run["metrics"][metric]
            assert wres["summary"][metric]["ratio"] is None  # no joblib run to compare with
        assert all(t["value"] is None and t["met"] is None for t in wres["targets"] if t["kind"] == "ratio")
    assert "micro" in proc.stdout and "par/joblib" in proc.stdout  # the printed table


def test_bench_rejects_unknown_names() -> None:
    proc = subprocess.run(
        [sys.executable, str(RUN), "--workloads", "micro,nope", "--libs", "par"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "nope" in proc.stderr and "micro" in proc.stderr
    proc = subprocess.run(
        [sys.executable, str(RUN), "--libs", "dask"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "dask" in proc.stderr and "joblib" in proc.stderr


@pytest.mark.timeout(120)
def test_bench_mpire_workloads_with_worker_state_run_for_par(tmp_path: Path) -> None:
    """The stateful and expensive-initialization workloads of mpire's benchmark, written
    with par.worker_state(), run and check their own results (counts combined from the
    workers' states equal the number of words)."""
    out = tmp_path / "bench.json"
    workloads = "mpire_stateful,mpire_expensive_init"
    proc = subprocess.run(
        [
            *(sys.executable, str(RUN), "--workloads", workloads, "--quick", "--reps", "1"),
            *("--libs", "par", "--out", str(out), "--no-chart"),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for name in workloads.split(","):
        (run,) = results["workloads"][name]["runs"]["par"]
        assert "error" not in run, run
        assert run["metrics"]["time_s"] > 0 and run["metrics"]["checksum"] > 0


@pytest.mark.timeout(60)
def test_bench_list_names_every_workload() -> None:
    """``--list`` prints one line per workload with its description (it failed on the
    workloads described by ``doc=`` rather than a docstring)."""
    proc = subprocess.run([sys.executable, str(RUN), "--list"], capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    for name in ("micro", "mpire_numerical", "mpire_stateful", "mpire_expensive_init", "hanging"):
        assert name in lines and len(lines[name].split()) > 1, proc.stdout
