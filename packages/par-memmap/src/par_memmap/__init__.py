"""par_memmap: large numpy arrays shared with par's worker processes through memory-mapped files.

- :class:`TempFolderManager` chooses the folder (``temp_folder`` argument,
  ``PAR_TEMP_FOLDER``/``JOBLIB_TEMP_FOLDER``, ``/dev/shm`` when it has room, the system
  temp folder), owns its files and removes them: at cleanup, at exit, and after a crash
  (:func:`cleanup_stale_folders`).
- :func:`make_reducers` gives pickler ``dispatch_table`` entries that send arrays larger
  than ``max_nbytes`` as memmaps, and arrays already backed by a file as references;
  :func:`make_result_reducers` brings memmaps back from workers as plain arrays.
- :func:`dump`/:func:`load` store arrays and containers of arrays in one file that ``load``
  can memory-map, without running code from the file.

Depends on numpy only.
"""

from .__about__ import __version__
from ._dumpload import MAGIC, dump, load
from ._params import MMAP_MODES, check_nbytes, validate_mmap_mode
from ._reducers import has_shareable_memory, make_reducers, make_result_reducers, rebuild_memmap
from ._tempfolder import ENV_VARS, FOLDER_PREFIX, TempFolderManager, cleanup_stale_folders, default_roots

__all__ = [
    "ENV_VARS",
    "FOLDER_PREFIX",
    "MAGIC",
    "MMAP_MODES",
    "TempFolderManager",
    "__version__",
    "cleanup_stale_folders",
    "default_roots",
    "dump",
    "has_shareable_memory",
    "load",
    "make_reducers",
    "make_result_reducers",
    "check_nbytes",
    "rebuild_memmap",
    "validate_mmap_mode",
]
