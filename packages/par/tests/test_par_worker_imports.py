"""What a worker process imports for par: ``par._forwarding`` (its client side) only,
without the modules of the parent's server; and what a plain call does not import."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.timeout(60)
def test_par_forwarding_client_side_does_not_import_secrets() -> None:
    code = textwrap.dedent(
        """
        import sys
        for name in ("secrets", "hmac", "_hashlib"):
            sys.modules.pop(name, None)
        import par._forwarding
        print(sorted(m for m in ("secrets", "hmac", "_hashlib") if m in sys.modules))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.timeout(120)
def test_par_call_outside_an_event_loop_does_not_import_asyncio() -> None:
    """A plain call (list or generator result, no event loop in the thread) does not
    import asyncio (~14 ms of the first call's CPU); a call inside a running loop still returns
    a ParallelGenerator."""
    code = textwrap.dedent(
        """
        import sys
        import par
        assert par.Parallel(n_jobs=2)(par.delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]
        gen = par.Parallel(n_jobs=2, return_as="generator")(par.delayed(abs)(-i) for i in range(4))
        assert list(gen) == [0, 1, 2, 3]
        print("asyncio" in sys.modules, "par._aio" in sys.modules)
        import asyncio

        async def main():
            g = par.Parallel(n_jobs=2, return_as="generator")(par.delayed(abs)(-i) for i in range(4))
            return type(g).__name__, [x async for x in g]

        print(*asyncio.run(main()))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["False False", "ParallelGenerator [0, 1, 2, 3]"]


@pytest.mark.timeout(120)
def test_par_first_call_does_not_import_pathlib_or_secrets() -> None:
    """The parent's first call counts CPUs with os.path (pathlib brings urllib and
    ipaddress) and makes the forwarding token with os.urandom (secrets brings hmac and
    OpenSSL): ~10 ms of CPU before the workers start."""
    code = textwrap.dedent(
        """
        import sys
        # imported at start-up by some environments' .pth files (a package on 3.13)
        for name in [m for m in sys.modules if m.split(".")[0] in ("pathlib", "secrets", "hmac")]:
            del sys.modules[name]
        import par
        assert par.Parallel(n_jobs=2)(par.delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]
        print(sorted(m for m in ("pathlib", "secrets", "hmac") if m in sys.modules))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
