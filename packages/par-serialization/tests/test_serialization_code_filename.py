"""Code pickled by value keeps its file name, whatever cloudpickle writes there
(``<dynamic-code>`` from cloudpickle 3.1.3 on): worker tracebacks name the user's file."""

from __future__ import annotations

import pickle

from par_serialization import dumps


def _make_functions():
    def outer(x):
        inner = lambda y: y + x  # noqa: E731
        return inner

    return outer, (lambda v: v * 2)


def test_a_function_pickled_by_value_keeps_its_code_filename_and_line():
    outer, lam = _make_functions()
    for func in (outer, lam):
        copy = pickle.loads(dumps(func, pickler="cloudpickle"))
        assert copy.__code__ is not func.__code__  # really pickled by value
        assert copy.__code__.co_filename == __file__
        assert copy.__code__.co_firstlineno == func.__code__.co_firstlineno


def test_nested_code_objects_keep_their_filename_too():
    outer, _ = _make_functions()
    copy = pickle.loads(dumps(outer, pickler="cloudpickle"))
    assert copy(1).__code__.co_filename == __file__  # the lambda built inside the copy
