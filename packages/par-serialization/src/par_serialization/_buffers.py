"""Out-of-band buffers (pickle protocol 5) of a batch or of its results.

``Strategy.dumps_oob`` leaves large buffers (numpy arrays' data, anything exposing a
``pickle.PickleBuffer`` from ``__reduce_ex__``) out of the pickle: the list of
``PickleBuffer``s references the original memory, no copy. When the pool pickles the
``SerializedBatch`` (or the results) with protocol 5, they are handed over as
``PickleBuffer`` objects, which the pool's pickler writes in band once, straight from
the original memory; the receiving side gets them back as ``bytearray`` (writable) or
``bytes`` (read-only) and ``pickle.loads(payload, buffers=...)`` wraps them without
another copy (a numpy array is built on the received buffer).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Sequence
from typing import Any


def _copy(view: memoryview) -> bytes | bytearray:
    return bytes(view) if view.readonly else bytearray(view)


def to_wire(buffers: Sequence[Any], protocol: int) -> tuple[Any, ...]:
    """What to put in a reduction for the pool's pickler of ``protocol``: the
    ``PickleBuffer``s themselves (protocol >= 5: written once, in band, no intermediate
    copy), else copies as ``bytes``/``bytearray`` (older protocols cannot pickle them)."""
    if protocol >= 5:
        return tuple(buffers)
    return tuple(_copy(b.raw()) if isinstance(b, pickle.PickleBuffer) else b for b in buffers)


def for_loads(buffers: Iterable[Any]) -> list[Any]:
    """Buffers to pass to ``pickle.loads``. Those that never crossed a process boundary
    (still ``PickleBuffer``s over the sender's objects) are copied, so that loading in the
    same process gives independent objects, as a pickle round trip does."""
    return [_copy(b.raw()) if isinstance(b, pickle.PickleBuffer) else b for b in buffers]


def total_size(buffers: Iterable[Any]) -> int:
    """Bytes held by ``buffers``."""
    size = 0
    for b in buffers:
        size += b.raw().nbytes if isinstance(b, pickle.PickleBuffer) else len(b)
    return size
