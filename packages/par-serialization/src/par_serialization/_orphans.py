"""Folders left by a process that was killed (SIGKILL, OOM killer) before it could
remove them: the exchange folders in ``/dev/shm`` (``par-xchg-<pid>-*``) and the private
blob folders (``par-blobs-<pid>-*``). Their names carry the owner's pid; a folder whose
owner is gone is removed by the next process of par that serializes a batch
(:func:`sweep_once`, once per process), so nothing stays behind for good.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading

__all__ = ["pid_alive", "sweep_once", "sweep_orphans"]

_lock = threading.Lock()
_swept_in: int | None = None  # the pid that swept (a forked child sweeps again)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (a process of another user counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def sweep_orphans(base: str, prefix: str) -> list[str]:
    """Remove the folders ``<base>/<prefix><pid>-*`` whose owner process is gone;
    returns their paths. Anything else in ``base`` is left alone."""
    removed: list[str] = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix) :].split("-", 1)[0]
        if not pid_text.isdigit() or pid_alive(int(pid_text)):
            continue
        path = os.path.join(base, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def sweep_once() -> None:
    """Sweep the exchange folders and the blob folders of dead processes, the first
    time this process asks (later calls return at once)."""
    global _swept_in
    if _swept_in == os.getpid():
        return
    with _lock:
        if _swept_in == os.getpid():
            return
        _swept_in = os.getpid()
    from ._blobs import BLOB_DIR_PREFIX
    from ._spill import SPILL_DIR_PREFIX, shm_base

    try:
        base = shm_base()
        if base is not None:
            sweep_orphans(base, SPILL_DIR_PREFIX)
        sweep_orphans(tempfile.gettempdir(), BLOB_DIR_PREFIX)
    except Exception:  # pragma: no cover - housekeeping never breaks a call
        pass
