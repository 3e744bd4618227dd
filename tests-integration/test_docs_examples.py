"""The scripts of docs/examples/ run as they are documented, in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"

#: What each example must print, line by line.
EXPECTED: dict[str, list[str]] = {
    "quickstart.py": [
        "[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]",
        "[0, 1, 4, 9, 16]",
    ],
    "generator_streaming.py": [
        "sum of squares: 140",
        "last event: finished, 8/8 tasks",
        "[0, 1, 4, 9, 16]",
    ],
    "memmap_output.py": [
        "matches: True",
        "row sums: [12497500.0, 37497500.0, 62497500.0]",
    ],
    "custom_backend.py": [
        "[0, 1, 2, 3, 4, 5]",
        "batches run by PoolBackend: 3",
    ],
}


def test_every_example_is_checked():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_and_prints_what_it_documents(name, tmp_path):
    if name == "memmap_output.py":
        pytest.importorskip("numpy")
    env = dict(os.environ, TMPDIR=str(tmp_path), PAR_TEMP_FOLDER=str(tmp_path))
    env.pop("PAR_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=80,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == EXPECTED[name], proc.stdout
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert leftovers == [], f"{name} left files in the temp folder: {leftovers}"
