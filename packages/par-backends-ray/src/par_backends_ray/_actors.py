"""A pool of Ray actors for calls with a worker ``initializer`` (or ``actors=True``).

A plain Ray task runs in whatever worker process Ray picks, so there is no place to run
an initializer once per worker, nor a worker whose ``par.worker_state()`` is known to
last. With an ``initializer`` the backend runs its batches on ``n_jobs`` actors instead
(:class:`ActorPool`): each actor is one process of its own that runs
``initializer(*initargs)`` once when it starts, then the batches it is given
(:func:`par_backends_ray._task.run_batch`, so nested calls and cancellation behave as in
tasks); its ``worker_state()`` (the process's dict) lasts as long as the actor. A batch
goes to the actor with the fewest batches in flight. The actors live as long as the
backend's configuration: one call, or every call of a ``with Parallel(...)`` block; they
are killed by ``terminate()``.

An actor that dies (a crash, ``os._exit``) is restarted by Ray (``max_restarts=-1``:
its initializer runs again); the batches sent to it fail with a ``WorkerDiedError`` and
par's failure policy decides (Ray does not re-run actor tasks: ``max_task_retries=0``).
An actor whose batch overran its per-task timeout is killed and replaced by a new actor
(``ray.cancel(force=True)`` is not allowed for actor tasks). An initializer that raises kills its actor for good; the batches
sent to it fail with a ``WorkerDiedError`` whose cause carries the initializer's error.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import ray

from ._task import run_batch, run_batch_timed

__all__ = ["TASK_ONLY_OPTIONS", "ActorPool", "check_initializer"]

#: Ray task options that actors do not take (par sets the actors' restart policy).
TASK_ONLY_OPTIONS = frozenset({"max_retries", "retry_exceptions", "max_calls"})


class ParWorker:
    """The actor: runs the initializer once, then batches."""

    def __init__(self, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
        if initializer is not None:
            initializer(*initargs)

    def run(self, batch: Any, *values: Any) -> list[Any]:
        return run_batch(batch, *values)

    def run_timed(self, batch: Any, *values: Any) -> Any:
        yield from run_batch_timed(batch, *values)


_actor_class: Any = None


def _remote_class() -> Any:
    global _actor_class
    if _actor_class is None:
        _actor_class = ray.remote(ParWorker)
    return _actor_class


def check_initializer(initializer: Any, initargs: Any) -> tuple[Callable[..., Any] | None, tuple[Any, ...]]:
    if initializer is not None and not callable(initializer):
        raise TypeError(
            f"initializer must be a callable run once in each Ray actor of the call (or None), "
            f"got {type(initializer).__name__} {initializer!r}"
        )
    if not isinstance(initargs, (tuple, list)):
        raise TypeError(f"initargs must be a tuple of arguments for initializer, got {type(initargs).__name__}")
    return initializer, tuple(initargs)


class ActorPool:
    """``n`` actors started with ``options`` (Ray actor options); ``submit`` sends a
    batch to the least busy one."""

    def __init__(
        self, n: int, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...], options: dict[str, Any]
    ) -> None:
        options = {k: v for k, v in options.items() if k not in TASK_ONLY_OPTIONS}
        options.setdefault("num_cpus", 1)  # an actor holds its CPU as a loky worker would
        cls = _remote_class().options(max_restarts=-1, max_task_retries=0, **options)
        self._new: Callable[[], Any] = lambda: cls.remote(initializer, initargs)
        self.actors = [self._new() for _ in range(max(n, 1))]
        self._load = [0] * len(self.actors)
        self._lock = threading.Lock()

    def submit(self, name: str, timed: bool, batch: Any, refs: list[Any]) -> tuple[Any, int]:
        """Send the batch; returns ``(ObjectRef or ObjectRefGenerator, actor index)``."""
        with self._lock:
            index = min(range(len(self._load)), key=self._load.__getitem__)
            self._load[index] += 1
            actor = self.actors[index]
        method = actor.run_timed if timed else actor.run
        return method.options(name=name).remote(batch, *refs), index

    def done(self, index: int) -> None:
        with self._lock:
            self._load[index] -= 1

    def replace(self, index: int) -> None:
        """Kill actor ``index`` (the batches sent to it fail) and put a new one in its
        place (its initializer runs; batches sent to it wait until it is up)."""
        with self._lock:
            old, self.actors[index] = self.actors[index], self._new()
        with contextlib.suppress(Exception):
            ray.kill(old, no_restart=True)

    def kill(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self.actors = []
