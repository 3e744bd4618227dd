"""One object per process: built on first use, and built anew in a forked child.

Several parts of par keep one object per process that owns threads or sockets (a
worker's timeout watchdog, the parent's log-forwarding server, a worker's task
tracker). A forked child inherits the parent's object but none of its threads, so the
object must be rebuilt there; this module is that rule, written once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["ProcessLocal"]

T = TypeVar("T")

#: Forked children reset every ProcessLocal (``os.register_at_fork``): an object that is
#: set is this process's. Without the hook, the pid is compared.
_AT_FORK = hasattr(os, "register_at_fork")


class ProcessLocal(Generic[T]):
    """``get()`` returns this process's ``factory()``: built on the first call in each
    process (thread-safe), never shared with a forked child."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._value: T | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        if _AT_FORK:
            # A fork taken while another thread held the lock would leave it held for ever
            # in the child: the child starts with a fresh one.
            os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        # the parent's object is not this process's: the child builds its own (get() then
        # needs no getpid() system call, made once per batch by the process backends)
        self._value = None
        self._pid = None

    def get(self) -> T:
        """This process's object, built now if it has none yet."""
        value = self._value
        if value is not None and (_AT_FORK or self._pid == os.getpid()):
            return value
        with self._lock:
            pid = os.getpid()
            if self._pid != pid or self._value is None:
                self._value = self._factory()
                self._pid = pid
            return self._value

    def peek(self) -> T | None:
        """This process's object if it was built here already, else None (builds nothing)."""
        return self._value if self._pid == os.getpid() else None
