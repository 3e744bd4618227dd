"""Logging records and prints of process workers, replayed in the parent.

With ``forward_output=True`` (the default) each batch sent to a process worker is
wrapped in a :class:`Forwarded`. In the worker, while the batch runs:

- ``sys.stdout``/``sys.stderr`` write into a buffer of the batch;
- a handler on the worker's root logger puts each record in the same buffer (the
  parent's root handlers that a worker inherited through ``fork`` are removed, so
  nothing is printed twice; handlers the worker set up itself stay), after formatting its message and traceback into text as
  :class:`logging.handlers.QueueHandler` does. The worker's root level is set to the
  lowest level the parent's loggers let through, so filtering happens in the parent.

When the batch ends (or every :data:`FLUSH_EVERY` seconds of a long batch) the buffer
goes to the parent through a Unix socket, in one message, and the worker waits for the
parent to acknowledge it before returning the batch's results: so everything a task
printed or logged is replayed before ``Parallel`` returns, in the order the task
produced it, and the output of two batches is never mixed line by line.

In the parent one listening socket and its accept thread (``par-output-forward``)
serve the whole process: started by the first call that forwards, they stay for the
process's lifetime (blocked in ``accept``, like loky's reusable executor between calls).
A daemon thread per worker connection (``par-output-forward-conn``, ending with its
worker) replays the messages: text goes
to the parent's current ``sys.stdout``/``sys.stderr`` (a Jupyter cell, pytest's
capture, a file), records go to ``logging.getLogger(record.name).handle(record)`` --
the parent's levels, filters, handlers and formatters. Each record says which worker
sent it: ``record.process``/``record.processName`` are the worker's, and
``record.par_worker`` is ``'<process name> (pid <pid>)'``.

The socket lives in Linux's abstract namespace (no file; elsewhere a file of the temp
folder removed at exit); a worker authenticates with a random token of the parent.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import pickle
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from par_api import ProcessLocal

__all__ = ["FLUSH_EVERY", "Forwarded", "forwarding_serializer", "parent_level"]

#: A batch running longer than this (seconds) sends what it has buffered so far.
FLUSH_EVERY = 1.0
#: How long a worker waits for the parent's acknowledgement before giving up (seconds).
ACK_TIMEOUT = 30.0

_HEADER = struct.Struct("!I")
_ACK = b"\x06"


def _send_msg(sock: socket.socket, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _recv_msg(sock: socket.socket) -> Any:
    header = _recv_exact(sock, _HEADER.size)
    if header is None:
        return None
    data = _recv_exact(sock, _HEADER.unpack(header)[0])
    return None if data is None else pickle.loads(data)


# -- parent side ----------------------------------------------------------------------


class _Server:
    """The parent's end: a listening Unix socket, an accept thread, a reader thread per
    worker connection."""

    def __init__(self) -> None:
        # os.urandom (what secrets.token_bytes returns), not secrets: that module brings
        # hmac and OpenSSL's _hashlib (~4 ms of CPU in the parent's first call, 5-10 ms
        # in a worker)
        self.pid = os.getpid()
        self.token = os.urandom(16)
        self._lock = threading.Lock()  # one replay at a time: blocks are never mixed
        self._path: str | None = None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if sys.platform.startswith("linux"):
            address: Any = b"\0par-forward-" + os.urandom(8).hex().encode()
        else:  # pragma: no cover - no abstract namespace
            self._path = address = os.path.join(tempfile.gettempdir(), f"par-fwd-{os.urandom(6).hex()}")
            atexit.register(self._remove_path)
        sock.bind(address)
        sock.listen(64)
        self.address = address
        self._sock = sock
        threading.Thread(target=self._accept_loop, name="par-output-forward", daemon=True).start()

    def _remove_path(self) -> None:  # pragma: no cover - not Linux
        if self._path is not None:
            try:
                os.unlink(self._path)
            except OSError:
                pass

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # pragma: no cover - closed
                return
            threading.Thread(
                target=self._serve, args=(conn,), name="par-output-forward-conn", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                if _recv_exact(conn, len(self.token)) != self.token:
                    return
                while True:
                    msg = _recv_msg(conn)
                    if msg is None:
                        return
                    items, want_ack = msg
                    self.replay(items)
                    if want_ack:
                        conn.sendall(_ACK)
            except (OSError, EOFError, pickle.UnpicklingError):
                return

    def replay(self, items: list[tuple[str, Any]]) -> None:
        """Write the text chunks to this process's current stdout/stderr and hand the
        records to their loggers, in order."""
        with self._lock:
            touched: set[Any] = set()
            for kind, data in items:
                try:
                    if kind == "log":
                        record = logging.makeLogRecord(data)
                        logger = logging.getLogger(record.name)
                        if logger.isEnabledFor(record.levelno):
                            logger.handle(record)
                    else:
                        stream = sys.stdout if kind == "stdout" else sys.stderr
                        if stream is not None:
                            stream.write(data)
                            touched.add(stream)
                except Exception:  # a broken handler or stream must not stop the replay
                    pass
            for stream in touched:
                try:
                    stream.flush()
                except Exception:
                    pass


_server: ProcessLocal[_Server] = ProcessLocal(_Server)


def server() -> _Server:
    """This process's forwarding server (started on first use; a new one after fork)."""
    return _server.get()


def parent_level() -> int:
    """The lowest level that some logger of this process lets through (its own level, or
    the root's): workers send records from that level up."""
    root = logging.getLogger()
    level = root.getEffectiveLevel()
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and logger.level and not logger.disabled:
            level = min(level, logger.level)
    return level


def forwarding_serializer(serialize: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap ``serialize`` (a ``TransportHooks.serialize_batch``) so that each batch it
    makes is sent as a :class:`Forwarded`."""
    global _parent_handlers
    level = parent_level()
    # Workers started by fork inherit these: they remove them (see _worker_channel).
    _parent_handlers = tuple(logging.getLogger().handlers)

    def serialize_forwarded(batch: Any) -> Forwarded:
        # The server (a thread) starts with the first batch, not before: a call that
        # fails while being set up leaves nothing running.
        srv = server()
        return Forwarded(serialize(batch), srv.address, srv.token, level)

    return serialize_forwarded


# -- worker side ----------------------------------------------------------------------


class _Channel:
    """A worker's connection to the parent (opened when there is something to send) and
    the buffer of the running batch."""

    def __init__(self, address: Any, token: bytes) -> None:
        self.address = address
        self.token = token
        self.pid = os.getpid()
        self.sock: socket.socket | None = None
        self.lock = threading.RLock()
        self.items: list[tuple[str, Any]] = []
        self.sent = False  # something was sent during the running batch
        self.last_flush = time.monotonic()
        self.broken = False
        self._captures: tuple[Any, Any, _Capture, _Capture] | None = None

    def captures(self, out: Any, err: Any) -> tuple[_Capture, _Capture]:
        """The ``sys.stdout``/``sys.stderr`` of a batch whose streams were ``out`` and
        ``err``: made once and reused while those stay the same and open (~2 us per batch)."""
        kept = self._captures
        if kept is None or kept[0] is not out or kept[1] is not err or kept[2].closed or kept[3].closed:
            kept = self._captures = (out, err, _Capture("stdout", out), _Capture("stderr", err))
        return kept[2], kept[3]

    def _connect(self) -> socket.socket | None:
        if self.sock is None and not self.broken:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.address)
                sock.sendall(self.token)
            except OSError:
                sock.close()
                self.broken = True
                return None
            self.sock = sock
        return self.sock

    def add(self, kind: str, data: Any) -> None:
        with self.lock:
            items = self.items
            if kind != "log" and items and items[-1][0] == kind:
                items[-1] = (kind, items[-1][1] + data)
            else:
                items.append((kind, data))
            if time.monotonic() - self.last_flush > FLUSH_EVERY:
                self.flush(ack=False)

    def flush(self, ack: bool) -> None:
        """Send the buffer; with ``ack``, wait until the parent replayed everything sent
        during the batch (only if something was)."""
        with self.lock:
            items, self.items = self.items, []
            self.last_flush = time.monotonic()
            if not items and not (ack and self.sent):
                return
            sock = self._connect()
            if sock is None:
                self._fallback(items)
                return
            try:
                _send_msg(sock, (items, ack))
                self.sent = not ack
                if ack:
                    sock.settimeout(ACK_TIMEOUT)
                    try:
                        sock.recv(1)
                    finally:
                        sock.settimeout(None)
            except (OSError, pickle.PicklingError):
                self.broken = True
                self._fallback(items)

    @staticmethod
    def _fallback(items: list[tuple[str, Any]]) -> None:
        """No parent to send to: write the text to the worker's own streams."""
        for kind, data in items:
            if kind in ("stdout", "stderr"):
                stream = sys.__stdout__ if kind == "stdout" else sys.__stderr__
                if stream is not None:
                    try:
                        stream.write(data)
                        stream.flush()
                    except Exception:
                        pass


class _Capture(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of a worker while a forwarded batch runs."""

    def __init__(self, kind: str, original: Any) -> None:
        self.kind = kind
        self.original = original

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            channel = _channel
            if channel is not None and _active:
                channel.add(self.kind, text)
            elif self.original is not None:
                return int(self.original.write(text))
        return len(text)

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", None) or "utf-8"


class _ForwardHandler(logging.Handler):
    """Root handler of a worker: records become plain data in the batch's buffer."""

    def emit(self, record: logging.LogRecord) -> None:
        channel = _channel
        if channel is None or not _active:
            # Outside a forwarded batch (a later call with forward_output=False, a thread
            # still logging): what Python does for a process without handlers.
            last_resort = logging.lastResort
            if last_resort is not None and record.levelno >= last_resort.level:
                last_resort.handle(record)
            return
        try:
            data = dict(record.__dict__)
            data["msg"] = record.getMessage()
            data["args"] = None
            if record.exc_info:
                data["exc_text"] = record.exc_text or _FORMATTER.formatException(record.exc_info)
            data["exc_info"] = None
            data["par_worker"] = f"{record.processName} (pid {record.process})"
            data.pop("message", None)
            channel.add("log", data)
        except Exception:
            self.handleError(record)


_FORMATTER = logging.Formatter()
_parent_handlers: tuple[logging.Handler, ...] = ()
_channel: _Channel | None = None
_active = False
_handler: _ForwardHandler | None = None


def _worker_channel(address: Any, token: bytes) -> _Channel:
    global _channel, _handler
    channel = _channel
    if channel is None or channel.pid != os.getpid() or channel.address != address:
        channel = _channel = _Channel(address, token)
    if _handler is None:
        _handler = _ForwardHandler()
        root = logging.getLogger()
        for inherited in list(root.handlers):
            # The parent's handlers copied by fork would print the records a second time;
            # handlers that the worker set up itself (an initializer) stay.
            if any(inherited is h for h in _parent_handlers):
                root.removeHandler(inherited)
        root.addHandler(_handler)
    return channel


class Forwarded:
    """A serialized batch whose prints and logging records reach the parent."""

    __slots__ = ("address", "level", "payload", "token")

    def __init__(self, payload: Callable[[], Any], address: Any, token: bytes, level: int) -> None:
        self.payload = payload
        self.address = address
        self.token = token
        self.level = level

    @property
    def functions(self) -> Any:
        """The wrapped payload's ``functions`` (see ``par_api.TransportHooks``)."""
        return getattr(self.payload, "functions", None)

    @property
    def n_tasks(self) -> Any:
        """The wrapped payload's number of tasks (counted for ``max_tasks_per_child``)."""
        return getattr(self.payload, "n_tasks", 1)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Forwarded, (self.payload, self.address, self.token, self.level))

    def __call__(self) -> Any:
        global _active
        channel = _worker_channel(self.address, self.token)
        root = logging.getLogger()
        if root.level != self.level:
            root.setLevel(self.level)
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = channel.captures(out, err)
        channel.last_flush = time.monotonic()
        _active = True
        try:
            return self.payload()
        finally:
            _active = False
            sys.stdout, sys.stderr = out, err
            if channel.items or channel.sent:  # else nothing to send or to wait for
                channel.flush(ack=True)
