"""``python -m par``: command-line helpers.

``python -m par info`` prints what a user needs when asking for help (versions, Python,
CPU counts, backends, temp folder, native thread pools, environment); ``--json`` prints
the same as one JSON object. ``python -m par --version`` prints par's version.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m par``."""
    from .__about__ import __version__

    parser = argparse.ArgumentParser(
        prog="python -m par", description="par: run Python loops in parallel (command-line helpers)."
    )
    parser.add_argument("--version", action="version", version=f"par {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser(
        "info",
        help="print versions, CPU counts, backends, temp folder and thread pools (paste it in bug reports)",
        description="Print what a maintainer needs to help: par and component versions, Python, "
        "cpu_count (logical, physical, affinity, cgroup quota), the backends found and the package "
        "providing each, the temp folder for memmapped arrays and its free space, and the native "
        "thread pools (threadpoolctl).",
    )
    info.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m par`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "info":
        parser.print_help(sys.stderr)
        return 2
    from .info import collect_info, format_info

    data = collect_info()
    if args.json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(format_info(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
