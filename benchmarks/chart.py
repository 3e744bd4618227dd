"""The chart of a benchmark run: one panel per workload, par next to joblib.

Each panel shows the medians of the workload's charted metrics, one group of bars per
metric (par, joblib, and mpire where it ran), with the min-max over the repetitions
as an error bar; a second y axis holds a second unit (MB next to seconds). ``scaling``
is drawn as the cost per task against the number of tasks (log-log). The panel title
carries the targets and whether they were met.

    python benchmarks/chart.py benchmarks/results/2026-01-01.json --out docs/benchmarks.png \
        [--docs docs/benchmarks.md]

``--docs`` also rewrites the table of ``docs/benchmarks.md`` from the same JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from workloads import WORKLOADS  # noqa: E402

COLORS = {"par": "#1f77b4", "joblib": "#ff7f0e", "mpire": "#7f7f7f", "pebble": "#2ca02c", "loky": "#9467bd"}


def _values(wres: dict[str, Any], lib: str, metric: str) -> list[float]:
    return [r["metrics"][metric] for r in wres["runs"].get(lib, []) if metric in r.get("metrics", {})]


def _title(name: str, wres: dict[str, Any]) -> str:
    parts = []
    for t in wres["targets"]:
        state = "n/a" if t["met"] is None else ("PASS" if t["met"] else "MISS")
        value = "—" if t["value"] is None else f"{t['value']:.3g}"
        parts.append(f"{t['metric']}: {t['label']} → {value} {state}")
    return name + ("\n" + "\n".join(parts) if parts else "")


def _bars(ax: Any, wres: dict[str, Any], metrics: list[str], libs: list[str], offset: int) -> None:
    width = 0.8 / len(libs)
    for j, lib in enumerate(libs):
        for i, metric in enumerate(metrics):
            vals = _values(wres, lib, metric)
            if not vals:
                continue
            med = wres["summary"][metric][lib]
            x = offset + i + (j - (len(libs) - 1) / 2) * width
            ax.bar(
                x,
                med,
                width,
                color=COLORS[lib],
                label=lib if (i == 0 and offset == 0) else None,
                yerr=[[med - min(vals)], [max(vals) - med]],
                capsize=2,
                ecolor="#444",
            )
            ax.annotate(
                f"{med:.3g}",
                (x, med),
                ha="center",
                va="bottom",
                fontsize=6,
                xytext=(0, 2),
                textcoords="offset points",
            )


def _scaling(ax: Any, wres: dict[str, Any], libs: list[str]) -> None:
    for lib in libs:
        pts = []
        for metric, entry in wres["summary"].items():
            if metric.startswith("us_per_task_1e") and entry.get(lib) is not None:
                pts.append((10 ** int(metric.rsplit("1e", 1)[1]), entry[lib]))
        if pts:
            pts.sort()
            ax.plot(*zip(*pts, strict=True), marker="o", color=COLORS[lib], label=lib)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tasks")
    ax.set_ylabel("µs per task")
    ax.axhline(0.5, ls="--", lw=0.8, color="green")


def draw(results: dict[str, Any], path: Path) -> None:
    """Writes the chart of ``results`` (the JSON written by run.py) to ``path`` (.png/.svg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in results["workloads"] if n in WORKLOADS]
    cols = min(4, max(1, len(names)))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.9 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        wres = results["workloads"][name]
        workload = WORKLOADS[name]
        libs = [lib for lib in COLORS if lib in wres["runs"]]
        if name == "scaling":
            _scaling(ax, wres, libs)
        else:
            charted = [m for m, spec in workload.metrics.items() if spec.chart and m in wres["summary"]]
            units: list[str] = []
            for m in charted:
                if workload.metrics[m].unit not in units:
                    units.append(workload.metrics[m].unit)
            first = [m for m in charted if workload.metrics[m].unit == units[0]] if units else []
            second = [m for m in charted if m not in first]
            _bars(ax, wres, first, libs, 0)
            ax.set_ylabel(units[0] if units else "")
            ticks = first + second
            if second:
                ax2 = ax.twinx()
                _bars(ax2, wres, second, libs, len(first))
                ax2.set_ylabel(workload.metrics[second[0]].unit)
                ax2.set_ylim(bottom=0)
                ax.axvline(len(first) - 0.5, color="#bbb", lw=0.8)
            ax.set_xlim(-0.6, len(ticks) - 0.4)
            if second:
                ax2.set_xlim(-0.6, len(ticks) - 0.4)
            ax.set_xticks(range(len(ticks)))
            ax.set_xticklabels(ticks, fontsize=7, rotation=15)
            ax.set_ylim(bottom=0)
        ax.set_title(_title(name, wres), fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    m = results["machine"]
    fig.suptitle(
        f"par vs joblib — {m['date'][:10]}, {m['cpu']}, {m['usable_cpus']} CPUs, "
        f"{results['config']['reps']} reps (medians; bars: min-max)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """CLI: the chart (and optionally the docs table) from a results JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="a JSON written by run.py")
    p.add_argument("--out", type=Path, default=HERE.parent / "docs" / "benchmarks.png")
    p.add_argument("--docs", type=Path, default=None, help="also rewrite the table of this Markdown file")
    args = p.parse_args(argv)
    results = json.loads(args.results.read_text())
    draw(results, args.out)
    print(f"chart: {args.out}")
    if args.docs is not None:
        from run import markdown_table, write_docs

        write_docs(args.docs, markdown_table(results, results["config"]["libs"]))
        print(f"docs: {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
