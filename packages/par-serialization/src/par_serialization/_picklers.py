"""Pickling strategies: which Pickler, with which reducers, and the per-call cache.

The default strategy ("auto") is the C ``pickle.Pickler`` with a plain-dict
``dispatch_table`` and a ``reducer_override`` that is only consulted for objects that
are not atoms or built-in containers (so large dicts, lists, strings and floats pickle
at full C speed). It sends by value, with cloudpickle, only the functions and classes
that pickle cannot send by reference (lambdas, closures, nested or ``__main__``
definitions); those are pickled once per strategy (one ``Parallel`` call) and the
bytes are reused. If plain pickle still fails (code objects, cells, dict views, ...)
the whole object is pickled again with cloudpickle's Pickler and the same reducers.
"""

from __future__ import annotations

import copyreg
import gc
import importlib
import io
import itertools
import os
import pickle
import threading
from collections import ChainMap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import CodeType, FunctionType
from typing import Any

import cloudpickle
from par_api import keep_code_filename

from . import _blobs
from ._lookup import pickles_by_reference
from ._tokens import _TOKEN_CACHE
from ._wrap import _WRAPPED_CLASS_MARK, ByValueReducible, _class_holder, _swap_class


class _GcPaused:
    """The context manager :func:`gc_paused` returns (a class: a generator-based context
    manager costs ~2 us per use, paid several times per batch on each side)."""

    __slots__ = ("_was_enabled",)

    def __enter__(self) -> None:
        self._was_enabled = was_enabled = gc.isenabled()
        if was_enabled:
            gc.disable()

    def __exit__(self, *exc_info: object) -> None:
        if self._was_enabled:
            gc.enable()


def gc_paused() -> _GcPaused:
    """Pause the cyclic garbage collector while (un)pickling a batch.

    A batch of 100,000 small tasks allocates hundreds of thousands of containers, and
    each allocation threshold reached triggers a collection that walks all of them:
    pausing it makes pickling about 2x and unpickling about 5x faster. Pickling cannot
    create garbage cycles, so nothing is lost; if the collector was already disabled
    (by the user), it is left disabled.
    """
    return _GcPaused()


#: The environment variable that selects the pickler (read by loky too).
PICKLER_ENV_VAR = "LOKY_PICKLER"
#: Name of par's built-in strategy: plain pickle, cloudpickle only where needed.
AUTO = "auto"

Reducer = Callable[[Any], Any]


# --------------------------------------------------------------------------- choice


@dataclass(frozen=True)
class PicklerChoice:
    """The pickler in force: ``name`` ("auto", "pickle", "cloudpickle" or a module name),
    where the choice came from, and the module's ``Pickler`` class for custom modules."""

    name: str
    source: str
    pickler_class: Any = None

    def describe(self) -> str:
        if self.name == AUTO:
            what = "par's default: pickle, with cloudpickle only for callables and classes pickle cannot send by reference"
        elif self.name == "pickle":
            what = (
                "pickle (standard library only; wrap interactive functions with wrap_non_picklable_objects)"
            )
        elif self.name == "cloudpickle":
            what = "cloudpickle for everything"
        else:
            what = f"{self.name}.Pickler"
        return f"{what} [from {self.source}]"


def _choice_for(name: str, source: str, label: str) -> PicklerChoice:
    if name in (AUTO, "default"):
        return PicklerChoice(AUTO, source)
    if name == "pickle":
        return PicklerChoice("pickle", source, pickle.Pickler)
    if name == "cloudpickle":
        return PicklerChoice("cloudpickle", source, cloudpickle.Pickler)
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise ValueError(
            f"{label}={name!r}: cannot import the module {name!r} ({exc}). {label} must name an "
            "importable module that defines a Pickler class, e.g. 'pickle' or 'cloudpickle'; "
            "leave it unset for par's default."
        ) from exc
    pickler_class = getattr(module, "Pickler", None)
    if not isinstance(pickler_class, type):
        raise ValueError(
            f"{label}={name!r}: the module {name!r} has no 'Pickler' class. {label} must name a "
            "module that defines a Pickler (a pickle.Pickler-like class taking (file, protocol)), "
            "e.g. 'pickle' or 'cloudpickle'; leave it unset for par's default."
        )
    return PicklerChoice(name, source, pickler_class)


def resolve_pickler(pickler: str | None) -> PicklerChoice:
    """The pickler for ``pickler`` (an explicit name) or, if None, from ``LOKY_PICKLER``.

    Names: ``"auto"`` (par's default strategy), ``"pickle"``, ``"cloudpickle"``, or any
    importable module that defines ``Pickler``. An unset or empty ``LOKY_PICKLER``
    means ``"auto"``.

    Raises:
        TypeError: ``pickler`` is not a string or None.
        ValueError: the module cannot be imported or has no ``Pickler``; the message
            names ``LOKY_PICKLER`` or the ``pickler`` argument, whichever gave the name.
    """
    if pickler is not None:
        if not isinstance(pickler, str):
            raise TypeError(
                f"pickler must be None or a module name such as 'pickle' or 'cloudpickle', "
                f"got {type(pickler).__name__} {pickler!r}."
            )
        if not pickler.strip():
            raise ValueError("pickler must be None or a non-empty module name, got ''.")
        return _choice_for(pickler.strip(), "the 'pickler' argument", "pickler")
    env = os.environ.get(PICKLER_ENV_VAR, "").strip()
    if env:
        return _choice_for(env, f"the {PICKLER_ENV_VAR} environment variable", PICKLER_ENV_VAR)
    return PicklerChoice(AUTO, f"the default ({PICKLER_ENV_VAR} is not set)")


def get_pickler_name() -> str:
    """Say which pickler a new ``BatchSerializer`` would use now, and why (for diagnostics)."""
    try:
        return resolve_pickler(None).describe()
    except ValueError as exc:
        return f"invalid: {exc}"


# --------------------------------------------------------------------- worker cache


def worker_cache_info() -> dict[str, int]:
    """Statistics of this process's cache of callables unpickled by value:
    ``entries``, ``bytes`` (of pickled data), ``loads`` (unpickled) and ``hits`` (reused)."""
    return _TOKEN_CACHE.info()


def _load_cached(token: str, rebuild: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    return _TOKEN_CACHE.get_or_load(token, rebuild, args)


# ------------------------------------------------------------------ exceptions


def _exception_needs_rebuild(tp: type) -> bool:
    """User exceptions with their own ``__init__`` and the default reduction: unpickling
    would call ``tp(*args)``, which fails when ``__init__`` takes other arguments."""
    return (
        tp.__reduce__ is BaseException.__reduce__  # type: ignore[comparison-overlap]
        and tp.__reduce_ex__ is object.__reduce_ex__  # type: ignore[comparison-overlap]
        and isinstance(tp.__init__, FunctionType)  # type: ignore[misc]
    )


def _rebuild_exception(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any] | None) -> Any:
    try:
        exc = cls.__new__(cls, *args)
    except Exception:
        exc = BaseException.__new__(cls)
    exc.args = args
    if state:
        exc.__dict__.update(state)
    return exc


def _reduce_exception(exc: BaseException) -> tuple[Any, ...]:
    return (_rebuild_exception, (type(exc), exc.args, dict(getattr(exc, "__dict__", None) or {}) or None))


def _reduce_exception_portable(exc: BaseException) -> tuple[Any, ...]:
    """Like ``_reduce_exception``, for any pickler: the class goes by value when needed."""
    rv = _reduce_exception(exc)
    cls, args, state = rv[1]
    return (rv[0], (_swap_class(cls), args, state))


def make_exception_picklable(exc: BaseException) -> None:
    """Register (``copyreg.pickle``) a faithful reducer for the class of ``exc`` if its
    default pickling would fail on load (a user ``__init__`` with other arguments), so the
    pool can send a raised exception back with its exact type and attributes."""
    tp = type(exc)
    if tp not in copyreg.dispatch_table and _exception_needs_rebuild(tp):
        copyreg.pickle(tp, _reduce_exception_portable)


# --------------------------------------------------------------------- the cache

_OTHER, _CALLABLE, _WRAPPER, _EXCEPTION, _CLASS_IF_WRAPPED = range(5)


@dataclass(frozen=True)
class SerializerStats:
    """Counters of one ``BatchSerializer`` (one ``Parallel`` call).

    ``batches``: batches serialized; ``by_value``: callables/classes/wrappers pickled by
    value (cloudpickle runs); ``cache_hits``: times such a pickled callable was reused;
    ``fallbacks``: pickles that plain pickle could not do and cloudpickle redid;
    ``cached``: entries in the cache now.
    """

    batches: int
    by_value: int
    cache_hits: int
    fallbacks: int
    cached: int


class _Handler:
    """``reducer_override`` logic shared by the picklers of one strategy.

    Keeps, per callable object (by identity, holding a strong reference so ids cannot be
    reused), the reduction to use: ``NotImplemented`` (pickle sends it by reference) or
    the cloudpickled bytes wrapped in a loader that caches them in the worker by token.
    """

    def __init__(
        self,
        blob_dumps: Callable[[Any], bytes],
        token_prefix: str | None,
        wrappers_only: bool,
        max_entries: int = 4096,
        blob_store: Any = None,
        blob_threshold: int = 2**20,
    ) -> None:
        self._blob_dumps = blob_dumps
        self._blob_store = blob_store
        self._blob_threshold = blob_threshold
        self._token_prefix = token_prefix
        self._wrappers_only = wrappers_only
        self._max_entries = max_entries
        self._kinds: dict[type, int] = {}
        self._entries: dict[int, tuple[Any, Any]] = {}
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self.by_value = 0
        self.hits = 0
        self.stored = 0

    def _classify(self, tp: type) -> int:
        if issubclass(tp, ByValueReducible):
            kind = _WRAPPER
        elif self._wrappers_only:
            # plain pickle otherwise, but classes made by wrap_non_picklable_objects travel by value
            kind = _CLASS_IF_WRAPPED if issubclass(tp, type) else _OTHER
        elif tp is FunctionType or issubclass(tp, type):
            kind = _CALLABLE
        elif issubclass(tp, BaseException) and _exception_needs_rebuild(tp):
            kind = _EXCEPTION
        else:
            kind = _OTHER
        self._kinds[tp] = kind
        return kind

    def reduce(self, obj: Any) -> Any:
        """The ``reducer_override`` hook: a reduction, or NotImplemented for pickle's own."""
        tp = type(obj)
        kind = self._kinds.get(tp)
        if kind is None:
            kind = self._classify(tp)
        if kind == _OTHER:
            return NotImplemented
        if kind == _EXCEPTION:
            return _reduce_exception(obj)
        if kind == _CLASS_IF_WRAPPED:
            if not obj.__dict__.get(_WRAPPED_CLASS_MARK):
                return NotImplemented
            kind = _WRAPPER
        entry = self._entries.get(id(obj))
        if entry is not None and entry[0] is obj:
            if entry[1] is not NotImplemented:
                self.hits += 1
            return entry[1]
        return self._miss(obj, kind)

    def _miss(self, obj: Any, kind: int) -> Any:
        with self._lock:
            entry = self._entries.get(id(obj))
            if entry is not None and entry[0] is obj:
                return entry[1]
            if kind == _CALLABLE:
                if pickles_by_reference(obj):
                    rv: Any = NotImplemented
                else:
                    blob = self._blob_dumps(obj)
                    self.by_value += 1
                    if (
                        self._blob_store is not None
                        and self._token_prefix is not None
                        and len(blob) > self._blob_threshold
                    ):
                        # large: written once per call, batches carry (token, path) only
                        token = f"{self._token_prefix}-{next(self._counter)}"
                        path = self._blob_store.put(token, blob)
                        self.stored += 1
                        rv = (_blobs.load_blob, (token, path, len(blob)))
                        self._remember(obj, rv)
                        return rv
                    rv = (pickle.loads, (blob,))
            else:
                rv = (_class_holder(obj) if isinstance(obj, type) else obj).__reduce__()
                self.by_value += 1
            if rv is not NotImplemented and self._token_prefix is not None:
                token = f"{self._token_prefix}-{next(self._counter)}"
                rv = (_load_cached, (token, rv[0], tuple(rv[1])))
            self._remember(obj, rv)
            return rv

    def _remember(self, obj: Any, rv: Any) -> None:
        if len(self._entries) >= self._max_entries:
            self._entries = {}
        self._entries[id(obj)] = (obj, rv)

    def clear(self) -> None:
        with self._lock:
            self._entries = {}

    def __len__(self) -> int:
        return len(self._entries)


# ------------------------------------------------------------------ the picklers


class _FastPickler(pickle.Pickler):
    """C pickler + plain-dict dispatch table + the strategy's reducer_override."""

    def __init__(self, file: io.BytesIO, strategy: Strategy, buffer_callback: Any = None) -> None:
        self.dispatch_table = strategy.fast_table
        super().__init__(file, strategy.protocol, buffer_callback=buffer_callback)
        self.reducer_override = strategy.handler.reduce  # type: ignore[method-assign]


class _CloudFallbackPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle's Pickler with the strategy's reducers and per-call callable cache."""

    def __init__(self, file: io.BytesIO, strategy: Strategy, buffer_callback: Any = None) -> None:
        self.dispatch_table = strategy.cloud_table
        super().__init__(file, protocol=strategy.protocol, buffer_callback=buffer_callback)
        self._par_handler = strategy.handler

    def reducer_override(self, obj: Any) -> Any:
        rv = self._par_handler.reduce(obj)
        if rv is NotImplemented:
            return super().reducer_override(obj)
        return rv


class _BlobPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """Pickles one callable or class by value (cloudpickle), with the strategy's reducers."""

    def __init__(self, file: io.BytesIO, strategy: Strategy) -> None:
        self.dispatch_table = strategy.cloud_table
        super().__init__(file, protocol=strategy.protocol)


#: Code pickled by value keeps its file name (cloudpickle >= 3.1.3 writes
#: ``<dynamic-code>``), so that a worker's traceback names the user's file and line.
_CLOUD_CODE: dict[type, Reducer] = {
    CodeType: keep_code_filename(cloudpickle.Pickler.dispatch_table[CodeType]),
}


#: A pickle larger than this (bytes) is not made by a kept pickler the next time.
REUSE_MAX_BYTES = 1 << 16


class Strategy:
    """One pickling strategy (a choice, extra reducers, a protocol) and its cache.

    ``dumps`` raises the pickler's own exception on failure; callers add context.
    ``token_prefix`` (unique per call) enables the worker-side cache of callables
    pickled by value; None pickles them self-contained.
    """

    def __init__(
        self,
        choice: PicklerChoice,
        reducers: Mapping[type, Reducer] | None = None,
        protocol: int | None = None,
        token_prefix: str | None = None,
        blob_store: Any = None,
        blob_threshold: int = _blobs.DEFAULT_BLOB_THRESHOLD,
    ) -> None:
        self.choice = choice
        self.protocol = pickle.HIGHEST_PROTOCOL if protocol is None else protocol
        user = dict(reducers) if reducers else {}
        self.fast_table: dict[type, Reducer] = {**copyreg.dispatch_table, **user}
        self.cloud_table: Mapping[type, Reducer] = ChainMap(
            user, _CLOUD_CODE, cloudpickle.Pickler.dispatch_table
        )
        self.handler = _Handler(
            self._dump_blob,
            token_prefix,
            wrappers_only=choice.name not in (AUTO, "cloudpickle"),
            blob_store=blob_store,
            blob_threshold=blob_threshold,
        )
        self.fallbacks = 0
        self._reuse_lock = threading.Lock()
        self._kept: tuple[io.BytesIO, list[pickle.PickleBuffer], _FastPickler] | None = None
        self._custom_class: Any = None
        if choice.name not in (AUTO, "pickle", "cloudpickle"):
            base = choice.pickler_class
            if user:
                inherited: Any = getattr(base, "dispatch_table", None)
                if not isinstance(inherited, Mapping):
                    inherited = copyreg.dispatch_table
                table = ChainMap(user, inherited)
                base = type(f"{base.__name__}WithReducers", (base,), {"dispatch_table": table})
            self._custom_class = base

    def _dump_blob(self, obj: Any) -> bytes:
        buf = io.BytesIO()
        _BlobPickler(buf, self).dump(obj)
        return buf.getvalue()

    def _dump(self, pickler_class: Any, obj: Any, buffer_callback: Any = None) -> bytes:
        buf = io.BytesIO()
        with gc_paused():
            pickler_class(buf, self, buffer_callback).dump(obj)
        return buf.getvalue()

    def _dump_reusing(self, obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
        """``dumps_oob`` with the strategy's kept ``_FastPickler`` (``_reuse_lock`` held):
        making a pickler and its file costs more than pickling a one-task batch. Its memo
        is cleared after each use (it would keep the objects pickled alive); a pickle
        larger than :data:`REUSE_MAX_BYTES` drops it (its memo table stays allocated), as
        does a failure."""
        kept = self._kept
        if kept is None:
            buf = io.BytesIO()
            buffers: list[pickle.PickleBuffer] = []
            kept = self._kept = (buf, buffers, _FastPickler(buf, self, buffers.append))
        buf, buffers, pickler = kept
        try:
            with gc_paused():
                pickler.dump(obj)
            data = buf.getvalue()
            out = list(buffers)
        except BaseException:
            self._kept = None
            raise
        finally:
            pickler.clear_memo()
            buffers.clear()
        if len(data) > REUSE_MAX_BYTES:
            self._kept = None
        else:
            buf.seek(0)
            buf.truncate()
        return data, out

    def dumps_oob(self, obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
        """Pickle ``obj`` with large buffers out of band (protocol 5 ``PickleBuffer``s, e.g.
        numpy arrays' data): returns the pickle and the buffers, which reference the
        original objects' memory (no copy). ``pickle.loads(data, buffers=...)`` reads them.
        With a protocol below 5 or a custom pickler module, every buffer is in band (``[]``).
        Raises the underlying error on failure, like ``dumps``."""
        name = self.choice.name
        if self.protocol < 5 or name not in (AUTO, "pickle", "cloudpickle"):
            return self.dumps(obj), []
        buffers: list[pickle.PickleBuffer] = []
        if name == "cloudpickle":
            return self._dump(_CloudFallbackPickler, obj, buffers.append), buffers
        try:
            if self._reuse_lock.acquire(blocking=False):
                try:
                    return self._dump_reusing(obj)
                finally:
                    self._reuse_lock.release()
            return self._dump(_FastPickler, obj, buffers.append), buffers
        except Exception:
            if name == "pickle":
                raise
            self.fallbacks += 1
            buffers.clear()
            return self._dump(_CloudFallbackPickler, obj, buffers.append), buffers

    def dumps(self, obj: Any) -> bytes:
        """Pickle ``obj`` with this strategy; raises the underlying error on failure."""
        name = self.choice.name
        if name == AUTO:
            try:
                return self._dump(_FastPickler, obj)
            except Exception:
                self.fallbacks += 1
                return self._dump(_CloudFallbackPickler, obj)
        if name == "cloudpickle":
            return self._dump(_CloudFallbackPickler, obj)
        if name == "pickle":
            return self._dump(_FastPickler, obj)  # handler only acts on wrappers here
        buf = io.BytesIO()
        self._custom_class(buf, self.protocol).dump(obj)
        return buf.getvalue()


def dumps(obj: Any, reducers: Mapping[type, Reducer] | None = None, *, pickler: str | None = None) -> bytes:
    """Pickle ``obj`` with the strategy in force (``pickler``, else ``LOKY_PICKLER``, else
    par's default), applying ``reducers`` (type -> copyreg-style reducer). The result is
    self-contained: ``loads`` (or ``pickle.loads``) reads it in any process."""
    return Strategy(resolve_pickler(pickler), reducers).dumps(obj)


def loads(data: bytes) -> Any:
    """Unpickle bytes made by ``dumps`` or by a ``BatchSerializer``."""
    return pickle.loads(data)
