"""``pre_dispatch``: how many batches may be pulled from the iterable ahead of the workers.

The value is ``'all'``, a positive int, or a small arithmetic expression in ``n_jobs``
such as ``'2 * n_jobs'``. Expressions are parsed with :func:`ast.parse` and only the
nodes of plain arithmetic are walked; nothing is ever evaluated as Python code.
"""

from __future__ import annotations

import ast
import functools
import math
import numbers
import operator
from collections.abc import Callable

__all__ = ["parse_pre_dispatch"]

#: Longest expression accepted (keeps parsing cheap and numbers small).
MAX_EXPRESSION_LENGTH = 100

_BINARY_OPS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
}
_UNARY_OPS: dict[type[ast.unaryop], Callable[[float], float]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}

_ACCEPTED = (
    "'all', a positive int, or an arithmetic expression in n_jobs made of numbers, "
    "n_jobs, + - * / // and parentheses (e.g. '2 * n_jobs', '1.5*n_jobs', '(n_jobs + 1) * 2')"
)


class _Refused(Exception):
    """The expression holds something other than plain arithmetic on n_jobs."""


def _walk(node: ast.AST, n_jobs: int) -> float:
    if isinstance(node, ast.Expression):
        return _walk(node.body, n_jobs)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left = _walk(node.left, n_jobs)
        right = _walk(node.right, n_jobs)
        try:
            return _BINARY_OPS[type(node.op)](left, right)
        except ZeroDivisionError:
            raise _Refused("division by zero") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
        return _UNARY_OPS[type(node.op)](_walk(node.operand, n_jobs))
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        raise _Refused(f"the constant {value!r} is not a number")
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
        if node.id == "n_jobs":
            return n_jobs
        raise _Refused(f"the name {node.id!r} is not allowed (only n_jobs)")
    raise _Refused(f"{type(node).__name__} is not allowed")


def parse_pre_dispatch(pre_dispatch: str | int, n_jobs: int) -> int | None:
    """The number of batches that may be dispatched ahead, or ``None`` for ``'all'``.

    ``pre_dispatch`` is ``'all'`` (the whole iterable is consumed at once), a positive
    int, or an expression in ``n_jobs`` using numbers, ``n_jobs``, ``+ - * / //`` and
    parentheses. A fractional result is truncated (``'1.5*n_jobs'`` with ``n_jobs=2``
    is 3) and a result below 1 means 1 (``'n_jobs - 1'`` with ``n_jobs=1``), so that a
    value valid for some ``n_jobs`` is valid for all. Anything else (an int below 1,
    names other than ``n_jobs``, calls, attributes, ``**``, lambdas, strings, division
    by zero, a result too large to be finite) raises ``ValueError`` naming
    ``pre_dispatch``. The expression is parsed, never evaluated as code.
    """
    if isinstance(pre_dispatch, bool):
        raise ValueError(f"pre_dispatch={pre_dispatch!r} is not valid: use {_ACCEPTED}.")
    if isinstance(pre_dispatch, numbers.Integral):
        if pre_dispatch < 1:
            raise ValueError(
                f"pre_dispatch={pre_dispatch!r} is not valid: an int must be >= 1; or use {_ACCEPTED}."
            )
        return int(pre_dispatch)
    if not isinstance(pre_dispatch, str):
        raise ValueError(
            f"pre_dispatch must be a str or an int, got {type(pre_dispatch).__name__} {pre_dispatch!r}: "
            f"use {_ACCEPTED}."
        )
    text = pre_dispatch.strip()
    if text == "all":
        return None
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ValueError(
            f"pre_dispatch expression is too long ({len(text)} characters, at most {MAX_EXPRESSION_LENGTH}): "
            f"use {_ACCEPTED}."
        )
    return _evaluate(pre_dispatch, text, n_jobs)


@functools.lru_cache(maxsize=64)
def _evaluate(pre_dispatch: str, text: str, n_jobs: int) -> int:
    # cached: most programs use one or two expressions, and parsing costs ~20 us per call
    try:
        tree = ast.parse(text, mode="eval")
        value = _walk(tree, n_jobs)
        if not math.isfinite(value):
            raise _Refused("the result is not finite")
        count = int(value)
    except (SyntaxError, ValueError, _Refused, RecursionError, OverflowError, MemoryError) as exc:
        raise ValueError(f"pre_dispatch={pre_dispatch!r} is not valid ({exc}): use {_ACCEPTED}.") from None
    # The value depends on n_jobs (e.g. 'n_jobs - 1'): at least one batch is in flight.
    return max(count, 1)
