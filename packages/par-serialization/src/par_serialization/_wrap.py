"""``wrap_non_picklable_objects``: make one function or class travel by cloudpickle.

This works whatever pickler sends the task (plain ``pickle`` included, the
``LOKY_PICKLER=pickle`` case), because the wrappers define their own reduction.
"""

from __future__ import annotations

import copyreg
import functools
import pickle
import types
import weakref
from typing import Any, TypeVar

import cloudpickle

from ._lookup import pickles_by_reference

T = TypeVar("T")

#: Marks classes made by wrap_non_picklable_objects (their instances pickle by value).
_WRAPPED_CLASS_MARK = "__par_cloudpickle_wrapped__"


class ByValueReducible:
    """Base of objects whose ``__reduce__`` pickles a callable or class with cloudpickle.

    ``BatchSerializer`` recognises them and computes their reduction once per call.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:  # pragma: no cover - overridden
        raise NotImplementedError


class CloudpickledFunction(ByValueReducible):
    """A callable that forwards to the wrapped one and pickles it with cloudpickle.

    It keeps the wrapped callable's ``__name__``, ``__qualname__``, ``__module__``,
    ``__doc__`` and ``__wrapped__`` (``functools.update_wrapper``), and binds like a
    function when used as a method.
    """

    __slots__ = ("__dict__", "__weakref__", "_par_keep_wrapper")

    def __init__(self, func: Any, keep_wrapper: bool = True) -> None:
        functools.update_wrapper(self, func)
        self.__wrapped__ = func
        self._par_keep_wrapper = keep_wrapper

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        return types.MethodType(self, instance)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_function, (cloudpickle.dumps(self.__wrapped__), self._par_keep_wrapper))

    def __repr__(self) -> str:
        return f"<cloudpickle-wrapped {self.__wrapped__!r}>"


def _rebuild_function(blob: bytes, keep_wrapper: bool) -> Any:
    func = pickle.loads(blob)
    return CloudpickledFunction(func, keep_wrapper) if keep_wrapper else func


class ClassByValue(ByValueReducible):
    """Stands for a class inside a reduction; unpickles as that class, pickled with cloudpickle."""

    __slots__ = ("__weakref__", "_ref")

    def __init__(self, cls: type) -> None:
        self._ref = weakref.ref(cls)

    def __reduce__(self) -> tuple[Any, ...]:
        cls = self._ref()
        if cls is None:  # pragma: no cover - the class is alive while an instance is pickled
            raise pickle.PicklingError("the wrapped class was garbage-collected")
        return (pickle.loads, (cloudpickle.dumps(cls),))


_CLASS_HOLDERS: weakref.WeakKeyDictionary[type, ClassByValue] = weakref.WeakKeyDictionary()


def _class_holder(cls: type) -> ClassByValue:
    holder = _CLASS_HOLDERS.get(cls)
    if holder is None:
        holder = _CLASS_HOLDERS[cls] = ClassByValue(cls)
    return holder


def _swap_class(value: Any) -> Any:
    if isinstance(value, type) and not pickles_by_reference(value):
        return _class_holder(value)
    return value


def _newobj(cls: type, *args: Any) -> Any:
    return cls.__new__(cls, *args)


def _newobj_ex(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return cls.__new__(cls, *args, **kwargs)


# pickle insists that the class given to copyreg.__newobj__ be the object's own class,
# so the rewritten reductions call these equivalents instead.
_NEWOBJ_REPLACEMENTS = {copyreg.__newobj__: _newobj, copyreg.__newobj_ex__: _newobj_ex}  # type: ignore[attr-defined]


def _wrapped_instance_reduce_ex(self: object, protocol: int) -> Any:
    """``__reduce_ex__`` of instances of wrapped classes: the default reduction, with the
    classes in it (which plain pickle could only send by reference) sent by value."""
    wrapper_cls: type = next(c for c in type(self).__mro__ if c.__dict__.get(_WRAPPED_CLASS_MARK))
    rv = super(wrapper_cls, self).__reduce_ex__(protocol)  # type: ignore[arg-type]
    if not isinstance(rv, tuple):  # a global name: nothing to rewrite
        return rv
    head = _NEWOBJ_REPLACEMENTS.get(rv[0], rv[0])
    head = _swap_class(head)
    args = tuple(_swap_class(a) for a in rv[1]) if len(rv) > 1 and isinstance(rv[1], tuple) else None
    if args is None:
        return (head, *rv[1:])
    return (head, args, *rv[2:])


def _wrap_class(cls: type) -> type:
    namespace = {
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "__slots__": (),
        "__reduce_ex__": _wrapped_instance_reduce_ex,
        _WRAPPED_CLASS_MARK: True,
    }
    try:
        return type(cls)(cls.__name__, (cls,), namespace)
    except TypeError as exc:
        raise TypeError(
            f"wrap_non_picklable_objects(obj): cannot wrap class {cls.__qualname__}: it cannot be "
            f"subclassed ({exc}). Define it in an importable module instead."
        ) from exc


def wrap_non_picklable_objects(obj: T, keep_wrapper: bool = True) -> T:
    """Make ``obj`` (a function or a class) travel to worker processes by cloudpickle.

    Use it as a decorator when the pickler in force is the standard one
    (``LOKY_PICKLER=pickle``) and a function or class is defined interactively, in
    ``__main__``, or inside another function.

    - For a callable, returns a callable wrapper with the same ``__name__``,
      ``__qualname__``, ``__doc__`` and ``__module__``; calling it calls ``obj``.
      When unpickled in a worker it is the wrapper again if ``keep_wrapper`` is true,
      else the bare function.
    - For a class, returns a subclass with the same name and docstring whose instances
      pickle with the class sent by value: instances are instances of ``obj``
      (``isinstance`` holds) and come back from a worker as instances of the wrapper.
      ``keep_wrapper`` has no effect for classes.

    Wrapping an already wrapped object returns it unchanged.

    Raises:
        TypeError: ``obj`` is neither a class nor callable.
    """
    if isinstance(obj, type):
        if obj.__dict__.get(_WRAPPED_CLASS_MARK):
            return obj
        return _wrap_class(obj)  # type: ignore[return-value]
    if isinstance(obj, CloudpickledFunction):
        return obj
    if not callable(obj):
        raise TypeError(
            "wrap_non_picklable_objects(obj): obj must be a function (any callable) or a class, "
            f"got {type(obj).__name__} {obj!r}."
        )
    return CloudpickledFunction(obj, keep_wrapper)  # type: ignore[return-value]
