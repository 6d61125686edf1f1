"""Waiting, bounded, for an effect that QEMU completes after a call returns."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], what: str, timeout: float = 10.0) -> T:
    """`check()`'s first truthy value; AssertionError naming `what` after `timeout`.

    QEMU finishes SignalEvent on device-owned connections and PostMessage in
    its main loop, after the hypercall has returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.1)
