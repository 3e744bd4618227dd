"""Large and repeated task arguments: sent to the cluster once per call, not per task.

A batch is a ``par_api.BatchedCalls`` (or any callable with ``tasks``/``nested``/``index``
attributes). :class:`CallArguments` looks at the top-level positional and keyword
arguments of its tasks and replaces some of them by :class:`Slot` placeholders:

- an argument whose size is known (``nbytes``: numpy arrays, memoryviews; ``len`` of
  ``bytes``/``str``) and at least ``threshold`` bytes is scattered as soon as it is seen;
- any other argument that is not "small" (see :func:`is_small`) and that an *earlier*
  batch of the same call already carried is scattered when it is seen again, so a
  repeated argument crosses the network at most twice per call (once inline in the
  first batch that uses it, once scattered), however many tasks use it.

Arguments are recognised by identity (``id``), cached for the duration of the call.
The scattered futures are passed as top-level arguments of ``client.submit``, so dask
resolves them to their values on the worker before :func:`run_batch` puts them back
into the tasks. The cache keeps each scattered object alive, so its ``id`` cannot be
reused by another object during the call.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from par_api import Task

from ._pickling import KeepCode

#: Arguments with a known size of at least this many bytes are scattered (1 MiB).
DEFAULT_SCATTER_THRESHOLD = 1024**2

#: Arguments smaller than this (and scalars) are never worth a scatter round trip.
SMALL_NBYTES = 1024

#: How many ids of arguments seen once are remembered per call (they are not kept
#: alive: a reused id only costs an unneeded scatter, never a wrong value).
_SEEN_LIMIT = 65536

_SCALARS = (type(None), bool, int, float, complex, type(Ellipsis), range, type)


class Slot:
    """Placeholder for the ``index``-th scattered value given to :func:`run_batch`."""

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
    nbytes = getattr(type(obj), "nbytes", None)
    if nbytes is None:
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


def run_batch(batch: Any, *values: Any) -> list[Any]:
    """Worker side: put the scattered ``values`` back in place of their :class:`Slot`
    placeholders, then run the batch (with its nested configuration)."""

    if isinstance(batch, KeepCode):
        batch = batch.load()

    def fill(arg: Any) -> Any:
        return values[arg.index] if type(arg) is Slot else arg

    tasks = [
        Task(func, tuple(fill(a) for a in args), {k: fill(v) for k, v in kwargs.items()})
        for func, args, kwargs in batch.tasks
    ]
    result: list[Any] = type(batch)(tasks, batch.nested, batch.index)()
    return result


class CallArguments:
    """Per-call cache of scattered arguments (see the module docstring).

    ``scatter(objects)`` sends a list of objects to the cluster and returns one future
    per object. ``threshold=None`` disables scattering.
    """

    def __init__(self, scatter: Callable[[list[Any]], Sequence[Any]], threshold: int | None) -> None:
        self._scatter = scatter
        self._threshold = threshold
        self._lock = threading.Lock()
        self._scattered: dict[int, tuple[Any, Any]] = {}  # id -> (object kept alive, future)
        self._seen: OrderedDict[int, None] = OrderedDict()
        #: Number of objects scattered and the sum of their known sizes (for reports).
        self.n_scattered = 0
        self.bytes_scattered = 0
        self._preloaded = False

    def preload(self, objects: Sequence[Any], futures: Sequence[Any]) -> None:
        """Objects already on the cluster (``scatter=``): tasks get their futures."""
        with self._lock:
            for obj, fut in zip(objects, futures, strict=True):
                self._scattered[id(obj)] = (obj, fut)
        self._preloaded = True

    def prepare(self, batch: Any) -> tuple[Any, list[Any]]:
        """``(batch', futures)``: the batch with placeholders and the futures to pass
        after it to :func:`run_batch`; ``(batch, [])`` when nothing is scattered."""
        tasks = getattr(batch, "tasks", None)
        if (self._threshold is None and not self._preloaded) or not tasks:
            return batch, []
        threshold = self._threshold if self._threshold is not None else float("inf")
        with self._lock:
            scattered = self._scattered
            seen = self._seen
            wanted: dict[int, Any] = {}
            first_seen: list[int] = []
            for _, args, kwargs in tasks:
                for arg in (*args, *kwargs.values()):
                    key = id(arg)
                    if key in scattered or key in wanted or is_small(arg):
                        continue
                    size = known_nbytes(arg)
                    if (size is not None and size >= threshold) or (
                        key in seen and self._threshold is not None
                    ):
                        wanted[key] = arg
                    elif key not in first_seen:
                        first_seen.append(key)
            if wanted:
                objects = list(wanted.values())
                futures = self._scatter(objects)
                for obj, fut in zip(objects, futures, strict=True):
                    scattered[id(obj)] = (obj, fut)
                    self.n_scattered += 1
                    self.bytes_scattered += known_nbytes(obj) or 0
            for key in first_seen:
                if key not in scattered:
                    seen[key] = None
            while len(seen) > _SEEN_LIMIT:
                seen.popitem(last=False)
            used: dict[int, int] = {}
            futures_for_batch: list[Any] = []

            def swap(arg: Any) -> Any:
                entry = scattered.get(id(arg))
                if entry is None or entry[0] is not arg:
                    return arg
                slot = used.get(id(arg))
                if slot is None:
                    slot = used[id(arg)] = len(futures_for_batch)
                    futures_for_batch.append(entry[1])
                return Slot(slot)

            new_tasks = [
                Task(func, tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()})
                for func, args, kwargs in tasks
            ]
        if not futures_for_batch:
            return batch, []
        return type(batch)(new_tasks, batch.nested, batch.index), futures_for_batch

    def clear(self) -> None:
        """Forget the call's arguments (releases the scattered data on the cluster)."""
        with self._lock:
            self._scattered.clear()
            self._seen.clear()
