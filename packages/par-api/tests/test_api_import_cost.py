"""``import par_api`` stays cheap: entry-point metadata is only read when needed."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_api_import_does_not_import_importlib_metadata() -> None:
    code = textwrap.dedent(
        """
        import sys
        assert "importlib.metadata" not in sys.modules, "imported before par_api"
        import par_api
        print("importlib.metadata" in sys.modules)
        par_api.registry._entry_points()
        print("importlib.metadata" in sys.modules)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]


def test_api_import_does_not_import_pathlib() -> None:
    """A worker process imports par_api: pathlib (~5 ms of a worker's start) only comes
    when the CPU count is read."""
    code = textwrap.dedent(
        """
        import sys
        # imported at start-up by some environments' .pth files; on 3.13 pathlib is a
        # package whose submodules must go too, or importing it again fails
        for name in [m for m in sys.modules if m == "pathlib" or m.startswith("pathlib.")]:
            del sys.modules[name]
        import par_api
        print("pathlib" in sys.modules)
        par_api.cpu.cgroup_cpu_limit()
        print("pathlib" in sys.modules)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]
