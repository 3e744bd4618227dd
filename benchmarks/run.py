"""par side by side with joblib: runs the workloads of ``workloads.py`` and reports ratios.

Each (workload, library) runs in a fresh subprocess (``worker.py``) per repetition; the
libraries alternate within a repetition (par, joblib, [mpire], par, joblib, ...). For
every metric the report gives each library's median over the repetitions and the
median of the per-repetition ratios par/joblib, checks the issue's targets, prints a
table, writes a JSON file, and optionally the chart and the table of
``docs/benchmarks.md``.

    python benchmarks/run.py                        # everything, 5 repetitions
    python benchmarks/run.py --workloads micro,cpu --reps 3
    python benchmarks/run.py --quick --reps 1       # smoke run with small sizes
    python benchmarks/run.py --libs par --quick     # par alone (no joblib needed)

Run it through hatch (``hatch run bench:all``), which provides joblib 1.6, mpire,
numpy, psutil and matplotlib next to the workspace packages.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime as _dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from workloads import WORKLOADS, Workload  # noqa: E402

MARKER = "BENCH_RESULT "
LIBS = ("par", "joblib", "mpire", "pebble", "loky")
# Unset in the subprocess of the numpy workloads when set: they pin OpenBLAS's kernel
# and cache size for the test machines, which is not what a user's numpy would run with.
OPENBLAS_UNSET = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
DOCS_START = "<!-- bench-table:start -->"
DOCS_END = "<!-- bench-table:end -->"


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        import psutil

        mem_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cpus": affinity,
        "memory_gb": mem_gb,
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {d: _version(d) for d in ("par", "joblib", "loky", "mpire", "pebble", "numpy", "cloudpickle")},
    }


def precompile() -> bool:
    """Compile the workspace packages (and the benchmark modules) to bytecode, as
    installing a wheel does, before any measured subprocess starts.

    The workspace is installed editable: with ``PYTHONDONTWRITEBYTECODE`` set (as on the
    test machines) every fresh process, the benchmark's and each worker's, compiled
    par's ~60 modules from source again, while joblib, loky and mpire load the bytecode
    their installer wrote. That cost (~0.1-0.3 s per process under load) was counted in
    par's ``first_call`` and in every workload that starts a pool. Reading the compiled
    files needs no write access, so the variable can stay set. True when every file
    compiled."""
    dirs = [*sorted((ROOT / "packages").glob("*/src")), HERE]
    return all(compileall.compile_dir(str(d), quiet=1) for d in dirs)


def _kill_tree(proc: subprocess.Popen[str]) -> None:
    """Kills ``proc``, its descendants and its process group, and reaps ``proc``."""
    victims = []
    try:
        import psutil

        victims = psutil.Process(proc.pid).children(recursive=True)
    except Exception:  # psutil missing, or the process already gone
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for child in victims:
        with contextlib.suppress(Exception):
            child.kill()
    proc.kill()
    proc.communicate()


def run_one(workload: Workload, lib: str, quick: bool, timeout: float) -> dict[str, Any]:
    """One repetition of ``workload`` with ``lib`` in a fresh subprocess: its result dict."""
    env = dict(os.environ)
    if workload.numpy:
        for var in OPENBLAS_UNSET:
            env.pop(var, None)
    cmd = [sys.executable, str(HERE / "worker.py"), workload.name, lib] + (["--quick"] if quick else [])
    t0 = time.perf_counter()
    # A session of its own, so that a timeout ends the worker's pool and resource tracker too.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        return {"error": f"timeout after {timeout:g} s", "elapsed_s": time.perf_counter() - t0}
    elapsed = time.perf_counter() - t0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # how busy the machine was
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER):
            result: dict[str, Any] = json.loads(line[len(MARKER) :])
            result["elapsed_s"] = elapsed
            result["load_1min"] = load
            if "error" in result:
                result["stderr_tail"] = stderr[-3000:]
            return result
    return {
        "error": f"no result line (exit code {proc.returncode})",
        "stderr_tail": stderr[-3000:],
        "elapsed_s": elapsed,
    }


def summarize(workload: Workload, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per library and the median of the per-repetition ratios par/joblib."""
    summary: dict[str, Any] = {}
    for metric in workload.metrics:
        entry: dict[str, Any] = {}
        for lib, reps in runs.items():
            values = [r["metrics"][metric] for r in reps if "metrics" in r and metric in r["metrics"]]
            entry[lib] = statistics.median(values) if values else None
        ratios = []
        for a, b in zip(runs.get("par", []), runs.get("joblib", []), strict=False):
            va = a.get("metrics", {}).get(metric)
            vb = b.get("metrics", {}).get(metric)
            if va is not None and vb:
                ratios.append(va / vb)
        entry["ratios"] = ratios
        entry["ratio"] = statistics.median(ratios) if ratios else None
        summary[metric] = entry
    return summary


def evaluate(workload: Workload, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The workload's targets with the measured value and whether each is met."""
    out = []
    for t in workload.targets:
        entry = summary.get(t.metric, {})
        if t.kind == "ratio":
            value = entry.get("ratio")
        elif t.kind == "mpire":
            par, mpire = entry.get("par"), entry.get("mpire")
            value = par / mpire if par is not None and mpire else None
        else:
            value = entry.get("par")
        out.append(
            {
                "metric": t.metric,
                "kind": t.kind,
                "op": t.op,
                "threshold": t.threshold,
                "label": t.label(),
                "value": value,
                "met": t.met(value),
            }
        )
    return out


def fmt(value: float | None, unit: str = "") -> str:
    """A value with 3-4 significant digits and its unit."""
    if value is None:
        return "—"
    if unit == "s" and abs(value) < 1:
        return f"{value * 1e3:.3g} ms"
    text = f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return (
        f"{text} {unit}".rstrip()
        if unit not in ("", "x")
        else (text + ("\N{MULTIPLICATION SIGN}" if unit == "x" else ""))
    )


def table_rows(results: dict[str, Any], libs: list[str]) -> list[list[str]]:
    """Rows: workload, metric, one column per library, ratio, target, met."""
    rows = []
    for name, wres in results["workloads"].items():
        workload = WORKLOADS[name]
        for metric, spec in workload.metrics.items():
            entry = wres["summary"].get(metric, {})
            ts = [t for t in wres["targets"] if t["metric"] == metric]  # e.g. vs joblib and vs mpire
            if all(entry.get(lib) is None for lib in libs) and not ts:
                continue  # not measured at these sizes (e.g. scaling's 10^6 in a quick run)
            target = "; ".join(t["label"] for t in ts)
            met = "; ".join("n/a" if t["met"] is None else ("PASS" if t["met"] else "MISS") for t in ts)
            ratio = entry.get("ratio")
            rows.append(
                [
                    name,
                    metric,
                    *(fmt(entry.get(lib), spec.unit) for lib in libs),
                    "—" if ratio is None else f"{ratio:.3g}",
                    target,
                    met,
                ]
            )
        for lib, reps in wres["runs"].items():
            errors = [r["error"] for r in reps if "error" in r]
            if errors:
                rows.append([name, f"ERROR ({lib})", *[""] * len(libs), "", "", errors[0][:60]])
    return rows


def print_table(results: dict[str, Any], libs: list[str]) -> None:
    """The summary table on stdout."""
    header = ["workload", "metric", *libs, "par/joblib", "target", "met"]
    rows = table_rows(results, libs)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


def markdown_table(results: dict[str, Any], libs: list[str]) -> str:
    """The summary table as Markdown, with the machine and date."""
    m = results["machine"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['usable_cpus']} usable CPUs, {m['memory_gb']} GB), "
        f"{m['platform']}, Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
        + f". {results['config']['reps']} repetitions"
        + (" (quick sizes)" if results["config"]["quick"] else "")
        + f"; load average (1, 5, 15 min) at start {', '.join(f'{x:.2f}' for x in m['load_average_at_start'] or [])}"
        + f", at end {', '.join(f'{x:.2f}' for x in m.get('load_average_at_end') or [])}.",
        "",
        "| workload | metric | " + " | ".join(libs) + " | par/joblib | target | met |",
        "|---|---|" + "---:|" * len(libs) + "---:|---|---|",
    ]
    for r in table_rows(results, libs):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    return "\n".join(lines) + "\n"


def write_docs(path: Path, table: str) -> None:
    """Replaces the text between the bench-table markers of ``path`` with ``table``."""
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{DOCS_START}\n{DOCS_END}\n"
    if DOCS_START not in text or DOCS_END not in text:
        text += f"\n{DOCS_START}\n{DOCS_END}\n"
    head, rest = text.split(DOCS_START, 1)
    _, tail = rest.split(DOCS_END, 1)
    path.write_text(f"{head}{DOCS_START}\n{table}{DOCS_END}{tail}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--workloads", default="all", help="comma-separated names, or 'all' (default); --list shows them"
    )
    p.add_argument("--reps", type=int, default=5, help="repetitions per (workload, library); default 5")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    p.add_argument(
        "--libs",
        default="par,joblib,mpire,pebble,loky",
        help=(
            "comma-separated among par, joblib, mpire, pebble, loky (raw loky's map, the floor under"
            " par's default backend); mpire, pebble and loky run only where a workload has them"
        ),
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output; default benchmarks/results/<date>[-quick].json for a run of all workloads, "
        "<date>-<time>-partial.json (not committed) for a run of some, so as not to overwrite a full run",
    )
    p.add_argument(
        "--chart",
        type=Path,
        default=None,
        help="write the chart there (.png or .svg); default docs/benchmarks.png for a full run "
        "of all workloads, none otherwise",
    )
    p.add_argument("--no-chart", action="store_true", help="write no chart")
    p.add_argument(
        "--docs",
        type=Path,
        default=None,
        help="replace the table between the bench-table markers of this Markdown file",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per subprocess (default 600)")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns 0 when every run produced metrics, 1 otherwise."""
    args = parse_args(argv)
    if args.list:
        for w in WORKLOADS.values():
            lines = (w.doc or w.func.__doc__ or "").strip().splitlines()
            doc = lines[0] if lines else ""
            print(f"{w.name:22} {doc}")
        return 0
    names = (
        list(WORKLOADS)
        if args.workloads == "all"
        else [n.strip() for n in args.workloads.split(",") if n.strip()]
    )
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        print(f"--workloads: unknown {', '.join(unknown)}; known: {', '.join(WORKLOADS)}", file=sys.stderr)
        return 2
    libs = [lib.strip() for lib in args.libs.split(",") if lib.strip()]
    bad = [lib for lib in libs if lib not in LIBS]
    if bad or not libs:
        print(f"--libs: unknown {', '.join(bad) or '(empty)'}; accepted: {', '.join(LIBS)}", file=sys.stderr)
        return 2
    if args.reps < 1:
        print(f"--reps must be >= 1, got {args.reps}", file=sys.stderr)
        return 2
    now = _dt.datetime.now()
    stamp = now.strftime("%Y-%m-%d") + ("" if args.workloads == "all" else now.strftime("-%H%M%S-partial"))
    out = args.out or HERE / "results" / f"{stamp}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    compiled = precompile()
    results: dict[str, Any] = {
        "machine": {**machine_info(), "workspace_bytecode_compiled": compiled},
        "config": {"reps": args.reps, "quick": args.quick, "libs": libs, "workloads": names},
        "workloads": {},
    }
    failures = 0
    t_start = time.perf_counter()
    for name in names:
        workload = WORKLOADS[name]
        wlibs = workload.libs(libs)
        runs: dict[str, list[dict[str, Any]]] = {lib: [] for lib in wlibs}
        for rep in range(args.reps):
            for lib in wlibs:
                res = run_one(workload, lib, args.quick, args.timeout)
                runs[lib].append(res)
                shown = res.get("error") or ", ".join(
                    f"{k}={v:.4g}" for k, v in res["metrics"].items() if workload.metrics.get(k, None)
                )
                print(
                    f"[{time.perf_counter() - t_start:7.1f}s] {name} rep {rep + 1}/{args.reps} {lib:6} "
                    f"({res['elapsed_s']:.1f}s) {shown}",
                    flush=True,
                )
                failures += "error" in res
        summary = summarize(workload, runs)
        results["workloads"][name] = {
            "params": workload.quick if args.quick else workload.params,
            "runs": runs,
            "summary": summary,
            "targets": evaluate(workload, summary),
        }
        out.write_text(json.dumps(results, indent=1))  # partial results survive an interruption
    results["total_s"] = time.perf_counter() - t_start
    results["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    out.write_text(json.dumps(results, indent=1))
    print()
    print_table(results, libs)
    print(f"\nresults: {out}  ({results['total_s']:.0f} s)")

    chart = args.chart
    if chart is None and not args.quick and args.workloads == "all":
        chart = ROOT / "docs" / "benchmarks.png"
    if chart is not None and not args.no_chart:
        from chart import draw

        draw(results, chart)
        print(f"chart: {chart}")
    if args.docs is not None:
        write_docs(args.docs, markdown_table(results, libs))
        print(f"docs: {args.docs}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
