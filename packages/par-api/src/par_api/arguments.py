"""Large and repeated task arguments, sent to a cluster once per call (not per task).

The shared rule of the cluster backends (``dask``: ``client.scatter``; ``ray``:
``ray.put``). A batch is a ``BatchedCalls`` (or any callable with ``tasks``/``nested``/
``index`` attributes). :class:`CallArguments` looks at the top-level positional and
keyword arguments of its tasks and replaces some of them by :class:`Slot` placeholders:

- an argument whose size is known (``nbytes``: numpy arrays, memoryviews; ``len`` of
  ``bytes``/``str``) and at least ``threshold`` bytes is stored as soon as it is seen
  (:data:`DEFAULT_STORE_THRESHOLD`, 1 MiB, is the default of both cluster backends:
  dask's ``scatter_threshold``, ray's ``put_threshold``);
- any other argument that is not "small" (see :func:`is_small`) and that an *earlier*
  batch of the same call already carried is stored when it is seen again, so a repeated
  argument crosses at most twice per call (inline in its first batch, then once).

Arguments are recognised by identity (``id``) for the duration of the call; the cache
keeps each stored object (and its handle) alive, so its ``id`` cannot be reused by
another object meanwhile. The backend passes the handles as top-level arguments of its
remote task, whose runtime resolves them to their values on the worker, where
:func:`fill_slots` puts them back into the tasks. Standard library only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from .task import Task

__all__ = ["DEFAULT_STORE_THRESHOLD", "SMALL_NBYTES", "CallArguments", "Slot", "fill_slots", "is_small", "known_nbytes"]

#: The default ``threshold`` of the cluster backends: arguments with a known size of at
#: least this many bytes are stored once per call (1 MiB). par_backends_dask's
#: ``DEFAULT_SCATTER_THRESHOLD`` and par_backends_ray's ``DEFAULT_PUT_THRESHOLD`` are
#: this value under their older names.
DEFAULT_STORE_THRESHOLD = 1024**2

#: Arguments smaller than this (and scalars) are never worth a stored object of their own.
SMALL_NBYTES = 1024

#: How many ids of arguments seen once are remembered per call (they are not kept
#: alive: a reused id only costs an unneeded store, never a wrong value).
_SEEN_LIMIT = 65536

_SCALARS = (type(None), bool, int, float, complex, type(Ellipsis), range, type)


class Slot:
    """Placeholder for the ``index``-th stored value given to the remote task."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (Slot, (self.index,))

    def __repr__(self) -> str:
        return f"Slot({self.index})"


def known_nbytes(obj: Any) -> int | None:
    """The size in bytes of ``obj`` when it can be read cheaply, else None."""
    if isinstance(obj, (bytes, bytearray, str)):
        return len(obj)
    if getattr(type(obj), "nbytes", None) is None:
        return None
    try:
        value = obj.nbytes
    except Exception:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def is_small(obj: Any, _depth: int = 0) -> bool:
    """Whether ``obj`` is cheap to send inline with every task: scalars, short strings
    and bytes, small arrays, and short tuples/lists/dicts of such values."""
    if isinstance(obj, _SCALARS):
        return True
    size = known_nbytes(obj)
    if size is not None:
        return size < SMALL_NBYTES
    if _depth < 2 and type(obj) in (tuple, list, set, frozenset) and len(obj) <= 16:
        return all(is_small(x, _depth + 1) for x in obj)
    if _depth < 2 and type(obj) is dict and len(obj) <= 16:
        return all(is_small(k, _depth + 1) and is_small(v, _depth + 1) for k, v in obj.items())
    return False


def fill_slots(batch: Any, values: Sequence[Any]) -> Any:
    """Worker side: ``batch`` with its :class:`Slot` placeholders replaced by ``values``
    (the same batch when there are none)."""
    if not values:
        return batch

    def fill(arg: Any) -> Any:
        return values[arg.index] if type(arg) is Slot else arg

    tasks = [
        Task(func, tuple(fill(a) for a in args), {k: fill(v) for k, v in kwargs.items()})
        for func, args, kwargs in batch.tasks
    ]
    return type(batch)(tasks, batch.nested, batch.index)


class CallArguments:
    """Per-call cache of the stored arguments (see the module docstring).

    ``store(objects)`` sends a list of objects to the cluster and returns one handle per
    object (a dask future, a Ray ObjectRef). ``threshold=None`` stores nothing, except
    the objects given to :meth:`preload`. ``n_stored`` and ``bytes_stored`` count what
    this call stored (the sizes that are known; see :func:`known_nbytes`).
    """

    def __init__(self, store: Callable[[list[Any]], Sequence[Any]], threshold: int | None) -> None:
        self._store = store
        self._threshold = threshold
        self._lock = threading.Lock()
        self._stored: dict[int, tuple[Any, Any]] = {}  # id -> (object kept alive, handle)
        self._seen: OrderedDict[int, None] = OrderedDict()
        self.n_stored = 0
        self.bytes_stored = 0
        self._preloaded = False

    def preload(self, objects: Sequence[Any], handles: Sequence[Any]) -> None:
        """Objects already on the cluster: tasks get their handles."""
        with self._lock:
            for obj, handle in zip(objects, handles, strict=True):
                self._stored[id(obj)] = (obj, handle)
        self._preloaded = True

    def prepare(self, batch: Any) -> tuple[Any, list[Any]]:
        """``(batch', handles)``: the batch with placeholders and the handles to pass
        after it to the remote task; ``(batch, [])`` when no argument is stored."""
        tasks = getattr(batch, "tasks", None)
        if (self._threshold is None and not self._preloaded) or not tasks:
            return batch, []
        threshold = self._threshold if self._threshold is not None else float("inf")
        with self._lock:
            stored, seen = self._stored, self._seen
            wanted: dict[int, Any] = {}
            first_seen: list[int] = []
            for _, args, kwargs in tasks:
                for arg in (*args, *kwargs.values()):
                    key = id(arg)
                    if key in stored or key in wanted or is_small(arg):
                        continue
                    size = known_nbytes(arg)
                    if (size is not None and size >= threshold) or (key in seen and self._threshold is not None):
                        wanted[key] = arg
                    elif key not in first_seen:
                        first_seen.append(key)
            if wanted:
                objects = list(wanted.values())
                for obj, handle in zip(objects, self._store(objects), strict=True):
                    stored[id(obj)] = (obj, handle)
                    self.n_stored += 1
                    self.bytes_stored += known_nbytes(obj) or 0
            for key in first_seen:
                if key not in stored:
                    seen[key] = None
            while len(seen) > _SEEN_LIMIT:
                seen.popitem(last=False)
            used: dict[int, int] = {}
            handles: list[Any] = []

            def swap(arg: Any) -> Any:
                entry = stored.get(id(arg))
                if entry is None or entry[0] is not arg:
                    return arg
                slot = used.get(id(arg))
                if slot is None:
                    slot = used[id(arg)] = len(handles)
                    handles.append(entry[1])
                return Slot(slot)

            new_tasks = [
                Task(func, tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()})
                for func, args, kwargs in tasks
            ]
        if not handles:
            return batch, []
        return type(batch)(new_tasks, batch.nested, batch.index), handles

    def clear(self) -> None:
        """Forget the call's arguments (the cluster frees what it no longer needs)."""
        with self._lock:
            self._stored.clear()
            self._seen.clear()
