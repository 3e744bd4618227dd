"""dump/load: the spec's manual-memmapping workflow, round trips, bad files, no code execution."""

from __future__ import annotations

import gc
import math
import os
import pickle
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import par_memmap
import pytest
from par_memmap import _dumpload, dump, load


def test_memmap_spec_manual_workflow(tmp_path: Path) -> None:
    large_array = np.ones(int(1e6))
    filename = os.path.join(tmp_path, "joblib_test.mmap")
    assert dump(large_array, filename) == [filename]
    large_memmap = load(filename, mmap_mode="r+")
    assert (large_memmap.__class__.__name__, large_array.nbytes, large_array.shape) == (
        "memmap",
        8000000,
        (1000000,),
    )
    assert np.allclose(large_array, large_memmap)
    del large_array
    gc.collect()
    small_memmap = large_memmap[2:5]
    assert (small_memmap.__class__.__name__, small_memmap.nbytes, small_memmap.shape) == ("memmap", 24, (3,))
    small_array = np.asarray(small_memmap)
    assert (small_array.__class__.__name__, small_array.nbytes, small_array.shape) == ("ndarray", 24, (3,))
    assert par_memmap.has_shareable_memory(small_array)
    small_array[:] = 5.0
    large_memmap.flush()
    assert list(load(filename)[:6]) == [1, 1, 5, 5, 5, 1]  # r+ writes reach the file
    del large_memmap, small_memmap, small_array


def assert_same(a: Any, b: Any) -> None:
    assert type(a) is type(b) or (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)), (a, b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


def sample() -> dict[Any, Any]:
    arr = np.arange(24.0).reshape(4, 6)
    return {
        "c": arr,
        "f": np.asfortranarray(arr),
        "strided": arr[::2, ::-3],
        "zero_d": np.array(3.5),
        "empty": np.empty((0, 3), dtype=np.int16),
        "structured": np.array(
            [(1, 2.0, b"ab"), (3, 4.0, b"cd")], dtype=[("i", "<i4"), ("x", ">f8"), ("s", "S2")]
        ),
        "dates": np.array(["2024-01-01", "2025-06-30"], dtype="datetime64[D]"),
        "complex": np.array([1 + 2j, np.nan]),
        "bool": np.array([True, False]),
        "unicode": np.array(["é", "xyz"]),
        ("tuple", 1): [np.float32(1.5), np.int64(-7), np.datetime64("2020-01-01"), np.bool_(True)],
        1: (
            None,
            True,
            False,
            2**100,
            -0.0,
            float("inf"),
            float("nan"),
            1e-310,
            3 + 4j,
            "text\udcff",
            b"\x00\xff",
        ),
        "nested": [[[]], {}, ()],
    }


def test_memmap_round_trip_in_memory(tmp_path: Path) -> None:
    value = sample()
    dump(value, tmp_path / "v.pd")
    back = load(tmp_path / "v.pd")
    assert_same(value, back)
    assert all(type(v) is np.ndarray for v in back.values() if isinstance(v, np.ndarray))
    assert back["f"].flags.f_contiguous


@pytest.mark.parametrize("mode", ["r", "r+", "c", "w+"])
def test_memmap_round_trip_memmapped(tmp_path: Path, mode: str) -> None:
    value = sample()
    filename = tmp_path / "v.pd"
    dump(value, filename)
    back = load(filename, mmap_mode=mode)
    assert_same(value, back)
    for key in ("c", "f", "strided", "structured", "dates", "complex", "zero_d"):
        assert isinstance(back[key], np.memmap), key
        assert back[key].flags.writeable == (mode != "r")
    assert type(back["empty"]) is np.ndarray  # an empty array cannot be mapped
    if mode == "c":
        back["c"][0, 0] = 99
        assert load(filename)["c"][0, 0] == 0  # copy-on-write: the file is untouched
    del back


def test_memmap_arrays_are_aligned_and_shared_arrays_stored_once(tmp_path: Path) -> None:
    a = np.arange(10_000.0)
    dump([a, a, {"again": a}, np.arange(3, dtype=np.int8), np.arange(5.0)], tmp_path / "v.pd")
    assert os.path.getsize(tmp_path / "v.pd") < a.nbytes + 1000
    back = load(tmp_path / "v.pd", mmap_mode="r")
    for x in (back[0], back[2]["again"], back[4]):
        assert x.offset % 64 == 0 and np.array_equal(x, np.arange(x.size, dtype=x.dtype))
    del back


def test_memmap_dump_accepts_pathlike_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "x.pd"
    assert dump(np.ones(3), target) == [str(target)]
    assert dump(np.zeros(4), target) == [str(target)]
    assert_same(load(str(target)), np.zeros(4))
    assert sorted(os.listdir(tmp_path)) == ["x.pd"]


def test_memmap_interrupted_dump_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(f: Any, a: Any) -> str:
        f.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_dumpload, "write_array_data", fail)
    with pytest.raises(OSError):
        dump(np.ones(10), tmp_path / "x.pd")
    assert os.listdir(tmp_path) == []


def test_memmap_foreign_and_truncated_files(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.pkl"
    foreign.write_bytes(pickle.dumps(np.ones(3)))
    with pytest.raises(ValueError, match=r"foreign\.pkl is not a par dump file"):
        load(foreign)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="is not a par dump file"):
        load(empty)
    npy = tmp_path / "a.npy"
    np.save(npy, np.ones(3))
    with pytest.raises(ValueError, match="is not a par dump file"):
        load(npy, mmap_mode="r")

    good = tmp_path / "good.pd"
    dump({"a": np.arange(1000.0), "b": [1, 2]}, good)
    data = good.read_bytes()
    for cut, what in [(len(data) - 100, "truncated"), (40, "truncated"), (11, "truncated")]:
        bad = tmp_path / f"cut{cut}.pd"
        bad.write_bytes(data[:cut])
        for mode in (None, "r"):
            with pytest.raises(ValueError, match=rf"cut{cut}\.pd: {what}"):
                load(bad, mmap_mode=mode)
    corrupt = tmp_path / "corrupt.pd"
    corrupt.write_bytes(data.replace(b'"t":"array"', b'"t":"arrax"'))
    with pytest.raises(ValueError, match=r"corrupt\.pd: corrupt par dump file: unknown node"):
        load(corrupt)
    corrupt.write_bytes(data.replace(b"'<f8'", b"'!!8'"))
    with pytest.raises(ValueError, match="bad dtype"):
        load(corrupt)
    corrupt.write_bytes(data.replace(b'"v":"1"', b'"v":"x"'))
    with pytest.raises(ValueError, match="corrupt par dump file: bad node at value"):
        load(corrupt)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.pd")


class Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


def test_memmap_load_runs_no_code_without_allow_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    filename = tmp_path / "evil.pd"
    dump({"data": np.ones(3), "payload": [Evil(str(marker))]}, filename)
    assert not marker.exists()
    for mode in (None, "r"):
        with pytest.raises(
            ValueError, match=r"value\['payload'\]\[0\] is a pickled Python object.*allow_pickle=True"
        ):
            load(filename, mmap_mode=mode)
    assert not marker.exists()


def test_memmap_allow_pickle_loads_other_objects(tmp_path: Path) -> None:
    objs = np.array([Fraction(1, 3), "x", None], dtype=object)
    cyclic: list[Any] = [np.ones(2)]
    cyclic.append(cyclic)
    dump({"objs": objs, "frac": Fraction(2, 5)}, tmp_path / "o.pd")
    with pytest.raises(
        ValueError, match=r"value\['objs'\] is a pickled Python object \(numpy.ndarray of dtype object\)"
    ):
        load(tmp_path / "o.pd")
    back = load(tmp_path / "o.pd", allow_pickle=True)
    assert list(back["objs"]) == [Fraction(1, 3), "x", None] and back["frac"] == Fraction(2, 5)
    dump(cyclic, tmp_path / "cyclic.pd")  # self-referencing containers are stored as one pickle
    with pytest.raises(ValueError, match="allow_pickle"):
        load(tmp_path / "cyclic.pd")
    back = load(tmp_path / "cyclic.pd", allow_pickle=True)
    assert back[1] is back and np.array_equal(back[0], np.ones(2))


def test_memmap_dump_load_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="compress=3 is not supported"):
        dump(np.ones(2), tmp_path / "x", compress=3)
    with pytest.raises(TypeError, match="filename must be a path"):
        dump(np.ones(2), 42)  # type: ignore[arg-type]
    dump(np.ones(2), tmp_path / "x")
    with pytest.raises(ValueError, match="mmap_mode='rw' is not valid"):
        load(tmp_path / "x", mmap_mode="rw")
