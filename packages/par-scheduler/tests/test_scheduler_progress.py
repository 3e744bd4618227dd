"""Progress events and the joblib-format verbose printer."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from par_api import Task, delayed
from par_scheduler import ProgressEvent, VerbosePrinter, run, short_format_time, verbosity_filter


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    import par_scheduler._engine as engine

    fake = FakeClock()
    monkeypatch.setattr(engine, "_now", fake)
    return fake


def event(kind: str = "completed", **fields: Any) -> ProgressEvent:
    values: dict[str, Any] = dict(
        kind=kind,
        n_dispatched=10,
        n_completed=4,
        total=None,
        elapsed=0.8,
        batch_size=1,
        eta=None,
        length=None,
        n_batches=4,
        exhausted=False,
        pre_dispatch=4,
    )
    values.update(fields)
    return ProgressEvent(**values)


# -- formats -----------------------------------------------------------------------------
def test_scheduler_short_format_time() -> None:
    assert short_format_time(0.8) == "   0.8s"
    assert short_format_time(1.44) == "   1.4s"
    assert short_format_time(59.9) == "  59.9s"
    assert short_format_time(90) == " 1.5min"


def test_scheduler_verbosity_filter() -> None:
    assert [i for i in range(200) if not verbosity_filter(i, 5)] == [0, 17, 71, 161]
    assert [i for i in range(100) if not verbosity_filter(i, 10)] == [
        0,
        1,
        4,
        7,
        12,
        17,
        24,
        31,
        40,
        49,
        60,
        71,
        84,
        97,
    ]
    assert not any(verbosity_filter(i, 11) for i in range(100))
    assert all(verbosity_filter(i, 0) for i in range(10))


def test_scheduler_printer_spec_formats(capsys: pytest.CaptureFixture[str]) -> None:
    printer = VerbosePrinter(10, 2)
    printer(event(n_completed=4, n_batches=3, elapsed=0.8))  # skipped at this level
    printer(event(n_completed=4, n_batches=4, elapsed=0.8))
    printer(event("finished", n_dispatched=10, n_completed=10, total=10, elapsed=1.44, exhausted=True))
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "[Parallel(n_jobs=2)]: Done   4 tasks      | elapsed:    0.8s\n"
        "[Parallel(n_jobs=2)]: Done  10 out of  10 | elapsed:    1.4s finished\n"
    )


def test_scheduler_printer_known_length_width(capsys: pytest.CaptureFixture[str]) -> None:
    printer = VerbosePrinter(100, 4, name="Parallel")
    printer(event(length=10, total=10, n_completed=4))
    printer(event(length=1000, total=1000, n_completed=4))
    printer(
        event("finished", length=10, total=10, n_dispatched=10, n_completed=10, elapsed=90, exhausted=True)
    )
    assert capsys.readouterr().out == (
        "[Parallel(n_jobs=4)]: Done  4 out of 10 | elapsed:    0.8s\n"
        "[Parallel(n_jobs=4)]: Done    4 out of 1000 | elapsed:    0.8s\n"
        "[Parallel(n_jobs=4)]: Done 10 out of 10 | elapsed:  1.5min finished\n"
    )


def test_scheduler_printer_remaining_after_dispatch(capsys: pytest.CaptureFixture[str]) -> None:
    printer = VerbosePrinter(100, 2)
    # Dispatch is over: messages say what remains, the one before the last is skipped.
    printer(event(exhausted=True, n_dispatched=10, n_completed=5, total=10, elapsed=0.8))
    printer(event(exhausted=True, n_dispatched=10, n_completed=9, total=10, elapsed=0.9))
    printer(
        event(exhausted=True, n_dispatched=10, n_completed=10, total=10, elapsed=1.0)
    )  # said by 'finished'
    assert capsys.readouterr().out == (
        "[Parallel(n_jobs=2)]: Done   5 out of  10 | elapsed:    0.8s remaining:    0.8s\n"
    )


def test_scheduler_printer_frequency_rules(capsys: pytest.CaptureFixture[str]) -> None:
    for verbose in (1, 5, 10, 11):
        printer = VerbosePrinter(verbose, 2)
        for n in range(1, 101):
            printer(event(n_completed=n, n_batches=n, n_dispatched=n + 4))
        lines = capsys.readouterr().err.splitlines()
        expected = [n for n in range(1, 101) if not verbosity_filter(n, verbose)]
        assert [int(line.split()[2]) for line in lines] == expected
    assert len(expected) == 100  # above 10: every batch


def test_scheduler_printer_streams(capsys: pytest.CaptureFixture[str]) -> None:
    VerbosePrinter(49, 2)(event(n_batches=0))
    VerbosePrinter(50, 2)(event(n_batches=0))
    captured = capsys.readouterr()
    assert captured.err.count("Done") == 1 and captured.out.count("Done") == 1
    stream = io.StringIO()
    VerbosePrinter(1, 3, name="Custom", stream_chooser=lambda: stream)(event(n_batches=0))
    assert stream.getvalue() == "[Custom(n_jobs=3)]: Done   4 tasks      | elapsed:    0.8s\n"
    VerbosePrinter(0, 2)(event(n_batches=0))
    assert capsys.readouterr() == ("", "")


def test_scheduler_printer_start_message(capsys: pytest.CaptureFixture[str]) -> None:
    VerbosePrinter(1, 2, backend_name="LokyBackend")(event("start", n_completed=0, n_dispatched=0))
    VerbosePrinter(1, 2)(event("start", n_completed=0, n_dispatched=0))
    assert (
        capsys.readouterr().err
        == "[Parallel(n_jobs=2)]: Using backend LokyBackend with 2 concurrent workers.\n"
    )


# -- events from run() -------------------------------------------------------------------
def test_scheduler_event_sequence(sync_backend, clock: FakeClock) -> None:
    events: list[ProgressEvent] = []

    def task(i: int) -> int:
        clock.t += 1.0
        return i

    out = run(
        sync_backend(),
        [delayed(task)(i) for i in range(5)],
        n_jobs=2,
        batch_size=2,
        listeners=[events.append],
    )
    assert out == list(range(5))
    assert [e.kind for e in events] == [
        "start",
        "dispatched",
        "completed",
        "dispatched",
        "completed",
        "dispatched",
        "completed",
        "finished",
    ]
    assert [(e.n_dispatched, e.n_completed, e.batch_size) for e in events] == [
        (0, 0, 0),
        (2, 0, 2),
        (2, 2, 2),
        (4, 2, 2),
        (4, 4, 2),
        (5, 4, 1),
        (5, 5, 1),
        (5, 5, 0),
    ]
    assert all(e.total == 5 and e.length == 5 for e in events)
    assert [e.elapsed for e in events] == [0.0, 0.0, 2.0, 2.0, 4.0, 4.0, 5.0, 5.0]
    assert [e.eta for e in events if e.kind == "completed"] == [3.0, 1.0, 0.0]
    assert events[-1].exhausted and events[-1].n_batches == 3
    assert events[0].pre_dispatch == 4


def test_scheduler_total_known_when_generator_is_exhausted(sync_backend) -> None:
    events: list[ProgressEvent] = []
    run(
        sync_backend(),
        (delayed(abs)(-i) for i in range(6)),
        n_jobs=2,
        pre_dispatch=2,
        listeners=[events.append],
    )
    assert events[0].total is None and events[0].length is None
    assert events[-1].kind == "finished" and events[-1].total == 6
    completed = [e for e in events if e.kind == "completed"]
    assert [e.n_completed for e in completed] == [1, 2, 3, 4, 5, 6]
    assert completed[0].total is None and completed[0].eta is None


def test_scheduler_events_with_threads(thread_backend) -> None:
    events: list[ProgressEvent] = []
    backend = thread_backend()
    out = run(backend, (delayed(abs)(-i) for i in range(500)), n_jobs=2, listeners=[events.append])
    assert out == list(range(500))
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "finished" and kinds.count("finished") == 1
    completed = [e for e in events if e.kind == "completed"]
    assert len(completed) == kinds.count("dispatched") == len(backend.sizes)
    counts = [e.n_completed for e in completed]
    assert counts == sorted(counts) and counts[-1] == 500  # listeners see counts in order
    assert sum(e.batch_size for e in completed) == 500


def test_scheduler_aborted_event(sync_backend) -> None:
    events: list[ProgressEvent] = []

    def boom(i: int) -> int:
        if i == 2:
            raise ValueError("boom")
        return i

    with pytest.raises(ValueError):
        run(sync_backend(), [delayed(boom)(i) for i in range(5)], n_jobs=2, listeners=[events.append])
    assert events[-1].kind == "aborted"
    assert "finished" not in [e.kind for e in events]


def test_scheduler_listener_error_fails_the_call(sync_backend, finish_recorder) -> None:
    finished = finish_recorder()

    def listener(event: ProgressEvent) -> None:
        if event.kind == "completed":
            raise RuntimeError("listener broke")

    with pytest.raises(RuntimeError, match="listener broke"):
        run(
            sync_backend(),
            [delayed(abs)(-i) for i in range(5)],
            n_jobs=2,
            listeners=[listener],
            on_finish=finished,
        )
    assert len(finished.calls) == 1


def test_scheduler_verbose_producer_output(
    sync_backend, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """The spec's producer example with verbose=100 (stdout), in joblib 1.6's formats."""

    def producer() -> Iterator[int]:
        for i in range(6):
            print(f"Produced {i}")
            yield i

    out = run(
        sync_backend(),
        (Task(abs, (i,), {}) for i in producer()),
        n_jobs=2,
        pre_dispatch="1.5*n_jobs",
        listeners=[VerbosePrinter(100, 2)],
    )
    assert out == list(range(6))
    assert capsys.readouterr().out.splitlines() == [
        "Produced 0",
        "Produced 1",
        "Produced 2",
        "[Parallel(n_jobs=2)]: Done   1 tasks      | elapsed:    0.0s",
        "Produced 3",
        "[Parallel(n_jobs=2)]: Done   2 tasks      | elapsed:    0.0s",
        "Produced 4",
        "[Parallel(n_jobs=2)]: Done   3 tasks      | elapsed:    0.0s",
        "Produced 5",
        "[Parallel(n_jobs=2)]: Done   4 tasks      | elapsed:    0.0s",
        "[Parallel(n_jobs=2)]: Done   5 tasks      | elapsed:    0.0s",
        "[Parallel(n_jobs=2)]: Done   6 tasks      | elapsed:    0.0s",
        "[Parallel(n_jobs=2)]: Done   6 out of   6 | elapsed:    0.0s finished",
    ]


def test_scheduler_listener_error_at_finish_fails_the_call(sync_backend, finish_recorder):
    finished = finish_recorder()

    def listener(event: ProgressEvent) -> None:
        if event.kind == "finished":
            raise RuntimeError("listener broke at the end")

    for return_as in ("list", "generator"):
        with pytest.raises(RuntimeError, match="at the end"):
            list(
                run(
                    sync_backend(),
                    [delayed(abs)(-i) for i in range(5)],
                    n_jobs=2,
                    return_as=return_as,
                    listeners=[listener],
                    on_finish=finished,
                )
            )
    assert len(finished.calls) == 2
