"""The three workloads of mpire's own benchmark (issue 19), par next to joblib and mpire.

Each is written the way a user of each library would write it:

- ``mpire_numerical``: one 5000x5000 float image and ``10 * n_jobs`` seeded 4x4 filters;
  each task is ``scipy.signal.convolve2d(image, f)[::5, ::5]`` for one filter. The image
  must reach the workers once: par and joblib memory-map it (an argument above
  ``max_nbytes``), mpire passes it as ``shared_objects`` (copy-on-write under fork).
- ``mpire_stateful``: 2,000 seeded documents of 10,000 +- 5,000 random 20-byte words
  (deliberately unbalanced); each worker keeps running counts of the word prefixes of
  1 to 3 characters and the totals are combined at the end. par keeps the counts in
  ``par.worker_state()`` and collects them with one more call; joblib adds each
  document's counts to a ``multiprocessing.Manager`` dict (one entry per worker
  process); mpire uses ``use_worker_state`` and ``worker_exit``.
- ``mpire_expensive_init``: a deterministic numpy "model" (a 2,000x2,000 weight matrix
  from a seed, plus a 1 s sleep standing for loading it), built once per worker; 500
  tasks each evaluate it on a small batch. par builds it in ``par.worker_state()``,
  mpire in ``worker_init`` with ``use_worker_state``; joblib has no per-worker state:
  its users cache the model in a module global of an importable module (what this
  file does for it), which works only for functions that are not defined in
  ``__main__`` or a notebook.

Every workload checks that the three libraries computed the same result.
"""

from __future__ import annotations

import os
import time
from typing import Any

N_JOBS = 2
_ALPHABET = 26
#: Prefix codes: 1 letter -> [0, 26), 2 letters -> [26, 26 + 26^2), 3 -> after that.
_N_PREFIXES = _ALPHABET + _ALPHABET**2 + _ALPHABET**3


def _timer_start() -> float:
    import gc

    gc.collect()
    return time.perf_counter()


# -- numerical ------------------------------------------------------------------------


def convolve_one(image: Any, filt: Any) -> Any:
    from scipy.signal import convolve2d

    return convolve2d(image, filt)[::5, ::5]


def convolve_one_mpire(image: Any, filt: Any) -> Any:
    return convolve_one(image, filt)


def w_numerical(lib: str, p: dict[str, Any]) -> dict[str, float]:
    import numpy as np

    rng = np.random.default_rng(0)
    size, n_filters = p["size"], 10 * N_JOBS
    image = rng.random((size, size))
    filters = [rng.random((4, 4)) for _ in range(n_filters)]
    out: dict[str, float] = {}
    t0 = _timer_start()
    if lib == "mpire":
        from mpire import WorkerPool

        with WorkerPool(n_jobs=N_JOBS, shared_objects=image) as pool:
            res = pool.map(convolve_one_mpire, [(f,) for f in filters], concatenate_numpy_output=False)
    else:
        m = _api(lib)
        res = m.Parallel(n_jobs=N_JOBS)(m.delayed(convolve_one)(image, f) for f in filters)
    out["time_s"] = time.perf_counter() - t0
    out["checksum"] = float(sum(float(r.sum()) for r in res))
    assert len(res) == n_filters
    return out


# -- stateful ------------------------------------------------------------------------


def make_documents(n_docs: int, mean_words: int, spread: int, seed: int = 0) -> list[Any]:
    """``n_docs`` documents, each an ``(n_words, 20)`` uint8 array of lowercase letters."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes = rng.integers(mean_words - spread, mean_words + spread + 1, size=n_docs)
    return [rng.integers(97, 97 + _ALPHABET, size=(int(n), 20), dtype=np.uint8) for n in sizes]


def prefix_counts(doc: Any) -> Any:
    """Counts of the 1-, 2- and 3-letter prefixes of the document's words (one array)."""
    import numpy as np

    letters = doc[:, :3].astype(np.int64) - 97
    p1 = letters[:, 0]
    p2 = _ALPHABET + p1 * _ALPHABET + letters[:, 1]
    p3 = _ALPHABET + _ALPHABET**2 + (p1 * _ALPHABET + letters[:, 1]) * _ALPHABET + letters[:, 2]
    return np.bincount(np.concatenate([p1, p2, p3]), minlength=_N_PREFIXES)


def count_par(doc: Any) -> None:
    import par

    state = par.worker_state()
    counts = prefix_counts(doc)
    if "counts" in state:
        state["counts"] += counts
    else:
        state["counts"] = counts


def collect_par(_: int) -> Any:
    """Hand this worker's counts over (and reset them): the sum over every collect task
    is the total whichever workers run them. A call of ``n_jobs`` such tasks is cut into
    one batch per worker; the short sleep keeps a worker that is done from taking the
    other's batch too (if one does, the caller's loop asks again)."""
    import par

    time.sleep(0.01)
    return par.worker_state().pop("counts", None)


def count_joblib(doc: Any, shared: Any) -> None:
    pid = os.getpid()
    counts = prefix_counts(doc)
    previous = shared.get(pid)
    shared[pid] = counts if previous is None else previous + counts


def count_mpire(worker_state: dict[str, Any], doc: Any) -> None:
    counts = prefix_counts(doc)
    if "counts" in worker_state:
        worker_state["counts"] += counts
    else:
        worker_state["counts"] = counts


def exit_mpire(worker_state: dict[str, Any]) -> Any:
    return worker_state.get("counts")


def w_stateful(lib: str, p: dict[str, Any]) -> dict[str, float]:
    import numpy as np

    docs = make_documents(p["docs"], p["words"], p["spread"])
    out: dict[str, float] = {}
    t0 = _timer_start()
    if lib == "mpire":
        from mpire import WorkerPool

        with WorkerPool(n_jobs=N_JOBS, use_worker_state=True) as pool:
            pool.map(count_mpire, [(d,) for d in docs], worker_exit=exit_mpire)
            parts = pool.get_exit_results()
    elif lib == "par":
        import par

        expected = sum(len(d) for d in docs)
        with par.Parallel(n_jobs=N_JOBS) as parallel:
            parallel(par.delayed(count_par)(d) for d in docs)
            parts, seen = [], 0
            while seen < expected:  # until every worker handed its counts over
                got = [
                    x
                    for x in parallel(par.delayed(collect_par)(i) for i in range(N_JOBS))
                    if x is not None
                ]
                parts += got
                seen += sum(int(x[:_ALPHABET].sum()) for x in got)
    else:
        import multiprocessing

        import joblib

        with multiprocessing.Manager() as manager:
            shared = manager.dict()
            joblib.Parallel(n_jobs=N_JOBS)(joblib.delayed(count_joblib)(d, shared) for d in docs)
            parts = list(shared.values())
    total = sum(x for x in parts if x is not None)
    out["time_s"] = time.perf_counter() - t0
    expected_words = sum(len(d) for d in docs)
    assert int(np.asarray(total)[:_ALPHABET].sum()) == expected_words, "counts lost or doubled"
    out["checksum"] = float(np.dot(np.asarray(total), np.arange(_N_PREFIXES) % 97))
    return out


# -- expensive initialization ---------------------------------------------------------

_MODEL: Any = None  # joblib: the module-global cache a joblib user writes


def build_model(size: int, load_s: float) -> Any:
    import numpy as np

    time.sleep(load_s)  # loading the model (from disk, the network...)
    return np.random.default_rng(42).standard_normal((size, size)) / size**0.5


def evaluate(model: Any, batch: Any) -> float:
    import numpy as np

    return float(np.tanh(batch @ model).sum())


def predict_par(batch: Any, size: int, load_s: float) -> float:
    import par

    state = par.worker_state()
    if "model" not in state:
        state["model"] = build_model(size, load_s)
    return evaluate(state["model"], batch)


def predict_joblib(batch: Any, size: int, load_s: float) -> float:
    global _MODEL
    if _MODEL is None:
        _MODEL = build_model(size, load_s)
    return evaluate(_MODEL, batch)


def init_mpire(worker_state: dict[str, Any], size: int = 2000, load_s: float = 1.0) -> None:
    worker_state["model"] = build_model(size, load_s)


def predict_mpire(worker_state: dict[str, Any], batch: Any) -> float:
    return evaluate(worker_state["model"], batch)


def w_expensive_init(lib: str, p: dict[str, Any]) -> dict[str, float]:
    import functools

    import numpy as np

    size, load_s, tasks = p["size"], p["load_s"], p["tasks"]
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((p["batch"], size)) for _ in range(tasks)]
    out: dict[str, float] = {}
    t0 = _timer_start()
    if lib == "mpire":
        from mpire import WorkerPool

        with WorkerPool(n_jobs=N_JOBS, use_worker_state=True) as pool:
            res = pool.map(
                predict_mpire,
                [(b,) for b in batches],
                worker_init=functools.partial(init_mpire, size=size, load_s=load_s),
            )
    else:
        m = _api(lib)
        task = predict_par if lib == "par" else predict_joblib
        res = m.Parallel(n_jobs=N_JOBS)(m.delayed(task)(b, size, load_s) for b in batches)
    out["time_s"] = time.perf_counter() - t0
    assert len(res) == tasks
    out["checksum"] = float(sum(res))
    return out


def _api(lib: str) -> Any:
    if lib == "par":
        import par as module
    elif lib == "joblib":
        import joblib as module
    else:
        raise ValueError(f"lib must be 'par', 'joblib' or 'mpire', got {lib!r}")
    return module
