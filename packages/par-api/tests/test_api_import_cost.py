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


def test_api_cpu_count_does_not_import_pathlib() -> None:
    """Counting CPUs reads its files with os.path: pathlib (and the urllib and ipaddress
    it imports, ~5 ms) is imported neither by ``import par_api`` (a worker imports it)
    nor by the count (the first call counts before its workers start)."""
    code = textwrap.dedent(
        """
        import sys
        for name in [m for m in sys.modules if m == "pathlib" or m.startswith("pathlib.")]:
            del sys.modules[name]
        import par_api
        from par_api import cpu
        cpu._CACHE.clear()
        par_api.cpu_count()
        par_api.cpu_count(only_physical_cores=True)
        par_api.cpu_count_report()
        print("pathlib" in sys.modules)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False"]
