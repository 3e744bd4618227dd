"""A guarded batch lists its envelopes' positions at its end, so that the parent opens
nothing when no task failed (issue 17: the policy's cost without failures)."""

from __future__ import annotations

import pickle

from par_api import BatchedCalls
from par_scheduler._policy import Envelopes, Policy, Retried, TaskFailed


def _ok(x: int) -> int:
    return x * 2


def _fail_odd(x: int) -> int:
    if x % 2:
        raise ValueError(x)
    return x


def _batch(func: object, n: int) -> BatchedCalls:
    return BatchedCalls([(func, (i,), {}) for i in range(n)], None, 10)


def test_batch_without_failure_returns_the_plain_results() -> None:
    policy = Policy("return")
    results = policy.guarded(_batch(_ok, 5))()
    assert results == [0, 2, 4, 6, 8]
    assert not any(isinstance(r, Envelopes) for r in results)
    opened, failures, n_retried = policy.open(results, 10)
    assert opened == [0, 2, 4, 6, 8] and failures == [] and n_retried == 0


def test_failures_are_listed_at_the_end_and_opened_in_place() -> None:
    policy = Policy("return")
    results = policy.guarded(_batch(_fail_odd, 5))()
    assert len(results) == 6
    marker = pickle.loads(pickle.dumps(results[-1]))  # crosses to the parent
    assert isinstance(marker, Envelopes) and marker.positions == (1, 3)
    assert [type(r) for r in results[:5]] == [int, TaskFailed, int, TaskFailed, int]
    opened, failures, _ = policy.open(pickle.loads(pickle.dumps(results)), 10)
    assert len(opened) == 5
    assert opened[0] == 0 and opened[2] == 2 and opened[4] == 4
    assert [str(e) for e in failures] == ["1", "3"]
    assert opened[1] is failures[0] and opened[3] is failures[1]
    assert "par: task 11 " in failures[0].__notes__[0]


_calls: dict[int, int] = {}


def _flaky(x: int) -> int:
    _calls[x] = _calls.get(x, 0) + 1
    if x == 2 and _calls[x] == 1:
        raise KeyError(x)
    return x


def test_a_retried_result_is_opened_and_counted() -> None:
    _calls.clear()
    policy = Policy("return", retries=1, retry_on=(KeyError,))
    results = policy.guarded(_batch(_flaky, 4))()
    assert isinstance(results[2], Retried) and results[-1].positions == (2,)
    opened, failures, n_retried = policy.open(results, 0)
    assert opened == [0, 1, 2, 3] and failures == [] and n_retried == 1


def test_the_kept_batch_gives_back_the_same_tasks() -> None:
    policy = Policy("return")
    batch = policy.guarded(BatchedCalls([(_ok, (i,), {}) for i in range(4)], ("sequential", 1), 7))
    kept = policy.keep(batch)
    assert kept is not batch  # compact: the task tuples are not kept alive
    restored = Policy.restore(kept)
    assert [(f, a, k) for f, a, k in restored.tasks] == [(_ok, (i,), {}) for i in range(4)]
    assert (restored.nested, restored.index) == (batch.nested, 7)
    assert restored() == [0, 2, 4, 6]


def test_other_batches_are_kept_as_they_are() -> None:
    policy = Policy("return")
    mixed = policy.guarded(BatchedCalls([(_ok, (1,), {}), (_fail_odd, (2,), {})], None, 0))
    two_args = policy.guarded(BatchedCalls([(divmod, (1, 2), {}), (divmod, (3, 2), {})], None, 0))
    keywords = policy.guarded(BatchedCalls([(_ok, (), {"x": 1}), (_ok, (), {"x": 2})], None, 0))
    for batch in (mixed, two_args, keywords):
        assert policy.keep(batch) is batch and Policy.restore(batch) is batch


def test_single_argument_tasks_keep_results_around_failures() -> None:
    # what a process worker runs: the tasks as a SingleArgTasks, mapped
    from par_api import SingleArgTasks

    seen: list[int] = []

    def record(x: int) -> int:
        seen.append(x)
        return _fail_odd(x)

    policy = Policy("return")
    batch = policy.guarded(BatchedCalls(SingleArgTasks(record, list(range(6))), None, 0))  # type: ignore[arg-type]
    results = batch()
    assert seen == [0, 1, 2, 3, 4, 5]  # each task ran once, in order
    assert results[-1].positions == (1, 3, 5)
    opened, failures, _ = policy.open(results, 0)
    assert opened[0::2] == [0, 2, 4] and [str(e) for e in failures] == ["1", "3", "5"]
