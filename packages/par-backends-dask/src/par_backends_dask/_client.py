"""Which ``distributed.Client`` a backend uses.

Order: the ``client=`` given to the backend; the ``scheduler_address=`` given to it;
the ``PAR_DASK_SCHEDULER`` environment variable; inside a task running on a dask worker,
that worker's client; else the current client of the process (``Client.current()``,
e.g. the last ``Client()`` created). Clients opened here from an address are cached per
address (opening one costs a round trip and a thread) and closed when the
``parallel_config`` block that named the address ends (:func:`release_client`), else by
:func:`close_clients` at interpreter exit: a cluster shut down later finds no client of
par still trying to reconnect (and logging it).
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

import distributed

#: Environment variable naming the scheduler when no client or address is given.
ENV_SCHEDULER = "PAR_DASK_SCHEDULER"

_lock = threading.Lock()
_clients: dict[str, distributed.Client] = {}

NO_CLIENT_MESSAGE = (
    "backend='dask' found no dask cluster to run on: no client= or scheduler_address= was "
    "given, the PAR_DASK_SCHEDULER environment variable is not set, and no distributed.Client "
    "exists in this process. Start one first, e.g. `from distributed import Client; client = "
    "Client()` (a local cluster) or `Client('tcp://host:8786')`, or name a scheduler with "
    "parallel_config(backend='dask', scheduler_address='tcp://host:8786') or "
    "PAR_DASK_SCHEDULER=tcp://host:8786."
)


def is_running(client: Any) -> bool:
    """Whether ``client`` can still submit work (not closed, not closing)."""
    return getattr(client, "status", None) in ("running", "connecting", "newly-created")


def in_worker_task() -> bool:
    """Whether this code runs in a task on a dask worker."""
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


def client_for_address(address: str, connect_timeout: Any = None) -> distributed.Client:
    """A client connected to the scheduler at ``address`` (the worker's own client
    inside a task on a worker of that scheduler; a cached one elsewhere)."""
    if in_worker_task():
        return distributed.get_client(address, timeout=connect_timeout)
    with _lock:
        client = _clients.get(address)
        if client is not None and is_running(client):
            return client
        try:
            kwargs: dict[str, Any] = {"set_as_default": False}
            if connect_timeout is not None:
                kwargs["timeout"] = connect_timeout
            client = distributed.Client(address, **kwargs)
        except OSError as exc:
            raise OSError(
                f"backend='dask' could not connect to the dask scheduler at {address!r}: {exc}. "
                f"Check that a scheduler runs there (`dask scheduler --host HOST --port PORT`) "
                f"and that the address (scheduler_address= or {ENV_SCHEDULER}) is right."
            ) from exc
        _clients[address] = client
        return client


def resolve_client(client: Any, address: str | None, connect_timeout: Any = None) -> distributed.Client:
    """The client to use, following the order of the module docstring."""
    if client is not None:
        if not is_running(client):
            raise RuntimeError(
                f"backend='dask': the client given as client= ({client!r}) is closed; pass a "
                f"running distributed.Client or a scheduler_address= instead."
            )
        return client  # type: ignore[no-any-return]
    if address is None:
        address = os.environ.get(ENV_SCHEDULER, "").strip() or None
    if address is not None:
        return client_for_address(address, connect_timeout)
    try:
        # the worker's client inside a task, else Client.current()
        return distributed.get_client()
    except ValueError:
        raise ValueError(NO_CLIENT_MESSAGE) from None


def release_client(address: str | None) -> bool:
    """Close the client this package opened for ``address`` (default: the
    ``PAR_DASK_SCHEDULER`` one), if any, and forget it; clients given to par, or the
    current one, are never closed here. Returns whether one was closed."""
    if address is None:
        address = os.environ.get(ENV_SCHEDULER, "").strip() or None
    with _lock:
        client = _clients.pop(address, None) if address is not None else None
    if client is None:
        return False
    try:
        client.close(timeout=5)
    except Exception:  # pragma: no cover - best effort
        pass
    return True


def close_clients() -> None:
    """Close every client this package opened from an address (not those it was given)."""
    with _lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        try:
            client.close(timeout=5)
        except Exception:  # pragma: no cover - best effort at shutdown
            pass


atexit.register(close_clients)
