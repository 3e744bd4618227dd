"""Large by-value callables travel once per worker: a blob store and its worker-side loader.

A callable pickled by value (a closure, a ``__main__`` function) can drag a lot of data
with it (a 50 MB global, a captured array). Instead of copying those bytes into every
batch, ``BatchSerializer`` writes them once per call to a *blob store* and each batch
carries only ``(token, path)``; a worker reads the file the first time it meets the
token and keeps the unpickled callable in its per-process token cache.

A blob store is any object with ``put(token: str, data: bytes) -> str`` returning a path
that worker processes of the same machine can read until the end of the call (par can
pass one backed by the call's temp folder). Without one, a serializer uses a private
:class:`TempBlobStore` which ``BatchSerializer.close()`` removes.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import threading
import weakref
from typing import Any, Protocol, runtime_checkable

from ._tokens import _TOKEN_CACHE

#: Prefix of the private folders of :class:`TempBlobStore` (``<tmp>/par-blobs-<pid>-<random>``).
BLOB_DIR_PREFIX = "par-blobs-"
#: Default size above which a pickled callable goes through the blob store (1 MiB).
DEFAULT_BLOB_THRESHOLD = 2**20


@runtime_checkable
class BlobStore(Protocol):
    """Where large pickled callables are written once per call.

    ``put(token, data)`` stores ``data`` (the pickled callable, unique per ``token``) and
    returns the path of a file holding exactly those bytes, readable by the call's worker
    processes until the call ends. The store owns the file's removal.
    """

    def put(self, token: str, data: bytes) -> str: ...


def _remove_tree(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # not from a forked child that inherited the finalizer
        shutil.rmtree(path, ignore_errors=True)


class TempBlobStore:
    """A private folder under ``tempfile.gettempdir()`` (or ``base_dir``), created on the
    first ``put`` and named ``par-blobs-<pid>-<random>``; ``close()`` removes it (and so
    does garbage collection or interpreter exit if ``close()`` was never called).
    Usable again after ``close()`` (a new folder is made on the next ``put``)."""

    def __init__(self, base_dir: str | None = None) -> None:
        self._base_dir = base_dir
        self._lock = threading.Lock()
        self._folder: str | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def folder(self) -> str | None:
        """The folder in use, or None before the first ``put`` / after ``close()``."""
        return self._folder

    def put(self, token: str, data: bytes) -> str:
        if not token or os.sep in token or (os.altsep and os.altsep in token) or token.startswith("."):
            raise ValueError(f"token must be a plain file name (no path separators), got {token!r}.")
        with self._lock:
            if self._folder is None:
                base = self._base_dir or tempfile.gettempdir()
                self._folder = tempfile.mkdtemp(prefix=f"{BLOB_DIR_PREFIX}{os.getpid()}-", dir=base)
                self._finalizer = weakref.finalize(self, _remove_tree, self._folder, os.getpid())
            folder = self._folder
        path = os.path.join(folder, f"{token}.pkl")
        tmp = f"{path}.{threading.get_ident()}.part"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)  # a reader never sees a partly written file
        return path

    def close(self) -> None:
        """Remove the folder and every blob in it."""
        with self._lock:
            finalizer, self._finalizer, self._folder = self._finalizer, None, None
        if finalizer is not None:
            finalizer()


def _read_blob(path: str) -> Any:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"par: the pickled function {path!r} is gone: the call that sent it has ended "
            "(its blob store was closed) before this worker process unpickled the batch."
        ) from exc


def load_blob(token: str, path: str, size: int) -> Any:
    """Worker side: the callable stored at ``path`` under ``token``, unpickled once per
    process (then served from the token cache)."""
    return _TOKEN_CACHE.get_or_load(token, _read_blob, (path,), size=size)
