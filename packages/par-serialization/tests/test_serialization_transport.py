"""How batches cross the process boundary: large callables once per call through a blob
store, protocol-5 out-of-band buffers, lazily applied result reducers."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import sys
import tempfile
import types
from typing import Any

import pytest
from par_serialization import BatchSerializer, SerializedBatch, TempBlobStore, worker_cache_info
from par_serialization._picklers import _TOKEN_CACHE
from par_serialization._results import ResultSpec


class DuckBatch:
    def __init__(self, tasks: list[Any], nested: Any = None, index: int = 0) -> None:
        self.tasks = tasks
        self.nested = nested
        self.index = index

    def __call__(self) -> list[Any]:
        return [f(*a, **k) for f, a, k in self.tasks]


def make_big_closure(n: int = 50_000) -> Any:
    data = list(range(n))  # ~250 kB pickled

    def closure(i: int) -> int:
        return i + len(data)

    return closure


class RecordingStore:
    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.puts: list[tuple[str, int]] = []

    def put(self, token: str, data: bytes) -> str:
        self.puts.append((token, len(data)))
        path = os.path.join(self.folder, token)
        with open(path, "wb") as fh:
            fh.write(data)
        return path


def roundtrip(batch: SerializedBatch, protocol: int = 5) -> SerializedBatch:
    received = pickle.loads(pickle.dumps(batch, protocol=protocol))
    assert isinstance(received, SerializedBatch)
    return received


# ------------------------------------------------------------------ blob store


def test_large_callable_is_stored_once_and_batches_carry_only_its_token(tmp_path: Any) -> None:
    store = RecordingStore(str(tmp_path))
    closure = make_big_closure()
    with BatchSerializer(blob_store=store, blob_threshold=10_000) as serializer:
        sent = [serializer(DuckBatch([(closure, (i,), {})], index=i)) for i in range(3)]
    assert len(store.puts) == 1 and store.puts[0][1] > 10_000
    assert all(batch.nbytes < 2_000 for batch in sent)
    # a "worker" that never saw the token reads the file (then caches it)
    _TOKEN_CACHE.clear()
    before = worker_cache_info()["loads"]
    assert [roundtrip(b)() for b in sent] == [[50_000], [50_001], [50_002]]
    assert worker_cache_info()["loads"] == before + 1
    # the caller's store owns the file: close() leaves it
    assert os.listdir(tmp_path) == [store.puts[0][0]]


def test_small_callables_stay_inline(tmp_path: Any) -> None:
    store = RecordingStore(str(tmp_path))
    closure = make_big_closure(10)
    with BatchSerializer(blob_store=store) as serializer:
        batch = serializer(DuckBatch([(closure, (1,), {})]))
    assert store.puts == []
    assert roundtrip(batch)() == [11]


def test_default_store_is_private_temp_folder_removed_at_close() -> None:
    closure = make_big_closure()
    serializer = BatchSerializer(blob_threshold=10_000)
    batch = serializer(DuckBatch([(closure, (0,), {})]))
    folder = serializer._own_store.folder  # type: ignore[union-attr]
    assert folder is not None and os.path.isdir(folder)
    assert os.path.dirname(folder) == tempfile.gettempdir()
    assert os.path.basename(folder).startswith(f"par-blobs-{os.getpid()}-")
    assert len(os.listdir(folder)) == 1
    serializer.close()
    assert not os.path.exists(folder)
    # a worker that meets the batch after the call ended gets a clear error
    _TOKEN_CACHE.clear()
    with pytest.raises(FileNotFoundError, match="call that sent it has ended"):
        roundtrip(batch)()
    # still usable after close(): a new folder
    batch = serializer(DuckBatch([(closure, (1,), {})]))
    assert roundtrip(batch)() == [50_001]
    folder = serializer._own_store.folder  # type: ignore[union-attr]
    serializer.close()
    assert folder is not None and not os.path.exists(folder)


def test_temp_blob_store_rejects_path_like_tokens(tmp_path: Any) -> None:
    store = TempBlobStore(str(tmp_path))
    with pytest.raises(ValueError, match="token"):
        store.put("../evil", b"x")
    path = store.put("ok-1", b"data")
    with open(path, "rb") as fh:
        assert fh.read() == b"data"
    store.close()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"blob_store": object()}, TypeError, "blob_store"),
        ({"blob_threshold": -1}, ValueError, "blob_threshold"),
        ({"blob_threshold": 1.5}, ValueError, "blob_threshold"),
    ],
)
def test_bad_blob_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        BatchSerializer(**kwargs)


def _spawn_executor() -> concurrent.futures.ProcessPoolExecutor:
    return concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))


@pytest.mark.timeout(60)
def test_process_worker_loads_the_stored_callable_once() -> None:
    closure = make_big_closure()
    with BatchSerializer(blob_threshold=10_000) as serializer, _spawn_executor() as pool:
        sent = [serializer(DuckBatch([(closure, (i,), {})], index=i)) for i in range(3)]
        assert [pool.submit(b).result(timeout=30) for b in sent] == [[50_000], [50_001], [50_002]]
        info = pool.submit(worker_cache_info).result(timeout=30)
        folder = serializer._own_store.folder  # type: ignore[union-attr]
    assert info["loads"] == 1 and info["hits"] == 2
    assert folder is not None and not os.path.exists(folder)


# ---------------------------------------------------------- out-of-band buffers


class Blob:
    """Exposes its data as a protocol-5 PickleBuffer, like a numpy array."""

    def __init__(self, data: bytearray) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        if protocol >= 5:
            return (Blob, (pickle.PickleBuffer(self.data),))
        return (Blob, (bytearray(self.data),))


def fill(blob: Blob) -> tuple[int, int, str]:
    total = sum(blob.data[:100])
    blob.data[0] = 255  # the task's own copy
    return total, len(blob.data), type(blob.data).__name__


def test_buffers_travel_out_of_band_and_arrive_writable() -> None:
    original = Blob(bytearray(range(100)) * 1000)
    with BatchSerializer() as serializer:
        batch = serializer(DuckBatch([(fill, (original,), {})]))
    assert len(batch.buffers) == 1
    assert len(batch.payload) < 1_000 and batch.nbytes > 100_000
    for protocol in (5, 4):  # older pool protocols get copies in band
        assert roundtrip(batch, protocol)() == [(4950, 100_000, "bytearray")]
    assert batch() == [(4950, 100_000, "bytearray")]  # in-process: a copy too
    assert original.data[0] == 0


def test_results_buffers_travel_out_of_band() -> None:
    def make(n: int) -> Blob:
        return Blob(bytearray(n))

    with BatchSerializer() as serializer:
        batch = serializer(DuckBatch([(make, (50_000,), {})]))
    results = batch()
    assert isinstance(results, list) and len(results) == 1
    back = pickle.loads(pickle.dumps(results, protocol=5))
    assert type(back) is list and type(back[0]) is Blob and back[0].data == bytearray(50_000)


def test_numpy_arrays_out_of_band() -> None:
    np = pytest.importorskip("numpy")
    a = np.arange(10_000, dtype=float)
    with BatchSerializer() as serializer:
        batch = serializer(DuckBatch([(np.negative, (a,), {})]))
    assert len(batch.buffers) == 1 and len(batch.payload) < 1_000
    (out,) = roundtrip(batch)()
    assert out.flags.writeable and out[5] == -5.0
    back = pickle.loads(pickle.dumps(batch(), protocol=5))
    assert back[0].flags.writeable and back[0][-1] == -9_999.0


# ------------------------------------------------------------- result reducers


class Special:
    pass


def make_special() -> Special:
    return Special()


def reduce_special(obj: Special) -> tuple[Any, ...]:
    return (str, ("reduced",))


def test_result_reducers_apply_only_when_their_module_is_imported(monkeypatch: Any) -> None:
    fake = types.ModuleType("par_serialization_fake_mod")
    monkeypatch.setattr(Special, "__module__", fake.__name__)
    spec = ResultSpec.make("auto", None, {Special: reduce_special})
    assert spec.modules == ("par_serialization_fake_mod",)
    assert not spec.reducers_active()
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    assert spec.reducers_active()
    spec_again = ResultSpec.make("auto", None, {Special: reduce_special})
    assert spec_again.token == spec.token  # pickled once for the same reducers
    monkeypatch.setattr(Special, "__module__", __name__)
    with BatchSerializer(result_reducers={Special: reduce_special}) as serializer:
        batch = serializer(DuckBatch([(make_special, (), {})]))
    assert pickle.loads(pickle.dumps(batch(), protocol=5)) == ["reduced"]


def _numpy_imported() -> bool:
    return "numpy" in sys.modules


@pytest.mark.timeout(60)
def test_worker_does_not_import_numpy_for_plain_tasks() -> None:
    np = pytest.importorskip("numpy")

    def reduce_array(a: Any) -> Any:
        return np.ndarray.__reduce_ex__(a, 5)

    with BatchSerializer(result_reducers={np.ndarray: reduce_array}) as serializer, _spawn_executor() as pool:
        batch = serializer(DuckBatch([(len, ("abc",), {})]))
        assert pool.submit(batch).result(timeout=30) == [3]
        assert pool.submit(_numpy_imported).result(timeout=30) is False
        with_array = serializer(DuckBatch([(np.negative, (np.ones(3),), {})]))
        (out,) = pool.submit(with_array).result(timeout=30)
    assert out.tolist() == [-1.0, -1.0, -1.0]
