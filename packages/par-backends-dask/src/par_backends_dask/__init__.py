"""par_backends_dask: the par ``dask`` backend, on a ``dask.distributed`` cluster.

Installing the package registers ``backend='dask'`` through the ``par.backends``
entry-point group; importing it is never needed. ``DaskBackend`` is the backend class;
``close_clients()`` closes the clients the backend opened from scheduler addresses.
"""

from __future__ import annotations

from .__about__ import __version__
from ._client import ENV_SCHEDULER, close_clients
from ._scatter import DEFAULT_SCATTER_THRESHOLD
from .backend import DaskBackend

__all__ = ["DEFAULT_SCATTER_THRESHOLD", "ENV_SCHEDULER", "DaskBackend", "__version__", "close_clients"]
