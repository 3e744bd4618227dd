"""interrupt(): another thread aborts a call whose generator is being waited on."""

from __future__ import annotations

import threading

import pytest
from par_api import delayed
from par_scheduler import ProgressEvent, interrupt, run

MARGIN = 10.0


class Interrupted(Exception):
    pass


def wait_for(event: threading.Event, i: int) -> int:
    event.wait(MARGIN)
    return i


@pytest.mark.timeout(60)
@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_interrupt_wakes_the_waiting_consumer_and_aborts_the_call(thread_backend, return_as) -> None:
    release = threading.Event()
    finished: list[BaseException | None] = []
    events: list[ProgressEvent] = []
    gen = run(
        thread_backend(),
        (delayed(wait_for)(release, i) for i in range(50)),
        n_jobs=2,
        return_as=return_as,
        listeners=[events.append],
        on_finish=finished.append,
    )
    outcome: list[BaseException] = []

    def consume() -> None:
        try:
            next(gen)
        except BaseException as exc:
            outcome.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        # the consumer blocks (or is about to): no task can end before ``release`` is set
        error = Interrupted("stop")
        assert interrupt(gen, error) is True
        consumer.join(MARGIN)
        assert not consumer.is_alive()
        assert outcome == [error]
        assert finished == [error]  # aborted as on a task error, in the consumer's thread
        assert events[-1].kind == "aborted"
        with pytest.raises(StopIteration):
            next(gen)
    finally:
        release.set()


def test_interrupt_of_something_else_or_a_finished_call_is_a_no_op(thread_backend) -> None:
    assert interrupt(iter([1, 2]), Interrupted()) is False
    gen = run(thread_backend(), (delayed(abs)(-i) for i in range(3)), n_jobs=2, return_as="generator")
    assert list(gen) == [0, 1, 2]
    assert interrupt(gen, Interrupted()) is True  # registered, but the call is over: nothing happens
    assert list(gen) == []
