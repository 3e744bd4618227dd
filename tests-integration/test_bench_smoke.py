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


def quick_par_run(
    tmp_path: Path, workloads: str, timeout: float, libs: str = "par"
) -> tuple[subprocess.CompletedProcess[str], dict]:
    """``run.py --quick --reps 1 --libs par`` of ``workloads``: the process and its JSON."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            *(sys.executable, str(RUN), "--workloads", workloads, "--quick", "--reps", "1"),
            *("--libs", libs, "--out", str(out), "--no-chart"),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


@pytest.mark.timeout(90)
def test_bench_quick_par_only_writes_results(tmp_path: Path) -> None:
    proc, results = quick_par_run(tmp_path, "micro,many_calls", timeout=80)
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


@pytest.mark.timeout(90)
def test_bench_raw_loky_runs_where_a_workload_compares_with_it(tmp_path: Path) -> None:
    """``--libs loky``: raw loky's ``map`` (no par, no ``delayed``), the floor under par's
    default backend, runs in ``micro`` and ``scaling`` and nowhere else."""
    _, results = quick_par_run(tmp_path, "micro,scaling,many_calls", timeout=80, libs="par,loky")
    for name, metric in (("micro", "us_per_task"), ("scaling", "us_per_task_1e3")):
        wres = results["workloads"][name]
        assert list(wres["runs"]) == ["par", "loky"]
        (run,) = wres["runs"]["loky"]
        assert "error" not in run, run
        assert run["metrics"][metric] > 0
        assert wres["summary"][metric]["loky"] == run["metrics"][metric]
    assert list(results["workloads"]["many_calls"]["runs"]) == ["par"]


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
    workloads = "mpire_stateful,mpire_expensive_init"
    _, results = quick_par_run(tmp_path, workloads, timeout=110)
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


def _run_module():
    """benchmarks/run.py as a module (it puts benchmarks/ on sys.path for workloads)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("par_bench_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_targets_against_mpire_and_two_targets_on_one_metric() -> None:
    """Issue 19 sets two targets on one metric (<= 0.5x joblib and <= 1.0x mpire): both
    are checked, the mpire one as par's median over mpire's, and the table shows both."""
    run = _run_module()
    workload = run.WORKLOADS["mpire_stateful"]
    summary = {"time_s": {"par": 1.0, "joblib": 2.5, "mpire": 1.25, "ratio": 0.4, "ratios": [0.4]}}
    targets = run.evaluate(workload, summary)
    by_kind = {t["kind"]: t for t in targets if t["metric"] == "time_s"}
    assert by_kind["ratio"]["value"] == 0.4 and by_kind["ratio"]["met"] is True
    assert by_kind["mpire"]["value"] == pytest.approx(0.8) and by_kind["mpire"]["met"] is True
    assert by_kind["mpire"]["label"] == "par/mpire <= 1"
    summary["time_s"]["mpire"] = 0.5  # par at 2x mpire: that target is missed
    targets = run.evaluate(workload, summary)
    results = {"workloads": {"mpire_stateful": {"summary": summary, "targets": targets, "runs": {}}}}
    (row,) = [r for r in run.table_rows(results, ["par", "joblib", "mpire"]) if r[1] == "time_s"]
    assert row[-2:] == ["ratio <= 0.5; par/mpire <= 1", "PASS; MISS"]
    summary["time_s"]["mpire"] = None  # mpire not run: no value, not met either way
    (mpire_target,) = [t for t in run.evaluate(workload, summary) if t["kind"] == "mpire"]
    assert mpire_target["value"] is None and mpire_target["met"] is None


@pytest.mark.timeout(90)
def test_bench_generator_ordered_runs_and_checks_the_order(tmp_path: Path) -> None:
    _, results = quick_par_run(tmp_path, "generator_ordered", timeout=80)
    (rep,) = results["workloads"]["generator_ordered"]["runs"]["par"]
    assert "error" not in rep, rep
    assert 0 < rep["metrics"]["first_result_s"] <= rep["metrics"]["total_s"]
