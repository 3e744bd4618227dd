"""Progress display of ``Parallel(progress=...)``: text bar, tqdm-like objects, callables."""

from __future__ import annotations

import io
import itertools
import re
import sys
import threading
import time
import types

import pytest
from par import Parallel, ProgressEvent, delayed, parallel_config
from par.progress import (
    CallableListener,
    TextProgressBar,
    TqdmAdapter,
    check_progress,
    format_duration,
    make_progress_listener,
)

BACKENDS = ["sequential", "threading", "loky", "multiprocessing"]
RETURN_AS = ["list", "generator", "generator_unordered"]
N = 7


def square(x: int) -> int:
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("boom on 3")
    return x


def slow_square(x: int) -> int:
    time.sleep(0.01)
    return x * x


def _event(
    kind: str, done: int, total: int | None, elapsed: float = 2.0, eta: float | None = None
) -> ProgressEvent:
    return ProgressEvent(kind, done, done, total, elapsed, 1, eta)


class FakeBar:
    """A tqdm-like object recording what it receives."""

    def __init__(self, total: int | None = None, unit: str = "it") -> None:
        self.total = total
        self.unit = unit
        self.n = 0
        self.updates: list[int] = []
        self.refreshed = 0
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.updates.append(n)
        self.n += n

    def refresh(self) -> None:
        self.refreshed += 1

    def close(self) -> None:
        self.closed = True


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


# -- the text bar, end to end with each backend and each return_as -------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_text_bar_on_stderr_with_every_backend(backend, return_as, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # force the text bar
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    out = Parallel(n_jobs=2, backend=backend, return_as=return_as, progress=True)(
        delayed(square)(i) for i in range(N)
    )
    results = list(out)
    assert sorted(results) == [i * i for i in range(N)]
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "no progress output on stderr"
    last = lines[-1]
    assert f"{N}/{N}" in last and "100%" in last and "done" in last, last
    assert re.search(r"\d+(\.\d+)? tasks/s", last), last
    assert "\r" not in err  # stderr captured: not a terminal, full lines only


def test_text_bar_reports_abort_on_error(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ValueError, match="boom on 3"):
        Parallel(n_jobs=2, backend="threading", progress=True)(delayed(fail_on_three)(i) for i in range(6))
    last = capsys.readouterr().err.splitlines()[-1]
    assert "aborted" in last


def test_text_bar_on_generator_closed_early(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    gen = Parallel(n_jobs=2, backend="threading", return_as="generator", progress=True)(
        delayed(slow_square)(i) for i in range(50)
    )
    assert next(gen) == 0
    gen.close()
    deadline = time.monotonic() + 10
    err = ""
    while time.monotonic() < deadline:
        err += capsys.readouterr().err
        if "aborted" in err:
            break
        time.sleep(0.02)
    assert "aborted" in err.splitlines()[-1]


# -- the text bar, unit ------------------------------------------------------------------


def test_text_bar_render_known_total():
    bar = TextProgressBar(width=10)
    text = bar.render(_event("completed", 5, 10, elapsed=2.0, eta=2.0))
    assert text.startswith("[#####-----] 5/10  50%")
    assert "2.0s elapsed" in text and "2.5 tasks/s" in text and "2.0s left" in text


def test_text_bar_render_unknown_total_shows_question_mark():
    text = TextProgressBar(width=10).render(_event("completed", 4, None))
    assert "4/?" in text and "left" not in text


def test_text_bar_render_final_states():
    bar = TextProgressBar(width=4)
    assert bar.render(_event("finished", 3, 3, eta=0.0)).endswith("done")
    assert "[####] 3/3 100%" in bar.render(_event("finished", 3, 3))
    assert bar.render(_event("aborted", 1, 3)).endswith("aborted")
    assert "0/0 100%" in bar.render(_event("finished", 0, 0))


def test_text_bar_redraws_in_place_on_a_terminal():
    stream = TtyStream()
    bar = TextProgressBar(stream=stream, width=5, min_interval=0)
    bar(_event("start", 0, 3))
    for done in (1, 2, 3):
        bar(_event("completed", done, 3))
    bar(_event("finished", 3, 3))
    text = stream.getvalue()
    frames = text.split("\r")[1:]
    counts = [int(re.search(r"(\d+)/3", f).group(1)) for f in frames]
    assert counts == [0, 1, 2, 3, 3]
    assert text.endswith("\n") and text.count("\n") == 1


def test_text_bar_close_ends_an_open_terminal_line():
    stream = TtyStream()
    bar = TextProgressBar(stream=stream, min_interval=0)
    bar(_event("completed", 1, 3))
    bar.close()
    assert stream.getvalue().endswith("\n")
    bar.close()  # idempotent
    assert stream.getvalue().count("\n") == 1


def test_text_bar_in_a_log_writes_few_lines():
    stream = io.StringIO()
    bar = TextProgressBar(stream=stream)  # not a tty: at most a line every 5 s
    bar(_event("start", 0, 100))
    for done in range(1, 101):
        bar(_event("completed", done, 100))
    bar(_event("finished", 100, 100))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[") and " 1/100 " in lines[0]
    assert "100/100" in lines[1] and lines[1].endswith("done")


@pytest.mark.parametrize("kwargs", [{"width": 0}, {"width": "3"}, {"min_interval": -1}])
def test_text_bar_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError, match="TextProgressBar"):
        TextProgressBar(**kwargs)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.04, "0.0s"), (4.2, "4.2s"), (187, "3m07s"), (7500, "2h05m"), (-1, "?")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


# -- tqdm-like objects -------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
def test_tqdm_like_object_updates_sum_to_the_total(backend):
    bar = FakeBar()
    out = Parallel(n_jobs=2, backend=backend, progress=bar)(delayed(square)(i) for i in range(N))
    assert out == [i * i for i in range(N)]
    assert sum(bar.updates) == N == bar.n
    assert all(u > 0 for u in bar.updates)
    assert bar.total == N
    assert bar.refreshed >= 1
    assert not bar.closed  # the caller's bar stays open


def test_tqdm_like_object_reused_over_two_calls_accumulates():
    bar = FakeBar()
    p = Parallel(n_jobs=2, backend="threading", progress=bar)
    p(delayed(square)(i) for i in range(3))
    p(delayed(square)(i) for i in range(4))
    assert bar.n == 7 and bar.total == 7


def test_tqdm_like_object_keeps_a_larger_total():
    bar = FakeBar(total=100)
    Parallel(n_jobs=2, backend="threading", progress=bar)(delayed(square)(i) for i in range(5))
    assert bar.total == 100 and bar.n == 5


def test_tqdm_like_class_is_instantiated_and_closed(monkeypatch):
    made: list[FakeBar] = []

    class Bar(FakeBar):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    Parallel(n_jobs=2, backend="threading", progress=Bar)(delayed(square)(i) for i in range(5))
    assert len(made) == 1
    assert made[0].n == 5 and made[0].total == 5 and made[0].closed and made[0].unit == "task"


def test_tqdm_adapter_rejects_objects_without_update():
    with pytest.raises(TypeError, match="update"):
        TqdmAdapter(object())


def test_progress_true_uses_tqdm_when_installed(capsys):
    pytest.importorskip("tqdm")
    listener = make_progress_listener(True)
    assert isinstance(listener, TqdmAdapter) and listener.own
    listener.close()
    Parallel(n_jobs=2, backend="threading", progress=True)(delayed(square)(i) for i in range(5))
    assert "5/5" in capsys.readouterr().err


def test_progress_true_picks_tqdm_auto_when_importable(monkeypatch):
    made: list[FakeBar] = []

    class FakeTqdm(FakeBar):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    pkg, auto = types.ModuleType("tqdm"), types.ModuleType("tqdm.auto")
    auto.tqdm = FakeTqdm  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tqdm", pkg)
    monkeypatch.setitem(sys.modules, "tqdm.auto", auto)
    Parallel(n_jobs=2, backend="threading", progress=True)(delayed(square)(i) for i in range(6))
    assert len(made) == 1
    assert made[0].n == 6 and made[0].total == 6 and made[0].closed


def test_progress_true_without_tqdm_is_the_text_bar(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    assert isinstance(make_progress_listener(True), TextProgressBar)


# -- callables ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_callable_receives_monotonic_events_ending_with_finished(backend, return_as):
    events: list[ProgressEvent] = []
    lock = threading.Lock()

    def listener(event: ProgressEvent) -> None:
        with lock:
            events.append(event)

    # a generator: the total is unknown until the iterable is exhausted
    out = Parallel(n_jobs=2, backend=backend, return_as=return_as, progress=listener, batch_size=1)(
        delayed(square)(i) for i in range(N)
    )
    assert sorted(out) == [i * i for i in range(N)]
    assert events, "no events"
    assert all(isinstance(e, ProgressEvent) for e in events)
    assert events[0].kind == "start"
    assert events[-1].kind == "finished"
    assert [e.kind for e in events].count("finished") == 1
    assert events[-1].total == N and events[-1].n_completed == N and events[-1].n_dispatched == N
    for a, b in itertools.pairwise(events):
        assert b.n_completed >= a.n_completed and b.n_dispatched >= a.n_dispatched
        assert b.elapsed >= a.elapsed
    assert all(e.n_completed <= e.n_dispatched for e in events)
    assert sum(e.batch_size for e in events if e.kind == "completed") == N
    known = [e.total for e in events if e.total is not None]
    assert known and set(known) == {N}


def test_callable_sees_total_from_len_at_start():
    events: list[ProgressEvent] = []
    Parallel(n_jobs=2, backend="threading", progress=events.append)([delayed(square)(i) for i in range(4)])
    assert events[0].kind == "start" and events[0].total == 4


def test_callable_with_a_close_method_is_not_closed():
    class Logger:
        closed = False

        def __init__(self) -> None:
            self.kinds: list[str] = []

        def __call__(self, event: ProgressEvent) -> None:
            self.kinds.append(event.kind)

        def close(self) -> None:
            self.closed = True

    logger = Logger()
    Parallel(n_jobs=2, backend="threading", progress=logger)(delayed(square)(i) for i in range(3))
    assert logger.kinds[-1] == "finished" and not logger.closed
    assert isinstance(make_progress_listener(logger), CallableListener)


def test_aborted_call_ends_with_aborted_event():
    events: list[ProgressEvent] = []
    with pytest.raises(ValueError, match="boom on 3"):
        Parallel(n_jobs=2, backend="threading", progress=events.append)(
            delayed(fail_on_three)(i) for i in range(6)
        )
    assert events[-1].kind == "aborted"
    assert "finished" not in [e.kind for e in events]


def test_listener_error_reaches_the_caller():
    def broken(event: ProgressEvent) -> None:
        if event.kind == "completed":
            raise RuntimeError("listener broke")

    with pytest.raises(RuntimeError, match="listener broke"):
        Parallel(n_jobs=2, backend="threading", progress=broken)(delayed(square)(i) for i in range(4))


# -- parallel_config and validation ------------------------------------------------------


def test_parallel_config_progress_true_reaches_inner_parallel(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)

    def library_code() -> list[int]:  # calls Parallel without progress=
        return Parallel(n_jobs=2, backend="threading")(delayed(square)(i) for i in range(5))

    with parallel_config(progress=True):
        assert library_code() == [0, 1, 4, 9, 16]
    assert "5/5" in capsys.readouterr().err.splitlines()[-1]
    library_code()
    assert capsys.readouterr().err == ""  # outside the block: no bar


def test_parallel_config_progress_callable_and_explicit_override():
    events: list[ProgressEvent] = []
    with parallel_config(progress=events.append, backend="threading", n_jobs=2):
        Parallel()(delayed(square)(i) for i in range(3))
        assert events[-1].kind == "finished"
        n = len(events)
        Parallel(progress=False)(delayed(square)(i) for i in range(3))
        assert len(events) == n  # the explicit value wins


@pytest.mark.parametrize("bad", [42, "yes", 1.5, object()])
def test_bad_progress_value_names_the_parameter(bad):
    with pytest.raises(TypeError, match=r"progress must be True/False/None, a tqdm-like object"):
        check_progress(bad)
    with pytest.raises(TypeError, match="progress must be"):
        Parallel(n_jobs=2, backend="threading", progress=bad)(delayed(square)(i) for i in range(2))


@pytest.mark.parametrize("value", [None, False])
def test_no_progress_means_no_listener(value):
    assert make_progress_listener(value) is None


# -- the failure policy's counts (on_error, per-task timeout, retries) ----------------


def test_text_bar_shows_the_failure_counts_that_are_not_zero():
    bar = TextProgressBar(stream=io.StringIO())
    event = ProgressEvent("completed", 5, 5, 10, 2.0, 1, 2.0, n_failed=2, n_retried=3, n_timed_out=1)
    text = bar.render(event)
    assert "2 failed" in text and "1 timed out" in text and "3 retried" in text
    assert "failed" not in bar.render(_event("completed", 5, 10))


class PostfixBar(FakeBar):
    def __init__(self, total: int | None = None, unit: str = "it") -> None:
        super().__init__(total, unit)
        self.postfixes: list[str] = []

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfixes.append(s)


@pytest.mark.timeout(60)
def test_tqdm_like_bar_gets_the_failure_counts_as_its_postfix():
    bar = PostfixBar()
    out = Parallel(n_jobs=2, backend="threading", on_error="return", progress=bar)(
        delayed(fail_on_three)(i) for i in range(N)
    )
    assert isinstance(out[3], ValueError)
    assert bar.postfixes[-1] == "1 failed"
    assert sum(bar.updates) == N
