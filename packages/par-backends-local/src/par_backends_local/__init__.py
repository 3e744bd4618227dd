"""par_backends_local: the single-host par backends.

``sequential``, ``threading``, ``loky`` (the default) and ``multiprocessing``, found by
par through the ``par.backends`` entry-point group; ``par_api.make_backend(name)``
builds them. Importing this package does not import loky or start anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .__about__ import __version__

if TYPE_CHECKING:
    from .loky import LokyBackend
    from .multiprocessing import MultiprocessingBackend
    from .sequential import SequentialBackend
    from .threading import ThreadingBackend

__all__ = [
    "LokyBackend",
    "MultiprocessingBackend",
    "SequentialBackend",
    "ThreadingBackend",
    "__version__",
]

_LAZY = {
    "SequentialBackend": "sequential",
    "ThreadingBackend": "threading",
    "LokyBackend": "loky",
    "MultiprocessingBackend": "multiprocessing",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'par_backends_local' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
