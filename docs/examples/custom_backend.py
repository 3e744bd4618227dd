"""A custom backend: subclass ParallelBackendBase, register it, select it by name.

This one runs the batches on a ``concurrent.futures.ThreadPoolExecutor`` and counts
them. A backend distributed as a package is found without an import through the
``par.backends`` entry-point group; ``register_parallel_backend`` is for code that
registers at run time.

Run: python docs/examples/custom_backend.py
"""

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from par import Parallel, ParallelBackendBase, delayed, parallel_config, register_parallel_backend


class PoolBackend(ParallelBackendBase):
    """Batches run on a thread pool created for each call (or ``with Parallel`` block)."""

    uses_threads = True
    supports_sharedmem = True
    batches = 0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pool: ThreadPoolExecutor | None = None

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        return 2 if n_jobs is None or n_jobs < 0 else n_jobs

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        n = super().configure(n_jobs, parallel, prefer, require, **backend_kwargs)
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="pool-backend")
        return n

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Future[Any]:
        assert self._pool is not None, "configure() starts the pool"
        PoolBackend.batches += 1
        future = self._pool.submit(func)
        if callback is not None:
            future.add_done_callback(callback)  # called once, success or failure
        return future

    def terminate(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def main() -> None:
    register_parallel_backend("pool", PoolBackend)
    with parallel_config(backend="pool", n_jobs=2):
        results = Parallel(batch_size=2)(delayed(abs)(-i) for i in range(6))
    print(results)
    print(f"batches run by PoolBackend: {PoolBackend.batches}")


if __name__ == "__main__":
    main()
