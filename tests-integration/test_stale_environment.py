"""The repository's conftest.py stops a test run in an environment installed from older
versions of the packages (hatch keeps it), instead of letting tests fail without naming
the cause."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _stale_installs():
    sys.path.insert(0, str(ROOT))
    try:
        import conftest  # the repository root's, not tests-integration's
    finally:
        sys.path.remove(str(ROOT))
    assert Path(conftest.__file__).parent == ROOT
    return conftest.stale_installs


def test_this_environment_is_current():
    assert _stale_installs()() == []


def test_an_older_install_is_named(monkeypatch):
    stale_installs = _stale_installs()
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "0.0.1" if name == "par-api" else real(name))
    (line,) = stale_installs()
    assert line.startswith("par-api: installed 0.0.1, source ") and not line.endswith("0.0.1")


def test_the_run_stops_with_what_to_do(tmp_path):
    """A whole pytest run in an environment where par's metadata says 0.0.1."""
    (tmp_path / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            from importlib import metadata
            real = metadata.version
            metadata.version = lambda name: "0.0.1" if name == "par" else real(name)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", str(ROOT / "packages/par/tests/test_par_info.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "par: installed 0.0.1" in proc.stdout + proc.stderr
    assert "hatch env prune" in proc.stdout + proc.stderr
