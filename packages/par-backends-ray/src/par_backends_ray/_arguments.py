"""Large and repeated task arguments: put into Ray's object store once per call.

Ray puts every task argument above 100 KiB into the object store by itself, but once
*per task*: a 50 MB array given to 20 tasks would be stored 20 times. The rule (which
arguments, when, the placeholders) is ``par_api.arguments``, shared with the dask
backend; here it stores with ``ray.put``. The ObjectRefs are passed as top-level
arguments of the Ray task, which Ray resolves to their values on the worker (numpy
arrays without a copy, read-only) before :func:`~par_backends_ray._task.run_batch` puts
them back into the tasks; the cache keeps each stored object (and its ObjectRef) alive
until the call ends, then Ray frees it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from par_api import CallArguments as _CallArguments

__all__ = ["DEFAULT_PUT_THRESHOLD", "CallArguments"]

#: Arguments with a known size of at least this many bytes are put once per call (1 MiB).
DEFAULT_PUT_THRESHOLD = 1024**2


class CallArguments(_CallArguments):
    """``par_api.arguments.CallArguments`` storing with ``put(obj)`` (``ray.put``), one
    object at a time; ``n_put``/``bytes_put`` name its counters in Ray's words."""

    def __init__(self, put: Callable[[Any], Any], threshold: int | None) -> None:
        super().__init__(lambda objects: [put(obj) for obj in objects], threshold)

    @property
    def n_put(self) -> int:
        return self.n_stored

    @property
    def bytes_put(self) -> int:
        return self.bytes_stored
