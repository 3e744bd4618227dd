"""par_scheduler: turns an iterable of ``par_api.Task`` into results on any backend.

Batching (fixed or adaptive), ``pre_dispatch`` (parsed, never evaluated), ordered and
unordered retrieval, timeouts, abort on the first error, and progress events with a
joblib-compatible ``verbose`` printer. Depends on ``par_api`` only.
"""

from .__about__ import __version__
from ._batching import (
    MAX_AUTO_BATCH_SIZE,
    TARGET_BATCH_DURATION,
    THREAD_TARGET_BATCH_DURATION,
    AutoBatcher,
    tail_batch_size,
)
from ._engine import interrupt, run
from ._predispatch import parse_pre_dispatch
from ._progress import ProgressEvent, VerbosePrinter, short_format_time, verbosity_filter
from ._validate import RETURN_AS_VALUES, check_batch_size, check_return_as, check_timeout

__all__ = [
    "MAX_AUTO_BATCH_SIZE",
    "RETURN_AS_VALUES",
    "TARGET_BATCH_DURATION",
    "THREAD_TARGET_BATCH_DURATION",
    "AutoBatcher",
    "ProgressEvent",
    "VerbosePrinter",
    "__version__",
    "check_batch_size",
    "check_return_as",
    "check_timeout",
    "interrupt",
    "parse_pre_dispatch",
    "run",
    "short_format_time",
    "tail_batch_size",
    "verbosity_filter",
]
