"""Large and repeated task arguments: put into Ray's object store once per call.

Ray puts every task argument above 100 KiB into the object store by itself, but once
*per task*: a 50 MB array given to 20 tasks would be stored 20 times. :class:`CallArguments`
looks at the top-level positional and keyword arguments of a batch's tasks and replaces
some of them by :class:`~par_backends_ray._task.Slot` placeholders:

- an argument whose size is known (``nbytes``: numpy arrays, memoryviews; ``len`` of
  ``bytes``/``str``) and at least ``threshold`` bytes is put (``ray.put``) as soon as it
  is seen;
- any other argument that is not "small" (see :func:`is_small`) and that an *earlier*
  batch of the same call already carried is put when it is seen again, so a repeated
  argument is stored at most twice per call (inline in its first batch, then once).

The ObjectRefs are passed as top-level arguments of the Ray task, which Ray resolves to
their values on the worker (numpy arrays without a copy, read-only) before
:func:`~par_backends_ray._task.run_batch` puts them back into the tasks. Arguments are
recognised by identity (``id``) for the duration of the call; the cache keeps each
stored object (and its ObjectRef) alive until the call ends, then Ray frees it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from par_api import Task

from ._task import Slot

__all__ = ["DEFAULT_PUT_THRESHOLD", "CallArguments", "is_small", "known_nbytes"]

#: Arguments with a known size of at least this many bytes are put once per call (1 MiB).
DEFAULT_PUT_THRESHOLD = 1024**2

#: Arguments smaller than this (and scalars) are never worth an object of their own.
SMALL_NBYTES = 1024

#: How many ids of arguments seen once are remembered per call (they are not kept
#: alive: a reused id only costs an unneeded put, never a wrong value).
_SEEN_LIMIT = 65536

_SCALARS = (type(None), bool, int, float, complex, type(Ellipsis), range, type)


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


class CallArguments:
    """Per-call cache of the arguments put into the object store.

    ``put(obj)`` stores one object and returns its ObjectRef (``ray.put``);
    ``threshold=None`` never puts anything. ``n_put`` and ``bytes_put`` count what this
    call stored (the sizes that are known; see :func:`known_nbytes`).
    """

    def __init__(self, put: Callable[[Any], Any], threshold: int | None) -> None:
        self._put = put
        self._threshold = threshold
        self._lock = threading.Lock()
        self._stored: dict[int, tuple[Any, Any]] = {}  # id -> (object kept alive, ObjectRef)
        self._seen: OrderedDict[int, None] = OrderedDict()
        self.n_put = 0
        self.bytes_put = 0

    def prepare(self, batch: Any) -> tuple[Any, list[Any]]:
        """``(batch', refs)``: the batch with placeholders and the ObjectRefs to pass
        after it to ``run_batch``; ``(batch, [])`` when no argument is stored."""
        tasks = getattr(batch, "tasks", None)
        if self._threshold is None or not tasks:
            return batch, []
        threshold = self._threshold
        with self._lock:
            stored, seen = self._stored, self._seen
            first_seen: list[int] = []
            for _, args, kwargs in tasks:
                for arg in (*args, *kwargs.values()):
                    key = id(arg)
                    if key in stored or is_small(arg):
                        continue
                    size = known_nbytes(arg)
                    if (size is not None and size >= threshold) or key in seen:
                        stored[key] = (arg, self._put(arg))
                        self.n_put += 1
                        self.bytes_put += size or 0
                    elif key not in first_seen:
                        first_seen.append(key)
            for key in first_seen:
                if key not in stored:
                    seen[key] = None
            while len(seen) > _SEEN_LIMIT:
                seen.popitem(last=False)
            used: dict[int, int] = {}
            refs: list[Any] = []

            def swap(arg: Any) -> Any:
                entry = stored.get(id(arg))
                if entry is None or entry[0] is not arg:
                    return arg
                slot = used.get(id(arg))
                if slot is None:
                    slot = used[id(arg)] = len(refs)
                    refs.append(entry[1])
                return Slot(slot)

            new_tasks = [
                Task(func, tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()})
                for func, args, kwargs in tasks
            ]
        if not refs:
            return batch, []
        return type(batch)(new_tasks, batch.nested, batch.index), refs

    def clear(self) -> None:
        """Forget the call's arguments (Ray frees the stored objects it no longer needs)."""
        with self._lock:
            self._stored.clear()
            self._seen.clear()
