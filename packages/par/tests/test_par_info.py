"""``python -m par info`` (text and ``--json``), run in a subprocess and parsed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata

import par_api
import pytest
from par.__main__ import main
from par.info import collect_info, format_info, temp_folder_choice

pytestmark = pytest.mark.timeout(60)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "par", *args], capture_output=True, text=True, timeout=60, env=full_env
    )


def _parse_sections(text: str) -> dict[str, dict[str, str]]:
    """'title:' lines open a section; '  key: value' lines fill it (split on the first ': ')."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            assert line.endswith(":"), line
            current = sections.setdefault(line[:-1], {})
            continue
        assert current is not None, line
        key, sep, value = line.strip().partition(": ")
        if not sep:
            assert line.strip() in ("(none)",) or line.strip().endswith(":"), line
            key, value = line.strip().rstrip(":"), ""
        current[key] = value.strip()
    return sections


def test_info_json_is_one_object_with_every_section(tmp_path):
    proc = _run("info", "--json", env={"PAR_TEMP_FOLDER": str(tmp_path), "PAR_BACKEND": "threading"})
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) == {
        "versions",
        "libraries",
        "python",
        "cpu",
        "backends",
        "temp_folder",
        "threadpools",
        "environment",
        "workers",
    }
    assert data["versions"]["par"] == metadata.version("par")
    for dist in (
        "par-api",
        "par-scheduler",
        "par-backends-local",
        "par-serialization",
        "par-memmap",
        "par-threadlimits",
    ):
        assert data["versions"][dist] == metadata.version(dist)
    assert "par-backends-dask" in data["versions"]
    assert data["python"]["version"] == "{}.{}.{}".format(*sys.version_info[:3])
    cpu = data["cpu"]
    assert cpu["os_cpu_count"] == os.cpu_count()
    assert cpu["cpu_count"] == par_api.cpu_count()
    assert {"affinity", "cgroup_quota", "physical_cores", "cpu_count_physical"} <= set(cpu)
    backends = data["backends"]
    assert {"sequential", "threading", "loky", "multiprocessing"} <= set(backends["available"])
    assert backends["available"]["loky"].startswith("par-backends-local ")
    assert backends["default"] == "threading"  # PAR_BACKEND is honoured
    temp = data["temp_folder"]
    assert temp["folder"] == str(tmp_path) and "PAR_TEMP_FOLDER" in temp["reason"]
    assert isinstance(temp["free_bytes"], int) and temp["free_bytes"] >= 0
    assert os.listdir(tmp_path) == []  # read-only: nothing created
    assert isinstance(data["threadpools"], list)
    for pool in data["threadpools"]:
        assert {"user_api", "internal_api", "num_threads"} <= set(pool)
    assert data["environment"]["PAR_TEMP_FOLDER"] == str(tmp_path)
    assert data["environment"]["PAR_BACKEND"] == "threading"


def test_info_text_has_aligned_key_value_sections(tmp_path):
    proc = _run("info", env={"PAR_TEMP_FOLDER": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    sections = _parse_sections(proc.stdout)
    assert list(sections) == [
        "par",
        "libraries",
        "python",
        "cpu",
        "backends",
        "temp folder",
        "threadpools",
        "workers",
        "environment",
    ]
    assert sections["par"]["par"] == metadata.version("par")
    assert sections["par"]["par-api"] == metadata.version("par-api")
    assert int(sections["cpu"]["cpu_count()"]) == par_api.cpu_count()
    assert "logical (os.cpu_count)" in sections["cpu"]
    assert sections["backends"]["loky"].startswith("par-backends-local")
    assert sections["temp folder"]["folder"] == str(tmp_path)
    assert " of " in sections["temp folder"]["free"]
    assert sections["environment"]["PAR_TEMP_FOLDER"] == str(tmp_path)
    # values of one section start in the same column
    block = proc.stdout.split("\n\n")[0].splitlines()[1:]
    columns = {len(line) - len(line.split(": ", 1)[1].lstrip()) for line in block}
    assert len(columns) == 1


def test_no_command_prints_usage_and_fails():
    proc = _run()
    assert proc.returncode == 2
    assert "info" in proc.stderr


def test_version_flag():
    proc = _run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"par {metadata.version('par')}"


def test_main_in_process(capsys):
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["versions"]["par"] == metadata.version("par")


def test_format_info_renders_missing_values():
    info = collect_info()
    info["versions"]["par-backends-dask"] = None
    info["cpu"]["cgroup_quota"] = None
    text = format_info(info)
    assert "par-backends-dask:  not installed" in text
    assert "cgroup quota:" in text and text.split("cgroup quota:", 1)[1].split("\n", 1)[0].strip() == "-"


def test_temp_folder_choice_order(tmp_path, monkeypatch):
    for var in ("PAR_TEMP_FOLDER", "JOBLIB_TEMP_FOLDER"):
        monkeypatch.delenv(var, raising=False)
    given = temp_folder_choice(tmp_path / "given")
    assert given["folder"] == str(tmp_path / "given") and "argument" in given["reason"]
    assert given["exists"] is False and not (tmp_path / "given").exists()
    monkeypatch.setenv("JOBLIB_TEMP_FOLDER", str(tmp_path))
    assert temp_folder_choice()["reason"] == "set by the JOBLIB_TEMP_FOLDER environment variable"
    monkeypatch.setenv("PAR_TEMP_FOLDER", str(tmp_path / "par"))
    assert temp_folder_choice()["folder"] == str(tmp_path / "par")  # PAR_ wins over JOBLIB_
    monkeypatch.delenv("PAR_TEMP_FOLDER")
    monkeypatch.delenv("JOBLIB_TEMP_FOLDER")
    auto = temp_folder_choice()
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        assert auto["folder"] == "/dev/shm"
    else:
        assert "system temp folder" in auto["reason"]
    # without /dev/shm: the system temp folder from TMPDIR, and why
    monkeypatch.setattr("par.info._SHM", str(tmp_path / "no-shm"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    fallback = temp_folder_choice()
    assert fallback["folder"] == str(tmp_path)
    assert fallback["reason"] == f"the system temp folder from $TMPDIR ({tmp_path / 'no-shm'} does not exist)"


def test_info_shows_the_worker_options():
    from par import parallel_config
    from par.info import collect_info, format_info

    with parallel_config(max_tasks_per_child=7, max_worker_memory="2G", forward_output=False):
        data = collect_info()
    assert data["workers"]["max_tasks_per_child"] == 7
    assert data["workers"]["forward_output"] is False
    text = format_info(data)
    assert "max_tasks_per_child:" in text and "2.0 GiB" in text
