"""The machine's shared-memory folder: files there live in RAM (Linux ``tmpfs``).

One definition for the two packages that write there: ``par_memmap`` puts the large
arrays it memory-maps there when it has room, ``par_serialization`` spills large
batches and results there instead of the pool's pipe.
"""

from __future__ import annotations

import os

__all__ = ["SHM_FOLDER", "shm_folder"]

#: Where shared memory is mounted as a folder (Linux); absent elsewhere.
SHM_FOLDER = "/dev/shm"


def shm_folder() -> str | None:
    """:data:`SHM_FOLDER` when it is a folder this process can create files in, else None."""
    if os.path.isdir(SHM_FOLDER) and os.access(SHM_FOLDER, os.W_OK | os.X_OK):
        return SHM_FOLDER
    return None
