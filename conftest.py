"""Checks for the whole repository's test run (every package and tests-integration).

A hatch environment installs the workspace's packages once, editable: later changes to
the code are seen at once, but a package's metadata (its version) is written at install
time and hatch does not re-install when only a version changes. Tests that compare
`importlib.metadata` with the code then fail in ways that do not name the cause, so the
run stops at the start with what to do instead.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest

_PACKAGES = Path(__file__).parent / "packages"
_VERSION = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)


def stale_installs() -> list[str]:
    """'name: installed X, source Y' for each package whose installed metadata is not the
    version of its source (packages that are not installed are not checked)."""
    stale = []
    for about in sorted(_PACKAGES.glob("*/src/*/__about__.py")):
        name = about.parents[2].name
        found = _VERSION.search(about.read_text(encoding="utf-8"))
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if found and installed != found.group(1):
            stale.append(f"{name}: installed {installed}, source {found.group(1)}")
    return stale


def pytest_configure(config: pytest.Config) -> None:
    stale = stale_installs()
    if stale:
        pytest.exit(
            "this environment was installed from older versions of the packages ("
            + "; ".join(stale)
            + "): run `hatch env prune` once, then the command again",
            returncode=4,
        )
