"""Pickle reducers that send numpy arrays to workers as memory maps.

:func:`make_reducers` returns ``copyreg``-style reducers for a pickler's
``dispatch_table`` (keys ``numpy.ndarray`` and ``numpy.memmap``). For each array:

1. an array backed by a file-backed ``numpy.memmap`` (the memmap itself, a slice of it
   with any offset/shape/strides, an ``np.asarray`` view of it) travels as a reference
   to that file: the worker maps the same bytes, no copy. A parent memmap opened with
   ``r+`` or ``w+`` is opened ``r+`` in the worker, so its writes reach the parent's
   file; ``r`` stays ``r``. Copy-on-write (``c``) memmaps are copied, since their
   private changes are not in the file.
2. an array larger than ``max_nbytes`` (not of object dtype) is written once per set of
   reducers (that is, once per call) to the :class:`~par_memmap.TempFolderManager`'s
   folder and opened by the worker as a memmap with ``mmap_mode`` (``w+`` becomes ``r+``:
   a worker never truncates the data it was sent).
3. everything else is pickled as a plain ``numpy.ndarray``.

``mmap_mode=None`` disables memmapping: every array is copied.

numpy is imported lazily: ``import par_memmap`` does not import it, and both factories
return an empty table when numpy has not been imported in the process (then no value
can be a numpy array, and a worker that unpickles the table does not import numpy).
"""

from __future__ import annotations

import functools
import os
import pickle
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

from ._arrayio import byte_extent, data_pointer, file_exists, is_mmap_root, open_memmap
from ._params import check_nbytes, validate_mmap_mode
from ._tempfolder import TempFolderManager

__all__ = ["has_shareable_memory", "make_reducers", "make_result_reducers", "rebuild_memmap"]

Reduced = tuple[Callable[..., Any], tuple[Any, ...]]
#: (filename, dtype, shape, strides, offset, mode, order) as given to :func:`rebuild_memmap`.
MemmapRef = tuple[str, "np.dtype[Any]", tuple[int, ...], "tuple[int, ...] | None", int, str, str]


def rebuild_memmap(
    filename: str,
    dtype: np.dtype,
    shape: tuple[int, ...],
    strides: tuple[int, ...] | None,
    offset: int,
    mode: str,
    order: str,
) -> np.memmap[Any, Any]:
    """Open, in a worker, the ``numpy.memmap`` a reducer described.

    ``offset`` is the position in the file of the array's first element. With
    ``strides`` None the array is contiguous in ``order``; otherwise only the bytes the
    strides reach are mapped and viewed with those strides (negative ones included).
    ``w+`` is opened as ``r+``: the data is never truncated.
    """
    import numpy as np

    if mode == "w+":
        mode = "r+"
    if strides is None:
        return open_memmap(filename, dtype, mode, offset, shape, order)
    lo, hi = byte_extent(shape, strides, dtype.itemsize)
    raw = open_memmap(filename, np.uint8, mode, offset + lo, (hi - lo,))
    view: np.memmap[Any, Any] = np.ndarray.__new__(
        np.memmap, shape, dtype, buffer=raw, offset=-lo, strides=strides
    )
    view._mmap = raw._mmap  # type: ignore[attr-defined]
    view.filename = raw.filename
    view.offset = raw.offset
    view.mode = raw.mode
    return view


def _memmap_reference(a: np.ndarray) -> MemmapRef | None:
    """The file reference of ``a`` if its memory lies in a file-backed memmap, else None."""
    import numpy as np

    if a.nbytes == 0:
        return None  # an empty mapping cannot be opened
    root: Any = a
    while isinstance(root, np.ndarray) and not is_mmap_root(root):
        root = root.base
    if not is_mmap_root(root) or root.filename is None or root.mode not in ("r", "r+", "w+"):
        return None
    ptr, root_ptr = data_pointer(a), data_pointer(root)
    lo, hi = byte_extent(a.shape, a.strides, a.dtype.itemsize)
    if ptr + lo < root_ptr or ptr + hi > root_ptr + root.nbytes:
        return None  # a base chain that does not describe this memory (defensive)
    if not file_exists(root.filename):
        return None  # the file was removed: copy instead
    if a.flags.c_contiguous:
        strides, order = None, "C"
    elif a.flags.f_contiguous:
        strides, order = None, "F"
    else:
        strides, order = tuple(a.strides), "C"
    mode = "r" if root.mode == "r" else "r+"
    return (
        os.fspath(root.filename),
        a.dtype,
        tuple(a.shape),
        strides,
        int(root.offset) + (ptr - root_ptr),
        mode,
        order,
    )


def has_shareable_memory(a: Any) -> bool:
    """True if ``a`` would reach a worker as a reference to a file, without a copy.

    That is a non-empty ``numpy.ndarray``/``numpy.memmap`` whose memory lies in a
    ``numpy.memmap`` opened on an existing file with mode 'r', 'r+' or 'w+': the memmap
    itself, any slice of it, or an ``np.asarray`` view of it.
    """
    np = sys.modules.get("numpy")  # never imported: ``a`` cannot be an array
    return np is not None and isinstance(a, np.ndarray) and _memmap_reference(a) is not None


def _copy_reduction(a: np.ndarray, protocol: int) -> Any:
    import numpy as np

    plain = a if type(a) is np.ndarray else a.view(np.ndarray)
    return plain.__reduce_ex__(protocol)


class _ArrayReducer:
    """The reducer of :func:`make_reducers`: one per call, with its own dump cache."""

    def __init__(
        self, manager: TempFolderManager, max_nbytes: int | None, mmap_mode: str | None, protocol: int
    ):
        self.manager = manager
        self.max_nbytes = max_nbytes
        self.mmap_mode = mmap_mode
        self.protocol = protocol
        self._lock = threading.Lock()
        # id(array) -> (array kept alive, pointer, shape, strides, dtype, reference)
        self._dumped: dict[
            int, tuple[np.ndarray, int, tuple[int, ...], tuple[int, ...], np.dtype, MemmapRef]
        ] = {}

    def __call__(self, a: np.ndarray) -> Any:
        if self.mmap_mode is None:
            return _copy_reduction(a, self.protocol)
        ref = _memmap_reference(a)
        if ref is not None:
            return (rebuild_memmap, ref)
        if self.max_nbytes is not None and a.nbytes > self.max_nbytes and not a.dtype.hasobject:
            return (rebuild_memmap, self._dump(a))
        return _copy_reduction(a, self.protocol)

    def _dump(self, a: np.ndarray) -> MemmapRef:
        key = id(a)
        ptr, shape, strides, dtype = data_pointer(a), a.shape, a.strides, a.dtype
        with self._lock:
            hit = self._dumped.get(key)
            if hit is not None and hit[0] is a and hit[1:5] == (ptr, shape, strides, dtype):
                return hit[5]
            filename, order = self.manager.write_array(a)
            mode = "r+" if self.mmap_mode == "w+" else str(self.mmap_mode)
            ref: MemmapRef = (filename, dtype, tuple(shape), None, 0, mode, order)
            self._dumped[key] = (a, ptr, shape, strides, dtype, ref)
            return ref

    def clear(self) -> None:
        """Forget the arrays already written (their files stay until the manager's cleanup)."""
        with self._lock:
            self._dumped.clear()


def make_reducers(
    manager: TempFolderManager,
    max_nbytes: int | None = 1024**2,
    mmap_mode: str | None = "r",
    *,
    protocol: int = pickle.HIGHEST_PROTOCOL,
) -> dict[type, Callable[[Any], Any]]:
    """Reducers for a pickler's ``dispatch_table`` that send arrays to workers as memmaps.

    Use a new set per call: an array pickled many times by one set is written once
    (identified by ``id`` while the set keeps it alive, and by its data pointer, shape,
    strides and dtype), so modifying an array in place between the tasks of one call is
    not seen by the later tasks. Files live in ``manager``'s folder until its cleanup.

    Args:
        manager: where the large arrays are written.
        max_nbytes: arrays with more bytes than this are memmapped, an int number of bytes
            (:func:`check_nbytes`; parse strings such as '1M' with ``par_api.parse_nbytes``);
            None disables that (file-backed arrays still travel by reference).
        mmap_mode: the mode workers open the written arrays with: 'r' (default), 'r+',
            'w+' (opened 'r+'), 'c'; None disables memmapping altogether (every array is copied).
        protocol: the pickle protocol of the pickler that will use the reducers; copied
            arrays use ``ndarray.__reduce_ex__(protocol)`` (protocol 5 avoids a copy).

    Returns:
        ``{numpy.ndarray: reducer, numpy.memmap: reducer}``; the rebuild function is
        :func:`par_memmap.rebuild_memmap`, importable in the worker. ``{}`` when numpy
        has not been imported in this process (no argument can be an array then; a set
        made before numpy is imported does not memmap arrays: make a new one).

    Raises:
        TypeError, ValueError: a bad ``max_nbytes`` or ``mmap_mode`` (the message names it).
    """
    if not isinstance(manager, TempFolderManager):
        raise TypeError(f"manager must be a par_memmap.TempFolderManager; got {type(manager).__name__}")
    nbytes, mode = check_nbytes(max_nbytes), validate_mmap_mode(mmap_mode)
    np = sys.modules.get("numpy")
    if np is None:
        return {}
    reducer = _ArrayReducer(manager, nbytes, mode, protocol)
    return {np.ndarray: reducer, np.memmap: reducer}


def reduce_result(a: np.ndarray, protocol: int = pickle.HIGHEST_PROTOCOL) -> Any:
    """The reducer of :func:`make_result_reducers` (module level: it pickles by reference).

    A ``numpy.memmap`` or a read-only array is reduced as a plain ``numpy.ndarray``
    rebuilt as a new, writable in-memory array; other arrays use
    ``ndarray.__reduce_ex__(protocol)``.
    """
    import numpy as np

    plain = a if type(a) is np.ndarray else a.view(np.ndarray)
    if not plain.flags.writeable:
        if not plain.dtype.isnative:
            # numpy's __reduce__ rebuilds a non-native byte order ('>i4') as native: keep
            # the exact dtype (results come back as the task returned them, as in joblib)
            order: Literal["C", "F"] = "F" if plain.flags.f_contiguous and not plain.flags.c_contiguous else "C"
            return _rebuild_writable, (plain.tobytes(order=order), plain.dtype, plain.shape, order)
        return plain.__reduce__()  # rebuilt as a new, writable array
    return plain.__reduce_ex__(protocol)


def _rebuild_writable(data: bytes, dtype: Any, shape: tuple[int, ...], order: str) -> Any:
    """A new, writable array of ``dtype`` (any byte order) from its raw bytes."""
    import numpy as np

    return np.frombuffer(bytearray(data), dtype=dtype).reshape(shape, order=order)  # type: ignore[call-overload]


class _ProtocolResultReducer:
    """:func:`reduce_result` with another pickle protocol. Equal by protocol, and pickled
    as a reference to :func:`_result_reducer` (unpickled as that process's cached one)."""

    __slots__ = ("protocol",)

    def __init__(self, protocol: int) -> None:
        self.protocol = protocol

    def __call__(self, a: np.ndarray) -> Any:
        return reduce_result(a, self.protocol)

    def __eq__(self, other: object) -> bool:
        return type(other) is _ProtocolResultReducer and other.protocol == self.protocol

    def __hash__(self) -> int:
        return hash((_ProtocolResultReducer, self.protocol))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_result_reducer, (self.protocol,))

    def __repr__(self) -> str:
        return f"<par_memmap result reducer, protocol {self.protocol}>"


@functools.cache
def _result_reducer(protocol: int) -> Callable[[Any], Any]:
    if protocol == pickle.HIGHEST_PROTOCOL:
        return reduce_result
    return _ProtocolResultReducer(protocol)


def make_result_reducers(*, protocol: int = pickle.HIGHEST_PROTOCOL) -> dict[type, Callable[[Any], Any]]:
    """Reducers for the worker → parent channel (``TransportHooks.result_reducers``).

    A ``numpy.memmap`` returned by a task (a memmapped input, a slice of it) comes back
    as a plain in-memory, writable ``numpy.ndarray`` with the same values, whatever its
    size, independent of the temp files that the end of the call removes; so does a
    read-only array (e.g. ``np.asarray`` of an input opened with 'r'). Other arrays keep
    numpy's own pickling with ``protocol``.

    The reducer is :func:`reduce_result` (or, for another ``protocol``, one cached
    wrapper of it per protocol): the same object at every call, pickled by reference, so tables made
    by successive calls compare equal. ``{}`` when numpy has not been imported in this
    process, so that unpickling the table never imports numpy.
    """
    np = sys.modules.get("numpy")
    if np is None:
        return {}
    reducer = _result_reducer(protocol)
    return {np.ndarray: reducer, np.memmap: reducer}
