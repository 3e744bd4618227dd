"""``ParallelBackendBase``: the joblib-compatible backend contract, and ``TransportHooks``."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import inspect
import threading
from collections.abc import Callable
from typing import Any

import par_api
import pytest
from par_api import (
    AutoBatchingMixin,
    BatchedCalls,
    ParallelBackendBase,
    TransportHooks,
    default_effective_n_jobs,
    delayed,
)


def double(x: int) -> int:
    return 2 * x


def fail(x: int) -> int:
    raise ZeroDivisionError(f"fail {x}")


class ImmediateResult:
    """What a minimal backend returns from submit: the outcome of an eager run."""

    def __init__(self, func: Callable[[], Any]) -> None:
        try:
            self.value, self.error = func(), None
        except BaseException as exc:
            self.value, self.error = None, exc

    def get(self, timeout: float | None = None) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class MinimalBackend(ParallelBackendBase):
    """The smallest useful backend: two methods."""

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        return default_effective_n_jobs(n_jobs)

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Any:
        out = ImmediateResult(func)
        if callback is not None:
            callback(out)
        return out


class MyCustomBackend(ParallelBackendBase):
    """The spec's example: mandatory constructor parameters, no super().__init__()."""

    def __init__(self, endpoint: str, api_key: str) -> None:
        self.endpoint = endpoint
        self.api_key = api_key

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        return 4

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Any:
        out = ImmediateResult(func)
        if callback is not None:
            callback(out)
        return out


class PoolBackend(ParallelBackendBase):
    """A backend owning a thread pool, written the joblib way (configure/terminate)."""

    supports_timeout = True
    supports_sharedmem = True
    uses_threads = True

    def __init__(self, nesting_level: int | None = None, **kwargs: Any) -> None:
        super().__init__(nesting_level=nesting_level, **kwargs)
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.events: list[str] = []

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        return default_effective_n_jobs(n_jobs)

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        n = super().configure(n_jobs, parallel, prefer, require, **backend_kwargs)
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=n)
        self.events.append(f"configure {n}")
        return n

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Any:
        assert self.pool is not None
        future = self.pool.submit(func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def terminate(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.events.append("terminate")


# -- the abstract base -------------------------------------------------------------------


def test_effective_n_jobs_is_the_only_abstract_method() -> None:
    assert ParallelBackendBase.__abstractmethods__ == frozenset({"effective_n_jobs"})
    with pytest.raises(TypeError):
        ParallelBackendBase()  # type: ignore[abstract]


def test_capability_flags_have_documented_defaults() -> None:
    expected = {
        "default_n_jobs": 1,
        "supports_timeout": False,
        "supports_sharedmem": False,
        "uses_threads": False,
        "supports_inner_max_num_threads": False,
        "supports_retrieve_callback": True,
        "supports_return_generator": True,
        "supports_auto_batching": False,
        "supports_transport_hooks": False,
    }
    backend = MinimalBackend()
    for name, value in expected.items():
        assert getattr(ParallelBackendBase, name) == value, name
        assert getattr(backend, name) == value, name


def test_auto_batching_mixin_turns_on_adaptive_batching() -> None:
    class Auto(AutoBatchingMixin, MinimalBackend):
        pass

    assert Auto().supports_auto_batching is True
    assert MinimalBackend().supports_auto_batching is False


def test_constructor_stores_nesting_level_and_inner_max_num_threads() -> None:
    backend = MinimalBackend(nesting_level=2, inner_max_num_threads=3)
    assert (backend.nesting_level, backend.inner_max_num_threads) == (2, 3)
    plain = MinimalBackend()
    assert (plain.nesting_level, plain.inner_max_num_threads) == (None, None)


def test_constructor_rejects_unknown_keyword_arguments() -> None:
    with pytest.raises(TypeError):
        MinimalBackend(endpoint="x")


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("__init__", ["self", "nesting_level", "inner_max_num_threads", "kwargs"]),
        ("effective_n_jobs", ["self", "n_jobs"]),
        ("configure", ["self", "n_jobs", "parallel", "prefer", "require", "backend_kwargs"]),
        ("submit", ["self", "func", "callback"]),
        ("apply_async", ["self", "func", "callback"]),
        ("retrieve_result_callback", ["self", "out"]),
        ("start_call", ["self"]),
        ("stop_call", ["self"]),
        ("terminate", ["self"]),
        ("compute_batch_size", ["self"]),
        ("batch_completed", ["self", "batch_size", "duration"]),
        ("abort_everything", ["self", "ensure_ready"]),
        ("get_nested_backend", ["self"]),
        ("retrieval_context", ["self"]),
        ("in_main_thread", ["self"]),
    ],
)
def test_method_signatures_follow_joblibs_custom_backend_api(method: str, params: list[str]) -> None:
    sig = inspect.signature(getattr(ParallelBackendBase, method))
    assert list(sig.parameters) == params


@pytest.mark.parametrize("name", ["retrieve_result", "get_exceptions"])
def test_methods_the_scheduler_never_calls_are_not_in_the_contract(name: str) -> None:
    assert not hasattr(ParallelBackendBase, name)


def test_transport_hooks_hold_only_what_par_sets() -> None:
    fields = {f.name for f in dataclasses.fields(TransportHooks)}
    assert fields == {"serialize_batch", "env", "initializer", "initargs", "max_tasks_per_child", "max_worker_memory"}
    assert not hasattr(TransportHooks, "worker_key")


def test_joblib_defaults_of_optional_parameters() -> None:
    configure = inspect.signature(ParallelBackendBase.configure).parameters
    assert configure["n_jobs"].default == 1
    assert configure["parallel"].default is None
    assert configure["prefer"].default is None
    assert configure["require"].default is None
    assert inspect.signature(ParallelBackendBase.submit).parameters["callback"].default is None
    assert inspect.signature(ParallelBackendBase.abort_everything).parameters["ensure_ready"].default is True


# -- a minimal backend, driven the way the scheduler drives it -----------------------------


def test_minimal_backend_runs_a_batch_through_the_documented_protocol() -> None:
    backend = MinimalBackend()
    parallel = object()
    assert backend.configure(n_jobs=2, parallel=parallel) == 2
    assert backend.parallel is parallel
    backend.start_call()
    received: list[Any] = []
    out = backend.submit(BatchedCalls([delayed(double)(i) for i in range(3)]), callback=received.append)
    assert received == [out]  # the callback got what submit returned, exactly once
    assert backend.retrieve_result_callback(out) == [0, 2, 4]
    backend.stop_call()
    backend.terminate()


def test_retrieve_result_callback_raises_the_error_of_a_failed_batch() -> None:
    backend = MinimalBackend()
    backend.configure(n_jobs=1)
    received: list[Any] = []
    out = backend.submit(BatchedCalls([delayed(fail)(7)]), callback=received.append)
    assert received == [out]  # also fired on failure
    with pytest.raises(ZeroDivisionError, match="fail 7"):
        backend.retrieve_result_callback(out)


def test_base_hooks_have_neutral_defaults() -> None:
    backend = MinimalBackend()
    assert backend.compute_batch_size() == 1
    assert backend.start_call() is None
    assert backend.stop_call() is None
    assert backend.batch_completed(batch_size=4, duration=0.5) is None
    assert backend.terminate() is None
    assert backend.get_nested_backend() == ("sequential", 1)
    assert repr(backend) == "MinimalBackend()"


def test_retrieval_context_is_a_context_manager() -> None:
    backend = MinimalBackend()
    with backend.retrieval_context() as value:
        assert value is None
    with pytest.raises(RuntimeError, match="inside"), backend.retrieval_context():
        raise RuntimeError("inside")


def test_in_main_thread() -> None:
    backend = MinimalBackend()
    assert backend.in_main_thread() is (threading.current_thread() is threading.main_thread())
    seen: list[bool] = []
    thread = threading.Thread(target=lambda: seen.append(backend.in_main_thread()))
    thread.start()
    thread.join(timeout=30)
    assert seen == [False]


def test_retrieval_context_can_be_overridden() -> None:
    import contextlib

    log: list[str] = []

    class SlotBackend(MinimalBackend):
        @contextlib.contextmanager
        def retrieval_context(self):  # type: ignore[override]
            log.append("release slot")
            try:
                yield
            finally:
                log.append("take slot back")

    with SlotBackend().retrieval_context():
        log.append("wait")
    assert log == ["release slot", "wait", "take slot back"]


def test_configure_receives_n_jobs_options_and_transport_hooks() -> None:
    seen: dict[str, Any] = {}

    class Recording(MinimalBackend):
        def configure(self, n_jobs=1, parallel=None, prefer=None, require=None, **backend_kwargs):  # type: ignore[no-untyped-def]
            seen.update(n_jobs=n_jobs, parallel=parallel, prefer=prefer, require=require, **backend_kwargs)
            return super().configure(n_jobs, parallel, prefer, require, **backend_kwargs)

    def init(value: int) -> None:
        pass

    hooks = TransportHooks(
        serialize_batch=lambda batch: batch,
        env={"OMP_NUM_THREADS": "1"},
        initializer=init,
        initargs=(1,),
    )
    backend = Recording()
    parallel = object()
    n = backend.configure(
        -1, parallel=parallel, prefer="threads", require="sharedmem", hooks=hooks, initializer=init
    )
    assert n == par_api.cpu_count()
    assert seen == {
        "n_jobs": -1,
        "parallel": parallel,
        "prefer": "threads",
        "require": "sharedmem",
        "hooks": hooks,
        "initializer": init,
    }
    assert backend.hooks is hooks
    assert backend.parallel is parallel


def test_configure_without_hooks_leaves_hooks_none() -> None:
    backend = MinimalBackend()
    backend.configure(1)
    assert backend.hooks is None


def test_configure_raises_for_n_jobs_zero_through_effective_n_jobs() -> None:
    with pytest.raises(ValueError, match="n_jobs"):
        MinimalBackend().configure(n_jobs=0)


# -- the spec's MyCustomBackend: __init__ without super().__init__() ------------------------


def test_custom_backend_without_base_init_works() -> None:
    backend = MyCustomBackend("http://compute", "42")
    # Class attributes stand in for what the base __init__ would have set.
    assert backend.nesting_level is None
    assert backend.inner_max_num_threads is None
    assert backend.parallel is None
    assert backend.hooks is None
    assert backend.configure(n_jobs=-1) == 4
    out = backend.submit(BatchedCalls([delayed(double)(5)]))
    assert backend.retrieve_result_callback(out) == [10]
    assert backend.get_nested_backend() == ("sequential", 1)
    with backend.retrieval_context():
        pass
    backend.abort_everything(ensure_ready=True)
    backend.abort_everything(ensure_ready=False)
    assert repr(backend) == "MyCustomBackend()"


def test_custom_backend_gets_its_parameters_from_parallel_config() -> None:
    par_api.register_parallel_backend("custom", MyCustomBackend)
    with par_api.parallel_config(backend="custom", endpoint="http://compute", api_key="42") as cfg:
        backend = par_api.get_active_config().backend
        assert backend is cfg["backend"]
        assert isinstance(backend, MyCustomBackend)
        assert (backend.endpoint, backend.api_key) == ("http://compute", "42")
    with par_api.parallel_backend("custom", endpoint="http://other", api_key="7") as (backend, n_jobs):
        assert isinstance(backend, MyCustomBackend)
        assert backend.endpoint == "http://other"
        assert n_jobs == -1


def test_custom_backend_missing_a_mandatory_parameter_names_the_backend() -> None:
    par_api.register_parallel_backend("custom", MyCustomBackend)
    with pytest.raises(
        TypeError, match=r"backend 'custom' could not be built with the parameters \['endpoint'\].*api_key"
    ):
        par_api.parallel_config(backend="custom", endpoint="http://compute")
    with pytest.raises(
        TypeError, match=r"backend 'custom' could not be built with the parameters \['api_key', 'bogus'"
    ):
        par_api.parallel_config(backend="custom", endpoint="e", api_key="k", bogus=1)
    with pytest.raises(TypeError, match=r"backend 'custom' could not be built without parameters.*endpoint"):
        par_api.parallel_config(backend="custom")


# -- submit / apply_async compatibility ---------------------------------------------------


def test_submit_delegates_to_a_legacy_apply_async() -> None:
    class Legacy(ParallelBackendBase):
        def effective_n_jobs(self, n_jobs: int | None) -> int:
            return 1

        def apply_async(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Any:
            out = ImmediateResult(func)
            if callback is not None:
                callback(out)
            return out

    backend = Legacy()
    received: list[Any] = []
    out = backend.submit(BatchedCalls([delayed(double)(3)]), callback=received.append)
    assert received == [out]
    assert backend.retrieve_result_callback(out) == [6]


def test_submit_without_any_implementation_names_the_backend() -> None:
    class Nothing(ParallelBackendBase):
        def effective_n_jobs(self, n_jobs: int | None) -> int:
            return 1

    with pytest.raises(NotImplementedError, match=r"Nothing must implement submit\(func, callback=None\)"):
        Nothing().submit(lambda: [1])


# -- result retrieval ---------------------------------------------------------------------


def test_retrieve_result_callback_uses_get_for_async_result_like_objects() -> None:
    class AsyncResultLike:
        def __init__(self) -> None:
            self.timeouts: list[float | None] = []

        def get(self, timeout: float | None = None) -> list[int]:
            self.timeouts.append(timeout)
            return [1, 2]

    out = AsyncResultLike()
    backend = MinimalBackend()
    assert backend.retrieve_result_callback(out) == [1, 2]
    assert out.timeouts == [None]


def test_retrieve_result_callback_returns_a_plain_value_as_is() -> None:
    assert MinimalBackend().retrieve_result_callback([4, 5]) == [4, 5]


def test_pool_backend_runs_batches_and_reports_completion_from_its_threads() -> None:
    backend = PoolBackend()
    n = backend.configure(n_jobs=2)
    assert n == 2
    try:
        finished = threading.Semaphore(0)
        outs = [
            backend.submit(BatchedCalls([delayed(double)(i)], index=i), callback=lambda _: finished.release())
            for i in range(4)
        ]
        for _ in outs:
            assert finished.acquire(timeout=30)
        assert [backend.retrieve_result_callback(o) for o in outs] == [[0], [2], [4], [6]]
    finally:
        backend.terminate()
    assert backend.pool is None


# -- abort_everything -------------------------------------------------------------------


def test_abort_everything_terminates_and_configures_again_when_asked() -> None:
    backend = PoolBackend()
    parallel = object()
    backend.configure(n_jobs=2, parallel=parallel, prefer="threads", hooks=None, extra=1)
    first_pool = backend.pool
    try:
        backend.abort_everything(ensure_ready=True)
        assert backend.events == ["configure 2", "terminate", "configure 2"]
        assert backend.pool is not None and backend.pool is not first_pool
        assert backend.parallel is parallel
        assert backend.submit(lambda: [1]).result(timeout=30) == [1]
    finally:
        backend.terminate()


def test_abort_everything_without_ensure_ready_only_terminates() -> None:
    backend = PoolBackend()
    backend.configure(n_jobs=1)
    backend.abort_everything(ensure_ready=False)
    assert backend.events == ["configure 1", "terminate"]
    assert backend.pool is None


def test_abort_everything_before_configure_only_terminates() -> None:
    backend = PoolBackend()
    backend.abort_everything()
    assert backend.events == ["terminate"]


# -- TransportHooks -----------------------------------------------------------------------


def test_transport_hooks_defaults_and_immutability() -> None:
    hooks = TransportHooks()
    assert hooks.serialize_batch is None
    assert dict(hooks.env) == {}
    assert hooks.initializer is None
    assert hooks.initargs == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        hooks.env = {"A": "1"}  # type: ignore[misc]
    assert TransportHooks().env is not hooks.env  # no shared mutable default


def test_default_effective_n_jobs_is_the_local_rule() -> None:
    assert default_effective_n_jobs(None) == 1
    assert default_effective_n_jobs(3) == 3
    assert default_effective_n_jobs(-1) == par_api.cpu_count()
    with pytest.raises(ValueError, match="n_jobs"):
        default_effective_n_jobs(0)
