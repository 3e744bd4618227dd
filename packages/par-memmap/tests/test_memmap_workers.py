"""Arrays reach real worker processes (spawned) as memmaps, as the spec's memmapping section says."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from par_memmap import TempFolderManager, dump, load, make_reducers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import par_memmap_testhelpers as h

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def executor() -> Iterator[ProcessPoolExecutor]:
    ex = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield ex
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[TempFolderManager]:
    with TempFolderManager(tmp_path / "memmaps") as m:
        yield m


def remote(ex: ProcessPoolExecutor, reducers: dict[type, Any], func: Any, *args: Any, **kwargs: Any) -> Any:
    data = ex.submit(h.run, h.payload(reducers, func, *args, **kwargs)).result(timeout=50)
    return pickle.loads(data)


def array_files(m: TempFolderManager) -> list[str]:
    return sorted(f for folder in m.folders for f in os.listdir(folder) if f.endswith(".mmap"))


def test_memmap_spec_automatic_conversion(executor: ProcessPoolExecutor, manager: TempFolderManager) -> None:
    reducers = make_reducers(manager, max_nbytes=1_000_000)
    out = [remote(executor, reducers, h.is_memmap, np.ones(int(i))) for i in [1e2, 1e4, 1e6]]
    assert out == [False, False, True]
    assert len(array_files(manager)) == 1


def test_memmap_spec_already_backed_arrays_travel_by_reference(
    executor: ProcessPoolExecutor, manager: TempFolderManager, tmp_path: Path
) -> None:
    filename = tmp_path / "joblib_test.mmap"
    dump(np.ones(int(1e6)), filename)
    large_memmap = load(filename, mmap_mode="r+")
    small_memmap = large_memmap[2:5]
    small_array = np.asarray(small_memmap)
    assert type(small_array) is np.ndarray
    reducers = make_reducers(manager, max_nbytes=None)
    out = [remote(executor, reducers, h.is_memmap, a) for a in [large_memmap, small_memmap, small_array]]
    assert out == [True, True, True]
    assert manager.folder is None  # nothing was copied to the temp folder
    # The worker sees the very bytes of the parent's file: write through r+ and read back here.
    remote(executor, reducers, h.fill, small_array, 7.0)
    assert list(large_memmap[:6]) == [1.0, 1.0, 7.0, 7.0, 7.0, 1.0]
    del large_memmap, small_memmap, small_array


def test_memmap_containers_and_keywords(executor: ProcessPoolExecutor, manager: TempFolderManager) -> None:
    big = np.ones(20_000)
    small = np.ones(10)
    reducers = make_reducers(manager, max_nbytes=100 * 1024)
    args, kwargs = remote(
        executor, reducers, h.describe_call, [big, (small, {"k": big})], {"x": (big,)}, kw=big, other=small
    )
    assert args == [["memmap", ("ndarray", {"k": "memmap"})], {"x": ("memmap",)}]
    assert kwargs == {"kw": "memmap", "other": "ndarray"}
    assert len(array_files(manager)) == 1  # one array, written once


def test_memmap_same_array_written_once_per_call(
    executor: ProcessPoolExecutor, manager: TempFolderManager
) -> None:
    a = np.arange(50_000.0)
    b = np.arange(50_000.0) + 1
    reducers = make_reducers(manager, max_nbytes=10 * 1024)
    sums = [remote(executor, reducers, h.info, x)[2] for x in [a, a, b, a, b]]
    assert sums == [a.sum(), a.sum(), b.sum(), a.sum(), b.sum()]
    assert len(array_files(manager)) == 2
    # A new call (new reducers) writes again: once per call, not once per manager lifetime.
    reducers2 = make_reducers(manager, max_nbytes=10 * 1024)
    remote(executor, reducers2, h.info, a)
    assert len(array_files(manager)) == 3


def test_memmap_modes_of_dumped_arrays(executor: ProcessPoolExecutor, manager: TempFolderManager) -> None:
    a = np.zeros(30_000)
    ro = remote(executor, make_reducers(manager, max_nbytes=0, mmap_mode="r"), h.try_write, a)
    assert ro == "read-only"
    for mode in ("r+", "w+", "c"):
        assert (
            remote(executor, make_reducers(manager, max_nbytes=0, mmap_mode=mode), h.try_write, a)
            == "written"
        )
        assert (
            remote(executor, make_reducers(manager, max_nbytes=0, mmap_mode=mode), h.info, a)[0] == "memmap"
        )
    assert not a.any()  # the parent's own array is never modified through a dumped copy


def test_memmap_w_plus_and_r_plus_parent_memmaps_receive_worker_writes(
    executor: ProcessPoolExecutor, manager: TempFolderManager, tmp_path: Path
) -> None:
    out = np.memmap(tmp_path / "out.dat", dtype=np.float64, mode="w+", shape=(4, 100))
    reducers = make_reducers(manager, max_nbytes=None)
    for i in range(4):
        remote(executor, reducers, h.fill, out[i], float(i + 1))
    assert [float(x) for x in out[:, 0]] == [1.0, 2.0, 3.0, 4.0]
    assert out.sum() == 100 * (1 + 2 + 3 + 4)
    # A read-only parent memmap stays read-only in the worker.
    ro = np.memmap(tmp_path / "out.dat", dtype=np.float64, mode="r", shape=(400,))
    assert remote(executor, reducers, h.try_write, ro) == "read-only"
    del out, ro


def test_memmap_strided_and_fortran_views(
    executor: ProcessPoolExecutor, manager: TempFolderManager, tmp_path: Path
) -> None:
    base = np.arange(60_000.0).reshape(200, 300)
    dump(base, tmp_path / "base.pd")
    m = load(tmp_path / "base.pd", mmap_mode="r")
    reducers = make_reducers(manager, max_nbytes=None)
    for view in (m[::3, 5:100:7], m[::-1, ::-2], m.T, np.asarray(m)[10:20].T):
        kind, _, total = remote(executor, reducers, h.info, view)
        assert kind == "memmap"
        assert total == pytest.approx(float(view.sum()))
        assert np.array_equal(remote(executor, reducers, h.identity, view), view)
    # Large, non-contiguous, not file-backed: dumped (in C order) and correct.
    big = np.arange(40_000.0).reshape(200, 200)[:, ::2]
    kind, _, total = remote(executor, make_reducers(manager, max_nbytes=1000), h.info, big)
    assert (kind, total) == ("memmap", float(big.sum()))
    del m


def test_memmap_results_come_back_whatever_their_size(
    executor: ProcessPoolExecutor, manager: TempFolderManager
) -> None:
    reducers = make_reducers(manager, max_nbytes=1024)
    a = np.arange(100_000.0)
    back = remote(executor, reducers, h.identity, a)  # a memmap in the worker
    assert type(back) is np.ndarray and back.flags.writeable and np.array_equal(back, a)
    sliced = remote(executor, reducers, h.identity, {"x": a})["x"]
    assert type(sliced) is np.ndarray and np.array_equal(sliced, a)
    made = remote(executor, reducers, h.make_large, 300_000)
    assert type(made) is np.ndarray and made[-1] == 299_999.0


def test_memmap_object_dtype_is_pickled(executor: ProcessPoolExecutor, manager: TempFolderManager) -> None:
    objs = np.array([{"a": 1}, "text", 3] * 50_000, dtype=object)
    kind, dtype, head = remote(executor, make_reducers(manager, max_nbytes=10), h.object_info, objs)
    assert (kind, dtype, head) == ("ndarray", "object", [{"a": 1}, "text", 3])
    assert manager.folder is None


def test_memmap_disabled(executor: ProcessPoolExecutor, manager: TempFolderManager, tmp_path: Path) -> None:
    a = np.ones(100_000)
    assert remote(executor, make_reducers(manager, max_nbytes=None), h.is_memmap, a) is False
    dump(a, tmp_path / "a.pd")
    m = load(tmp_path / "a.pd", mmap_mode="r")
    assert remote(executor, make_reducers(manager, max_nbytes=0, mmap_mode=None), h.is_memmap, a) is False
    assert remote(executor, make_reducers(manager, max_nbytes=0, mmap_mode=None), h.is_memmap, m) is False
    assert manager.folder is None
    del m
