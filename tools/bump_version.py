"""Bump one par package's version, and check that every dependent's range admits it.

Versions are per package: each ``packages/<folder>`` has its version in the file that
its ``[tool.hatch.version] path`` names (``src/<import>/__about__.py``), and the other
packages depend on it through a range (``par-api>=0.1,<0.2``).

Usage::

    python tools/bump_version.py NAME {major,minor,patch,X.Y.Z} [--dry-run]
    python tools/bump_version.py --check
    (either with --packages-root DIR; default: this repository's packages/)

A bump writes the new ``__version__``, turns the package's CHANGELOG.md heading
``## Unreleased`` into ``## X.Y.Z`` (or adds that heading at the top), then checks every other package's requirement on NAME
(``dependencies`` and ``optional-dependencies``). A range that does not admit the new
version is printed with the dependent's name, and the exit code is 1: widen those
ranges (and bump those packages) before releasing. ``--dry-run`` writes nothing.

``--check`` (run in CI) writes nothing and exits 1 when a package's range on another
par package does not admit that package's current version, or when a package's
CHANGELOG.md has no heading for its current version or has a heading twice.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: hatch brings tomli
    import tomli as tomllib

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

PACKAGES_ROOT = Path(__file__).resolve().parent.parent / "packages"
PARTS = ("major", "minor", "patch")
_VERSION_LINE = re.compile(r"""^(__version__\s*=\s*)(["'])([^"']+)\2""", re.MULTILINE)


class BumpError(Exception):
    """A problem with the command line or the packages tree, said in one sentence."""


@dataclass
class Package:
    """What this tool needs of one ``packages/<folder>``."""

    name: str  # canonical distribution name
    folder: Path
    version_file: Path
    requirements: list[Requirement] = field(default_factory=list)
    raw: dict[int, str] = field(default_factory=dict)  # id(requirement) -> as written

    @property
    def version(self) -> Version:
        match = _VERSION_LINE.search(self.version_file.read_text())
        if match is None:
            raise BumpError(f'{self.version_file}: no `__version__ = "..."` line')
        try:
            return Version(match.group(3))
        except InvalidVersion as exc:
            raise BumpError(f"{self.version_file}: {exc}") from None

    def write_version(self, new: Version) -> None:
        text = self.version_file.read_text()
        self.version_file.write_text(_VERSION_LINE.sub(lambda m: f"{m[1]}{m[2]}{new}{m[2]}", text, count=1))


def load_packages(root: Path) -> dict[str, Package]:
    """Every ``<root>/<folder>/pyproject.toml``, keyed by canonical distribution name."""
    if not root.is_dir():
        raise BumpError(f"--packages-root {root} is not a folder")
    found: dict[str, Package] = {}
    for pyproject in sorted(root.glob("*/pyproject.toml")):
        with pyproject.open("rb") as fh:
            data = tomllib.load(fh)
        project = data.get("project", {})
        name = canonicalize_name(project.get("name", ""))
        rel = data.get("tool", {}).get("hatch", {}).get("version", {}).get("path")
        if not name or not rel:
            raise BumpError(f"{pyproject}: needs [project] name and [tool.hatch.version] path")
        raw = list(project.get("dependencies", []))
        for extra in project.get("optional-dependencies", {}).values():
            raw.extend(extra)
        try:
            reqs = [Requirement(r) for r in raw]
        except InvalidRequirement as exc:
            raise BumpError(f"{pyproject}: {exc}") from None
        found[name] = Package(
            name,
            pyproject.parent,
            pyproject.parent / rel,
            reqs,
            {id(q): r for q, r in zip(reqs, raw, strict=True)},
        )
    if not found:
        raise BumpError(f"no packages (folders with a pyproject.toml) under {root}")
    return found


def find(packages: dict[str, Package], name: str) -> Package:
    """A package by distribution name (any spelling) or by folder name."""
    key = canonicalize_name(name)
    if key in packages:
        return packages[key]
    for pkg in packages.values():
        if pkg.folder.name == name:
            return pkg
    raise BumpError(f"unknown package {name!r}; known: {', '.join(sorted(packages))}")


def next_version(current: Version, spec: str) -> Version:
    """``current`` bumped by ``spec``: major, minor, patch, or an explicit higher X.Y.Z."""
    major, minor, patch = [*current.release, 0, 0][:3]
    if spec == "major":
        return Version(f"{major + 1}.0.0")
    if spec == "minor":
        return Version(f"{major}.{minor + 1}.0")
    if spec == "patch":
        # 1.2.3.dev0 / 1.2.3rc1 -> 1.2.3 (the release they lead to); 1.2.3 -> 1.2.4
        return Version(f"{major}.{minor}.{patch if current.is_prerelease else patch + 1}")
    try:
        new = Version(spec)
    except InvalidVersion:
        raise BumpError(
            f"version: expected major, minor, patch or a version such as 1.2.3, got {spec!r}"
        ) from None
    if new <= current:
        raise BumpError(f"version: {new} is not higher than the current {current}")
    return new


def unmet_ranges(packages: dict[str, Package], name: str, version: Version) -> list[str]:
    """One sentence per dependent whose requirement on ``name`` does not admit ``version``."""
    problems = []
    for dependent in packages.values():
        for req in dependent.requirements:
            if canonicalize_name(req.name) == name and not req.specifier.contains(version, prereleases=True):
                problems.append(
                    f"{dependent.name} requires {dependent.raw.get(id(req), str(req))!r}, which does not admit {name} {version}: "
                    f"widen the range in {dependent.folder / 'pyproject.toml'}"
                )
    return problems


def add_changelog_heading(pkg: Package, version: Version) -> bool:
    """Turn CHANGELOG.md's ``## Unreleased`` heading into ``## <version>``, or, without
    one, put ``## <version>`` above the newest entry; False if already there."""
    changelog = pkg.folder / "CHANGELOG.md"
    text = changelog.read_text() if changelog.exists() else "# Changelog\n"
    if has_heading(text, version):
        return False
    unreleased = re.search(r"^##[ \t]+Unreleased[ \t]*$", text, re.MULTILINE | re.IGNORECASE)
    if unreleased:
        changelog.write_text(text[: unreleased.start()] + f"## {version}" + text[unreleased.end() :])
        return True
    heading = f"## {version}\n\n"
    first = re.search(r"^## ", text, re.MULTILINE)
    if first:
        text = text[: first.start()] + heading + text[first.start() :]
    else:
        text = text.rstrip("\n") + "\n\n" + heading
    changelog.write_text(text)
    return True


def has_heading(text: str, version: Version) -> bool:
    return re.search(rf"^##\s+v?{re.escape(str(version))}\b", text, re.MULTILINE) is not None


def bump(root: Path, name: str, spec: str, *, dry_run: bool = False) -> int:
    packages = load_packages(root)
    pkg = find(packages, name)
    current = pkg.version
    new = next_version(current, spec)
    if not dry_run:
        pkg.write_version(new)
        add_changelog_heading(pkg, new)
    print(f"{pkg.name}: {current} -> {new}{' (dry run: nothing written)' if dry_run else ''}")
    problems = unmet_ranges(packages, pkg.name, new)
    for line in problems:
        print(f"  {line}")
    if problems:
        print(f"{len(problems)} dependent range(s) must be widened to admit {pkg.name} {new}")
        return 1
    dependents = sorted(
        d.name
        for d in packages.values()
        if any(canonicalize_name(r.name) == pkg.name for r in d.requirements)
    )
    print(f"every dependent's range admits {new}: {', '.join(dependents) or 'no dependents'}")
    return 0


def check(root: Path) -> int:
    packages = load_packages(root)
    problems = []
    for pkg in packages.values():
        version = pkg.version
        problems += unmet_ranges(packages, pkg.name, version)
        changelog = pkg.folder / "CHANGELOG.md"
        text = changelog.read_text() if changelog.exists() else ""
        if not has_heading(text, version):
            problems.append(f"{pkg.name}: {changelog} has no `## {version}` heading")
        headings = re.findall(r"^##[ \t]+(.+?)[ \t]*$", text, re.MULTILINE)
        for twice in sorted({h for h in headings if headings.count(h) > 1}):
            problems.append(f"{pkg.name}: {changelog} has the heading `## {twice}` more than once")
    versions = ", ".join(f"{p.name} {p.version}" for p in packages.values())
    if problems:
        for line in problems:
            print(line)
        print(f"versions: {len(problems)} problem(s) ({versions})")
        return 1
    print(f"versions: every range admits the current versions ({versions})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", help="package to bump (distribution or folder name)")
    parser.add_argument("version", nargs="?", help="major, minor, patch or an explicit version X.Y.Z")
    parser.add_argument(
        "--check", action="store_true", help="only check all current versions against all ranges"
    )
    parser.add_argument("--dry-run", action="store_true", help="print what a bump would do; write nothing")
    parser.add_argument(
        "--packages-root", type=Path, default=PACKAGES_ROOT, help="folder holding the packages"
    )
    args = parser.parse_args(argv)
    if args.check == bool(args.name):
        parser.error("give either NAME VERSION or --check")
    if args.name and not args.version:
        parser.error(f"version: give major, minor, patch or X.Y.Z for {args.name}")
    try:
        if args.check:
            return check(args.packages_root)
        return bump(args.packages_root, args.name, args.version, dry_run=args.dry_run)
    except BumpError as exc:
        print(f"bump_version: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
