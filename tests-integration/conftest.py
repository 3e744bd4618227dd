"""Shared fixtures of the integration tests: leak checks around process-heavy tests."""

from __future__ import annotations

import threading

import pytest


@pytest.fixture
def no_thread_leak():
    """Fail a test that leaves more threads running than it found (after a grace period)."""
    import time

    before = {t.ident for t in threading.enumerate()}
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
        if not extra:
            return
        time.sleep(0.05)
    raise AssertionError(f"threads left running: {[t.name for t in extra]}")
