"""par_backends_ray: the par ``ray`` backend, on a Ray cluster.

Installing the package registers ``backend='ray'`` through the ``par.backends``
entry-point group; importing it is never needed. ``RayBackend`` is the backend class;
``shutdown()`` ends the Ray runtime par initialised (Ray also ends it at exit);
``LocalCluster`` starts a one-node cluster with ``ray start --head`` (tests, benchmarks).
"""

from __future__ import annotations

from .__about__ import __version__
from ._arguments import DEFAULT_PUT_THRESHOLD
from ._cluster import LocalCluster
from ._runtime import ENV_ADDRESS, in_ray_task, shutdown
from .backend import RayBackend

__all__ = ["DEFAULT_PUT_THRESHOLD", "ENV_ADDRESS", "LocalCluster", "RayBackend", "__version__", "in_ray_task", "shutdown"]
