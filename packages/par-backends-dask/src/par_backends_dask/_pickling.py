"""What a batch looks like to ``distributed``'s serializer.

``distributed`` pickles a submitted function and its arguments itself (plain pickle,
then cloudpickle for what plain pickle cannot send). cloudpickle 3.1.3 and later
write ``<dynamic-code>`` as the file name of every function it sends by value, so a
task defined in ``__main__``, a notebook or a lambda would fail on a worker with a
traceback that names no file and shows no source line. :class:`KeepCode` wraps a batch
so that it is pickled by par's choice of reducers instead: cloudpickle with code
objects that keep their file name (:func:`par_api.keep_code_filename`); large buffers
(numpy arrays) stay out of band (pickle protocol 5), for ``distributed`` to send as
frames. The batch stays pickled through the scheduler (which unpickles and pickles
tasks again with distributed's own serializer) and is unpickled on the worker only.
"""

from __future__ import annotations

import io
import pickle
from collections import ChainMap
from types import CodeType
from typing import Any

import cloudpickle
from par_api import keep_code_filename

__all__ = ["KeepCode"]


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    dispatch_table = ChainMap(
        {CodeType: keep_code_filename(cloudpickle.Pickler.dispatch_table[CodeType])},
        cloudpickle.Pickler.dispatch_table,
    )


class KeepCode:
    """A batch (or any callable) that ``distributed`` pickles through par's pickler.

    It stays pickled across the scheduler, which unpickles and pickles tasks again with
    its own serializer (that would drop the file names): only :meth:`load`, on the
    worker, unpickles the batch. Calling it calls the batch.
    """

    __slots__ = ("_buffers", "_data", "_obj")

    def __init__(self, obj: Any = None, data: bytes | None = None, buffers: list[Any] | None = None) -> None:
        self._obj = obj
        self._data = data
        self._buffers = buffers

    def _pickled(self) -> tuple[bytes, list[Any]]:
        if self._data is None:
            buffers: list[pickle.PickleBuffer] = []
            out = io.BytesIO()
            _Pickler(out, protocol=5, buffer_callback=buffers.append).dump(self._obj)
            self._data, self._buffers = out.getvalue(), list(buffers)
        return self._data, self._buffers or []

    def load(self) -> Any:
        """The batch itself (unpickled once, on first use)."""
        if self._obj is None and self._data is not None:
            self._obj = pickle.loads(self._data, buffers=self._buffers or ())
        return self._obj

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        data, buffers = self._pickled()
        return KeepCode, (None, data, buffers)
