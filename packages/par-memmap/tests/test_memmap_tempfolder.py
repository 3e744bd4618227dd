"""The temp folder: choice order, verbose message, ENOSPC fall-back, lifetime and removal after a crash."""

from __future__ import annotations

import errno
import gc
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import par_memmap
import pytest
from par_memmap import TempFolderManager, _tempfolder, cleanup_stale_folders, make_reducers

pytestmark = pytest.mark.timeout(60)

ARRAY = np.arange(1000.0)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Path]:
    """A clean environment: no temp-folder variables, a private system temp folder, a fake /dev/shm."""
    for var in ("PAR_TEMP_FOLDER", "JOBLIB_TEMP_FOLDER", "TMPDIR", "TEMP", "TMP"):
        monkeypatch.delenv(var, raising=False)
    paths = {name: tmp_path / name for name in ("arg", "par", "joblib", "shm", "tmp")}
    for p in paths.values():
        p.mkdir()
    monkeypatch.setenv("TMPDIR", str(paths["tmp"]))
    return paths


def chosen_root(m: TempFolderManager) -> Path:
    assert m.folder is not None
    return Path(m.folder).parent


def test_memmap_nothing_is_created_before_the_first_array(env: dict[str, Path]) -> None:
    m = TempFolderManager(env["arg"])
    assert m.folder is None and m.reason is None
    assert list(env["arg"].iterdir()) == []
    m.cleanup()


def test_memmap_folder_name_and_choice_by_argument(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAR_TEMP_FOLDER", str(env["par"]))
    with TempFolderManager(env["arg"] / "created", shm_folder=str(env["shm"])) as m:
        filename, order = m.write_array(ARRAY)
        assert chosen_root(m) == env["arg"] / "created"
        assert re.fullmatch(rf"par_memmap_{os.getpid()}_\w+", Path(m.folder).name)
        assert "temp_folder argument" in m.reason
        assert order == "C" and os.path.getsize(filename) == ARRAY.nbytes
        assert np.array_equal(np.fromfile(filename), ARRAY)


def test_memmap_environment_variables(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBLIB_TEMP_FOLDER", str(env["joblib"]))
    with TempFolderManager(shm_folder=str(env["shm"])) as m:
        m.write_array(ARRAY)
        assert chosen_root(m) == env["joblib"] and "JOBLIB_TEMP_FOLDER" in m.reason
    monkeypatch.setenv("PAR_TEMP_FOLDER", str(env["par"]))
    with TempFolderManager(shm_folder=str(env["shm"])) as m:
        m.write_array(ARRAY)
        assert chosen_root(m) == env["par"] and "PAR_TEMP_FOLDER" in m.reason


def test_memmap_shm_when_it_has_room_else_system_temp(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with TempFolderManager(shm_folder=str(env["shm"])) as m:
        m.write_array(ARRAY)
        assert chosen_root(m) == env["shm"]
        assert "is writable and has" in m.reason
    # A small /dev/shm (say a container's 64 MiB, nearly full): the array goes to disk.
    real_statvfs = os.statvfs

    class Small:
        def __init__(self, path: str) -> None:
            st = real_statvfs(path)
            self.f_frsize = 4096
            self.f_bavail = 10 if os.path.samefile(path, env["shm"]) else st.f_bavail * st.f_frsize // 4096

    monkeypatch.setattr(os, "statvfs", Small)
    with TempFolderManager(shm_folder=str(env["shm"])) as m:
        m.write_array(ARRAY)
        assert chosen_root(m) == env["tmp"]
        assert "has only 40.0 KiB free" in m.reason and "TMPDIR" in m.reason


def test_memmap_missing_shm_and_tmp_variables(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    with TempFolderManager(shm_folder=str(env["shm"] / "missing")) as m:
        m.write_array(ARRAY)
        assert chosen_root(m) == env["tmp"]
        assert "does not exist" in m.reason
    monkeypatch.delenv("TMPDIR")
    monkeypatch.setenv("TMP", str(env["par"]))
    with TempFolderManager(shm_folder=None) as m:
        m.write_array(ARRAY)
        assert chosen_root(m) == env["par"] and "$TMP" in m.reason


def test_memmap_enospc_in_shm_falls_back_to_disk(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = _tempfolder.write_array_data

    def full_shm(f, a):  # type: ignore[no-untyped-def]
        if str(env["shm"]) in f.name:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(f, a)

    monkeypatch.setattr(_tempfolder, "write_array_data", full_shm)
    lines: list[str] = []
    with TempFolderManager(shm_folder=str(env["shm"]), verbose=10, log=lines.append) as m:
        filename, _ = m.write_array(ARRAY)
        assert Path(filename).parent.parent == env["tmp"]
        assert np.array_equal(np.fromfile(filename), ARRAY)
        assert "ran out of space" in m.reason
        shm_folders = [f for f in m.folders if str(env["shm"]) in f]
        assert shm_folders and [p for p in os.listdir(shm_folders[0]) if p.endswith(".mmap")] == []
        assert len(lines) == 2 and "ran out of space" in lines[1]


def test_memmap_enospc_in_given_folder_is_a_clear_error(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(f, a):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_tempfolder, "write_array_data", full)
    with TempFolderManager(env["arg"]) as m:
        with pytest.raises(OSError, match=r"no room to write a 7\.8 KiB array") as info:
            m.write_array(ARRAY)
        assert info.value.errno == errno.ENOSPC and str(env["arg"]) in str(info.value)
        assert [p for p in os.listdir(m.folder) if p.endswith(".mmap")] == []


def test_memmap_verbose_message(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    lines: list[str] = []
    with TempFolderManager(env["arg"], verbose=10, log=lines.append) as m:
        m.write_array(ARRAY)
        m.write_array(ARRAY)
        assert lines == [
            f"[par_memmap] memmapping large arrays to {m.folder}: given as the temp_folder argument"
        ]
    with TempFolderManager(env["arg"], verbose=9, log=lines.append) as m:
        m.write_array(ARRAY)
    assert len(lines) == 1
    with TempFolderManager(shm_folder=str(env["shm"]), verbose=50) as m:
        m.write_array(ARRAY)
        folder = m.folder
    err = capsys.readouterr().err
    assert f"memmapping large arrays to {folder}" in err and "/shm exists, is writable" in err


def test_memmap_cleanup_idempotent_and_reusable(env: dict[str, Path]) -> None:
    m = TempFolderManager(env["arg"])
    m.write_array(ARRAY)
    first = m.folder
    assert first and os.path.isdir(first)
    m.cleanup()
    m.cleanup()
    assert not os.path.exists(first) and m.folder is None
    m.write_array(ARRAY)
    assert m.folder and m.folder != first
    second = m.folder
    del m
    gc.collect()
    assert not os.path.exists(second)  # removed when the manager is collected


def test_memmap_cleanup_on_error(env: dict[str, Path]) -> None:
    with pytest.raises(RuntimeError):
        with TempFolderManager(env["arg"]) as m:
            make_reducers(m, max_nbytes=0)[np.ndarray](ARRAY)
            folder = m.folder
            raise RuntimeError("task failed")
    assert folder is not None and not os.path.exists(folder)
    assert list(env["arg"].iterdir()) == []


def test_memmap_bad_arguments() -> None:
    with pytest.raises(TypeError, match="temp_folder"):
        TempFolderManager(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="verbose"):
        TempFolderManager(verbose="10")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="manager"):
        make_reducers("/tmp")  # type: ignore[arg-type]


def test_memmap_unwritable_temp_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with TempFolderManager(blocker / "sub") as m:
        with pytest.raises(OSError, match="cannot create a folder for memmapped arrays in"):
            m.write_array(ARRAY)


def _child(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
    )


CHILD = """
    import sys, numpy as np
    from par_memmap import TempFolderManager
    m = TempFolderManager(sys.argv[1])
    filename, _ = m.write_array(np.ones(1000))
    print(m.folder, flush=True)
    sys.stdin.readline()          # wait to be told to exit (or to be killed)
"""


def test_memmap_folder_removed_at_interpreter_exit(tmp_path: Path) -> None:
    proc = _child(CHILD, str(tmp_path))
    try:
        folder = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert os.path.isdir(folder)
        proc.communicate("\n", timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0
    assert not os.path.exists(folder)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX only")
def test_memmap_sigkilled_parent_folder_removed_by_a_later_start(tmp_path: Path) -> None:
    proc = _child(CHILD, str(tmp_path))
    try:
        folder = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert os.path.isdir(folder)
        with TempFolderManager(tmp_path) as mine:
            mine.write_array(ARRAY)
            assert cleanup_stale_folders([tmp_path]) == []  # the child is alive: its folder stays, and ours
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            assert os.path.isdir(folder)  # a SIGKILL runs no clean-up code...
            assert cleanup_stale_folders([tmp_path]) == [folder]  # ...a later start does
            assert os.path.isdir(mine.folder)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX only")
def test_memmap_new_manager_removes_dead_folders(tmp_path: Path) -> None:
    proc = _child(CHILD, str(tmp_path))
    try:
        folder = proc.stdout.readline().strip()  # type: ignore[union-attr]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
    assert os.path.isdir(folder)
    TempFolderManager(tmp_path).cleanup()
    assert not os.path.exists(folder)


def test_memmap_stale_folder_without_lock_and_dead_pid(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(proc.stdout)
    stale = tmp_path / f"par_memmap_{dead_pid}_abc123"
    stale.mkdir()
    (stale / "array_x.mmap").write_bytes(b"x")
    unrelated = tmp_path / "par_memmap_notapid"
    unrelated.mkdir()
    assert cleanup_stale_folders([tmp_path, tmp_path / "missing"]) == [str(stale)]
    assert unrelated.is_dir()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_memmap_forked_child_does_not_remove_parent_files(env: dict[str, Path]) -> None:
    with TempFolderManager(env["arg"]) as m:
        m.write_array(ARRAY)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                m._finalizer()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert os.path.isdir(m.folder)


def test_memmap_default_roots(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAR_TEMP_FOLDER", str(env["par"]))
    roots = par_memmap.default_roots([env["arg"]])
    assert roots[:2] == [str(env["arg"]), str(env["par"])]
    assert str(env["tmp"]) in roots and os.path.abspath(tempfile.gettempdir()) in roots


def test_write_bytes_lives_and_dies_with_the_arrays(tmp_path):
    m = TempFolderManager(tmp_path)
    path = m.write_bytes(b"payload" * 1000, prefix="blob_")
    assert os.path.basename(path).startswith("blob_") and os.path.dirname(path) == m.folder
    with open(path, "rb") as f:
        assert f.read() == b"payload" * 1000
    m.cleanup()
    assert not os.path.exists(path)
