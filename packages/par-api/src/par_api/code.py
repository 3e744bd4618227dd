"""Code objects that keep their file name across a pickle by value.

cloudpickle (3.1.3 and later) writes ``<dynamic-code>`` as the ``co_filename`` of every
function it pickles by value, so that its payloads are deterministic. A worker that
runs such a function then raises tracebacks that read ``File "<dynamic-code>"`` with no
source line: the user loses the file and the line of their own code. Every pickler of
par that sends code by value (``par_serialization`` for the local process backends,
the cluster backends for their tasks) wraps its code reducer with
:func:`keep_code_filename`, so the code rebuilt in the worker names its real file,
whatever the cloudpickle version.
"""

from __future__ import annotations

from collections.abc import Callable
from types import CodeType
from typing import Any

__all__ = ["keep_code_filename"]

CodeReducer = Callable[[CodeType], Any]


def _rebuild_code(rebuild: Callable[..., CodeType], args: tuple[Any, ...], filename: str) -> CodeType:
    """Run the wrapped reduction's constructor, then restore the original file name."""
    code = rebuild(*args)
    return code if code.co_filename == filename else code.replace(co_filename=filename)


def keep_code_filename(reduce: CodeReducer) -> CodeReducer:
    """Wrap a ``copyreg``-style reducer of code objects (e.g. the one in
    ``cloudpickle.Pickler.dispatch_table``) so that the rebuilt code keeps the original
    ``co_filename``. Nested code objects (inner functions, lambdas, comprehensions) are
    pickled through the same dispatch table, so they keep theirs too."""

    def reducer(code: CodeType) -> Any:
        rv = reduce(code)
        if not isinstance(rv, tuple) or len(rv) != 2:
            return rv  # a reduction with state: leave it as it is
        rebuild, args = rv
        return _rebuild_code, (rebuild, tuple(args), code.co_filename)

    return reducer
