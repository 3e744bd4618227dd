"""Run the test suite against the newest, or the lowest declared, version of every dependency.

A green run in a cached environment can hide what a fresh machine resolves: this is how
cloudpickle 3.1.3 broke two tests that passed in CI. So CI also runs the suite

- ``newest``: in a fresh virtual environment whose dependencies are resolved anew from
  the index, every one at its newest release (``uv pip install --upgrade --refresh``);
- ``lowest``: in one where every dependency that a package declares is at the lowest
  version its range admits (``uv pip install --resolution lowest-direct``), which makes
  the floors of every ``pyproject.toml`` true.

Both install every folder of ``packages/`` (editable), then the test environment's extra
dependencies from ``hatch.toml`` (``[envs.hatch-test] extra-dependencies``) and the
test runner (pytest and its plugins): those are test tools, not declarations of par,
so ``lowest`` installs them as they resolve, keeping what the packages pinned low. Then
it prints the resolved versions of the third-party dependencies and runs
``python -m pytest -n 2 packages tests-integration`` from the repository root with
its pytest configuration (the default, non-slow group).

Usage::

    python tools/dependency_runs.py {newest,lowest} [--keep] [-- PYTEST_ARGS...]

Exit status: pytest's (1 when tests failed), or 2 when the environment could not be made.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: hatch brings tomli
    import tomli as tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

REPO = Path(__file__).resolve().parent.parent
#: The test runner: installed newest in both modes (tools, not dependencies of par).
TEST_RUNNER = ["pytest", "pytest-xdist", "pytest-mock", "pytest-rerunfailures"]
MODES = ("newest", "lowest")


def workspace_packages(root: Path = REPO) -> list[Path]:
    """Every folder of ``packages/`` that has a ``pyproject.toml``, sorted."""
    return sorted(p.parent for p in (root / "packages").glob("*/pyproject.toml"))


def declared_requirements(root: Path = REPO, optional: bool = True) -> dict[str, list[Requirement]]:
    """Third-party requirements (par packages left out) per package name, as declared in
    ``dependencies`` and (with ``optional``) every ``optional-dependencies`` group."""
    folders = workspace_packages(root)
    projects = [tomllib.loads((f / "pyproject.toml").read_text())["project"] for f in folders]
    ours = {canonicalize_name(p["name"]) for p in projects}
    out: dict[str, list[Requirement]] = {}
    for project in projects:
        specs = list(project.get("dependencies", []))
        for group in project.get("optional-dependencies", {}).values() if optional else ():
            specs += group
        reqs = [Requirement(s) for s in specs]
        out[project["name"]] = [r for r in reqs if canonicalize_name(r.name) not in ours]
    return out


def test_extra_requirements(root: Path = REPO) -> list[str]:
    """``[envs.hatch-test] extra-dependencies`` of ``hatch.toml``."""
    config = tomllib.loads((root / "hatch.toml").read_text())
    return list(config.get("envs", {}).get("hatch-test", {}).get("extra-dependencies", []))


def floors(root: Path = REPO, environment: dict[str, str] | None = None) -> dict[str, str]:
    """The lowest version each third-party dependency's declared ranges admit (the
    highest of their ``>=``/``==``/``~=`` bounds), by canonical name; what ``lowest``
    installs (optional dependencies, which it does not install, left out). A requirement
    whose marker does not hold in ``environment`` (default: this interpreter, the one the
    runs' virtual environment is made from) is not installed, so it has no floor to check
    (``exceptiongroup; python_version < '3.11'`` on 3.11)."""
    out: dict[str, str] = {}
    for reqs in declared_requirements(root, optional=False).values():
        for req in reqs:
            if req.marker is not None and not req.marker.evaluate(environment):
                continue
            name = canonicalize_name(req.name)
            for spec in req.specifier:
                if spec.operator in (">=", "==", "~="):
                    if name not in out or Version(spec.version) > Version(out[name]):
                        out[name] = spec.version
    return out


def _same(a: str, b: str | None) -> bool:
    try:
        return b is not None and Version(a) == Version(b)
    except InvalidVersion:
        return False


def _run(cmd: list[str], **kwargs: object) -> int:
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd, **kwargs)  # type: ignore[call-overload,no-any-return]


def make_env(mode: str, venv: Path, root: Path = REPO) -> Path:
    """Create ``venv`` and install the workspace for ``mode``; returns its interpreter."""
    uv = shutil.which("uv")
    if uv is None:
        raise SystemExit("dependency_runs: needs uv (pip install uv, or hatch, which brings it)")
    if _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)]) != 0:
        raise SystemExit(2)
    python = venv / "bin" / "python"
    editable: list[str] = []
    for folder in workspace_packages(root):
        editable += ["-e", str(folder)]
    common = [uv, "pip", "install", "--quiet", "--python", str(python), "--refresh"]
    if mode == "newest":
        first = [*common, "--upgrade", *editable, *test_extra_requirements(root)]
    else:  # the packages' own declarations at their floors; test tools are not declarations
        first = [*common, "--resolution", "lowest-direct", *editable]
    if _run(first) != 0:
        raise SystemExit(2)
    # the test tools and the runner, newest where not installed yet: what the first step
    # resolved stays (a test extra such as numpy>=1.24 is already satisfied)
    if _run([*common, *test_extra_requirements(root), *TEST_RUNNER]) != 0:
        raise SystemExit(2)
    return python


def report_versions(python: Path, root: Path = REPO) -> dict[str, str]:
    """Print and return the installed version of every declared third-party dependency."""
    names = sorted({canonicalize_name(r.name) for reqs in declared_requirements(root).values() for r in reqs})
    code = (
        "import sys, importlib.metadata as m\n"
        "for n in sys.argv[1:]:\n"
        "    try: print(n, m.version(n))\n"
        "    except m.PackageNotFoundError: print(n, '-')\n"
    )
    out = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True, check=True).stdout
    versions = dict(line.split(" ", 1) for line in out.splitlines())
    print("resolved:", ", ".join(f"{n} {v}" for n, v in versions.items()), flush=True)
    return versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--keep", action="store_true", help="keep the virtual environment")
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f"par-deps-{args.mode}-"))
    try:
        python = make_env(args.mode, tmp / "venv")
        versions = report_versions(python)
        if args.mode == "lowest":
            wrong = {n: (v, versions.get(n)) for n, v in floors().items() if not _same(v, versions.get(n))}
            if wrong:  # a floor that cannot be installed is not a true floor either
                print(f"dependency_runs: not at their declared floors (floor, installed): {wrong}", flush=True)
                return 1
        t_env = time.monotonic() - t0
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        pytest = [str(python), "-m", "pytest", "-n", "2", "-q", *(args.pytest_args or ["packages", "tests-integration"])]
        status = _run(pytest, cwd=REPO, env=env)
        print(
            f"dependency_runs {args.mode}: tests {'passed' if status == 0 else 'FAILED'} "
            f"(environment {t_env:.0f} s, total {time.monotonic() - t0:.0f} s)",
            flush=True,
        )
        return status
    finally:
        if args.keep:
            print(f"dependency_runs: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
