"""Fail if a tracked text file still holds a merge-conflict block.

A conflict block of a merge was once committed in docs/architecture.md and passed every
other check (ruff does not read Markdown). Run by `hatch run lint:check`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

MARKER = re.compile(r"^(<{7}|={7}|>{7})( |$)", re.MULTILINE)
ROOT = Path(__file__).resolve().parents[1]


def conflicted(root: Path = ROOT) -> list[str]:
    """'path:line' of each conflict marker (``<<<<<<<``/``=======``/``>>>>>>>`` opening
    a line, alone or before a space) in the files git tracks under ``root``."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    found = []
    for name in filter(None, files.decode().split("\0")):
        try:
            text = (root / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary or unreadable: not a place for a conflict block
        starts = [m.start() for m in MARKER.finditer(text) if not m.group(1).startswith("=")]
        found += [f"{name}:{text.count(chr(10), 0, pos) + 1}" for pos in starts]
    return found


def main() -> int:
    found = conflicted()
    for where in found:
        print(f"{where}: merge-conflict marker")
    print("conflict markers: " + (f"{len(found)} found" if found else "none"))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
