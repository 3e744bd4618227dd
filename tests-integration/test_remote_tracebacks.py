"""A task pickled by value that raises shows the user's file, line and source line.

cloudpickle 3.1.3 writes ``<dynamic-code>`` as the file name of every function it
pickles by value; par keeps the real one (``par_api.keep_code_filename``). Each case
runs a user script as ``python user_script.py`` (its functions live in ``__main__``,
which the workers cannot import, so they travel by value): a ``__main__`` function, a
lambda and a closure, on ``loky``, ``multiprocessing`` and ``dask``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys, traceback
    from par import Parallel, delayed, parallel_config

    def main_function(x):
        raise ValueError(f"main function failed on {x}")  # SOURCE-MAIN

    def make_closure(offset):
        def closure(x):
            raise KeyError(f"closure failed on {x + offset}")  # SOURCE-CLOSURE
        return closure

    lam = lambda x: [][x]  # SOURCE-LAMBDA

    def run(backend):
        cluster = client = None
        if backend == "dask":
            from distributed import Client, LocalCluster
            cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=50)
            client = Client(cluster)
        try:
            with parallel_config(backend=backend, **({"client": client} if client else {})):
                for name, func in [("MAIN", main_function), ("CLOSURE", make_closure(1)), ("LAMBDA", lam)]:
                    try:
                        Parallel(n_jobs=2)(delayed(func)(i) for i in range(4))
                    except Exception as exc:
                        print(f"=== {name}")
                        print("".join(traceback.format_exception(exc)))
                    else:
                        print(f"=== {name} did not raise")
        finally:
            if client is not None:
                client.close()
                cluster.close()

    if __name__ == "__main__":
        run(sys.argv[1])
    """
)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["loky", "multiprocessing", "dask"])
def test_traceback_of_a_task_pickled_by_value_names_the_users_file_and_line(tmp_path, backend):
    if backend == "dask":
        pytest.importorskip("distributed")
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    lines = SCRIPT.splitlines()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "user_script.py", backend],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sections = dict(part.split("\n", 1) for part in proc.stdout.split("=== ")[1:])
    assert set(sections) == {"MAIN", "CLOSURE", "LAMBDA"}, proc.stdout[-3000:]
    for name, text in sections.items():
        assert "<dynamic-code>" not in text, text
        marker = f"# SOURCE-{name}"
        lineno = next(i for i, line in enumerate(lines, 1) if marker in line)
        # the worker's frame: the script's real path and line, then the source line itself
        assert f'File "{script}", line {lineno}' in text, text
        assert marker in text, text
