"""tools/check_conflict_markers.py on a small git repository of its own."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "tools" / "check_conflict_markers.py"


def _load_tool():
    spec = importlib.util.spec_from_file_location("par_tools_conflict_markers", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_markers_of_tracked_files_are_found(tmp_path):
    tool = _load_tool()
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "doc.md").write_text("a\n<<<<<<< HEAD\nx\n=======\ny\n>>>>>>> speed5\n")
    (tmp_path / "title.rst").write_text("Title\n=======\n")  # an underline, not a marker
    (tmp_path / "data.bin").write_bytes(b"\xff\xfe<<<<<<< x\n")
    (tmp_path / "untracked.md").write_text("<<<<<<< HEAD\n")
    subprocess.run(["git", "add", "doc.md", "title.rst", "data.bin"], cwd=tmp_path, check=True)
    assert tool.conflicted(tmp_path) == ["doc.md:2", "doc.md:6"]


def test_this_repository_has_none():
    assert _load_tool().conflicted() == []
