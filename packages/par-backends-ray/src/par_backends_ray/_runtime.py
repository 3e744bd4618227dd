"""Which Ray runtime a backend uses.

In this order: the runtime already initialised in this process (``ray.init()`` called
by the application, or the worker's own runtime inside a Ray task); else ``ray.init``
with the backend's ``address=``; else ``ray.init()`` itself, which reads
``RAY_ADDRESS`` (a running cluster) and otherwise starts a local Ray on this machine.
A runtime initialised here stays for the life of the process (starting one takes
seconds); Ray shuts it down at exit, or :func:`shutdown` does earlier.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import ray

__all__ = ["ENV_ADDRESS", "ensure_initialized", "in_ray_task", "shutdown"]

#: The environment variable ``ray.init()`` reads for the cluster's address.
ENV_ADDRESS = "RAY_ADDRESS"

_lock = threading.Lock()
_initialized_here = False


def in_ray_task() -> bool:
    """Whether this code runs on a Ray worker (inside a task or an actor)."""
    if not ray.is_initialized():
        return False
    try:
        return bool(ray.get_runtime_context().worker.mode == ray.WORKER_MODE)
    except Exception:  # pragma: no cover - the runtime context changed shape
        return False


def ensure_initialized(address: str | None, init_kwargs: dict[str, Any]) -> None:
    """Initialise Ray in this process unless it is already (see the module docstring).

    A connection failure is re-raised as ``ConnectionError`` naming the address and how
    to start a cluster."""
    global _initialized_here
    if ray.is_initialized():
        return
    with _lock:
        if ray.is_initialized():
            return
        kwargs = {"logging_level": "WARNING", "log_to_driver": True, **init_kwargs}
        target = address or os.environ.get(ENV_ADDRESS, "").strip() or None
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, TimeoutError) as exc:
            where = f"the Ray cluster at {target!r}" if target else "a local Ray runtime"
            raise ConnectionError(
                f"backend='ray' could not connect to {where}: {exc}. Check that a cluster runs "
                f"there (`ray start --head` on its head node, then `ray status`) and that the "
                f"address (parallel_config(backend='ray', address=...) or {ENV_ADDRESS}) is "
                f"'HOST:PORT' of its head node; address=None with {ENV_ADDRESS} unset starts a "
                f"local Ray."
            ) from exc
        _initialized_here = True


def shutdown() -> bool:
    """Disconnect from (or stop the local) Ray runtime if par initialised it; returns
    whether it did. A runtime the application initialised itself is left alone."""
    global _initialized_here
    with _lock:
        if not _initialized_here:
            return False
        _initialized_here = False
        ray.shutdown()
        return True
