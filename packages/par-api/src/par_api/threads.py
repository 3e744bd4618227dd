"""Raising an exception in another thread of this process (CPython's
``PyThreadState_SetAsyncExc``), the one way to stop a thread that runs Python code.

Used by the threading backend (abandoned tasks), the dask backend (a batch over its
per-task timeout on its worker) and the ray backend (``ray.cancel`` passed on to the
batch's thread). ``ctypes`` is imported on first use only: ``import par_api`` stays
cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["async_raise"]

_functions: Any = None  # (raise_in, withdraw_in), False where unavailable, None: not looked up


def _set_async_exc() -> Any:
    """``(raise_in, withdraw_in)``: private ctypes prototypes of
    ``PyThreadState_SetAsyncExc`` (the second passes NULL, which withdraws a pending
    exception), or None where ``ctypes.pythonapi`` does not exist (not CPython)."""
    global _functions
    if _functions is None:
        try:
            import ctypes

            api = ctypes.pythonapi
            raise_in = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
                ("PyThreadState_SetAsyncExc", api)
            )
            withdraw_in = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
                ("PyThreadState_SetAsyncExc", api)
            )
            _functions = (raise_in, withdraw_in)
        except (ImportError, AttributeError, OSError):  # pragma: no cover - other interpreters
            _functions = False
    return _functions or None


def async_raise(ident: int, exc_type: type[BaseException] | None) -> bool:
    """Raise ``exc_type`` in the thread whose ``threading.get_ident()`` is ``ident``, at
    its next Python instruction; ``None`` withdraws an exception not delivered yet.

    True when exactly one thread was reached. False when no thread has that ident (it
    ended), where the C API is not reachable (not CPython), or when more than one
    thread state was hit: the exception is then withdrawn from all of them at once, as
    the C API's documentation asks. A thread blocked in C code (``time.sleep``, a lock,
    a socket read) gets the exception only when that call returns. ``exc_type`` must be
    an exception class (a ``BaseException`` subclass such as ``KeyboardInterrupt`` is not
    caught by ``except Exception`` in the thread).
    """
    if exc_type is not None and not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
        raise TypeError(
            f"async_raise: exc_type must be an exception class (a BaseException subclass) or None "
            f"to withdraw, got {exc_type!r}"
        )
    functions = _set_async_exc()
    if functions is None:  # pragma: no cover - other interpreters
        return False
    raise_in, withdraw_in = functions
    if exc_type is None:
        return bool(withdraw_in(ident, None) == 1)
    count = raise_in(ident, exc_type)
    if count > 1:  # more than one thread state matched: undo it everywhere
        withdraw_in(ident, None)
        return False
    return bool(count == 1)
