"""par_serialization: how par tasks and results cross a process boundary.

- ``BatchSerializer``: pickles each batch in the parent at dispatch (errors name the
  task, function and argument), with plain pickle at C speed and cloudpickle only for
  callables and classes pickle cannot send by reference; those are pickled once per
  call and unpickled once per worker per call.
- ``SerializedBatch``: what is sent; calling it in the worker runs the batch.
- ``UnpicklableExceptionError``: what the caller gets when a task raised an exception
  that cannot be pickled back (it names the original type and message).
- ``wrap_non_picklable_objects``: make one function or class travel by cloudpickle
  even under ``LOKY_PICKLER=pickle``.
- ``LOKY_PICKLER``: environment variable naming the pickler module ("pickle",
  "cloudpickle", or a module defining ``Pickler``); unset means par's default.
"""

from .__about__ import __version__
from ._batch import BatchSerializer, SerializedBatch
from ._blobs import BlobStore, TempBlobStore
from ._errors import ResultPicklingError, TaskPicklingError, UnpicklableExceptionError
from ._lookup import pickles_by_reference
from ._picklers import (
    PICKLER_ENV_VAR,
    SerializerStats,
    dumps,
    get_pickler_name,
    loads,
    resolve_pickler,
    worker_cache_info,
)
from ._wrap import wrap_non_picklable_objects

__all__ = [
    "PICKLER_ENV_VAR",
    "BatchSerializer",
    "BlobStore",
    "ResultPicklingError",
    "SerializedBatch",
    "SerializerStats",
    "TaskPicklingError",
    "TempBlobStore",
    "UnpicklableExceptionError",
    "__version__",
    "dumps",
    "get_pickler_name",
    "loads",
    "pickles_by_reference",
    "resolve_pickler",
    "worker_cache_info",
    "wrap_non_picklable_objects",
]
