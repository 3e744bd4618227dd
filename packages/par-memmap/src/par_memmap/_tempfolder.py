"""Where the memmapped arrays of a call are written, and how they are removed.

A :class:`TempFolderManager` owns private sub-folders named ``par_memmap_<pid>_<random>``
inside a root chosen, on the first array to write, in this order:

1. the ``temp_folder`` argument;
2. the ``PAR_TEMP_FOLDER`` environment variable, then ``JOBLIB_TEMP_FOLDER``;
3. ``/dev/shm`` when it exists, is writable and has room for the array (``os.statvfs``);
4. the system temporary folder (``TMPDIR``, ``TEMP``, ``TMP``, else :func:`tempfile.gettempdir`).

With the automatic choice (3/4) the room in ``/dev/shm`` is checked for every array, and
an ``ENOSPC`` while writing there removes the partial file and writes the array to the
system temporary folder instead: no file that a worker maps is ever truncated (a
truncated mapping is what kills a process with SIGBUS).

Each sub-folder holds a ``.lock`` file on which its owner keeps an exclusive ``flock`` for
as long as it lives; the kernel releases it when the owner dies, however it dies (SIGKILL
included). :func:`cleanup_stale_folders` removes the sub-folders whose lock it can take (or,
where ``flock`` does not exist, whose pid is dead); each new manager runs it on its
candidate roots, so a later start removes what a killed process left behind.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from par_api import SHM_FOLDER

if TYPE_CHECKING:
    import numpy as np

from ._arrayio import write_array_data

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ENV_VARS",
    "FOLDER_PREFIX",
    "SHM_FOLDER",
    "TempFolderManager",
    "cleanup_stale_folders",
    "default_roots",
]

#: The prefix of every sub-folder this package creates: ``par_memmap_<pid>_<random>``.
FOLDER_PREFIX = "par_memmap_"
#: The environment variables naming a temp folder, in order of precedence.
ENV_VARS: tuple[str, ...] = ("PAR_TEMP_FOLDER", "JOBLIB_TEMP_FOLDER")
#: The shared-memory file system tried before the system temp folder.
#: Room left free in /dev/shm beyond the array being written.
SHM_RESERVE_BYTES = 8 * 1024 * 1024
#: The system temporary folder variables, in the order :mod:`tempfile` reads them.
_TMP_VARS = ("TMPDIR", "TEMP", "TMP")
_LOCK_NAME = ".lock"
_FOLDER_RE = re.compile(r"^" + re.escape(FOLDER_PREFIX) + r"(\d+)_[A-Za-z0-9_]+$")
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
#: Seconds between two scans of one root for stale folders by new managers.
_STALE_SCAN_INTERVAL = 30.0
_last_scan: dict[str, float] = {}
_last_scan_lock = threading.Lock()


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def _free_bytes(path: str) -> int:
    """Bytes available to this user in the file system holding ``path`` (``os.statvfs``)."""
    st = os.statvfs(path)
    return int(st.f_bavail) * int(st.f_frsize)


def _is_writable_dir(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def _system_temp_root() -> tuple[str, str]:
    """The system temp folder and why: TMPDIR/TEMP/TMP when set to a writable folder, else tempfile's."""
    for var in _TMP_VARS:
        value = os.environ.get(var)
        if value and _is_writable_dir(value):
            return os.path.abspath(value), f"the system temp folder from ${var}"
    return os.path.abspath(tempfile.gettempdir()), "the system temp folder"


def _choose_root(temp_folder: str | None, shm: str | None, nbytes: int) -> tuple[str, str, bool]:
    """``(root, reason, automatic)``: the folder for an array of ``nbytes`` bytes, in the
    documented order; ``automatic`` is False when the argument or a variable decided."""
    if temp_folder is not None:
        return temp_folder, "given as the temp_folder argument", False
    for var in ENV_VARS:
        value = os.environ.get(var)
        if value:
            return os.path.abspath(value), f"set by the {var} environment variable", False
    why_not = ""
    if shm:
        if not os.path.isdir(shm):
            why_not = f"{shm} does not exist"
        elif not os.access(shm, os.W_OK | os.X_OK):
            why_not = f"{shm} is not writable"
        else:
            try:
                free = _free_bytes(shm)
            except OSError as exc:
                free, why_not = -1, f"the free space of {shm} is unknown ({exc})"
            if free >= nbytes + SHM_RESERVE_BYTES:
                return (
                    shm,
                    f"{shm} exists, is writable and has {_human(free)} free for a {_human(nbytes)} array",
                    True,
                )
            if free >= 0:
                why_not = f"{shm} has only {_human(free)} free for a {_human(nbytes)} array"
    root, reason = _system_temp_root()
    return root, (f"{reason} ({why_not})" if why_not else reason), True


def choose_temp_folder(
    temp_folder: str | os.PathLike[str] | None = None, nbytes: int = 0, *, shm_folder: str | None = SHM_FOLDER
) -> tuple[str, str]:
    """``(folder, reason)``: where a :class:`TempFolderManager` with these arguments would
    put an array of ``nbytes`` bytes, and why; nothing is created (for reports)."""
    given = None if temp_folder is None else os.path.abspath(os.fspath(temp_folder))
    root, reason, _ = _choose_root(given, shm_folder, nbytes)
    return root, reason


def default_roots(extra: Iterable[str | os.PathLike[str] | None] = ()) -> list[str]:
    """The folders where sub-folders may have been created: ``extra``, the environment
    variables, ``/dev/shm``, the system temp folders; existing ones only, without duplicates."""
    candidates: list[Any] = list(extra)
    candidates += [os.environ.get(v) for v in ENV_VARS]
    candidates.append(SHM_FOLDER)
    candidates += [os.environ.get(v) for v in _TMP_VARS]
    candidates.append(tempfile.gettempdir())
    roots: list[str] = []
    for c in candidates:
        if not c:
            continue
        path = os.path.abspath(os.fspath(c))
        if path not in roots and os.path.isdir(path):
            roots.append(path)
    return roots


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError:
        return True  # cannot tell: keep the folder
    return True


def _folder_is_stale(path: str, pid: int) -> bool:
    """True when the owner of ``path`` is dead: its lock can be taken (or, without a lock, its pid is gone)."""
    if pid == os.getpid():
        return False
    lock_path = os.path.join(path, _LOCK_NAME)
    if fcntl is not None:
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except FileNotFoundError:
            # Created an instant ago (the lock comes right after the folder) or left by a
            # process killed in between: the pid decides.
            return not _pid_alive(pid)
        except OSError:
            return False  # not ours to judge (permissions)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # the owner holds it: alive
        finally:
            os.close(fd)  # closing releases our lock too
        return True
    return not _pid_alive(pid)  # pragma: no cover - Windows


def cleanup_stale_folders(roots: Iterable[str | os.PathLike[str]] | None = None) -> list[str]:
    """Remove the ``par_memmap_<pid>_*`` folders of dead processes found directly in ``roots``.

    ``roots`` defaults to :func:`default_roots`. A folder is removed when the exclusive lock
    its owner held on its ``.lock`` file can be taken (the kernel releases it when the owner
    dies, even by SIGKILL, and this works across pid namespaces); where ``flock`` does not
    exist, when its pid is dead. Folders of live processes, of other users and anything not
    named like ours are left alone. Never raises for a root that cannot be read.

    Returns:
        The paths removed.
    """
    root_list = default_roots() if roots is None else [os.path.abspath(os.fspath(r)) for r in roots]
    removed: list[str] = []
    for root in root_list:
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for name in names:
            match = _FOLDER_RE.match(name)
            if match is None:
                continue
            path = os.path.join(root, name)
            if not os.path.isdir(path) or os.path.islink(path):
                continue
            if _folder_is_stale(path, int(match.group(1))):
                shutil.rmtree(path, ignore_errors=True)
                if not os.path.exists(path):
                    removed.append(path)
    return removed


_recent_scans: dict[tuple[Any, ...], float] = {}


def _due(table: dict[Any, float], key: Any, now: float) -> bool:
    """Whether ``key`` was last scanned ``_STALE_SCAN_INTERVAL`` or more ago (or never);
    records ``now`` when it is due. Call with ``_last_scan_lock`` held."""
    last = table.get(key)
    if last is not None and now - last < _STALE_SCAN_INTERVAL:
        return False
    table[key] = now
    return True


def _scan_occasionally(extra: list[Any]) -> None:
    """Remove dead processes' folders from the roots for ``extra`` (see
    :func:`default_roots`), at most every ``_STALE_SCAN_INTERVAL``: per set of extra
    folders, which spares computing the roots at every call, and per root, which lists a
    root shared by several sets once."""
    now = time.monotonic()
    with _last_scan_lock:
        if len(_recent_scans) > 64:
            _recent_scans.clear()
        if not _due(_recent_scans, tuple(extra), now):
            return
    roots = default_roots(extra)
    with _last_scan_lock:
        due = [root for root in roots if _due(_last_scan, root, now)]
    if due:
        cleanup_stale_folders(due)


class _State:
    """What the finalizer needs, without a reference to the manager."""

    def __init__(self) -> None:
        self.owner_pid = os.getpid()
        self.folders: list[str] = []
        self.lock_fds: list[int] = []

    def remove_all(self) -> None:
        if os.getpid() != self.owner_pid:
            return  # a forked child must not remove its parent's files
        folders, fds = self.folders[:], self.lock_fds[:]
        self.folders.clear()
        self.lock_fds.clear()
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


def _default_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class TempFolderManager:
    """The private temp folder(s) of one ``Parallel`` call (or one ``with Parallel`` block).

    Nothing is chosen or created before the first array is written (:meth:`write_array`).
    Then a root is chosen (see the module docstring for the order) and a private
    sub-folder ``par_memmap_<pid>_<random>`` is created in it, locked for the life of this
    process. At ``verbose >= 10``, ``log`` (default: a line on stderr) receives one line per
    folder chosen, saying which and why.

    Files are removed by :meth:`cleanup` (also on ``with`` exit), when the manager is
    garbage-collected, at interpreter exit, and, after a SIGKILL, by the next
    :func:`cleanup_stale_folders` of any process. Thread-safe.

    Args:
        temp_folder: a folder to use (created if missing); None for the automatic choice.
        verbose: the ``Parallel`` verbosity; the folder choice is logged at >= 10.
        log: receives the log lines (default: print to stderr).
        shm_folder: the shared-memory folder tried before the system temp folder
            (default ``/dev/shm``; None to never use one).

    Raises:
        TypeError: ``temp_folder`` is not a path, or ``verbose`` not an int.
    """

    def __init__(
        self,
        temp_folder: str | os.PathLike[str] | None = None,
        *,
        verbose: int = 0,
        log: Callable[[str], None] | None = None,
        shm_folder: str | None = SHM_FOLDER,
    ) -> None:
        if temp_folder is not None and not isinstance(temp_folder, (str, os.PathLike)):
            raise TypeError(
                f"temp_folder must be a path (str or os.PathLike) or None; got {type(temp_folder).__name__}"
            )
        if isinstance(verbose, bool) or not isinstance(verbose, int):
            raise TypeError(f"verbose must be an int; got {verbose!r}")
        self._temp_folder = None if temp_folder is None else os.path.abspath(os.fspath(temp_folder))
        self.verbose = verbose
        self._log = log if log is not None else _default_log
        self._shm_folder = shm_folder
        self._lock = threading.RLock()
        self._state = _State()
        self._finalizer = weakref.finalize(self, self._state.remove_all)
        self._subfolders: dict[str, str] = {}  # root -> our sub-folder in it
        self._fixed_root: tuple[str, str] | None = None  # (root, reason) for argument/env choices
        self.folder: str | None = None
        self.reason: str | None = None
        extra = [self._temp_folder] + [os.environ.get(v) for v in ENV_VARS]
        if shm_folder:
            extra.append(shm_folder)
        try:
            _scan_occasionally(extra)
        except Exception:  # pragma: no cover - housekeeping must never break a call
            pass

    # -- the folder -----------------------------------------------------------------

    @property
    def folders(self) -> list[str]:
        """Every sub-folder created so far (two when /dev/shm filled up and disk took over)."""
        return list(self._state.folders)

    def _emit(self, message: str) -> None:
        if self.verbose >= 10:
            self._log(message)

    def _choose_root(self, nbytes: int) -> tuple[str, str, bool]:
        """``(root, reason, may_fall_back)`` for an array of ``nbytes`` bytes."""
        if self._fixed_root is not None:
            return (*self._fixed_root, False)
        root, reason, automatic = _choose_root(self._temp_folder, self._shm_folder, nbytes)
        if not automatic:  # the argument or an environment variable: decided once
            self._fixed_root = (root, reason)
            return root, reason, False
        return root, reason, root == self._shm_folder

    def _subfolder(self, root: str, reason: str) -> str:
        """Our sub-folder in ``root``, created (and locked) on first use."""
        existing = self._subfolders.get(root)
        if existing is not None and os.path.isdir(existing):
            if self.folder != existing:
                self.folder, self.reason = existing, reason
            return existing
        try:
            os.makedirs(root, exist_ok=True)
            folder = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}_", dir=root)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot create a folder for memmapped arrays in {root} ({reason}): {exc.strerror}"
            ) from exc
        self._state.folders.append(folder)
        if fcntl is not None:
            fd = os.open(os.path.join(folder, _LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # pragma: no cover - the folder is brand new
                os.close(fd)
            else:
                self._state.lock_fds.append(fd)
        self._subfolders[root] = folder
        self.folder, self.reason = folder, reason
        self._emit(f"[par_memmap] memmapping large arrays to {folder}: {reason}")
        return folder

    def folder_for(self, nbytes: int = 0) -> str:
        """The sub-folder where an array of ``nbytes`` bytes would be written (created if needed)."""
        with self._lock:
            root, reason, _ = self._choose_root(nbytes)
            return self._subfolder(root, reason)

    # -- writing --------------------------------------------------------------------

    def write_array(self, array: np.ndarray) -> tuple[str, str]:
        """Write the raw bytes of ``array`` to a new file of this manager.

        Returns ``(filename, order)``; the file holds exactly ``array.nbytes`` bytes in
        ``order`` ('C' or 'F') from offset 0, fully written (never sparse, never truncated).
        An ENOSPC in ``/dev/shm`` (automatic choice) falls back to the system temp folder.

        Raises:
            ValueError: ``array`` has an object dtype (it cannot be memmapped).
            OSError: there is no room anywhere; the message names the folder and the size.
        """
        if array.dtype.hasobject:
            raise ValueError("arrays of object dtype cannot be memmapped; pickle them instead")
        return self._write(
            int(array.nbytes), "array_", ".mmap", lambda f: write_array_data(f, array), "array"
        )

    def write_bytes(self, data: bytes, prefix: str = "blob_") -> str:
        """Write ``data`` to a new file of this manager (chosen and removed like the arrays'
        files, swept after a SIGKILL like them) and return its path; for other large
        payloads of a call that workers read, e.g. a big pickled callable."""
        path, _ = self._write(len(data), prefix, ".bin", lambda f: f.write(data), "payload")
        return path

    def _write(
        self, nbytes: int, prefix: str, suffix: str, writer: Callable[[Any], Any], what: str
    ) -> tuple[str, Any]:
        """Create a file in the chosen folder and let ``writer`` fill it; an ENOSPC in
        ``/dev/shm`` (automatic choice) retries in the system temp folder."""
        with self._lock:
            root, reason, may_fall_back = self._choose_root(nbytes)
            folder = self._subfolder(root, reason)
        try:
            return self._write_in(folder, prefix, suffix, writer)
        except OSError as exc:
            if exc.errno not in _NO_SPACE:
                raise
            if not may_fall_back:
                raise OSError(
                    exc.errno,
                    f"no room to write a {_human(nbytes)} {what} for the workers in {folder} "
                    f"({reason}); free some space or choose another temp_folder",
                ) from exc
        with self._lock:
            disk_root, disk_reason = _system_temp_root()
            folder = self._subfolder(disk_root, f"{disk_reason} ({root} ran out of space)")
        try:
            return self._write_in(folder, prefix, suffix, writer)
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise OSError(
                    exc.errno,
                    f"no room to write a {_human(nbytes)} {what} for the workers in {root} nor in {folder}; "
                    "free some space or choose another temp_folder",
                ) from exc
            raise

    @staticmethod
    def _write_in(folder: str, prefix: str, suffix: str, writer: Callable[[Any], Any]) -> tuple[str, Any]:
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
        os.close(fd)
        try:
            with open(path, "wb") as f:
                out = writer(f)
        except BaseException:
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        return path, out

    # -- lifetime -------------------------------------------------------------------

    def cleanup(self) -> None:
        """Remove every sub-folder and file of this manager. Idempotent; on Linux safe even
        while workers still have the files mapped (they keep their mappings). The manager
        can be used again afterwards: the next array gets a new sub-folder."""
        with self._lock:
            self._state.remove_all()
            self._subfolders.clear()
            self._fixed_root = None
            self.folder = None
            self.reason = None

    def __enter__(self) -> TempFolderManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"TempFolderManager(folder={self.folder!r}, reason={self.reason!r})"
