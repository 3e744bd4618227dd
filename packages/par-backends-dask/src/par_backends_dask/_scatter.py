"""Large and repeated task arguments: scattered to the cluster once per call.

The rule (which arguments, when, the :class:`~par_api.arguments.Slot` placeholders) is
``par_api.arguments``, shared with the ray backend; here it scatters
(``client.scatter``) and :func:`run_batch` runs a batch on a dask worker. The scattered
futures are passed as top-level arguments of ``client.submit``, so dask resolves them
to their values on the worker before :func:`run_batch` puts them back into the tasks.
"""

from __future__ import annotations

from typing import Any

from par_api import DEFAULT_STORE_THRESHOLD, CallArguments, fill_slots

from ._pickling import KeepCode

__all__ = ["DEFAULT_SCATTER_THRESHOLD", "CallArguments", "run_batch"]

#: Arguments with a known size of at least this many bytes are scattered (1 MiB): the
#: one default of both cluster backends, ``par_api.DEFAULT_STORE_THRESHOLD``.
DEFAULT_SCATTER_THRESHOLD = DEFAULT_STORE_THRESHOLD


def run_batch(batch: Any, *values: Any) -> list[Any]:
    """Worker side: put the scattered ``values`` back in place of their placeholders,
    then run the batch (with its nested configuration)."""
    if isinstance(batch, KeepCode):
        batch = batch.load()
    result: list[Any] = fill_slots(batch, values)()
    return result
