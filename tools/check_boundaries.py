"""Check the import boundaries of the par packages; exit non-zero on any violation.

Run it as ``hatch run check:boundaries`` (the ``check`` environment has import-linter,
deptry and ruff, and every package of ``packages/`` installed). Four checks, each done
by a well-kept tool rather than by parsing imports here, and one of par_api's table:

1. **Coverage of the contracts**: every package folder of ``packages/`` has its import
   name in ``root_packages`` of ``.importlinter`` and is the source of some contract, so
   a new package cannot slip past the checks unconfigured.
2. **import-linter** (``lint-imports --config .importlinter``), with every
   ``packages/*/src`` on ``PYTHONPATH``: the dependency graph of docs/architecture.md
   (direct and indirect imports) and "another par package only through its top-level
   names" (no ``par_api.config``, no ``par_backends_local._crash``).
3. **deptry**, in each package folder against that package's own ``pyproject.toml``:
   ``src`` may import only what the package declares (DEP001 missing, DEP003
   transitive) and must use every declared dependency (DEP002); ``tests`` may import
   the package itself, what it declares, what that pulls in, and pytest.
4. **ruff PLC2701** (import-private-name, a preview rule) on every ``src``: a private
   name taken from *another par package* (``from par_api import _x``), which is not a
   module import and so is invisible to import-linter. Private names of the standard
   library or of third-party packages are not this check's business and are dropped.
5. **The registry's imports by name** (``par_api.registry.KNOWN_BACKENDS``): par_api
   imports par-backends-local's backends by a ``"package:attribute"`` string, which
   import-linter cannot see; each such string must name the top level of the import
   package of the distribution its row names (no submodule, no other package).

Usage::

    python tools/check_boundaries.py [--root REPO] [--skip {contracts,import-linter,deptry,private-names,by-name}]
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: hatch brings tomli
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent

#: Per-package deptry exceptions for ``src``, each with its reason. Keys are
#: distribution names, values map a deptry code to the names it may ignore.
SRC_IGNORES: dict[str, dict[str, list[str]]] = {
    # par never imports par_backends_local: the backends reach par through the
    # "par.backends" entry points that par_api's registry loads. par depends on
    # par-backends-local so that `pip install par` brings the default backends.
    "par": {"DEP002": ["par-backends-local"]},
}

#: What every package's tests may import without declaring it: the test runner and
#: the plugins that tools/isolation.py installs beside the package.
TEST_ONLY_IMPORTS = ["pytest", "pytest_timeout", "xdist"]

STEPS = ("contracts", "import-linter", "deptry", "private-names", "by-name")


@dataclass(frozen=True)
class Package:
    """One folder of ``packages/``: its distribution name, import name and folder."""

    dist: str
    import_name: str
    folder: Path

    @property
    def src(self) -> Path:
        return self.folder / "src"


def discover_packages(packages_root: Path) -> list[Package]:
    """Every ``packages/<folder>`` with a ``pyproject.toml``, sorted by folder name.

    The import name is the folder under ``src/`` that holds an ``__init__.py``; a
    package must have exactly one (the src layout of docs/architecture.md).
    """
    found = []
    for pyproject in sorted(packages_root.glob("*/pyproject.toml")):
        folder = pyproject.parent
        with pyproject.open("rb") as fh:
            dist = tomllib.load(fh)["project"]["name"]
        names = sorted(p.parent.name for p in (folder / "src").glob("*/__init__.py"))
        if len(names) != 1:
            raise SystemExit(f"{folder}: expected exactly one package under src/, found {names or 'none'}")
        found.append(Package(dist=dist, import_name=names[0], folder=folder))
    return found


def tool(name: str) -> str:
    """Path of a console script, preferring the one beside the running interpreter."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: run this through `hatch run check:boundaries`")
    return found


def run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``cmd``; return its exit code and its combined output."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc.returncode, proc.stdout


def check_contracts_cover(root: Path, packages: list[Package]) -> list[str]:
    """Problems with ``.importlinter`` itself: packages it does not know about."""
    parser = configparser.ConfigParser()
    if not parser.read(root / ".importlinter"):
        return [f"{root / '.importlinter'} is missing"]
    roots = set(parser.get("importlinter", "root_packages", fallback="").split())
    sources: set[str] = set()
    for section in parser.sections():
        if section.startswith("importlinter:contract:"):
            for key in ("source_modules", "modules", "layers", "protected_modules"):
                sources.update(parser.get(section, key, fallback="").split())
    problems = []
    for pkg in packages:
        if pkg.import_name not in roots:
            problems.append(f"{pkg.import_name} ({pkg.folder.name}) is not in root_packages of .importlinter")
        elif pkg.import_name not in sources:
            problems.append(
                f"{pkg.import_name} ({pkg.folder.name}) is the source of no contract in .importlinter"
            )
    missing = roots - {p.import_name for p in packages}
    problems += [
        f"root package {name} of .importlinter has no folder in packages/" for name in sorted(missing)
    ]
    return problems


def check_import_linter(root: Path, packages: list[Package]) -> tuple[bool, str]:
    env = dict(os.environ)
    paths = [str(p.src) for p in packages] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    code, out = run(
        [tool("lint-imports"), "--config", str(root / ".importlinter"), "--no-cache"], cwd=root, env=env
    )
    # Drop the ASCII-art banner: keep from the "Contracts" heading on.
    start = out.find("\n---------\nContracts")
    if start >= 0:
        out = out[start + 1 :]
    return code == 0, out


def _deptry(pkg: Package, args: list[str]) -> tuple[int, str]:
    code, out = run([sys.executable, "-m", "deptry", "--no-ansi", *args], cwd=pkg.folder)
    lines = [ln for ln in out.splitlines() if not ln.startswith("Assuming the corresponding module name")]
    return code, "\n".join(lines)


def check_deptry(pkg: Package) -> tuple[bool, str]:
    """deptry on ``src`` (all rules), then on ``tests`` (undeclared imports only)."""
    ignores = SRC_IGNORES.get(pkg.dist, {})
    src_args = ["src", "--known-first-party", pkg.import_name]
    if ignores:
        src_args += [
            "--per-rule-ignores",
            ",".join(f"{code}={'|'.join(names)}" for code, names in ignores.items()),
        ]
    code, out = _deptry(pkg, src_args)
    ok = code == 0
    report = f"[src] {out.strip()}"
    if (pkg.folder / "tests").is_dir():
        test_args = [
            "tests",
            "--known-first-party",
            pkg.import_name,
            # deptry skips folders named "tests" by default: scan them, skip caches only.
            "--exclude",
            r".*__pycache__",
            # DEP002: tests need not use every dependency; DEP003: a test may use what a
            # declared dependency pulls in (isolation.py installs exactly that).
            "--ignore",
            "DEP002,DEP003,DEP004",
            "--per-rule-ignores",
            "DEP001=" + "|".join(TEST_ONLY_IMPORTS),
        ]
        code, out = _deptry(pkg, test_args)
        ok = ok and code == 0
        report += f"\n[tests] {out.strip()}"
    return ok, report


# "Private name import `_x` from external module `par_api`", or for `import _mod`:
# "Private name import `_mod`".
_PRIVATE_MSG = re.compile(
    r"Private name import `(?P<name>[^`]+)`(?: from external module `(?P<module>[^`]+)`)?"
)


def check_private_names(root: Path, packages: list[Package]) -> tuple[bool, str]:
    """ruff PLC2701 on every ``src``; keep the findings that name a par package."""
    par_names = {p.import_name for p in packages}
    cmd = [
        sys.executable, "-m", "ruff", "check", "--isolated", "--preview", "--select", "PLC2701",
        "--output-format", "json", "--exit-zero",
        *[str(p.src.relative_to(root)) for p in packages],
    ]  # fmt: skip
    code, out = run(cmd, cwd=root)
    if code != 0:
        return False, out
    findings = []
    for item in json.loads(out[out.find("[") :] or "[]"):
        match = _PRIVATE_MSG.search(item["message"])
        # A message ruff words differently is kept: better a false alarm than a miss.
        if match and (match["module"] or match["name"]).split(".")[0] not in par_names:
            continue
        where = Path(item["filename"]).resolve().relative_to(root)
        findings.append(f"{where}:{item['location']['row']}: {item['message']}")
    return not findings, "\n".join(findings)


def by_name_problems(known_backends: dict[str, Any], packages: list[Package]) -> list[str]:
    """Problems with the ``"package:attribute"`` strings of a backend table shaped like
    ``par_api.registry.KNOWN_BACKENDS`` (rows with ``provider`` and ``factory``)."""
    import_names = {p.dist: p.import_name for p in packages}
    problems = []
    for name, known in known_backends.items():
        if known.factory is None:
            continue
        module, _, attr = known.factory.partition(":")
        expected = import_names.get(known.provider)
        if expected is None:
            problems.append(f"backend {name!r}: {known.provider!r} is not a package of packages/")
        elif module != expected or not attr or "." in attr:
            problems.append(
                f"backend {name!r}: factory {known.factory!r} must be '{expected}:<top-level name>' "
                f"(a top-level name of {known.provider}, which the row names)"
            )
    return problems


def check_by_name_imports(packages: list[Package]) -> list[str]:
    """:func:`by_name_problems` of par_api's own table (the installed par_api)."""
    import importlib

    registry = importlib.import_module("par_api.registry")
    return by_name_problems(registry.KNOWN_BACKENDS, packages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO, help="repository root (default: this repository)")
    parser.add_argument("--skip", action="append", choices=STEPS, default=[], help="skip a check")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    packages = discover_packages(root / "packages")
    failed: list[str] = []

    def section(title: str, ok: bool, detail: str) -> None:
        print(f"==> {title}: {'OK' if ok else 'FAILED'}")
        if detail.strip() and (not ok or title == "import-linter"):
            print("    " + detail.strip().replace("\n", "\n    "))
        if not ok:
            failed.append(title)

    if "contracts" not in args.skip:
        problems = check_contracts_cover(root, packages)
        section(".importlinter covers every package", not problems, "\n".join(problems))
    if "import-linter" not in args.skip:
        section("import-linter", *check_import_linter(root, packages))
    if "deptry" not in args.skip:
        for pkg in packages:
            section(f"deptry {pkg.dist}", *check_deptry(pkg))
    if "private-names" not in args.skip:
        section("private names of other par packages (ruff PLC2701)", *check_private_names(root, packages))
    if "by-name" not in args.skip:
        problems = check_by_name_imports(packages)
        section("par_api's imports by name (registry.KNOWN_BACKENDS)", not problems, "\n".join(problems))

    if failed:
        print(f"\nboundaries: {len(failed)} check(s) FAILED: {', '.join(failed)}")
        return 1
    print(f"\nboundaries: all checks passed ({len(packages)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
