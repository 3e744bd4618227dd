"""Large messages between the parent and its workers go through shared memory, not the pipe.

A process pool moves every message through a pipe, 64 KiB at a time, with a wake-up of
the reader for each chunk: 128 MB of results take ~0.27 s that way on a 2-core machine,
against ~0.09 s written to a file in ``/dev/shm`` (RAM) and read back in one call. So a
pickled batch or a batch's results of at least ``threshold`` bytes (the pickle and its
protocol-5 buffers) is *spilled*: written to a file of the call's exchange folder, and
only ``(path, sizes)`` crosses the pipe; the receiver reads the file into memory (one
copy, normal private memory) and unlinks it at once.

Spilling is an optimisation only: without a usable ``/dev/shm``, without room for twice
the message, or on any error while writing, the message goes through the pipe as before.
The folder (``/dev/shm/par-xchg-<pid>-<random>``) is the parent process's, made at the
first large message and removed at its exit; each call names its messages with its own
prefix and ``BatchSerializer.close()`` removes those never received (an aborted call).
Folders left by a killed parent are removed by the next process that makes one.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from par_api import shm_folder

from ._orphans import sweep_orphans

#: Prefix of the exchange folders (``<shm>/par-xchg-<pid>-<random>``).
SPILL_DIR_PREFIX = "par-xchg-"
#: Messages of at least this many bytes are spilled (1 MiB).
DEFAULT_SPILL_THRESHOLD = 2**20
#: Batches (parent to worker) above this size keep going through the pipe: a spilled
#: batch occupies RAM until a worker takes it, and ``pre_dispatch`` batches wait ahead.
SPILL_MAX_BATCH = 64 * 2**20

_counter = itertools.count()
_swept = False
_sweep_lock = threading.Lock()


def shm_base() -> str | None:
    """``par_api.SHM_FOLDER`` (``/dev/shm``) when it is a writable folder, else None (no
    spilling)."""
    return shm_folder()


def _remove_tree(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # not from a forked child that inherited the finalizer
        shutil.rmtree(path, ignore_errors=True)


class SpillFolder:
    """An exchange folder: made on first use under ``base`` (default :func:`shm_base`),
    removed by :meth:`close` (or at garbage collection / interpreter exit). ``path`` is
    None when spilling is unavailable. :func:`process_folder` keeps one per process."""

    def __init__(self, base: str | None = None) -> None:
        self._base = base if base is not None else shm_base()
        self._lock = threading.Lock()
        self._path: str | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def path(self) -> str | None:
        """The folder (created now if needed), or None when it cannot be made."""
        if self._path is not None or self._base is None:
            return self._path
        global _swept
        with self._lock:
            if self._path is None and self._base is not None:
                with _sweep_lock:
                    if not _swept:
                        _swept = True
                        sweep_orphans(self._base, SPILL_DIR_PREFIX)
                try:
                    path = tempfile.mkdtemp(prefix=f"{SPILL_DIR_PREFIX}{os.getpid()}-", dir=self._base)
                except OSError:
                    self._base = None  # not usable: the pipe it is
                    return None
                self._finalizer = weakref.finalize(self, _remove_tree, path, os.getpid())
                self._path = path
        return self._path

    def remove(self, prefix: str) -> int:
        """Remove the messages whose names start with ``prefix`` (one call's leftovers:
        results never received after an abort); returns how many there were."""
        path = self._path
        if path is None:
            return 0
        n = 0
        try:
            names = os.listdir(path)
        except OSError:
            return 0
        for name in names:
            if name.startswith(prefix):
                try:
                    os.unlink(os.path.join(path, name))
                    n += 1
                except OSError:
                    pass
        return n

    def close(self) -> None:
        """Remove the folder and whatever is still in it."""
        with self._lock:
            finalizer, self._finalizer, self._path = self._finalizer, None, None
        if finalizer is not None:
            finalizer()


_process_folder: tuple[int, SpillFolder] | None = None
_process_lock = threading.Lock()


def process_folder() -> SpillFolder:
    """This process's exchange folder (a new one after a fork): shared by its calls,
    each of which names its messages with its own prefix and removes them at its end."""
    global _process_folder
    current = _process_folder
    if current is not None and current[0] == os.getpid():
        return current[1]
    with _process_lock:
        if _process_folder is None or _process_folder[0] != os.getpid():
            _process_folder = (os.getpid(), SpillFolder())
        return _process_folder[1]


def _nbytes(part: Any) -> int:
    return memoryview(part).nbytes


def write(folder: str, prefix: str, parts: Sequence[Any]) -> tuple[str, tuple[int, ...]] | None:
    """Write ``parts`` (bytes-like: pickles, ``PickleBuffer``s, arrays' memory) one after
    the other to a new file of ``folder`` named ``<prefix>-<pid>-<n>``; returns ``(path,
    sizes)``, or None when there is no room for twice the data or the write fails
    (nothing is left behind then)."""
    sizes = tuple(_nbytes(p) for p in parts)
    total = sum(sizes)
    path = os.path.join(folder, f"{prefix}-{os.getpid()}-{next(_counter)}")
    try:
        st = os.statvfs(folder)
        if st.f_bavail * st.f_frsize < 2 * total + 2**20:
            return None
        with open(path, "wb", buffering=0) as fh:
            for part in parts:
                view = memoryview(part).cast("B")
                while view.nbytes:
                    written = fh.write(view)
                    view = view[written:]
    except (OSError, ValueError, TypeError, BufferError):
        try:
            os.unlink(path)
        except OSError:
            pass
        return None
    return path, sizes


def read(path: str, sizes: Sequence[int], what: str) -> list[bytearray]:
    """Read back the parts written by :func:`write` (as writable ``bytearray``s) and
    unlink the file. ``what`` names the message in the error raised if it is gone."""
    parts: list[bytearray] = []
    try:
        with open(path, "rb", buffering=0) as fh:
            for size in sizes:
                buf = bytearray(size)
                view = memoryview(buf)
                while view.nbytes:
                    n = fh.readinto(view)
                    if not n:
                        raise EOFError(f"par: {what} at {path!r} is shorter than expected")
                    view = view[n:]
                parts.append(buf)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"par: {what} was passed through the file {path!r}, which is gone: the call that "
            "sent it has ended (its exchange folder was removed) before it was received."
        ) from exc
    try:
        os.unlink(path)
    except OSError:
        pass
    return parts
