"""pre_dispatch parsing: arithmetic in n_jobs only, never evaluated as code."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest
from par_scheduler import parse_pre_dispatch


@pytest.mark.parametrize(
    ("value", "n_jobs", "expected"),
    [
        ("all", 4, None),
        (" all ", 4, None),
        (3, 8, 3),
        (1, 8, 1),
        ("5", 2, 5),
        ("2*n_jobs", 4, 8),
        ("2 * n_jobs", 3, 6),
        ("1.5*n_jobs", 2, 3),
        ("1.5 * n_jobs", 3, 4),  # 4.5 truncated
        ("(n_jobs+1)*2", 3, 8),
        ("n_jobs // 2 + 1", 5, 3),
        ("n_jobs / 4", 8, 2),
        ("-n_jobs + 10", 2, 8),
        ("n_jobs / 2", 1, 1),  # 0.5: at least one batch
        ("n_jobs - 1", 1, 1),  # 0 with one worker: still one batch
        ("n_jobs - 10", 2, 1),
    ],
)
def test_scheduler_pre_dispatch_accepted(value: str | int, n_jobs: int, expected: int | None) -> None:
    assert parse_pre_dispatch(value, n_jobs) == expected


@pytest.mark.parametrize(
    "value",
    [
        'os.system("x")',
        '__import__("os")',
        "n_jobs**99999",
        "n_jobs ** 2",
        "lambda: 1",
        "(lambda: 3)()",
        "n_jobs.bit_length()",
        "n_jobs.real",
        "x * 2",
        "foo",
        "'abc'",
        "[1, 2]",
        "n_jobs if True else 2",
        "n_jobs % 3",
        "n_jobs << 2",
        "True * 3",
        "1 / 0",
        "1 / (n_jobs - n_jobs)",
        "",
        "2 *",
        "1e308 * 1e308",
        "n_jobs; 3",
        "(y := 3)",
        "[x for x in range(3)]",
        "1" * 200,
        "ALL",
        0,
        -2,
        True,
        1.5,
        None,
        [2],
    ],
)
def test_scheduler_pre_dispatch_refused(value: object) -> None:
    with pytest.raises(ValueError, match="pre_dispatch"):
        parse_pre_dispatch(value, 2)  # type: ignore[arg-type]


def test_scheduler_pre_dispatch_error_lists_accepted_values() -> None:
    with pytest.raises(ValueError) as info:
        parse_pre_dispatch("n_jobs ** 2", 2)
    message = str(info.value)
    assert "'all'" in message and "n_jobs" in message and "2 * n_jobs" in message


def test_scheduler_pre_dispatch_never_runs_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "marker"
    attempts = [
        f"open({str(marker)!r}, 'w')",
        f"__import__('pathlib').Path({str(marker)!r}).touch()",
        f"[open({str(marker)!r}, 'w') for _ in range(1)]",
    ]
    for attempt in attempts:
        with pytest.raises(ValueError, match="pre_dispatch"):
            parse_pre_dispatch(attempt, 2)
    assert not marker.exists()

    # The parser works with eval/exec/compile unavailable: it never evaluates anything.
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pre_dispatch must not be evaluated")

    real_compile = builtins.compile

    def ast_only_compile(
        source: object, filename: object, mode: str, flags: int = 0, *args: object, **kw: object
    ) -> object:
        # ast.parse compiles to an AST only; compiling to code would be a step to eval.
        assert flags & ast.PyCF_ONLY_AST, "pre_dispatch must only be parsed to an AST"
        return real_compile(source, filename, mode, flags, *args, **kw)  # type: ignore[call-overload]

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "eval", forbidden)
        patch.setattr(builtins, "exec", forbidden)
        patch.setattr(builtins, "compile", ast_only_compile)
        value = parse_pre_dispatch("(n_jobs + 1) * 2", 3)
        with pytest.raises(ValueError, match="pre_dispatch"):
            parse_pre_dispatch("__import__('os').getpid()", 3)
    assert value == 8
