"""The pure parts of tools/isolation.py and tools/check_boundaries.py, on fake trees.

Building wheels, creating venvs and running import-linter/deptry are exercised by
running the tools themselves in CI (`python tools/isolation.py`,
`hatch run check:boundaries`); these tests stay fast and offline.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"par_tools_{name}", TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


isolation = _load("isolation")
check_boundaries = _load("check_boundaries")


def _package(root: Path, dist: str, deps: list[str], import_name: str | None = None) -> Path:
    folder = root / "packages" / dist
    pkg = folder / "src" / (import_name or dist.lower().replace("-", "_"))
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    deps_toml = ", ".join(f'"{d}"' for d in deps)
    (folder / "pyproject.toml").write_text(f'[project]\nname = "{dist}"\ndependencies = [{deps_toml}]\n')
    return folder


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    _package(tmp_path, "Fake-Api", [])
    _package(tmp_path, "fake-sched", ["fake_api>=0.1", "numpy"])
    _package(tmp_path, "fake-top", ["fake-sched>=0.1,<0.2", "loky"])
    _package(tmp_path, "fake-other", ["cloudpickle"])
    return tmp_path


def test_discover_keeps_only_par_dependencies_under_canonical_names(tree: Path) -> None:
    found = isolation.discover(tree / "packages")
    assert sorted(found) == ["fake-api", "fake-other", "fake-sched", "fake-top"]
    assert found["fake-sched"].par_deps == {"fake-api"}
    assert found["fake-top"].par_deps == {"fake-sched"}
    assert found["fake-other"].par_deps == set()


def test_closure_follows_par_dependencies_transitively(tree: Path) -> None:
    found = isolation.discover(tree / "packages")
    assert sorted(isolation.closure(found, "fake-top")) == ["fake-api", "fake-sched", "fake-top"]
    assert isolation.closure(found, "fake-api") == ["fake-api"]
    assert isolation.closure(found, "fake-other") == ["fake-other"]


def test_version_comes_from_the_wheel_name(tree: Path) -> None:
    pkg = isolation.discover(tree / "packages")["fake-api"]
    assert pkg.version == "?"
    pkg.wheel = Path("/w/fake_api-1.2.3-py3-none-any.whl")
    assert pkg.version == "1.2.3"


@pytest.mark.parametrize(
    ("tail", "summary"),
    [
        ("....\n12 passed in 1.30s\n", "12 passed in 1.30s"),
        (
            "F.\n===== 1 failed, 1 passed, 2 skipped in 0.20s =====\n",
            "1 failed, 1 passed, 2 skipped in 0.20s",
        ),
        ("\nno tests ran in 0.00s\n", "no tests ran in 0.00s"),
        ("ImportError: boom\n", ""),
    ],
)
def test_pytest_summary_reads_the_closing_line(tmp_path: Path, tail: str, summary: str) -> None:
    log = tmp_path / "x.log"
    log.write_text("$ python -m pytest ...\n" + tail)
    assert isolation.pytest_summary(log) == summary


def test_only_unknown_package_is_a_clear_error(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        isolation.main(["--root", str(tree), "--only", "nope"])
    assert info.value.code == 2
    assert (
        "unknown package 'nope'; known: fake-api, fake-other, fake-sched, fake-top" in capsys.readouterr().err
    )


def test_boundaries_discover_reads_import_names_from_src(tree: Path) -> None:
    _package(tree, "odd-name", [], import_name="oddity")
    found = {p.dist: p.import_name for p in check_boundaries.discover_packages(tree / "packages")}
    assert found["odd-name"] == "oddity"
    assert found["Fake-Api"] == "fake_api"


def test_boundaries_refuse_a_package_with_two_src_packages(tree: Path) -> None:
    extra = tree / "packages" / "fake-other" / "src" / "second"
    extra.mkdir()
    (extra / "__init__.py").write_text("")
    with pytest.raises(SystemExit, match="expected exactly one package under src/"):
        check_boundaries.discover_packages(tree / "packages")


def test_boundaries_report_packages_the_contracts_do_not_cover(tree: Path) -> None:
    (tree / ".importlinter").write_text(
        "[importlinter]\nroot_packages =\n    fake_api\n    fake_sched\n    fake_top\n    gone\n"
        "[importlinter:contract:one]\nname = one\ntype = forbidden\n"
        "source_modules =\n    fake_api\n    fake_top\nforbidden_modules =\n    fake_other\n"
    )
    packages = check_boundaries.discover_packages(tree / "packages")
    assert check_boundaries.check_contracts_cover(tree, packages) == [
        "fake_other (fake-other) is not in root_packages of .importlinter",
        "fake_sched (fake-sched) is the source of no contract in .importlinter",
        "root package gone of .importlinter has no folder in packages/",
    ]


def test_boundaries_contracts_of_this_repository_cover_every_package() -> None:
    root = TOOLS.parent
    packages = check_boundaries.discover_packages(root / "packages")
    assert check_boundaries.check_contracts_cover(root, packages) == []


def test_boundaries_report_a_registry_factory_that_names_a_submodule_or_another_package(tree: Path) -> None:
    from par_api.registry import KNOWN_BACKENDS, KnownBackend

    packages = check_boundaries.discover_packages(tree / "packages")
    table = {
        "ok": KnownBackend("fake-other", "fake_other:Backend"),
        "sub": KnownBackend("fake-other", "fake_other.sub:Backend"),
        "wrong": KnownBackend("fake-other", "fake_api:Backend"),
        "elsewhere": KnownBackend("not-here", "not_here:Backend"),
        "by-entry-point": KnownBackend("not-here"),
    }
    assert check_boundaries.by_name_problems(table, packages) == [
        "backend 'sub': factory 'fake_other.sub:Backend' must be 'fake_other:<top-level name>' "
        "(a top-level name of fake-other, which the row names)",
        "backend 'wrong': factory 'fake_api:Backend' must be 'fake_other:<top-level name>' "
        "(a top-level name of fake-other, which the row names)",
        "backend 'elsewhere': 'not-here' is not a package of packages/",
    ]
    # and this repository's table passes
    real = check_boundaries.discover_packages(TOOLS.parent / "packages")
    assert check_boundaries.by_name_problems(KNOWN_BACKENDS, real) == []
