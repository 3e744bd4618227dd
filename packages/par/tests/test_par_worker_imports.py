"""What a worker process imports for par: ``par._forwarding`` (its client side) only,
without the modules of the parent's server."""

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
