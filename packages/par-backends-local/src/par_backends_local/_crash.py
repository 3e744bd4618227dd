"""Worker-death diagnosis: from an exit code (or signal) to a message a user can act on.

Every process backend of this package reports a dead worker through
:func:`death_report` (which worker and task to name) and :func:`worker_died_error` (the
wording, the likely causes and the attributes of the resulting
:class:`par_api.WorkerDiedError`: ``exitcode``, ``pid``, ``task``): they are decided here
only. The pools differ only in how they notice a death (loky's executor raises
``TerminatedWorkerError``; the ``multiprocessing`` backend's watcher sees a worker's
sentinel fire); both hand it to ``ProcessBackendBase.worker_death``.

Exit codes follow :attr:`multiprocessing.Process.exitcode`: ``-N`` means the process
was killed by signal ``N``, a value ``>= 0`` is the status it exited with.
"""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from par_api import WorkerDiedError

#: Likely causes of the signals a worker typically dies of.
_SIGNAL_CAUSES: dict[str, str] = {
    "SIGKILL": (
        "the operating system (or a user) killed it with SIGKILL. The usual cause is memory: the "
        "out-of-memory killer or a container/cgroup memory limit ends the biggest process. Reduce the "
        "memory used per task (smaller batches, fewer n_jobs, memmapped inputs) or raise the limit"
    ),
    "SIGSEGV": (
        "a segmentation fault: a native crash in C/C++/Cython code (an extension module, a "
        "library bug or a stack overflow from deep recursion), not a Python exception"
    ),
    "SIGBUS": "a bus error: a native crash, often a memory-mapped file that was truncated or removed",
    "SIGILL": "an illegal instruction: native code built for another CPU, or a native crash",
    "SIGFPE": "a floating-point exception raised by native code",
    "SIGABRT": (
        "it aborted: a native library called abort() (failed assertion, corrupted heap, "
        "os.abort() or a fatal Python error)"
    ),
    "SIGTERM": "it was asked to terminate (SIGTERM) by the operating system or another process",
    "SIGINT": "it was interrupted (SIGINT)",
    "SIGHUP": "its terminal or session went away (SIGHUP)",
    "SIGPIPE": "it wrote to a closed pipe (SIGPIPE)",
}


def signal_name(signum: int) -> str:
    """The name of signal ``signum`` (``'SIGKILL'``), or ``'signal N'`` when unknown."""
    try:
        return signal.Signals(signum).name
    except (ValueError, AttributeError):
        return f"signal {signum}"


def describe_worker_death(exitcode: int | None, pid: int | None = None, task: str | None = None) -> str:
    """A one-paragraph explanation of a worker's death from its exit code and pid.

    ``exitcode`` is ``None`` when it could not be observed (e.g. on Windows); ``task``
    (``'task 3 (function f)'``) says what it was running, when known.
    """
    who = f"A worker process (pid {pid})" if pid is not None else "A worker process"
    if task:
        who = f"{who} running {task}"
    if exitcode is None:
        what = (
            "died unexpectedly and its exit code is unknown. Common causes: it was killed for "
            "using too much memory, it crashed in native code (segmentation fault), or a task "
            "called os._exit()"
        )
    elif exitcode < 0 and sys.platform != "win32":
        name = signal_name(-exitcode)
        cause = _SIGNAL_CAUSES.get(name, "it received a signal that ended it")
        what = f"was killed by signal {name} (exit code {exitcode}): {cause}"
    elif exitcode == 0:
        what = (
            "exited with code 0 while tasks were pending: something in a task (or the worker "
            "initializer) ended the process early, e.g. os._exit(0)"
        )
    else:
        what = (
            f"exited with code {exitcode} while running tasks: a task or a library it called "
            f"ended the process with os._exit({exitcode}) or an equivalent exit() in native code, "
            f"or the worker initializer failed at start-up (sys.exit() and exceptions inside a "
            f"task are reported as ordinary errors instead)"
        )
    return (
        f"{who} {what}. The tasks it was running are lost; the pool was discarded and the next "
        f"call starts fresh workers."
    )


def worker_died_error(
    exitcode: int | None,
    pid: int | None = None,
    cause: BaseException | None = None,
    extra: str = "",
    task: str | None = None,
) -> WorkerDiedError:
    """Build the :class:`par_api.WorkerDiedError` for a dead worker.

    ``cause`` (e.g. loky's ``TerminatedWorkerError``) becomes ``__cause__``; ``extra``
    is appended to the message. ``task`` describes what the worker was running
    (``'task 3 (function f)'``): it is named in the message and kept as ``.task``.
    """
    message = describe_worker_death(exitcode, pid, task)
    if extra:
        message = f"{message} {extra}"
    error = WorkerDiedError(message, exitcode=exitcode, pid=pid, task=task)
    if cause is not None:
        error.__cause__ = cause
    return error


_EXITCODE_RE = re.compile(r"\b(?:[A-Z0-9_]+)\((-?\d+)\)")


def parse_exitcodes(message: str) -> list[int]:
    """Exit codes listed in a loky ``TerminatedWorkerError`` message (``{SIGKILL(-9)}``)."""
    codes: list[int] = []
    for group in re.findall(r"\{([^{}]*)\}", message):
        codes.extend(int(code) for code in _EXITCODE_RE.findall(group))
    return codes


def abnormal_exits(processes: Mapping[int, Any] | Iterable[Any]) -> list[tuple[int | None, int]]:
    """``(pid, exit code)`` of the worker processes (``pid`` and ``exitcode`` attributes, as
    :class:`multiprocessing.Process`) that have ended with a non-zero code."""
    procs = list(processes.values()) if isinstance(processes, Mapping) else list(processes)
    dead: list[tuple[int | None, int]] = []
    for proc in procs:
        try:
            code = proc.exitcode
        except (ValueError, OSError, AttributeError):  # closed process object
            continue
        if code is not None and code != 0:
            dead.append((getattr(proc, "pid", None), code))
    return dead


def death_report(
    dead: Iterable[tuple[int | None, int | None]],
    describe: Callable[[int | None], str | None] | None = None,
    cause: BaseException | None = None,
) -> Callable[[], WorkerDiedError]:
    """The one rule for naming a worker death, whichever pool saw it.

    ``dead`` are the ``(pid, exit code)`` of the workers that ended; ``describe(pid)``,
    when given, says which task a dead worker was running (None when unknown). The
    worker whose task is known is named first, the others are listed after it. With no
    dead worker observed, the exit codes printed in ``cause``'s message (loky's
    ``TerminatedWorkerError``) are used. Returns a factory: each failed batch gets its
    own :class:`WorkerDiedError` (an exception object carries its own traceback).
    """
    described = [(pid, code, describe(pid) if describe is not None else None) for pid, code in dead]
    if not described:
        codes = parse_exitcodes(str(cause)) if cause is not None else []
        described = [(None, codes[0] if codes else None, None)]
    described.sort(key=lambda item: item[2] is None)  # stable: the order of ``dead`` otherwise
    pid, code, task = described[0]
    extra = ""
    if len(described) > 1:
        others = ", ".join(f"pid {p} ({_code_text(c)})" for p, c, _ in described[1:])
        extra = f"Other workers that ended: {others}."
    return lambda: worker_died_error(code, pid, cause=cause, extra=extra, task=task)


def _code_text(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        return signal_name(-code)
    return f"exit code {code}"
