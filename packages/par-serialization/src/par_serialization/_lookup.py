"""Whether plain pickle can send a function or class *by reference*, and how to name things in errors."""

from __future__ import annotations

import functools
import sys
from typing import Any

import cloudpickle

#: Types that pickle handles specially although ``builtins.<name>`` does not exist.
_SPECIAL_TYPES: frozenset[type] = frozenset({type(None), type(NotImplemented), type(Ellipsis)})
#: Module names whose contents another process cannot import by name: a worker's
#: ``__main__`` is not the parent's (``python -c``, a notebook, a spawned worker).
_MAIN_NAMES = frozenset({"__main__", "__mp_main__"})


def _registered_by_value(module_name: str) -> bool:
    """True if cloudpickle.register_pickle_by_value() was called for the module or a parent package."""
    registry = cloudpickle.list_registry_pickle_by_value()
    if not registry:
        return False
    name = module_name
    while True:
        if name in registry:
            return True
        if "." not in name:
            return False
        name = name.rsplit(".", 1)[0]


def pickles_by_reference(obj: Any) -> bool:
    """Return True if ``obj`` (a function or a class) can travel as "module + qualified name".

    That is the case when its module is imported, is not ``__main__``, is not registered
    with ``cloudpickle.register_pickle_by_value``, and looking the qualified name up in the
    module gives back ``obj`` itself. Lambdas, closures, nested functions and classes, and
    everything defined in ``__main__`` (a script, ``python -c``, a notebook) return False:
    they must be pickled by value (with cloudpickle).
    """
    if obj in _SPECIAL_TYPES:
        return True
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str):
        return False
    if module_name in _MAIN_NAMES or "<locals>" in qualname or "<lambda>" in qualname:
        return False
    module = sys.modules.get(module_name)
    if module is None or getattr(module, "__name__", None) in _MAIN_NAMES:
        return False
    if _registered_by_value(module_name):
        return False
    found: Any = module
    for part in qualname.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            return False
    return found is obj


def type_name(tp: type) -> str:
    """``module.QualName`` of a type; built-in types by their bare name (``generator``)."""
    module = getattr(tp, "__module__", None)
    qualname = getattr(tp, "__qualname__", None) or getattr(tp, "__name__", repr(tp))
    if module in (None, "builtins"):
        return str(qualname)
    return f"{module}.{qualname}"


def describe_callable(func: Any) -> str:
    """A readable name for the function of a task, e.g. ``mymod.f``, ``__main__.<lambda>``."""
    if isinstance(func, functools.partial):
        return f"functools.partial({describe_callable(func.func)})"
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if isinstance(qualname, str):
        module = getattr(func, "__module__", None)
        return f"{module}.{qualname}" if isinstance(module, str) else qualname
    return f"{type_name(type(func))} instance"
