"""par_api.async_raise: an exception raised in another thread of the process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest
from par_api import async_raise, threads

pytestmark = pytest.mark.timeout(60)


class _Stop(BaseException):
    pass


def _start(target) -> tuple[threading.Thread, list[object], threading.Event]:
    outcome: list[object] = []
    running = threading.Event()

    def run() -> None:
        try:
            outcome.append(target(running))
        except BaseException as exc:  # what the test raised in it
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert running.wait(10)
    return thread, outcome, running


def test_async_raise_stops_a_thread_running_python_code() -> None:
    def spin(running: threading.Event) -> str:
        running.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pass
        return "not interrupted"

    thread, outcome, _ = _start(spin)
    assert thread.ident is not None
    assert async_raise(thread.ident, _Stop) is True
    thread.join(10)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], _Stop)


def test_async_raise_none_withdraws_an_exception_not_delivered_yet() -> None:
    release = threading.Event()

    def blocked(running: threading.Event) -> str:
        running.set()
        release.wait(30)  # blocked in C (a lock): nothing is delivered meanwhile
        return "finished"

    thread, outcome, _ = _start(blocked)
    assert thread.ident is not None
    assert async_raise(thread.ident, _Stop) is True
    assert async_raise(thread.ident, None) is True  # withdrawn before the wait returns
    release.set()
    thread.join(10)
    assert outcome == ["finished"]


def test_async_raise_to_an_ended_thread_is_false() -> None:
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    assert thread.ident is not None
    assert async_raise(thread.ident, _Stop) is False


def test_async_raise_withdraws_when_more_than_one_thread_state_is_hit(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, object]] = []

    def raise_in(ident: int, exc: object) -> int:
        calls.append(("raise", ident, exc))
        return 2  # what the C API answers when it reached two thread states

    def withdraw_in(ident: int, exc: object) -> int:
        calls.append(("withdraw", ident, exc))
        return 2

    monkeypatch.setattr(threads, "_functions", (raise_in, withdraw_in))
    assert async_raise(1234, _Stop) is False
    assert calls == [("raise", 1234, _Stop), ("withdraw", 1234, None)]


@pytest.mark.parametrize("bad", [_Stop(), "KeyboardInterrupt", int])
def test_async_raise_rejects_what_is_not_an_exception_class(bad: object) -> None:
    with pytest.raises(TypeError, match=r"exc_type must be an exception class .* or None"):
        async_raise(threading.get_ident(), bad)  # type: ignore[arg-type]


def test_import_par_api_does_not_import_ctypes() -> None:
    code = textwrap.dedent(
        """
        import sys
        import par_api
        print("ctypes" in sys.modules)
        par_api.async_raise(0, None)
        print("ctypes" in sys.modules)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]
