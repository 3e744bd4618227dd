"""tools/dependency_runs.py: what it reads from the packages' pyproject files (the runs
themselves are CI steps)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("packaging")
TOOL = Path(__file__).resolve().parent.parent / "tools" / "dependency_runs.py"


def _tool():
    spec = importlib.util.spec_from_file_location("dependency_runs", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules["dependency_runs"] = module
    spec.loader.exec_module(module)
    return module


def _package(root: Path, name: str, deps: list[str], optional: dict[str, list[str]] | None = None) -> None:
    folder = root / "packages" / name
    folder.mkdir(parents=True)
    text = f'[project]\nname = "{name}"\ndependencies = {json.dumps(deps)}\n'
    if optional:
        text += "[project.optional-dependencies]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in optional.items())
    (folder / "pyproject.toml").write_text(text)


def test_floors_are_the_highest_lower_bound_of_each_third_party_dependency(tmp_path):
    tool = _tool()
    _package(tmp_path, "par-a", ["numpy>=1.24", "loky>=3.4,<4"])
    _package(tmp_path, "par-b", ["par-a>=0.1,<0.2", "numpy>=1.26", "cloudpickle~=3.0"], {"progress": ["tqdm>=4.60"]})
    _package(tmp_path, "par-c", ["distributed"])  # no floor: nothing to check
    assert tool.floors(tmp_path) == {"numpy": "1.26", "loky": "3.4", "cloudpickle": "3.0"}
    declared = tool.declared_requirements(tmp_path)
    assert [r.name for r in declared["par-b"]] == ["numpy", "cloudpickle", "tqdm"]  # par-a is ours
    assert [r.name for r in tool.declared_requirements(tmp_path, optional=False)["par-b"]] == ["numpy", "cloudpickle"]


def test_a_requirement_whose_marker_does_not_hold_has_no_floor_to_check(tmp_path):
    tool = _tool()
    _package(tmp_path, "par-a", ["exceptiongroup>=1.1; python_version < '3.11'", "numpy>=1.24"])
    assert tool.floors(tmp_path, {"python_version": "3.11"}) == {"numpy": "1.24"}
    assert tool.floors(tmp_path, {"python_version": "3.10"}) == {"exceptiongroup": "1.1", "numpy": "1.24"}
    here = "exceptiongroup" in tool.floors(tmp_path)  # this interpreter decides by default
    assert here == (sys.version_info < (3, 11))


def test_the_repository_declares_a_floor_for_each_dependency_of_the_default_install():
    tool = _tool()
    floors = tool.floors()
    for name in ("numpy", "loky", "cloudpickle", "threadpoolctl", "distributed"):
        assert name in floors, floors
    assert tool.test_extra_requirements(), "hatch.toml's hatch-test extra-dependencies were not found"


def test_same_version_compares_releases_not_strings():
    tool = _tool()
    assert tool._same("3.0", "3.0.0")
    assert not tool._same("3.0", "3.1.0")
    assert not tool._same("3.0", None)
