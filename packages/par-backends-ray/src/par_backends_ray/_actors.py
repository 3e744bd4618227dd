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
(``ray.cancel(force=True)`` is not allowed for actor tasks), and so is an actor with
batches of a call that is aborted (the first error, the call's timeout): Ray does not
interrupt a running actor task. An initializer that raises kills its actor for good
(Ray does not restart it); the batches sent to it fail with a ``WorkerDiedError`` naming
the initializer, whose cause carries its error, and a new actor takes its place for the
next batches (at most one replacement per actor of the pool: an initializer that keeps
failing is not run again and again; the batches sent to a dead actor then fail at once).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import ray

from ._task import run_batch, run_batch_timed

__all__ = ["TASK_ONLY_OPTIONS", "ActorPool"]

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


class ActorPool:
    """``n`` actors started with ``options`` (Ray actor options); ``submit`` sends a
    batch to the least busy one.

    Ray runs the done-callbacks of ObjectRef futures on its core worker's own thread,
    where a blocking Ray call (``ray.kill``, starting an actor) waits for that very
    thread: a deadlock (ray-project/ray#50980). So a death seen in a callback is only
    recorded (:meth:`mark_dead`); the actor is replaced by the next :meth:`submit` or
    :meth:`abort`, which run in the scheduler's thread.
    """

    def __init__(
        self, n: int, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...], options: dict[str, Any]
    ) -> None:
        options = {k: v for k, v in options.items() if k not in TASK_ONLY_OPTIONS}
        options.setdefault("num_cpus", 1)  # an actor holds its CPU as a loky worker would
        cls = _remote_class().options(max_restarts=-1, max_task_retries=0, **options)
        self.initializer = initializer
        self._new: Callable[[], Any] = lambda: cls.remote(initializer, initargs)
        self.actors = [self._new() for _ in range(max(n, 1))]
        self._load = [0] * len(self.actors)
        self._lock = threading.Lock()
        self._dead: dict[int, Any] = {}  # index -> the dead actor, replaced at the next submit
        #: Actors started in place of ones whose initializer raised; at most one per
        #: actor of the pool, then a dead actor stays dead (its batches fail at once).
        self.init_replacements = 0
        self._replacing: set[Any] = set()  # actors started for an initializer that raised

    def submit(self, name: str, timed: bool, batch: Any, refs: list[Any]) -> tuple[Any, int, Any]:
        """Send the batch; returns ``(ObjectRef or ObjectRefGenerator, actor index, actor)``."""
        self._replace_dead()
        with self._lock:
            index = min(range(len(self._load)), key=self._load.__getitem__)
            self._load[index] += 1
            actor = self.actors[index]
        method = actor.run_timed if timed else actor.run
        return method.options(name=name).remote(batch, *refs), index, actor

    def done(self, index: int) -> None:
        with self._lock:
            self._load[index] -= 1

    def replace(self, index: int) -> None:
        """Kill actor ``index`` (the batches sent to it fail) and put a new one in its
        place (its initializer runs; batches sent to it wait until it is up). Not from a
        Ray callback (see the class docstring)."""
        with self._lock:
            old, self.actors[index] = self.actors[index], self._new()
            self._dead.pop(index, None)
        with contextlib.suppress(Exception):
            ray.kill(old, no_restart=True)

    def mark_dead(self, index: int, actor: Any, init_failed: bool) -> tuple[bool, bool]:
        """Actor ``index`` (``actor``) died under a batch; safe in a Ray callback.
        ``init_failed``: its initializer raised (Ray never restarts such an actor; being
        the least busy, it would take every next batch), so it is replaced at the next
        :meth:`submit`, up to one replacement per actor of the pool. Returns ``(again,
        replaced)``: ``actor`` was itself started in place of one whose initializer
        raised; a new actor takes its place."""
        with self._lock:
            again = actor in self._replacing
            current = index < len(self.actors) and self.actors[index] is actor
            if init_failed and current and index not in self._dead:
                if self.init_replacements < len(self.actors):
                    self._dead[index] = actor
                    self.init_replacements += 1
            return again, not current or index in self._dead  # not current: replaced already

    def _replace_dead(self) -> None:
        with self._lock:
            dead, self._dead = self._dead, {}
            for index, actor in dead.items():
                if self.actors[index] is actor:
                    self.actors[index] = self._new()
                    self._replacing.add(self.actors[index])
        for actor in dead.values():
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)

    def abort(self, indexes: set[int], replace: bool) -> None:
        """Stop the batches running or queued on actors ``indexes`` (``ray.cancel`` does
        not interrupt a running actor task): replace those actors (``replace``: the
        backend stays usable), else kill them (the pool is about to be killed)."""
        for index in sorted(indexes):
            if replace:
                self.replace(index)
            else:
                with contextlib.suppress(Exception):
                    ray.kill(self.actors[index], no_restart=True)

    def kill(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self.actors = []
