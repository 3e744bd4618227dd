"""How a call's result reducers reach the workers without importing their modules needlessly.

``BatchSerializer(result_reducers={numpy.ndarray: ...})`` must apply those reducers when a
worker pickles results, but unpickling ``numpy.ndarray`` (or a reducer whose globals refer
to numpy) imports numpy in every worker, even when no array is involved. So every batch
carries a small :class:`ResultSpec`: the pickled reducers as bytes, the top-level modules
of their types, and a token. A worker unpickles the reducers (once per process, by token)
only when one of those modules is already imported there; if it is not, no object of
those types can exist in the worker, so results are pickled without them.

The pickled reducers are cached in the parent by the identity of the types and reducers
(so a caller that reuses the same reducer objects for every call pays the pickling
once, and workers unpickle them once per process, not once per call).
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
from collections.abc import Mapping
from typing import Any

from ._picklers import _TOKEN_CACHE, AUTO, Reducer, Strategy, _choice_for, resolve_pickler

_MAX_SPECS = 32
_specs_lock = threading.Lock()
#: parent side: (protocol, identities of types and reducers) -> (strong refs, token, blob)
_SPEC_BLOBS: dict[tuple[Any, ...], tuple[Any, str, bytes]] = {}
#: worker side: (pickler, protocol, token or None) -> strategy for results
_STRATEGIES: dict[tuple[Any, ...], Strategy] = {}


def _pickled_reducers(reducers: Mapping[type, Reducer], protocol: int | None) -> tuple[str, bytes]:
    key = (protocol, tuple((id(tp), id(fn)) for tp, fn in reducers.items()))
    with _specs_lock:
        hit = _SPEC_BLOBS.get(key)
        if hit is not None:
            return hit[1], hit[2]
    # by value where needed (closures), whatever pickler the call uses: the spec is par's own
    blob = Strategy(resolve_pickler(AUTO), None, protocol).dumps(dict(reducers))
    token = f"results-{os.urandom(8).hex()}"
    with _specs_lock:
        if len(_SPEC_BLOBS) >= _MAX_SPECS:
            _SPEC_BLOBS.clear()
        _SPEC_BLOBS[key] = (tuple(reducers.items()), token, blob)  # refs keep the ids unique
    return token, blob


class ResultSpec:
    """What a worker needs to pickle a batch's results: the pickler's name, the protocol
    and, lazily, the result reducers (see the module docstring). Small and picklable."""

    __slots__ = ("blob", "modules", "pickler", "protocol", "spill", "token")

    def __init__(
        self,
        pickler: str,
        protocol: int | None,
        modules: tuple[str, ...] = (),
        token: str | None = None,
        blob: bytes | None = None,
        spill: tuple[str, str, int] | None = None,
    ) -> None:
        self.pickler = pickler
        self.protocol = protocol
        self.modules = modules
        self.token = token
        self.blob = blob
        #: ``(folder, prefix, threshold)``: results of at least ``threshold`` bytes are
        #: written to ``folder`` (see ``_spill``) instead of the pipe; None: never
        self.spill = spill

    @classmethod
    def make(
        cls,
        pickler: str,
        protocol: int | None,
        reducers: Mapping[type, Reducer] | None,
        spill: tuple[str, str, int] | None = None,
    ) -> ResultSpec:
        """Parent side: the spec for a call (``reducers`` already validated)."""
        if not reducers:
            return cls(pickler, protocol, spill=spill)
        modules = tuple(sorted({str(getattr(tp, "__module__", "") or "").split(".")[0] for tp in reducers}))
        token, blob = _pickled_reducers(reducers, protocol)
        return cls(pickler, protocol, modules, token, blob, spill)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ResultSpec, (self.pickler, self.protocol, self.modules, self.token, self.blob, self.spill))

    def reducers_active(self) -> bool:
        """True if the reducers apply in this process (a module of their types is imported;
        a type whose module cannot be told, or ``builtins``, always counts as imported)."""
        if self.blob is None:
            return False
        return any(not m or m in sys.modules for m in self.modules)

    def strategy(self) -> Strategy:
        """Worker side: the strategy that pickles results (cached per process)."""
        active = self.reducers_active()
        key = (self.pickler, self.protocol, self.token if active else None)
        strategy = _STRATEGIES.get(key)
        if strategy is None:
            reducers = None
            if active and self.token is not None:
                reducers = _TOKEN_CACHE.get_or_load(self.token, pickle.loads, (self.blob,))
            if self.pickler == AUTO:
                choice = resolve_pickler(AUTO)
            else:
                choice = _choice_for(self.pickler, "the parent's choice", "pickler")
            strategy = Strategy(choice, reducers, self.protocol, token_prefix=None)
            if len(_STRATEGIES) >= _MAX_SPECS:
                _STRATEGIES.clear()
            _STRATEGIES[key] = strategy
        else:
            strategy.handler.clear()  # no references kept from the previous batch's results
        return strategy
