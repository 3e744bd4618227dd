"""Functions the worker processes of par-memmap's tests run (importable by name in a spawned worker).

The tests put this folder on ``sys.path``; spawned workers inherit the parent's ``sys.path``.
"""

from __future__ import annotations

import copyreg
import io
import pickle
from typing import Any

import numpy as np
from par_memmap import make_reducers, make_result_reducers


def dumps(obj: Any, reducers: dict[type, Any]) -> bytes:
    """Pickle ``obj`` as par does: a Pickler whose dispatch_table carries the reducers."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = copyreg.dispatch_table | reducers
    pickler.dump(obj)
    return buf.getvalue()


def payload(reducers: dict[type, Any], func: Any, *args: Any, **kwargs: Any) -> bytes:
    return dumps((func, args, kwargs), reducers)


def run(data: bytes) -> bytes:
    """Worker side: unpickle a call, run it, pickle the result with the result reducers."""
    func, args, kwargs = pickle.loads(data)
    return dumps(func(*args, **kwargs), make_result_reducers())


def is_memmap(obj: Any) -> bool:
    return isinstance(obj, np.memmap)


def describe(obj: Any) -> Any:
    """The structure of ``obj`` with each array replaced by its type name."""
    if isinstance(obj, np.ndarray):
        return type(obj).__name__
    if isinstance(obj, (list, tuple)):
        return type(obj)([describe(x) for x in obj])
    if isinstance(obj, dict):
        return {k: describe(v) for k, v in obj.items()}
    return obj


def describe_call(*args: Any, **kwargs: Any) -> Any:
    return describe(list(args)), describe(kwargs)


def info(a: np.ndarray) -> tuple[str, bool, float]:
    return type(a).__name__, bool(a.flags.writeable), float(np.sum(a))


def fill(a: np.ndarray, value: float) -> None:
    a[...] = value
    if isinstance(a, np.memmap):
        a.flush()


def try_write(a: np.ndarray) -> str:
    try:
        a[0] = -1.0
    except ValueError:
        return "read-only"
    return "written"


def identity(obj: Any) -> Any:
    return obj


def make_large(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64)


def object_info(a: np.ndarray) -> tuple[str, str, list[Any]]:
    return type(a).__name__, str(a.dtype), list(a[:3])


__all__ = ["make_reducers"]
