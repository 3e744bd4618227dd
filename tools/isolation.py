"""Build every par package as a wheel and run its own tests with only what it declares.

For each folder of ``packages/`` (or the ones named with ``--only``):

1. ``hatch build -t wheel`` into a temporary folder;
2. a fresh virtual environment (``uv venv``; ``python -m venv`` where uv is missing)
   on the interpreter running this script;
3. install into it the package's wheel, the freshly built wheels of the par packages
   it depends on (directly or not), and pytest, pytest-timeout and pytest-xdist —
   nothing else. Third-party dependencies come from the package index as the wheels'
   metadata asks. The par wheels are passed by path, never by name, so no par
   distribution can come from the index instead of this tree;
4. ``python -m pytest packages/<name>/tests`` with that environment's interpreter,
   from a temporary working folder, with the repository's pytest configuration left
   out (``-c /dev/null``) so that only the package's own tests and conftest files run.

It prints one line per package and exits 1 if any package failed::

    par-api 0.1.0: built, installed, tests passed (12 passed in 1.30s) [6.1s]

Logs of failed steps are kept and their path printed; everything else is removed.

Usage::

    python tools/isolation.py [--only NAME ...] [--root REPO] [--keep] [-- PYTEST_ARGS...]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: hatch brings tomli
    import tomli as tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
TEST_TOOLS = ["pytest", "pytest-timeout", "pytest-xdist"]
PER_TEST_TIMEOUT = 120


@dataclass
class Package:
    """A folder of ``packages/`` and the par packages it declares (canonical names)."""

    name: str  # canonical distribution name
    folder: Path
    par_deps: set[str] = field(default_factory=set)
    wheel: Path | None = None

    @property
    def version(self) -> str:
        # Wheel file names are {dist}-{version}-{python}-{abi}-{platform}.whl.
        return self.wheel.name.split("-")[1] if self.wheel else "?"


def discover(packages_root: Path) -> dict[str, Package]:
    """Every ``packages/<folder>/pyproject.toml``, keyed by canonical distribution name."""
    found: dict[str, Package] = {}
    for pyproject in sorted(packages_root.glob("*/pyproject.toml")):
        with pyproject.open("rb") as fh:
            project = tomllib.load(fh)["project"]
        name = canonicalize_name(project["name"])
        deps = {canonicalize_name(Requirement(r).name) for r in project.get("dependencies", [])}
        found[name] = Package(name=name, folder=pyproject.parent, par_deps=deps)
    for pkg in found.values():
        pkg.par_deps &= set(found)
    return found


def closure(packages: dict[str, Package], name: str) -> list[str]:
    """``name`` and every par package it needs, directly or through another one."""
    seen: list[str] = []
    todo = [name]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.append(current)
            todo.extend(sorted(packages[current].par_deps))
    return seen


def run_logged(cmd: list[str], log: Path, *, cwd: Path, env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` with its output appended to ``log``; return its exit code."""
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        return subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode


def hatch_cmd() -> list[str]:
    found = shutil.which("hatch")
    return [found] if found else [sys.executable, "-m", "hatch"]


def build(pkg: Package, wheels: Path, log: Path) -> bool:
    before = set(wheels.glob("*.whl"))
    if run_logged([*hatch_cmd(), "build", "-t", "wheel", str(wheels)], log, cwd=pkg.folder) != 0:
        return False
    new = sorted(set(wheels.glob("*.whl")) - before)
    if len(new) != 1:
        with log.open("a") as fh:
            fh.write(f"expected one new wheel in {wheels}, found {[p.name for p in new]}\n")
        return False
    pkg.wheel = new[0]
    return True


def clean_env() -> dict[str, str]:
    """The environment for the child processes: nothing that would leak the outer one in."""
    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTEST_ADDOPTS", "CONDA_PREFIX"):
        env.pop(var, None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave no __pycache__ in packages/*/tests
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return env


def make_venv(venv: Path, requirements: list[str], log: Path, cwd: Path) -> Path | None:
    """A fresh venv on this interpreter with ``requirements``; its python, or None."""
    env = clean_env()
    uv = shutil.which("uv")
    if uv:
        steps = [
            [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
            [uv, "pip", "install", "--python", str(venv / "bin" / "python"), *requirements],
        ]
    else:
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *requirements],
        ]
    for cmd in steps:
        if run_logged(cmd, log, cwd=cwd, env=env) != 0:
            return None
    return venv / "bin" / "python"


_SUMMARY = re.compile(r"^=*\s*(?P<text>.*?\bin [\d.]+s\b.*?)\s*=*$")


def pytest_summary(log: Path) -> str:
    """pytest's closing line ("12 passed in 1.30s"), or "" if there is none."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        match = _SUMMARY.match(line.strip())
        if match:
            return match["text"]
    return ""


def test_package(pkg: Package, python: Path, log: Path, cwd: Path, extra: list[str]) -> int:
    tests = pkg.folder / "tests"
    cmd = [
        str(python), "-m", "pytest", str(tests),
        "-q", "-p", "no:cacheprovider", "--import-mode=importlib",
        "-c", os.devnull, "--rootdir", str(pkg.folder), "--confcutdir", str(pkg.folder),
        "-o", f"timeout={PER_TEST_TIMEOUT}",
        # test modules are named tests.<x> (importlib mode): process workers import them
        # to unpickle test functions, so the package folder must be on sys.path
        "-o", f"pythonpath={pkg.folder}",
        "-W", "ignore::pytest.PytestUnknownMarkWarning",
        *extra,
    ]  # fmt: skip
    return run_logged(cmd, log, cwd=cwd, env=clean_env())


def check_one(pkg: Package, packages: dict[str, Package], work: Path, logs: Path, extra: list[str]) -> bool:
    """Install and test one package (already built); print its line; True if it passed."""
    start = time.monotonic()
    head = f"{pkg.name} {pkg.version}: built"
    log = logs / f"{pkg.name}.log"

    def done(text: str, ok: bool) -> bool:
        where = "" if ok else f" (log: {log})"
        print(f"{head}, {text}{where} [{time.monotonic() - start:.1f}s]", flush=True)
        return ok

    needed = closure(packages, pkg.name)
    unbuilt = [n for n in needed if packages[n].wheel is None]
    if unbuilt:
        return done(f"install FAILED: no wheel for {', '.join(unbuilt)}", False)
    wheels = [str(packages[n].wheel) for n in needed]
    python = make_venv(work / "venvs" / pkg.name, [*wheels, *TEST_TOOLS], log, cwd=work)
    if python is None:
        return done("install FAILED", False)
    head += ", installed"
    if not (pkg.folder / "tests").is_dir():
        return done("tests FAILED: no tests/ folder", False)
    code = test_package(pkg, python, log, work, extra)
    summary = pytest_summary(log)
    if code == 0:
        return done(f"tests passed ({summary})", True)
    if code == 5:
        return done("tests FAILED: no tests collected", False)
    return done(f"tests FAILED (pytest exit {code}: {summary or 'no summary'})", False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build each par package as a wheel and run its tests in a fresh venv "
        "holding only its declared dependencies.",
        epilog="Arguments after `--` are passed to pytest (e.g. -- -m 'not slow').",
    )
    parser.add_argument("--only", action="append", metavar="NAME", default=[],
                        help="test only this package (distribution name or folder); repeatable")  # fmt: skip
    parser.add_argument("--root", type=Path, default=REPO, help="repository root (default: this repository)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (wheels, venvs, logs)")
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)

    started = time.monotonic()
    packages = discover(args.root.resolve() / "packages")
    if not packages:
        parser.error(f"no packages found under {args.root / 'packages'}")
    by_folder = {p.folder.name: n for n, p in packages.items()}
    selected = []
    for name in args.only:
        key = canonicalize_name(name)
        key = key if key in packages else by_folder.get(name, "")
        if not key:
            parser.error(f"--only: unknown package {name!r}; known: {', '.join(sorted(packages))}")
        selected.append(key)
    selected = selected or sorted(packages)

    work = Path(tempfile.mkdtemp(prefix="par-isolation-"))
    logs = work / "logs"
    wheels = work / "wheels"
    logs.mkdir()
    wheels.mkdir()
    failed: list[str] = []
    try:
        to_build = sorted({n for name in selected for n in closure(packages, name)})
        for name in to_build:
            log = logs / f"{name}.log"
            if not build(packages[name], wheels, log):
                print(f"{name}: build FAILED (log: {log})", flush=True)
                if name in selected:
                    failed.append(name)
        for name in selected:
            pkg = packages[name]
            if pkg.wheel is not None and not check_one(pkg, packages, work, logs, extra):
                failed.append(name)
    finally:
        if args.keep:
            print(f"isolation: work folder kept: {work}")
        elif failed:  # keep the logs only
            shutil.rmtree(work / "venvs", ignore_errors=True)
            shutil.rmtree(wheels, ignore_errors=True)
        else:
            shutil.rmtree(work, ignore_errors=True)

    elapsed = time.monotonic() - started
    if failed:
        print(f"isolation: {len(failed)} of {len(selected)} packages FAILED ({', '.join(failed)}) "
              f"in {elapsed:.0f}s; logs in {logs}")  # fmt: skip
        return 1
    print(f"isolation: {len(selected)} packages passed in {elapsed:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
