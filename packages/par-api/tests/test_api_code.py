"""keep_code_filename: a code reducer that restores ``co_filename`` on rebuild."""

from __future__ import annotations

import pickle
from types import CodeType

from par_api import keep_code_filename


def _forgetful(code: CodeType):
    """A reducer like cloudpickle 3.1.3's: rebuilds the code under another file name."""
    return _rebuild_elsewhere, (code.co_consts, code.co_name, code.co_firstlineno, code.co_code)


_CODES: dict[tuple, CodeType] = {}


def _rebuild_elsewhere(consts, name, firstlineno, raw):
    code = _CODES[(name, firstlineno)]
    return code.replace(co_filename="<dynamic-code>")


def sample(x):
    return x + 1


def test_the_rebuilt_code_names_the_original_file():
    code = sample.__code__
    _CODES[(code.co_name, code.co_firstlineno)] = code
    assert _forgetful(code)[0](*_forgetful(code)[1]).co_filename == "<dynamic-code>"
    rebuild, args = keep_code_filename(_forgetful)(code)
    rebuilt = pickle.loads(pickle.dumps((rebuild, args)))
    out = rebuilt[0](*rebuilt[1])
    assert out.co_filename == code.co_filename == __file__
    assert out.co_firstlineno == code.co_firstlineno


def test_a_reduction_with_state_is_left_alone():
    state = (CodeType, (), {"x": 1})
    assert keep_code_filename(lambda code: state)(sample.__code__) is state
