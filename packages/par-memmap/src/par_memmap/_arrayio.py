"""Raw array bytes to and from files, shared by the temp-folder dumps and ``dump``/``load``."""

from __future__ import annotations

import mmap
import os
import sys
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import numpy as np

# numpy is imported by the functions that need it, not by ``import par_memmap``.

__all__ = ["byte_extent", "data_pointer", "open_memmap", "write_array_data"]

_CHUNK_BYTES = 16 * 1024 * 1024


def open_memmap(
    filename: str | os.PathLike[str],
    dtype: np.dtype[Any] | type[Any],
    mode: str,
    offset: int,
    shape: tuple[int, ...],
    order: str = "C",
) -> np.memmap[Any, Any]:
    """``numpy.memmap(...)`` with a mode checked at run time (numpy's stubs want a Literal)."""
    import numpy as np

    memmap: Any = np.memmap
    result: np.memmap[Any, Any] = memmap(
        filename, dtype=dtype, mode=mode, offset=offset, shape=shape, order=order
    )
    return result


def data_pointer(a: np.ndarray) -> int:
    """The address of ``a``'s first element."""
    return int(a.__array_interface__["data"][0])


def byte_extent(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> tuple[int, int]:
    """``(lo, hi)``: the bytes an array touches, relative to its first element (lo <= 0 < hi).

    Only meaningful for arrays with at least one element.
    """
    lo = hi = 0
    for n, s in zip(shape, strides, strict=True):
        step = s * (n - 1)
        if step < 0:
            lo += step
        else:
            hi += step
    return lo, hi + itemsize


def write_array_data(f: BinaryIO, a: np.ndarray) -> str:
    """Write the raw bytes of ``a`` to ``f`` and return the memory order they are in, 'C' or 'F'.

    C-contiguous and F-contiguous arrays are written without a copy; other arrays are
    written in C order by chunks of about 16 MiB, so that a strided view of a huge array
    is never copied whole. Write errors (ENOSPC included) propagate as OSError.
    """
    import numpy as np

    if a.flags.c_contiguous:
        flat, order = a.reshape(-1), "C"
    elif a.flags.f_contiguous:
        flat, order = a.ravel(order="F"), "F"
    else:
        row_bytes = max(1, a.nbytes // max(1, a.shape[0]))
        step = max(1, _CHUNK_BYTES // row_bytes)
        for start in range(0, a.shape[0], step):
            chunk = np.ascontiguousarray(a[start : start + step]).reshape(-1)
            _write_all(f, chunk.view(np.uint8))
        return "C"
    if flat.size:
        _write_all(f, flat.view(np.uint8))
    return order


def _write_all(f: BinaryIO, buf: np.ndarray) -> None:
    written = f.write(memoryview(buf))  # type: ignore[arg-type]
    if written is not None and written != buf.nbytes:  # raw (unbuffered) files may write partially
        view = memoryview(buf)[written:]  # type: ignore[arg-type]
        while len(view):
            n = f.write(view)
            if not n:
                raise OSError(f"short write to {getattr(f, 'name', f)!r}")
            view = view[n:]


def is_mmap_root(a: object) -> bool:
    """True for a ``numpy.memmap`` created by ``numpy.memmap(...)`` itself (its base is the ``mmap.mmap``)."""
    np = sys.modules.get("numpy")  # no numpy imported: nothing can be a numpy.memmap
    return np is not None and isinstance(a, np.memmap) and isinstance(a.base, mmap.mmap)


def file_exists(path: str | os.PathLike[str]) -> bool:
    try:
        return os.path.isfile(path)
    except (OSError, ValueError):
        return False
