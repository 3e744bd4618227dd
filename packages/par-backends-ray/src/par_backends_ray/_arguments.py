"""Large and repeated task arguments: put into Ray's object store once per call.

Ray puts every task argument above 100 KiB into the object store by itself, but once
*per task*: a 50 MB array given to 20 tasks would be stored 20 times. The rule (which
arguments, when, the placeholders) is ``par_api.arguments``, shared with the dask
backend; here it stores with ``ray.put``. The ObjectRefs are passed as top-level
arguments of the Ray task, which Ray resolves to their values on the worker (numpy
arrays without a copy, read-only) before :func:`~par_backends_ray._task.run_batch` puts
them back into the tasks. The per-call cache is ``par_api.CallArguments`` storing with
:func:`put_each`; it keeps each stored object (and its ObjectRef) alive until the call
ends, then Ray frees it.
"""

from __future__ import annotations

from typing import Any

import ray
from par_api import DEFAULT_STORE_THRESHOLD

__all__ = ["DEFAULT_PUT_THRESHOLD", "put_each"]

#: Arguments with a known size of at least this many bytes are put once per call (1 MiB):
#: the one default of both cluster backends, ``par_api.DEFAULT_STORE_THRESHOLD``.
DEFAULT_PUT_THRESHOLD = DEFAULT_STORE_THRESHOLD


def put_each(objects: list[Any]) -> list[Any]:
    """The ``store`` of ``par_api.CallArguments``: ``ray.put`` each object, one ObjectRef
    each."""
    return [ray.put(obj) for obj in objects]
