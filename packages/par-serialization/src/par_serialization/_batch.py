"""``BatchSerializer`` (parent side) and ``SerializedBatch`` (what crosses to a worker)."""

from __future__ import annotations

import copyreg
import io
import operator
import os
import pickle
import threading
from collections.abc import Callable, Mapping
from itertools import repeat
from typing import Any

from par_api import BatchInfo, SingleArgTasks

from . import _buffers, _orphans, _spill
from ._blobs import DEFAULT_BLOB_THRESHOLD, BlobStore, TempBlobStore
from ._errors import ResultPicklingError, TaskPicklingError, UnpicklableExceptionError
from ._lookup import describe_callable, type_name
from ._picklers import (
    AUTO,
    Reducer,
    SerializerStats,
    Strategy,
    _choice_for,
    _reduce_exception_portable,
    gc_paused,
    make_exception_picklable,
    resolve_pickler,
)
from ._results import ResultSpec

_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("TextIOWrapper", "BufferedReader", "BufferedWriter", "BufferedRandom", "FileIO"),
        "pass the file's path and open it inside the task",
    ),
    (
        ("lock", "RLock", "Condition", "Semaphore", "Event"),
        "a lock cannot be shared with another process: use a thread backend (prefer='threads' or "
        "require='sharedmem') or a multiprocessing.Manager() lock",
    ),
    (("generator", "coroutine", "async_generator"), "materialise it first, e.g. list(gen)"),
    (("socket", "connection", "Connection"), "open the connection inside the task"),
)


def _hint(tp_name: str) -> str:
    for needles, text in _HINTS:
        if any(n in tp_name for n in needles):
            return text
    return (
        "process workers receive a pickled copy of every argument: pass picklable data, or use a "
        "thread backend (prefer='threads' or require='sharedmem')"
    )


def _validate_reducers(reducers: Any, param: str) -> dict[type, Reducer] | None:
    if reducers is None:
        return None
    if not isinstance(reducers, Mapping):
        raise TypeError(
            f"{param} must be None or a mapping of type -> reducer function (copyreg style), "
            f"got {type(reducers).__name__}."
        )
    for key, value in reducers.items():
        if not isinstance(key, type) or not callable(value):
            raise TypeError(
                f"{param} must map types to callables (copyreg-style reducers), got the entry "
                f"{key!r}: {value!r}."
            )
    return dict(reducers)


def _validate_protocol(protocol: Any) -> int | None:
    if protocol is None:
        return None
    if (
        not isinstance(protocol, int)
        or isinstance(protocol, bool)
        or not 2 <= protocol <= pickle.HIGHEST_PROTOCOL
    ):
        raise ValueError(
            f"protocol must be None or an int from 2 to {pickle.HIGHEST_PROTOCOL}, got {protocol!r}."
        )
    return protocol


#: The picklers whose batches share one pickled header per call (``_header_for``).
_HEADER_PICKLERS = frozenset({AUTO, "pickle", "cloudpickle"})

#: The one empty kwargs dict of a batch (callees get their own copy of **kwargs).
_NO_KWARGS: dict[str, Any] = {}


#: Third item of a packed batch whose tasks each have one positional argument, no keywords.
_SINGLE = 1


def _pack_tasks(tasks: Any) -> Any:
    """The tasks of a batch in the form that pickles fastest.

    A batch whose tasks all call the same function (the usual ``delayed(f)(x) for x in
    ...``) travels as ``(function, [args, ...], [kwargs, ...] or None)``: one function
    reference and the argument tuples, without a tuple and a dict per task in the pickle
    (pickling is about 5x and unpickling 3x faster for small tasks). When moreover every
    task has exactly one positional argument and no keywords, it travels as ``(function,
    [arg, ...], _SINGLE)``: the pickler memoizes every tuple it writes, so a list of
    1-tuples pickles 8x and unpickles 5x slower than the list of the values (0.11 against
    0.013 us per task, and 0.13 against 0.023, for small ints). Any other batch
    travels as a list of plain ``(function, args, kwargs)`` tuples: the C pickler saves
    them without a Python-level call per task, where a NamedTuple such as
    ``par_api.Task`` goes through ``__reduce_ex__``. :func:`_unpack_tasks` undoes both.
    """
    single = SingleArgTasks.of(tasks)  # the usual batch, in one pass
    if single is not None:
        return (single.func, single.args, _SINGLE)
    try:
        first = tasks[0][0]
        args = [a for f, a, k in tasks if f is first and not k]
        if len(args) == len(tasks):
            return (first, args, None)
        if all(task[0] is first for task in tasks):
            return (first, [task[1] for task in tasks], [task[2] for task in tasks])
    except (TypeError, ValueError, IndexError, KeyError):
        pass  # not (function, args, kwargs) triples: let the pickler and _diagnose say so
    return list(map(tuple, tasks))


def _unpack_tasks(packed: Any) -> list[Any]:
    """The ``(function, args, kwargs)`` tasks packed by :func:`_pack_tasks`."""
    if type(packed) is not tuple:
        return packed  # type: ignore[no-any-return]
    func, args, kwargs = packed
    if type(kwargs) is int:  # _SINGLE: no tuple per task (BatchedCalls maps func over args)
        return SingleArgTasks(func, args)  # type: ignore[return-value]
    return list(zip(repeat(func), args, repeat(_NO_KWARGS) if kwargs is None else kwargs))


class BatchSerializer:
    """Pickles batches of tasks for process workers, in the parent, at dispatch.

    One instance serves one ``Parallel`` call (``par`` sets it as
    ``TransportHooks.serialize_batch``); call ``close()`` at the end of the call.

    Args:
        reducers: extra copyreg-style reducers (``{type: reducer}``, exact-type lookup like
            ``pickle``'s ``dispatch_table``) applied to task arguments, e.g. memmapping
            reducers for numpy arrays.
        pickler: module whose ``Pickler`` is used ("pickle", "cloudpickle", or any module
            defining ``Pickler``), or "auto" for par's default. None: the ``LOKY_PICKLER``
            environment variable if set, else "auto" (plain pickle; cloudpickle only for
            functions and classes that pickle cannot send by reference).
        protocol: pickle protocol (2 to ``pickle.HIGHEST_PROTOCOL``); default the highest.
        result_reducers: reducers applied in the worker when pickling results back.
        spill_threshold: a pickled batch, or a batch's results, of at least this many
            bytes travels through a file in ``/dev/shm`` instead of the pool's pipe (about
            3x faster; see ``_spill``); None never does. Batches above 64 MiB, and any
            message when ``/dev/shm`` is missing or full, keep using the pipe.

    Calling it with a batch (``tasks``, ``nested``, ``index`` attributes; rebuilt in the
    worker as ``type(batch)(tasks, nested, index)``) pickles the batch now and returns a
    small picklable ``SerializedBatch``. Callables pickled by value are pickled once per
    instance and the bytes are reused for every later batch.

    Raises (at construction): ``TypeError``/``ValueError`` for bad arguments, naming them;
        ``ValueError`` naming ``LOKY_PICKLER`` when the module it names has no ``Pickler``.
    Raises (on call): ``TaskPicklingError`` naming the task, function and argument.
    """

    def __init__(
        self,
        reducers: Mapping[type, Callable[[Any], tuple[Any, ...]]] | None = None,
        *,
        pickler: str | None = None,
        protocol: int | None = None,
        result_reducers: Mapping[type, Callable[[Any], tuple[Any, ...]]] | None = None,
        blob_store: BlobStore | None = None,
        blob_threshold: int = DEFAULT_BLOB_THRESHOLD,
        spill_threshold: int | None = _spill.DEFAULT_SPILL_THRESHOLD,
    ) -> None:
        if spill_threshold is not None and (
            not isinstance(spill_threshold, int) or isinstance(spill_threshold, bool) or spill_threshold < 1
        ):
            raise ValueError(f"spill_threshold must be None or an int >= 1 (bytes), got {spill_threshold!r}.")
        if blob_store is not None and not callable(getattr(blob_store, "put", None)):
            raise TypeError(
                "blob_store must be None or an object with a put(token: str, data: bytes) -> str "
                f"method, got {type(blob_store).__name__}."
            )
        if not isinstance(blob_threshold, int) or isinstance(blob_threshold, bool) or blob_threshold < 0:
            raise ValueError(f"blob_threshold must be an int >= 0 (bytes), got {blob_threshold!r}.")
        _orphans.sweep_once()  # what killed processes left (exchange and blob folders)
        self._own_store = TempBlobStore() if blob_store is None else None
        self._blob_store: Any = blob_store if blob_store is not None else self._own_store
        self._reducers = _validate_reducers(reducers, "reducers")
        self._result_reducers = _validate_reducers(result_reducers, "result_reducers")
        self._protocol = _validate_protocol(protocol)
        self._choice = resolve_pickler(pickler)
        self._token_prefix = os.urandom(8).hex()
        self._strategy = Strategy(
            self._choice,
            self._reducers,
            self._protocol,
            self._token_prefix,
            blob_store=self._blob_store,
            blob_threshold=blob_threshold,
        )
        # lazy: a worker unpickles the reducers only if their types' modules are imported there
        self._spill_folder = _spill.process_folder() if spill_threshold is not None else None
        folder = self._spill_folder.path if self._spill_folder is not None else None
        self._spill_dir = folder
        self._spill_threshold = spill_threshold or 0
        self._spill_prefix = f"c{self._token_prefix}"
        spill = (folder, self._spill_prefix, self._spill_threshold) if folder is not None else None
        self._result_spec = ResultSpec.make(self._choice.name, self._protocol, self._result_reducers, spill)
        self._lock = threading.Lock()
        self._batches = 0
        self._header: tuple[type, Any, bytes] | None = None  # (batch type, nested, pickled header)

    @property
    def pickler_name(self) -> str:
        """The pickler in force for this call and where the choice came from."""
        return self._choice.describe()

    @property
    def stats(self) -> SerializerStats:
        """Counters of this call's pickling (see ``SerializerStats``)."""
        handler = self._strategy.handler
        return SerializerStats(
            batches=self._batches,
            by_value=handler.by_value,
            cache_hits=handler.hits,
            fallbacks=self._strategy.fallbacks,
            cached=len(handler),
        )

    def __call__(self, batch: Any) -> SerializedBatch:
        try:
            tasks = batch.tasks
        except AttributeError:
            raise TypeError(
                "BatchSerializer(batch): batch must be a BatchedCalls-like object with "
                f"'tasks', 'nested' and 'index' attributes, got {type(batch).__name__}."
            ) from None
        nested = getattr(batch, "nested", None)
        index = getattr(batch, "index", 0) or 0
        packed = _pack_tasks(tasks)
        try:
            header = self._header_for(type(batch), nested)
            # large buffers (numpy arrays' data) stay out of band: no copy until the pool
            # pickles the SerializedBatch, which writes them once into its own message
            payload, buffers = self._strategy.dumps_oob((header, packed, index))
        except Exception as exc:
            raise self._diagnose(tasks, nested, index, exc) from exc
        with self._lock:
            self._batches += 1
        sent = self._spilled(payload, buffers, len(tasks), index)
        if sent is None:
            sent = SerializedBatch(payload, len(tasks), index, buffers)
        sent.functions = (packed[0],) if type(packed) is tuple else BatchInfo.first_functions(tasks)
        return sent

    def _header_for(self, batch_type: type, nested: Any) -> Any:
        """What every batch of the call shares, pickled once: ``(batch type, nested,
        result spec)`` (the batches of a call share one ``nested`` object; another one
        pickles a new header). With a custom ``Pickler`` module, the tuple itself, pickled
        with each batch as before."""
        if self._choice.name not in _HEADER_PICKLERS:  # a custom Pickler: one pickling per batch
            return (batch_type, nested, self._result_spec)
        cached = self._header
        if cached is not None and cached[0] is batch_type and cached[1] is nested:
            return cached[2]
        blob = self._strategy.dumps((batch_type, nested, self._result_spec))
        self._header = (batch_type, nested, blob)
        return blob

    def _spilled(self, payload: bytes, buffers: list[Any], n: int, index: int) -> SerializedBatch | None:
        """The batch written to the exchange folder, when it is large enough (else None)."""
        if self._spill_dir is None:
            return None
        size = len(payload) + _buffers.total_size(buffers)
        if not self._spill_threshold <= size <= _spill.SPILL_MAX_BATCH:
            return None
        done = _spill.write(self._spill_dir, self._spill_prefix, [payload, *buffers])
        if done is None:
            return None
        return SerializedBatch(b"", n, index, (), spill=done)

    def close(self) -> None:
        """Drop the cache of pickled callables (end of the call), remove the call's
        messages left in the exchange folder (never received: an aborted call) and the
        blobs of large callables if this serializer made its own store (a store passed
        as ``blob_store`` is the caller's to clean). The instance stays usable."""
        self._strategy.handler.clear()
        if self._spill_folder is not None:
            self._spill_folder.remove(self._spill_prefix)
        if self._own_store is not None:
            self._own_store.close()

    def __enter__(self) -> BatchSerializer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- error path only: find what failed
    def _diagnose(self, tasks: Any, nested: Any, index: int, exc: Exception) -> Exception:
        dumps = self._strategy.dumps
        for i, task in enumerate(tasks):
            try:
                func, args, kwargs = task
            except Exception:
                func, args, kwargs = task, (), {}
            parts: list[tuple[str, Any]] = [("function", func)]
            parts += [(f"args[{j}]", a) for j, a in enumerate(args)]
            parts += [(f"kwargs[{k!r}]", v) for k, v in dict(kwargs).items()]
            for label, value in parts:
                try:
                    dumps(value)
                except Exception as sub:
                    tname = type_name(type(value))
                    if label == "function":
                        what = f"the function itself ({tname}), or something it refers to, cannot be pickled"
                        hint = "define it at module level, or check what its closure and globals hold"
                        if self._choice.name not in (AUTO, "cloudpickle"):
                            hint += (
                                f"; the pickler in force is {self._choice.name!r} (from {self._choice.source}): "
                                "decorate the function with wrap_non_picklable_objects, or unset LOKY_PICKLER"
                            )
                    else:
                        what = f"argument {label} of type {tname} cannot be pickled"
                        hint = _hint(tname)
                    return TaskPicklingError(
                        # starts with joblib's (loky's) text, which code may match
                        f"Could not pickle the task to send it to the workers: task {index + i} "
                        f"(function {describe_callable(func)}): {what} ({type(sub).__name__}: {sub}). "
                        f"Hint: {hint}.",
                        task_index=index + i,
                        function=describe_callable(func),
                        argument=label,
                        argument_type=tname,
                    )
        if nested is not None:
            try:
                dumps(nested)
            except Exception as sub:
                return pickle.PicklingError(
                    f"Could not pickle the nested-backend setting {nested!r} of the batch starting at "
                    f"task {index}: {type(sub).__name__}: {sub}"
                )
        first = tasks[0] if len(tasks) else None
        return TaskPicklingError(
            f"Could not pickle the task to send it to the workers: the batch of {len(tasks)} tasks "
            f"starting at task {index} ({type(exc).__name__}: {exc}).",
            task_index=index,
            function=describe_callable(first[0]) if first is not None else None,
        )


def _load_spilled_results(path: str, sizes: tuple[int, ...]) -> list[Any]:
    blob, *buffers = _spill.read(path, sizes, "a batch's results")
    with gc_paused():
        return pickle.loads(blob, buffers=buffers)  # type: ignore[no-any-return]


def _load_results(blob: bytes, *buffers: Any) -> list[Any]:
    with gc_paused():
        return pickle.loads(blob, buffers=_buffers.for_loads(buffers))  # type: ignore[no-any-return]


class _PickledResults(list):  # type: ignore[type-arg]
    """The results of a batch, already pickled by the call's strategy in the worker.

    A list (so an in-process caller can use it as one); pickled by the pool, it sends
    the bytes made in the worker, and unpickles in the parent as a plain list.
    """

    __slots__ = ("_blob", "_buffers", "_keep", "_spill")

    def __init__(
        self, results: list[Any], blob: bytes, buffers: Any = (), keep: Any = None, spill: Any = None
    ) -> None:
        super().__init__(results)
        self._blob = blob
        self._buffers = tuple(buffers)  # protocol-5 out-of-band buffers of the results
        self._spill = spill  # the call's (folder, prefix, threshold), or None
        # The batch's tasks, kept alive until the pool drops this object, which it does
        # after sending it: freeing large arguments (10-30 ms for a dict of 10^6 items)
        # then happens after the results are on their way, not before.
        self._keep = keep

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        spill = self._spill
        if spill is not None:
            folder, prefix, threshold = spill
            if len(self._blob) + _buffers.total_size(self._buffers) >= threshold:
                done = _spill.write(folder, prefix, [self._blob, *self._buffers])
                if done is not None:
                    return (_load_spilled_results, done)
        return (_load_results, (self._blob, *_buffers.to_wire(self._buffers, protocol)))

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__reduce_ex__(2)


def _result_strategy(spec: ResultSpec | tuple[str, int | None, Mapping[type, Reducer] | None]) -> Strategy:
    if isinstance(spec, ResultSpec):
        return spec.strategy()
    name, protocol, reducers = spec
    choice = resolve_pickler("auto") if name == AUTO else _choice_for(name, "the parent's choice", "pickler")
    return Strategy(choice, reducers, protocol, token_prefix=None)


#: At most this many results go back as :class:`_PlainResults`.
PLAIN_MAX_RESULTS = 1024
_PLAIN_TYPES = frozenset({int, float, bool, type(None)})


def _plain_results(results: Any) -> bool:
    """Whether ``results`` is a short list of numbers and Nones only (exact types)."""
    return (
        type(results) is list
        and len(results) <= PLAIN_MAX_RESULTS
        and _PLAIN_TYPES.issuperset(map(type, results))
    )


class _PlainResults(list):  # type: ignore[type-arg]
    """A batch's results that the pool pickles itself: a short list of numbers and Nones
    (:func:`_plain_results`). The call's strategy would send it alike (no reducer applies
    to them, they always pickle, hold no buffer and are far below the spill threshold),
    so it is not pickled a second time in the worker and unpickled a second time in the
    parent (about 10 us less per small batch on the two sides). Like
    :class:`_PickledResults`, it keeps the batch's tasks alive until the pool drops it,
    after sending it; it unpickles as a plain list."""

    __slots__ = ("_keep",)

    def __init__(self, results: list[Any], keep: Any) -> None:
        super().__init__(results)
        self._keep = keep

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # ``[] + items``: a builtin function as the constructor, which loky's
        # cloudpickle-based pickler passes on at once (``list``, a class, or a Python
        # function would each cost it a by-value check, ~1-2 us)
        return (operator.add, ([], list(self)))

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__reduce_ex__(2)


def _pack_results(results: list[Any], tasks: Any, index: int, spec: Any) -> _PickledResults:
    strategy = _result_strategy(spec)
    try:
        blob, buffers = strategy.dumps_oob(results)
    except Exception as exc:
        position, culprit = 0, results
        for i, result in enumerate(results):
            try:
                strategy.dumps(result)
            except Exception:
                position, culprit = i, result
                break
        try:
            func = describe_callable(tasks[position][0])
        except Exception:
            func = None
        tname = type_name(type(culprit))
        raise ResultPicklingError(
            f"Could not pickle the result of task {index + position} (function {func}) to send it "
            f"back from the worker process: a {tname} cannot be pickled ({type(exc).__name__}: {exc}). "
            "Hint: return picklable data (convert it, or keep the object inside the worker).",
            function=func,
            result_type=tname,
            task_index=index + position,
        ) from exc
    return _PickledResults(results, blob, buffers, keep=tasks, spill=getattr(spec, "spill", None))


class SerializedBatch:
    """A batch pickled in the parent: bytes plus a few numbers. Picklable and callable.

    Calling it (in the worker) unpickles the batch — callables sent by value come from a
    per-process cache when the same call already sent them — runs it, and returns the
    results as a list that the pool pickles back using the call's strategy (a short list
    of numbers and Nones is left to the pool's pickler, which sends it alike: see
    :class:`_PlainResults`). A result that
    cannot be pickled raises ``ResultPicklingError`` naming the function and the type.
    An exception raised by a task whose class has its own ``__init__`` (which plain
    pickle could not rebuild in the parent) gets a faithful reducer registered with
    ``copyreg`` in the worker, so it comes back with its exact type and attributes.
    """

    __slots__ = ("buffers", "functions", "index", "n_tasks", "payload", "spill")

    def __init__(
        self,
        payload: bytes,
        n_tasks: int,
        index: int = 0,
        buffers: Any = (),
        spill: tuple[str, tuple[int, ...]] | None = None,
    ) -> None:
        self.payload = payload
        #: ``(path, sizes)`` when the pickle and its buffers were written to the exchange
        #: folder (``payload`` is then empty): the worker reads and unlinks the file
        self.spill = spill
        self.n_tasks = n_tasks
        self.index = index
        #: the batch's first distinct callables (at most 4), parent side only (not sent):
        #: what a backend needs to name the batch without keeping its tasks
        self.functions: tuple[Any, ...] = ()
        #: protocol-5 out-of-band buffers (``pickle.PickleBuffer`` in the parent, over the
        #: arguments' memory; ``bytearray``/``bytes`` once received)
        self.buffers = tuple(buffers)

    def __len__(self) -> int:
        return self.n_tasks

    @property
    def nbytes(self) -> int:
        """Size of the pickled batch in bytes (the pickle and its out-of-band buffers)."""
        if self.spill is not None:
            return sum(self.spill[1])
        return len(self.payload) + _buffers.total_size(self.buffers)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # protocol >= 5: the pool's pickler writes each buffer once, from the original memory
        wire = _buffers.to_wire(self.buffers, protocol)
        return (SerializedBatch, (self.payload, self.n_tasks, self.index, wire, self.spill))

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__reduce_ex__(2)

    def __repr__(self) -> str:
        return f"SerializedBatch(<{self.n_tasks} tasks from index {self.index}, {self.nbytes} bytes>)"

    def __call__(self) -> Any:
        payload: Any
        buffers: Any
        try:
            if self.spill is not None:
                what = f"the batch of {self.n_tasks} tasks starting at task {self.index}"
                payload, *buffers = _spill.read(*self.spill, what)
            else:
                payload, buffers = self.payload, _buffers.for_loads(self.buffers)
            with gc_paused():
                header, packed, index = pickle.loads(payload, buffers=buffers)
                tasks = _unpack_tasks(packed)
            batch_type, nested, result_spec = _load_header(header)
            del payload, buffers
        except Exception as exc:
            if hasattr(exc, "add_note"):
                exc.add_note(
                    f"(par: while unpickling the batch of {self.n_tasks} tasks starting at task "
                    f"{self.index} in process {os.getpid()}; a module the tasks refer to may be "
                    "missing in the worker)"
                )
            raise
        try:
            results = batch_type(tasks, nested, index)()
        except BaseException as exc:
            make_exception_picklable(exc)
            _annotate(exc, tasks, index)
            portable = _portable_exception(exc)
            if portable is exc:
                raise
            tb = exc.__traceback__
            del exc
        else:
            if _plain_results(results):
                return _PlainResults(results, tasks)
            return _pack_results(results, tasks, index, result_spec)
        # Raised outside the except block: no __context__ holding the original (which
        # could not be pickled, or would be pickled twice).
        raise portable.with_traceback(tb)


#: Worker side: the headers of the calls' batches (see ``BatchSerializer._header_for``),
#: unpickled once per process and call instead of once per batch.
_HEADERS: dict[bytes, tuple[Any, Any, Any]] = {}
_MAX_HEADERS = 16
_SIMPLE = (str, int, type(None))


def _load_header(blob: Any) -> tuple[Any, Any, Any]:
    """``(batch type, nested, result spec)`` of a batch's header. Kept for the next
    batches only when ``nested`` is None or a tuple of names and numbers (what the local
    process backends send): anything else (a backend instance) is unpickled afresh for
    each batch, as a batch's own copy."""
    if type(blob) is tuple:  # sent with the batch (a custom Pickler)
        return blob  # type: ignore[return-value]
    header = _HEADERS.get(blob)
    if header is not None:
        return header
    header = pickle.loads(blob)
    nested = header[1]
    if nested is None or (type(nested) is tuple and all(type(x) in _SIMPLE for x in nested)):
        if len(_HEADERS) >= _MAX_HEADERS:
            _HEADERS.clear()
        _HEADERS[blob] = header
    return header  # type: ignore[no-any-return]


# -- exceptions raised by tasks: make sure they reach the parent -----------------------


def _annotate(exc: BaseException, tasks: Any, index: int) -> None:
    """A ``MemoryError`` says nothing by itself: say which task(s) ran out of memory."""
    if not isinstance(exc, MemoryError):
        return
    try:
        func = describe_callable(tasks[0][0]) if len(tasks) else None
    except Exception:
        func = None
    n = len(tasks)
    where = f"task {index}" if n == 1 else f"one of tasks {index} to {index + n - 1}"
    text = (
        f"par: {where} (function {func}) ran out of memory in worker process {os.getpid()}: it hit "
        "a memory limit (resource.setrlimit, a container or cgroup limit) or the machine's memory"
    )
    if not exc.args:
        exc.args = (text,)
    elif hasattr(exc, "add_note"):
        exc.add_note(text)


class _ExceptionCarrier(Exception):
    """Carries a task's exception that the pool could not send as is: a ``BaseException``
    that is not an ``Exception`` (``SystemExit``, ``KeyboardInterrupt``: a
    ``multiprocessing.Pool`` worker would die of it) or one that only cloudpickle can
    pickle. Unpickled in the parent, it *is* the original exception again.

    Instances are of a fresh subclass made by :func:`_make_carrier`, so that no reducer
    registered with ``copyreg`` for exception classes (``tblib.pickling_support``, which
    ``distributed`` installs, registers one for every exception class that exists) can
    take precedence over ``__reduce__``.
    """

    def __init__(self, original: BaseException, blob: bytes) -> None:
        super().__init__(f"{type_name(type(original))}: {original}")
        self.blob = blob

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpack_exception, (self.blob,))


def _make_carrier(original: BaseException, blob: bytes) -> _ExceptionCarrier:
    cls = type("_ExceptionCarrier", (_ExceptionCarrier,), {"__module__": __name__, "__slots__": ()})
    return cls(original, blob)


def _unpack_exception(blob: bytes) -> BaseException:
    exc = pickle.loads(blob)
    if not isinstance(exc, BaseException):  # pragma: no cover - defensive
        raise TypeError(f"expected a pickled exception, got {type(exc).__name__}")
    return exc


def _roundtrip(dumps: Callable[[Any], bytes], exc: BaseException) -> bytes:
    blob = dumps(exc)
    pickle.loads(blob)  # a class whose unpickling fails would break the pool's result thread
    return blob


def _std_dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _own_dumps(obj: Any) -> bytes:
    """Plain pickle without the ``copyreg`` reducers that third parties registered for
    exception classes (par's own are kept): the exception's own ``__reduce_ex__``."""
    table = {
        key: reducer
        for key, reducer in copyreg.dispatch_table.items()
        if reducer is _reduce_exception_portable
        or not (isinstance(key, type) and issubclass(key, BaseException))
    }
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = table
    pickler.dump(obj)
    return buffer.getvalue()


def _portable_exception(exc: BaseException) -> BaseException:
    """``exc`` itself when it is an ``Exception`` that pickles (as the pool will pickle it),
    else an ``_ExceptionCarrier`` (pickled with plain pickle or cloudpickle), else an
    ``UnpicklableExceptionError`` naming its type and message."""
    reason: BaseException | None = None
    if isinstance(exc, Exception):
        try:
            _roundtrip(_std_dumps, exc)
        except Exception as first:
            reason = first
        else:
            return exc
    dumpers: list[Callable[[Any], bytes]] = [_own_dumps, _std_dumps]
    try:
        import cloudpickle

        dumpers.append(cloudpickle.dumps)
    except ImportError:  # pragma: no cover - a declared dependency
        pass
    for dumps in dumpers:
        try:
            blob = _roundtrip(dumps, exc)
        except Exception as failed:
            reason = reason or failed
        else:
            return _make_carrier(exc, blob)
    tname = type_name(type(exc))
    try:
        message = str(exc)
    except Exception as str_exc:
        message = f"<str() failed: {type(str_exc).__name__}>"
    why = f"{type(reason).__name__}: {reason}"
    return UnpicklableExceptionError(
        f"A task raised {tname}: {message} -- this exception could not be pickled to be sent back "
        f"from the worker process ({why}), so it is reported as UnpicklableExceptionError. Its "
        "traceback in the worker is shown above. Hint: raise exceptions whose arguments and "
        "attributes are picklable.",
        exc_type=tname,
        exc_message=message,
        reason=why,
    )
