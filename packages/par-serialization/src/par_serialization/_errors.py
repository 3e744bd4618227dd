"""Pickling errors that say which task, function and argument (or result) failed."""

from __future__ import annotations

import pickle


class TaskPicklingError(pickle.PicklingError):
    """A task could not be pickled to be sent to a worker process (raised at dispatch).

    Attributes (None when unknown):
        task_index: position of the task in the whole ``Parallel`` call.
        function: qualified name of the task's function, e.g. ``"mymod.process"``.
        argument: which part failed: ``"args[1]"``, ``"kwargs['fh']"``, or ``"function"``
            when the function itself (or what it references) cannot be pickled.
        argument_type: qualified name of the failing object's type, e.g. ``"_io.TextIOWrapper"``.

    The original pickling exception is the ``__cause__``.
    """

    def __init__(
        self,
        message: str,
        *,
        task_index: int | None = None,
        function: str | None = None,
        argument: str | None = None,
        argument_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.task_index = task_index
        self.function = function
        self.argument = argument
        self.argument_type = argument_type


class ResultPicklingError(pickle.PicklingError):
    """A task's result could not be pickled to be sent back from the worker process.

    Attributes:
        function: qualified name of the function whose result failed.
        result_type: qualified name of the result's type (a string: the type itself may
            not exist in the parent process).
        task_index: position of the task in the whole call, when known.

    Raised in the worker with the original exception as ``__cause__``; its message
    repeats the original error, since a cause does not survive the trip to the parent.
    """

    def __init__(
        self,
        message: str,
        *,
        function: str | None = None,
        result_type: str | None = None,
        task_index: int | None = None,
    ) -> None:
        super().__init__(message)
        self.function = function
        self.result_type = result_type
        self.task_index = task_index


class UnpicklableExceptionError(Exception):
    """A task raised an exception that could not be sent back from the worker process.

    Neither pickle nor cloudpickle could carry it (a lock, an open file or a generator
    among its attributes, a ``__reduce__`` that fails, ...), so par reports it as this
    error instead of losing it or crashing the worker.

    Attributes:
        exc_type: qualified name of the original exception's type (``"mymod.MyError"``).
        exc_message: ``str()`` of the original exception.
        reason: why it could not be pickled (``"TypeError: cannot pickle '_thread.lock' object"``).

    The worker's traceback of the original exception is attached by the pool as
    ``__cause__`` (a ``RemoteTraceback``).
    """

    def __init__(self, message: str, exc_type: str = "", exc_message: str = "", reason: str = "") -> None:
        super().__init__(message, exc_type, exc_message, reason)
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.reason = reason

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
