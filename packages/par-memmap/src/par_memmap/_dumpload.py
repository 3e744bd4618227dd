"""``dump``/``load``: arrays (and plain containers of them) in one file that ``load`` can memmap.

The file format (version 1), all integers little-endian::

    offset 0   8 bytes   magic  b"\\x93PARDUMP"
    offset 8   1 byte    format version (1)
    offset 9   4 bytes   uint32 length H of the header
    offset 13  H bytes   header: UTF-8 JSON {"version", "data_nbytes", "numpy", "root"}
               padding   zero bytes up to the next multiple of 64: the data section starts there
               data      the blobs, each starting at a multiple of 64 from the data section

``root`` describes the value as a tree of nodes ``{"t": kind, ...}``: ``none``, ``bool``,
``int``, ``float`` and ``complex`` (exact ``repr`` text), ``str``, ``bytes`` (base64),
``list``, ``tuple``, ``dict`` (a list of key/value node pairs), ``scalar`` (a numpy scalar:
dtype and hex bytes), ``array`` (dtype as the ``.npy`` descr literal, shape, order 'C'/'F',
offset and nbytes of its raw bytes in the data section) and ``pickle`` (offset and nbytes of
a pickle, for any other object: object arrays, class instances, subclasses of the
containers). ``load`` parses the JSON and the dtype literals with ``json`` and
``ast.literal_eval`` only: nothing from the file runs unless ``allow_pickle=True`` is given
and the file holds ``pickle`` nodes.
"""

from __future__ import annotations

import ast
import base64
import json
import math
import os
import pickle
import struct
import uuid
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import numpy as np
    import numpy.lib.format as npformat

from ._arrayio import open_memmap, write_array_data
from ._params import validate_mmap_mode

__all__ = ["MAGIC", "dump", "load"]

MAGIC = b"\x93PARDUMP"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sBI")
_ALIGN = 64
_MAX_HEADER = 1 << 31


def _import_numpy() -> None:
    """Bind ``np`` and ``npformat`` in this module on first use: ``import par_memmap``
    (and so ``import par``) does not import numpy; :func:`dump` and :func:`load` do."""
    global np, npformat
    import numpy as np
    import numpy.lib.format as npformat


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


class _Cyclic(Exception):
    pass


class _LoadError(ValueError):
    """A file that ``load`` refuses; the message names the file."""


class _Writer:
    """Turns a value into a JSON tree plus a list of blobs (arrays or pickled bytes)."""

    def __init__(self, protocol: int) -> None:
        self.protocol = protocol
        self.blobs: list[tuple[int, np.ndarray | bytes]] = []
        self.size = 0
        self._arrays: dict[int, tuple[np.ndarray, dict[str, Any]]] = {}
        self._path: set[int] = set()

    def _blob(self, blob: np.ndarray | bytes, nbytes: int) -> int:
        offset = _align(self.size)
        self.size = offset + nbytes
        self.blobs.append((offset, blob))
        return offset

    def _pickle(self, obj: Any) -> dict[str, Any]:
        data = pickle.dumps(obj, protocol=self.protocol)
        kind = type(obj)
        name = f"{kind.__module__}.{kind.__qualname__}"
        if isinstance(obj, np.ndarray):
            name += f" of dtype {obj.dtype}"
        return {"t": "pickle", "type": name, "offset": self._blob(data, len(data)), "nbytes": len(data)}

    def node(self, obj: Any) -> dict[str, Any]:
        kind = type(obj)
        if obj is None:
            return {"t": "none"}
        if kind is bool:
            return {"t": "bool", "v": obj}
        if kind is int:
            return {"t": "int", "v": str(obj)}
        if kind is float:
            return {"t": "float", "v": repr(obj)}
        if kind is complex:
            return {"t": "complex", "v": [repr(obj.real), repr(obj.imag)]}
        if kind is str:
            return {"t": "str", "v": obj}
        if kind is bytes:
            return {"t": "bytes", "v": base64.b64encode(obj).decode("ascii")}
        if kind in (np.ndarray, np.memmap) and not obj.dtype.hasobject:
            return self._array(obj)
        if isinstance(obj, np.generic) and not obj.dtype.hasobject and type(obj) is obj.dtype.type:
            raw = np.asarray(obj).tobytes()
            return {"t": "scalar", "dtype": repr(npformat.dtype_to_descr(obj.dtype)), "v": raw.hex()}
        if kind in (list, tuple, dict):
            if id(obj) in self._path:
                raise _Cyclic
            self._path.add(id(obj))
            try:
                if kind is dict:
                    return {"t": "dict", "v": [[self.node(k), self.node(v)] for k, v in obj.items()]}
                return {"t": kind.__name__, "v": [self.node(x) for x in obj]}
            finally:
                self._path.discard(id(obj))
        return self._pickle(obj)

    def _array(self, a: np.ndarray) -> dict[str, Any]:
        seen = self._arrays.get(id(a))
        if seen is not None:
            return seen[1]
        order = "F" if (a.flags.f_contiguous and not a.flags.c_contiguous) else "C"
        node = {
            "t": "array",
            "dtype": repr(npformat.dtype_to_descr(a.dtype)),
            "shape": list(a.shape),
            "order": order,
            "offset": self._blob(a, a.nbytes),
            "nbytes": int(a.nbytes),
        }
        self._arrays[id(a)] = (a, node)
        return node


def _check_path(filename: Any, name: str) -> str:
    if not isinstance(filename, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike); got {type(filename).__name__}")
    return os.fspath(filename)


def dump(
    value: Any, filename: str | os.PathLike[str], compress: int | bool | None = 0, protocol: int | None = None
) -> list[str]:
    """Write ``value`` to ``filename`` so that :func:`load` can memory-map its arrays.

    ``value`` may be an array or any nesting of lists, tuples and dicts holding arrays,
    numpy scalars, str, bytes, int, float, complex, bool and None; arrays are stored raw,
    64-byte aligned, in their C or Fortran order. Anything else (object arrays, class
    instances, subclasses of the containers) is stored as a pickle, which ``load`` only
    reads with ``allow_pickle=True``. The file is written under a temporary name and
    renamed at the end, so an interrupted dump never leaves a truncated ``filename``.

    Args:
        value: what to store.
        filename: the file to write (replaced if it exists).
        compress: only 0/False/None: compressed data could not be memory-mapped.
        protocol: the pickle protocol for pickled parts (default: the highest).

    Returns:
        The list of files written: ``[filename]``.

    Raises:
        ValueError: ``compress`` asks for compression.
        TypeError: ``filename`` is not a path.
    """
    _import_numpy()
    path = _check_path(filename, "filename")
    if compress not in (0, False, None):
        raise ValueError(
            f"compress={compress!r} is not supported: par_memmap.dump writes uncompressed files so that "
            "load(..., mmap_mode=...) can memory-map them; use compress=0"
        )
    writer = _Writer(pickle.HIGHEST_PROTOCOL if protocol is None else protocol)
    try:
        root = writer.node(value)
    except _Cyclic:
        writer = _Writer(writer.protocol)
        root = writer._pickle(value)
    header = json.dumps(
        {"version": FORMAT_VERSION, "data_nbytes": writer.size, "numpy": np.__version__, "root": root},
        separators=(",", ":"),
    ).encode("utf-8")
    data_offset = _align(_PREFIX.size + len(header))
    tmp = os.path.join(
        os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp"
    )
    try:
        with open(tmp, "xb") as f:
            f.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)))
            f.write(header)
            position = _PREFIX.size + len(header)
            for offset, blob in writer.blobs:
                start = data_offset + offset
                f.write(b"\0" * (start - position))
                if isinstance(blob, np.ndarray):
                    write_array_data(f, blob)
                    position = start + blob.nbytes
                else:
                    f.write(blob)
                    position = start + len(blob)
            if position < data_offset:
                f.write(b"\0" * (data_offset - position))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return [path]


class _Reader:
    def __init__(
        self,
        path: str,
        f: BinaryIO,
        data_offset: int,
        data_nbytes: int,
        mmap_mode: str | None,
        allow_pickle: bool,
    ):
        self.path = path
        self.f = f
        self.data_offset = data_offset
        self.data_nbytes = data_nbytes
        self.mmap_mode = "r+" if mmap_mode == "w+" else mmap_mode
        self.allow_pickle = allow_pickle

    def corrupt(self, what: str) -> ValueError:
        return _LoadError(f"{self.path}: corrupt par dump file: {what}")

    def _span(self, node: dict[str, Any], where: str) -> tuple[int, int]:
        offset, nbytes = node.get("offset"), node.get("nbytes")
        if type(offset) is not int or type(nbytes) is not int or offset < 0 or nbytes < 0:
            raise self.corrupt(f"bad offset/nbytes at {where}")
        if offset + nbytes > self.data_nbytes:
            raise self.corrupt(f"data of {where} lies beyond the data section")
        return offset, nbytes

    def _read(self, offset: int, buf: memoryview, where: str) -> None:
        self.f.seek(self.data_offset + offset)
        done = 0
        while done < len(buf):
            n = self.f.readinto(buf[done:])  # type: ignore[attr-defined]
            if not n:
                raise _LoadError(f"{self.path}: truncated par dump file (data of {where} is incomplete)")
            done += n

    def _dtype(self, text: Any, where: str) -> np.dtype:
        try:
            if not isinstance(text, str):
                raise TypeError("not a string")
            dtype = npformat.descr_to_dtype(ast.literal_eval(text))
        except Exception as exc:
            raise self.corrupt(f"bad dtype {text!r} at {where} ({exc})") from None
        if dtype.hasobject:
            raise self.corrupt(f"object dtype stored raw at {where}")
        return dtype

    def value(self, node: Any, where: str) -> Any:
        if not isinstance(node, dict):
            raise self.corrupt(f"node at {where} is not an object")
        t = node.get("t")
        v = node.get("v")
        try:
            if t == "none":
                return None
            if t == "bool" and type(v) is bool:
                return v
            if t == "int" and isinstance(v, str):
                return int(v)
            if t == "float" and isinstance(v, str):
                return float(v)
            if t == "complex" and isinstance(v, list) and len(v) == 2:
                return complex(float(v[0]), float(v[1]))
            if t == "str" and isinstance(v, str):
                return v
            if t == "bytes" and isinstance(v, str):
                return base64.b64decode(v, validate=True)
            if t in ("list", "tuple") and isinstance(v, list):
                items = [self.value(x, f"{where}[{i}]") for i, x in enumerate(v)]
                return items if t == "list" else tuple(items)
            if t == "dict" and isinstance(v, list):
                out = {}
                for i, pair in enumerate(v):
                    if not isinstance(pair, list) or len(pair) != 2:
                        raise self.corrupt(f"bad dict item at {where}")
                    key = self.value(pair[0], f"{where}<key {i}>")
                    out[key] = self.value(pair[1], f"{where}[{key!r}]")
                return out
            if t == "scalar" and isinstance(v, str):
                dtype = self._dtype(node.get("dtype"), where)
                raw = bytes.fromhex(v)
                if len(raw) != dtype.itemsize:
                    raise self.corrupt(f"bad scalar size at {where}")
                return np.frombuffer(raw, dtype=dtype)[0]
            if t == "array":
                return self._array(node, where)
            if t == "pickle":
                return self._unpickle(node, where)
        except _LoadError:
            raise
        except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
            raise self.corrupt(f"bad node at {where} ({exc})") from None
        raise self.corrupt(f"unknown node {t!r} at {where}")

    def _array(self, node: dict[str, Any], where: str) -> np.ndarray:
        dtype = self._dtype(node.get("dtype"), where)
        shape = node.get("shape")
        order = node.get("order")
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise self.corrupt(f"bad shape at {where}")
        if order not in ("C", "F"):
            raise self.corrupt(f"bad order at {where}")
        offset, nbytes = self._span(node, where)
        if nbytes != math.prod(shape) * dtype.itemsize:
            raise self.corrupt(f"nbytes does not match shape and dtype at {where}")
        shape_t = tuple(shape)
        if self.mmap_mode is not None and nbytes > 0:
            return open_memmap(self.path, dtype, self.mmap_mode, self.data_offset + offset, shape_t, order)
        arr = np.empty(shape_t, dtype=dtype, order=order)
        if nbytes:
            self._read(offset, memoryview(arr.reshape(-1, order=order).view(np.uint8)), where)  # type: ignore[arg-type]
        return arr

    def _unpickle(self, node: dict[str, Any], where: str) -> Any:
        name = node.get("type", "?")
        if not self.allow_pickle:
            raise _LoadError(
                f"{self.path}: {where} is a pickled Python object ({name}); unpickling can run arbitrary code, "
                "so load refuses it by default. Pass allow_pickle=True only for files you trust."
            )
        offset, nbytes = self._span(node, where)
        buf = bytearray(nbytes)
        self._read(offset, memoryview(buf), where)
        return pickle.loads(buf)


def load(filename: str | os.PathLike[str], mmap_mode: str | None = None, allow_pickle: bool = False) -> Any:
    """Read a value written by :func:`dump`.

    With ``mmap_mode`` ('r', 'r+', 'c'; 'w+' is taken as 'r+' so the data is kept) every
    non-empty array comes back as a ``numpy.memmap`` on the file, without reading it;
    otherwise arrays are read into memory. Containers, str, numbers, bool and None come
    back as they were dumped. Pickled parts (object arrays, class instances) are only
    unpickled with ``allow_pickle=True``, as with ``numpy.load``: by default ``load``
    runs no code from the file.

    Raises:
        ValueError: the file is not a par dump, is truncated or corrupt, ``mmap_mode`` is
            not valid, or the file holds pickled objects and ``allow_pickle`` is False;
            the message names the file.
        TypeError: ``filename`` is not a path.
        OSError: the file cannot be read (FileNotFoundError included).
    """
    _import_numpy()
    path = _check_path(filename, "filename")
    mmap_mode = validate_mmap_mode(mmap_mode)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(_PREFIX.size)
        if len(prefix) < len(MAGIC) or not prefix.startswith(MAGIC):
            raise ValueError(
                f"{path} is not a par dump file (it does not start with {MAGIC!r}); "
                "par.load reads only files written by par.dump"
            )
        if len(prefix) < _PREFIX.size:
            raise ValueError(f"{path}: truncated par dump file (incomplete header)")
        _, version, header_len = _PREFIX.unpack(prefix)
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{path}: par dump format version {version} is not supported (this par reads {FORMAT_VERSION})"
            )
        if header_len > min(size, _MAX_HEADER):
            raise ValueError(
                f"{path}: truncated par dump file (header of {header_len} bytes, file of {size})"
            )
        raw = f.read(header_len)
        if len(raw) != header_len:
            raise ValueError(f"{path}: truncated par dump file (incomplete header)")
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"{path}: corrupt par dump file: the header is not valid JSON ({exc})") from None
        data_nbytes = header.get("data_nbytes") if isinstance(header, dict) else None
        if type(data_nbytes) is not int or data_nbytes < 0 or "root" not in header:
            raise ValueError(f"{path}: corrupt par dump file: bad header")
        data_offset = _align(_PREFIX.size + header_len)
        if size < data_offset + data_nbytes:
            raise ValueError(
                f"{path}: truncated par dump file ({size} bytes, {data_offset + data_nbytes} expected)"
            )
        reader = _Reader(path, f, data_offset, data_nbytes, mmap_mode, bool(allow_pickle))
        return reader.value(header["root"], "value")
