"""Large batches and results travel through files in /dev/shm instead of the pool's pipe."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import subprocess
import sys
from typing import Any

import pytest
from par_serialization import BatchSerializer, SerializedBatch, _spill

needs_shm = pytest.mark.skipif(_spill.shm_base() is None, reason="no writable /dev/shm")

BIG = 2 * 2**20  # above the default threshold of 1 MiB


class DuckBatch:
    def __init__(self, tasks: list[Any], nested: Any = None, index: int = 0) -> None:
        self.tasks = tasks
        self.nested = nested
        self.index = index

    def __call__(self) -> list[Any]:
        return [f(*a, **k) for f, a, k in self.tasks]


def make_bytes(n: int) -> bytes:
    return b"x" * n


def _files(folder: str | None) -> list[str]:
    return sorted(os.listdir(folder)) if folder else []


def _run_in_process(sent: SerializedBatch) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(sent).result(timeout=60)  # type: ignore[no-any-return]


@needs_shm
def test_spill_large_arguments_and_results_cross_through_shared_memory() -> None:
    payload = b"a" * BIG
    with BatchSerializer() as serializer:
        folder = serializer._spill_dir
        sent = serializer(DuckBatch([(len, (payload,), {}), (make_bytes, (BIG,), {})]))
        assert sent.spill is not None and sent.payload == b""
        assert len(pickle.dumps(sent, protocol=5)) < 4096  # only the path crosses the pipe
        assert sent.nbytes > BIG
        assert len(_files(folder)) == 1
        results = _run_in_process(sent)
        assert results[0] == BIG and results[1] == b"x" * BIG
        # the worker unlinked the batch, the parent unlinked the results
        assert _files(folder) == []


@needs_shm
def test_spill_results_pickle_small_and_load_once() -> None:
    with BatchSerializer() as serializer:
        sent = serializer(DuckBatch([(make_bytes, (BIG,), {})]))
        assert sent.spill is None  # a small batch stays in the pipe
        received = pickle.loads(pickle.dumps(sent, protocol=5))
        results = received()
        wire = pickle.dumps(results, protocol=5)
        assert len(wire) < 4096
        assert len(_files(serializer._spill_dir)) == 1
        assert pickle.loads(wire) == [b"x" * BIG]
        assert _files(serializer._spill_dir) == []
        with pytest.raises(FileNotFoundError, match="results was passed through the file"):
            pickle.loads(wire)  # read once: the file is gone


def test_spill_small_messages_and_disabled_spilling_use_the_pipe() -> None:
    with BatchSerializer() as serializer:
        sent = serializer(DuckBatch([(len, (b"a" * 1000,), {})]))
        assert sent.spill is None and sent.payload
    with BatchSerializer(spill_threshold=None) as serializer:
        sent = serializer(DuckBatch([(len, (b"a" * BIG,), {})]))
        assert sent.spill is None and len(sent.payload) > BIG
        results = pickle.loads(pickle.dumps(sent, protocol=5))()
        assert results == [BIG]
        assert len(pickle.dumps(results, protocol=5)) < 4096  # small results: the pipe


@pytest.mark.parametrize("value", [0, -1, 1.5, "1M", True])
def test_spill_threshold_is_checked(value: Any) -> None:
    with pytest.raises(ValueError, match="spill_threshold must be None or an int >= 1"):
        BatchSerializer(spill_threshold=value)


@needs_shm
def test_spill_close_removes_the_calls_unreceived_messages_only() -> None:
    other = BatchSerializer()
    serializer = BatchSerializer()
    try:
        mine = serializer(DuckBatch([(len, (b"a" * BIG,), {})]))
        theirs = other(DuckBatch([(len, (b"b" * BIG,), {})]))
        assert mine.spill and theirs.spill
        serializer.close()  # e.g. the call was aborted before a worker took its batch
        assert not os.path.exists(mine.spill[0])
        assert os.path.exists(theirs.spill[0])
        with pytest.raises(FileNotFoundError, match="the call that sent it has ended"):
            pickle.loads(pickle.dumps(mine, protocol=5))()
    finally:
        other.close()
        serializer.close()
    assert not os.path.exists(theirs.spill[0])


def test_spill_write_falls_back_when_the_folder_is_unusable(tmp_path: Any) -> None:
    assert _spill.write(str(tmp_path / "missing"), "p", [b"abc"]) is None
    done = _spill.write(str(tmp_path), "p", [b"abc", memoryview(b"defg")])
    assert done is not None
    path, sizes = done
    assert sizes == (3, 4) and os.path.basename(path).startswith("p-")
    assert _spill.read(path, sizes, "a test message") == [bytearray(b"abc"), bytearray(b"defg")]
    assert not os.path.exists(path)


def test_spill_folder_is_made_lazily_and_removed(tmp_path: Any) -> None:
    folder = _spill.SpillFolder(base=str(tmp_path))
    assert os.listdir(tmp_path) == []
    path = folder.path
    assert path is not None and os.path.basename(path).startswith(f"par-xchg-{os.getpid()}-")
    assert _spill.write(path, "k1", [b"x"]) is not None
    assert _spill.write(path, "k2", [b"y"]) is not None
    assert folder.remove("k1") == 1 and len(os.listdir(path)) == 1
    folder.close()
    assert os.listdir(tmp_path) == []
    assert _spill.SpillFolder(base=str(tmp_path / "not-a-folder")).path is None


def test_spill_folders_of_dead_processes_are_swept(tmp_path: Any) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    orphan = tmp_path / f"par-xchg-{dead_pid}-abc"
    orphan.mkdir()
    (orphan / "msg").write_bytes(b"left by a killed parent")
    alive = tmp_path / f"par-xchg-{os.getpid()}-def"
    alive.mkdir()
    unrelated = tmp_path / "something-else"
    unrelated.mkdir()
    assert _spill.sweep_orphans(str(tmp_path), _spill.SPILL_DIR_PREFIX) == [str(orphan)]
    assert not orphan.exists() and alive.exists() and unrelated.exists()


def test_blob_and_exchange_folders_of_a_dead_process_are_swept(tmp_path):
    """The folders of a process killed before it removed them: gone at the next sweep;
    those of live processes and other names stay."""
    import subprocess
    import sys

    from par_serialization import _orphans
    from par_serialization._blobs import BLOB_DIR_PREFIX

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    orphan_blobs = tmp_path / f"{BLOB_DIR_PREFIX}{dead_pid}-abc"
    orphan_xchg = tmp_path / f"{_spill.SPILL_DIR_PREFIX}{dead_pid}-abc"
    mine = tmp_path / f"{BLOB_DIR_PREFIX}{os.getpid()}-abc"
    other = tmp_path / "par-blobs-notapid"
    for folder in (orphan_blobs, orphan_xchg, mine, other):
        folder.mkdir()
        (folder / "f.pkl").write_bytes(b"x")
    assert _orphans.sweep_orphans(str(tmp_path), BLOB_DIR_PREFIX) == [str(orphan_blobs)]
    assert _orphans.sweep_orphans(str(tmp_path), _spill.SPILL_DIR_PREFIX) == [str(orphan_xchg)]
    assert mine.exists() and other.exists()
