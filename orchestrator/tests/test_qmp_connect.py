"""QMP over a Unix socket: QEMU binds it before it listens, so a refused
connection is retried until the deadline instead of failing the boot."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from orchestrator.errors import HarnessError
from orchestrator.qmp import Qmp


def alive() -> None:
    pass


def test_a_socket_bound_but_not_listening_is_retried_until_the_deadline() -> None:
    with tempfile.TemporaryDirectory(prefix="hvsd-q-") as tmp:
        path = Path(tmp) / "qmp.sock"
        bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bound.bind(str(path))
        qmp = Qmp(path, Path(tmp) / "qmp.log", "test")
        started = time.monotonic()
        with pytest.raises(HarnessError, match="refused"):
            qmp.connect(timeout=0.6, alive=alive)
        assert time.monotonic() - started >= 0.6
        bound.close()


def test_a_socket_that_starts_listening_late_is_reached() -> None:
    """The retry reaches a listener that arrives after the first refusal:
    the connection gets as far as waiting for QMP's greeting."""
    with tempfile.TemporaryDirectory(prefix="hvsd-q-") as tmp:
        path = Path(tmp) / "qmp.sock"
        bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bound.bind(str(path))
        accepted = threading.Event()

        def listen_later() -> None:
            time.sleep(0.3)
            bound.listen(1)
            conn, _ = bound.accept()
            accepted.set()
            time.sleep(0.5)
            conn.close()

        listener = threading.Thread(target=listen_later)
        listener.start()
        qmp = Qmp(path, Path(tmp) / "qmp.log", "test")
        with pytest.raises(HarnessError):  # no greeting: not a QEMU
            qmp.connect(timeout=5.0, alive=alive)
        listener.join()
        bound.close()
        assert accepted.is_set()
