"""The order of a call's set-up in ``Parallel._configure``: the backend is configured
(a process backend starts its workers there) before the call's serializer is built, so
that building it runs while the workers start; the batches still go through it."""

from __future__ import annotations

import pickle
from concurrent.futures import Future
from typing import Any

import pytest
from par import Parallel, delayed
from par_api import ParallelBackendBase, TransportHooks


class RecordingBackend(ParallelBackendBase):
    """Uses transport hooks like a process backend, runs the batches in this process
    (each serialized one is pickled and run, as a worker would)."""

    supports_transport_hooks = True
    supports_timeout = True

    def __init__(self) -> None:
        super().__init__()
        self.serializer_at_configure: list[Any] = []
        self.sent: list[Any] = []

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        return 2

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, hooks: Any = None, **kwargs: Any) -> int:
        assert isinstance(hooks, TransportHooks)
        self.serializer_at_configure.append(parallel._serializer)
        self.hooks = hooks
        return 2

    def submit(self, func: Any, callback: Any = None) -> Future[Any]:
        payload = self.hooks.serialize_batch(func)
        self.sent.append(type(payload).__name__)
        out: Future[Any] = Future()
        out.set_result(pickle.loads(pickle.dumps(payload))())
        if callback is not None:
            callback(out)
        return out

    def retrieve_result_callback(self, out: Any) -> Any:
        return out.result()


@pytest.mark.timeout(60)
def test_par_serializer_is_built_after_the_backend_is_configured() -> None:
    backend = RecordingBackend()
    results = Parallel(n_jobs=2, backend=backend, forward_output=False)(delayed(pow)(i, 2) for i in range(5))
    assert results == [0, 1, 4, 9, 16]
    assert backend.serializer_at_configure == [None]
    assert backend.sent and set(backend.sent) == {"SerializedBatch"}
