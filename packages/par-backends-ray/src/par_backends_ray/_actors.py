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

An actor is killed only once Ray has created it (:func:`kill_when_created`): a
``ray.kill`` that reaches Ray between the lease of the actor's worker and the start of
its creation task is ignored by that worker ("Mismatched ActorID: ignoring KillActor for
previous actor ..., current actor ID: NIL_ID" in Ray's log) while Ray marks the actor
dead, and the worker keeps its lease, and the actor's CPU, until the driver exits (seen
in CI with Ray 2.60: after an abort, the new actors never got that CPU and their batches
never ran). That window cannot be seen from the driver, so an actor whose creation has
not completed (``ready()``, its first call) is killed by a thread of the driver
(``par-ray-reaper``) as soon as it has, or after :data:`CREATION_WAIT` seconds; the
batches sent to it are cancelled first (``ray.cancel``: queued actor tasks never start).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

from ._task import run_batch, run_batch_timed

__all__ = ["CREATION_WAIT", "TASK_ONLY_OPTIONS", "ActorPool", "kill_when_created"]

#: Ray task options that actors do not take (par sets the actors' restart policy).
TASK_ONLY_OPTIONS = frozenset({"max_retries", "retry_exceptions", "max_calls"})

#: Seconds a kill waits for Ray to create the actor (it may be waiting for a CPU) before
#: killing it anyway (see the module docstring).
CREATION_WAIT = 60.0


class ParWorker:
    """The actor: runs the initializer once, then batches."""

    def __init__(self, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
        if initializer is not None:
            initializer(*initargs)

    def ready(self) -> bool:
        """The actor's first call: done once Ray has created the actor (or failed to)."""
        return True

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


class _Reaper:
    """Kills actors once their ``ready()`` ref resolves (created, or failed to be), or at
    their deadline; one thread (``par-ray-reaper``) while some wait."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[Any, tuple[Any, float]] = {}  # ready ref -> (actor, deadline)
        self._thread: threading.Thread | None = None

    def add(self, actor: Any, ready: Any, timeout: float) -> None:
        with self._lock:
            self._waiting[ready] = (actor, time.monotonic() + timeout)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="par-ray-reaper", daemon=True)
                self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        try:
            self._reap()
        finally:  # an unexpected error: the next add() starts a new thread
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _reap(self) -> None:
        while True:
            with self._lock:
                if not self._waiting:
                    self._thread = None  # under the lock: a later add() starts a new thread
                    return
                refs = list(self._waiting)
                first_deadline = min(deadline for _, deadline in self._waiting.values())
            try:
                wait = min(max(first_deadline - time.monotonic(), 0.0), 1.0)  # 1 s: see new ones
                done, _ = ray.wait(refs, num_returns=1, timeout=wait)  # wakes at the first done
            except BaseException:  # the runtime is gone (ray.shutdown: SystemExit), and its actors
                with self._lock:
                    self._waiting.clear()
                    self._thread = None
                return
            now = time.monotonic()
            finished = set(done)
            with self._lock:
                due = [
                    self._waiting.pop(ref)[0]
                    for ref in refs
                    if ref in finished or self._waiting[ref][1] <= now
                ]
            for actor in due:
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)


_reaper = _Reaper()


def kill_when_created(actors: list[tuple[Any, Any]], timeout: float | None = None) -> None:
    """Kill each ``(actor, ready ref)``: at once if Ray has created it (its ``ready()``
    call is done, or there is no ref), else as soon as Ray has, or after ``timeout``
    (:data:`CREATION_WAIT`) seconds (see the module docstring)."""
    if not actors:
        return
    refs = [ready for _, ready in actors if ready is not None]
    created: set[Any] = set()
    if refs:
        with contextlib.suppress(Exception):
            created = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])
    for actor, ready in actors:
        if ready is None or ready in created:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        else:
            _reaper.add(actor, ready, CREATION_WAIT if timeout is None else timeout)


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
        self._make: Callable[[], Any] = lambda: cls.remote(initializer, initargs)
        self._lock = threading.Lock()
        self._ready: dict[Any, Any] = {}  # actor -> the ref of its ready() call
        self.actors = [self._new() for _ in range(max(n, 1))]
        self._load = [0] * len(self.actors)
        self._dead: dict[int, Any] = {}  # index -> the dead actor, replaced at the next submit
        #: Actors started in place of ones whose initializer raised; at most one per
        #: actor of the pool, then a dead actor stays dead (its batches fail at once).
        self.init_replacements = 0
        self._replacing: set[Any] = set()  # actors started for an initializer that raised

    def _new(self) -> Any:
        """A new actor, and its ``ready()`` call (first in its queue). Not under the lock
        (Ray calls; see the class docstring)."""
        actor = self._make()
        ready = actor.ready.remote()
        with self._lock:
            self._ready[actor] = ready
        return actor

    def _kill(self, actors: list[Any]) -> None:
        """Kill ``actors`` once Ray has created them (:func:`kill_when_created`)."""
        with self._lock:
            doomed = [(actor, self._ready.pop(actor, None)) for actor in actors]
        kill_when_created(doomed)

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
        new = self._new()
        with self._lock:
            old, self.actors[index] = self.actors[index], new
            self._dead.pop(index, None)
        self._kill([old])

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
        unused = []
        for index, actor in dead.items():
            with self._lock:
                if self.actors[index] is not actor:  # replaced meanwhile (an abort)
                    continue
            new = self._new()
            with self._lock:
                if self.actors[index] is actor:
                    self.actors[index] = new
                    self._replacing.add(new)
                else:  # replaced meanwhile (an overrun's timeout)
                    unused.append(new)
        self._kill([*dead.values(), *unused])

    def abort(self, indexes: set[int], replace: bool) -> None:
        """Stop the batches running or queued on actors ``indexes`` (``ray.cancel`` does
        not interrupt a running actor task): replace those actors (``replace``: the
        backend stays usable), else kill them (the pool is about to be killed)."""
        if replace:
            for index in sorted(indexes):
                self.replace(index)
        else:
            self._kill([self.actors[index] for index in sorted(indexes)])

    def kill(self) -> None:
        self._kill(self.actors)
        self.actors = []
