"""The reducers in one process (pickle then unpickle here), and the parameter parsers."""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import par_memmap
import pytest
from par_memmap import TempFolderManager, check_nbytes, dump, has_shareable_memory, load, make_reducers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import par_memmap_testhelpers as h


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[TempFolderManager]:
    with TempFolderManager(tmp_path / "memmaps") as m:
        yield m


def roundtrip(obj: object, reducers: dict) -> object:
    return pickle.loads(h.dumps(obj, reducers))


@pytest.mark.parametrize("value", [None, 0, 10, 2**40])
def test_memmap_check_nbytes_takes_bytes(value: object) -> None:
    assert check_nbytes(value) == value  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("1M", TypeError),  # strings are parsed once, by par_api.parse_nbytes
        (1e6, TypeError),
        (-1, ValueError),
        (True, TypeError),
        ([1], TypeError),
    ],
)
def test_memmap_check_nbytes_errors(value: object, error: type) -> None:
    with pytest.raises(error, match="max_nbytes"):
        check_nbytes(value)  # type: ignore[arg-type]


def test_memmap_make_reducers_validates(manager: TempFolderManager) -> None:
    with pytest.raises(
        ValueError, match="mmap_mode='rw' is not valid: use one of None, 'r\\+', 'r', 'w\\+', 'c'"
    ):
        make_reducers(manager, mmap_mode="rw")
    with pytest.raises(TypeError, match="max_nbytes"):
        make_reducers(manager, max_nbytes="lots")
    reducers = make_reducers(manager)
    assert set(reducers) == {np.ndarray, np.memmap}
    assert reducers[np.ndarray] is reducers[np.memmap]


def test_memmap_threshold_and_default(manager: TempFolderManager) -> None:
    reducers = make_reducers(manager)  # '1M'
    small, large = np.ones(1024 * 1024 // 8), np.ones(1024 * 1024 // 8 + 1)
    assert type(roundtrip(small, reducers)) is np.ndarray
    out = roundtrip(large, reducers)
    assert isinstance(out, np.memmap) and out.mode == "r" and os.path.dirname(out.filename) == manager.folder
    assert np.array_equal(out, large)


def test_memmap_fortran_and_dtypes(manager: TempFolderManager) -> None:
    reducers = make_reducers(manager, max_nbytes=0)
    for a in (
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.arange(10, dtype=">i2"),
        np.array(["2024-01-01"] * 3, dtype="datetime64[s]"),
        np.zeros(3, dtype=[("a", "i4"), ("b", "f2")]),
        np.array(5.0),
    ):
        out = roundtrip(a, reducers)
        assert isinstance(out, np.memmap) and out.dtype == a.dtype and np.array_equal(out, a)
        assert out.flags.f_contiguous == a.flags.f_contiguous


def test_memmap_has_shareable_memory(tmp_path: Path) -> None:
    dump(np.arange(100.0), tmp_path / "a.pd")
    m = load(tmp_path / "a.pd", mmap_mode="r")
    assert (
        has_shareable_memory(m) and has_shareable_memory(m[::-5]) and has_shareable_memory(np.asarray(m)[3:])
    )
    assert not has_shareable_memory(m[0:0])
    assert not has_shareable_memory(np.array(m))  # a copy
    assert not has_shareable_memory(m + 1)
    assert not has_shareable_memory(np.ones(3)) and not has_shareable_memory([1, 2])
    cow = load(tmp_path / "a.pd", mmap_mode="c")
    assert not has_shareable_memory(cow)  # its private changes are not in the file
    del m, cow


def test_memmap_reference_modes_and_copy_on_write(manager: TempFolderManager, tmp_path: Path) -> None:
    path = tmp_path / "w.dat"
    w = np.memmap(path, dtype=np.float32, mode="w+", shape=(10,))
    out = roundtrip(w[2:], make_reducers(manager, max_nbytes=None))
    assert isinstance(out, np.memmap) and out.mode == "r+" and out.offset == 8
    cow = np.memmap(path, dtype=np.float32, mode="c", shape=(10,))
    cow[:] = 3.0
    copied = roundtrip(cow, make_reducers(manager, max_nbytes=None))
    assert type(copied) is np.ndarray and copied.sum() == 30.0
    assert manager.folder is None
    del w, out, cow


def test_memmap_removed_backing_file_is_copied(manager: TempFolderManager, tmp_path: Path) -> None:
    dump(np.arange(10.0), tmp_path / "gone.pd")
    m = load(tmp_path / "gone.pd", mmap_mode="r")
    os.unlink(tmp_path / "gone.pd")
    out = roundtrip(m, make_reducers(manager, max_nbytes=None))
    assert type(out) is np.ndarray and np.array_equal(out, np.arange(10.0))
    del m


def test_memmap_cache_notices_a_changed_array(manager: TempFolderManager) -> None:
    reducers = make_reducers(manager, max_nbytes=0)
    a = np.zeros(10)
    first = roundtrip(a, reducers)
    again = roundtrip(a, reducers)
    assert first.filename == again.filename
    a.shape = (2, 5)  # same object, new shape: written again
    reshaped = roundtrip(a, reducers)
    assert reshaped.shape == (2, 5) and reshaped.filename != first.filename
    del first, again, reshaped


def test_memmap_result_reducers(manager: TempFolderManager) -> None:
    in_worker = roundtrip(np.arange(1000.0), make_reducers(manager, max_nbytes=0, mmap_mode="r"))
    assert isinstance(in_worker, np.memmap) and not in_worker.flags.writeable
    results = par_memmap.make_result_reducers()
    for result in (in_worker, in_worker[::-2], np.asarray(in_worker)[5:], {"r": in_worker}):
        back = roundtrip(result, results)
        arr = back["r"] if isinstance(back, dict) else back
        assert type(arr) is np.ndarray and arr.flags.writeable
        assert np.array_equal(arr, result["r"] if isinstance(result, dict) else result)
    fresh = np.arange(10)
    assert roundtrip(fresh, results).tolist() == list(range(10))
    del in_worker


def test_memmap_rebuild_is_importable_by_name() -> None:
    assert par_memmap.rebuild_memmap.__module__ == "par_memmap._reducers"
    assert pickle.loads(pickle.dumps(par_memmap.rebuild_memmap)) is par_memmap.rebuild_memmap
