"""``import par_api`` stays cheap: modules it does not always need are imported only by
the call that needs them (checked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.parametrize(
    ("module", "call"),
    [
        # entry-point metadata is only read when a backend name is not found otherwise
        ("importlib.metadata", "par_api.registry._entry_points()"),
        # a worker process imports par_api: pathlib (~5 ms of a worker's start) only
        # comes when the CPU count is read
        ("pathlib", "par_api.cpu.cgroup_cpu_limit()"),
    ],
)
def test_api_import_leaves_out_what_only_a_call_needs(module: str, call: str) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        # imported at start-up by some environments' .pth files; a package's submodules
        # must go too (pathlib is a package on 3.13), or importing it again fails
        for name in [m for m in sys.modules if m == {module!r} or m.startswith({module + "."!r})]:
            del sys.modules[name]
        import par_api
        print({module!r} in sys.modules)
        {call}
        print({module!r} in sys.modules)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]
