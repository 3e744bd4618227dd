"""tools/bump_version.py on a tiny fake packages tree (never on the real one)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "bump_version.py"


def _load_tool():
    spec = importlib.util.spec_from_file_location("par_tools_bump_version", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bump_version = _load_tool()


def _package(root: Path, dist: str, version: str, deps: list[str], optional: list[str] | None = None) -> Path:
    import_name = dist.replace("-", "_")
    folder = root / dist
    (folder / "src" / import_name).mkdir(parents=True)
    (folder / "src" / import_name / "__init__.py").write_text("")
    (folder / "src" / import_name / "__about__.py").write_text(f'__version__ = "{version}"\n')
    (folder / "CHANGELOG.md").write_text(f"# Changelog\n\n## {version}\n\n- First release.\n")
    lines = [
        "[project]",
        f'name = "{dist}"',
        'dynamic = ["version"]',
        "dependencies = [" + ", ".join(f'"{d}"' for d in deps) + "]",
    ]
    if optional:
        lines += [
            "[project.optional-dependencies]",
            "extra = [" + ", ".join(f'"{d}"' for d in optional) + "]",
        ]
    lines += ["[tool.hatch.version]", f'path = "src/{import_name}/__about__.py"']
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """core 0.1.0; mid needs core>=0.1,<0.2; top needs mid~=0.3 and, as an extra, core<1."""
    root = tmp_path / "packages"
    _package(root, "core", "0.1.0", [])
    _package(root, "mid", "0.3.2", ["core>=0.1,<0.2", "numpy>=1.24"])
    _package(root, "top", "1.0.0", ["mid~=0.3"], optional=["core<1"])
    return root


def _version(root: Path, dist: str) -> str:
    return (root / dist / "src" / dist.replace("-", "_") / "__about__.py").read_text()


def test_check_passes_on_consistent_tree(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bump_version.main(["--check", "--packages-root", str(tree)]) == 0
    assert "core 0.1.0" in capsys.readouterr().out


def test_patch_bump_within_range_writes_version_and_changelog(tree: Path) -> None:
    assert bump_version.main(["core", "patch", "--packages-root", str(tree)]) == 0
    assert _version(tree, "core") == '__version__ = "0.1.1"\n'
    changelog = (tree / "core" / "CHANGELOG.md").read_text()
    assert changelog.index("## 0.1.1") < changelog.index("## 0.1.0")
    assert bump_version.main(["--check", "--packages-root", str(tree)]) == 0


def test_bump_turns_the_unreleased_heading_into_the_version(tree: Path) -> None:
    changelog = tree / "core" / "CHANGELOG.md"
    changelog.write_text("# Changelog\n\n## Unreleased\n\n- A fix.\n\n## 0.1.0\n\n- First release.\n")
    assert bump_version.main(["core", "patch", "--packages-root", str(tree)]) == 0
    assert changelog.read_text() == "# Changelog\n\n## 0.1.1\n\n- A fix.\n\n## 0.1.0\n\n- First release.\n"
    assert bump_version.main(["--check", "--packages-root", str(tree)]) == 0


def test_check_reports_a_heading_written_twice(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "core" / "CHANGELOG.md").write_text("# Changelog\n\n## 0.1.0\n\n## 0.1.0\n\n- First release.\n")
    assert bump_version.main(["--check", "--packages-root", str(tree)]) == 1
    assert "has the heading `## 0.1.0` more than once" in capsys.readouterr().out


def test_minor_bump_names_the_dependent_whose_range_excludes_it(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bump_version.main(["core", "minor", "--packages-root", str(tree)]) == 1
    out = capsys.readouterr().out
    assert "core: 0.1.0 -> 0.2.0" in out
    assert "mid requires 'core>=0.1,<0.2'" in out
    # top's optional requirement core<1 admits 0.2.0: not reported.
    assert "top requires" not in out
    assert _version(tree, "core") == '__version__ = "0.2.0"\n'
    assert bump_version.main(["--check", "--packages-root", str(tree)]) == 1
    assert "mid requires 'core>=0.1,<0.2'" in capsys.readouterr().out


def test_major_bump_is_checked_against_optional_dependencies(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bump_version.main(["core", "major", "--packages-root", str(tree)]) == 1
    out = capsys.readouterr().out
    assert "core: 0.1.0 -> 1.0.0" in out
    assert "mid requires" in out and "top requires 'core<1'" in out


def test_explicit_version_and_dry_run(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bump_version.main(["mid", "0.3.10", "--dry-run", "--packages-root", str(tree)]) == 0
    assert "mid: 0.3.2 -> 0.3.10 (dry run" in capsys.readouterr().out
    assert _version(tree, "mid") == '__version__ = "0.3.2"\n'
    assert "0.3.10" not in (tree / "mid" / "CHANGELOG.md").read_text()
    # ~=0.3 means >=0.3,<1: 0.4.0 is admitted, 1.0.0 is not.
    assert bump_version.main(["mid", "0.4.0", "--packages-root", str(tree)]) == 0
    assert "every dependent's range admits 0.4.0: top" in capsys.readouterr().out
    assert bump_version.main(["mid", "1.0.0", "--packages-root", str(tree)]) == 1
    assert "top requires 'mid~=0.3'" in capsys.readouterr().out


def test_folder_name_and_any_spelling_are_accepted(tree: Path) -> None:
    assert bump_version.main(["Mid", "patch", "--packages-root", str(tree)]) == 0
    assert _version(tree, "mid") == '__version__ = "0.3.3"\n'


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope", "patch"], "unknown package 'nope'; known: core, mid, top"),
        (["core", "0.0.9"], "0.0.9 is not higher than the current 0.1.0"),
        (["core", "0.1.0"], "not higher"),
        (["core", "bigger"], "expected major, minor, patch or a version"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(
    tree: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bump_version.main([*argv, "--packages-root", str(tree)]) == 2
    assert message in capsys.readouterr().err
    assert _version(tree, "core") == '__version__ = "0.1.0"\n'


def test_check_reports_missing_changelog_heading(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "top" / "CHANGELOG.md").write_text("# Changelog\n\n## 0.9.0\n")
    assert bump_version.main(["--check", "--packages-root", str(tree)]) == 1
    assert "has no `## 1.0.0` heading" in capsys.readouterr().out


def test_command_line_needs_name_and_version_or_check(tree: Path) -> None:
    for argv in ([], ["core"], ["core", "patch", "--check"]):
        with pytest.raises(SystemExit) as info:
            bump_version.main([*argv, "--packages-root", str(tree)])
        assert info.value.code == 2


def test_missing_packages_root_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bump_version.main(["--check", "--packages-root", str(tmp_path / "absent")]) == 2
    assert "is not a folder" in capsys.readouterr().err
