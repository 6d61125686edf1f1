"""A typed, synchronous handle on one VM's QMP socket (qemu.qmp underneath)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ConnectError, EventListener, ExecuteError, QMPClient
from qemu.qmp.error import QMPError

from orchestrator.errors import HarnessError

T = TypeVar("T")
_HEX = re.compile(r"0x[0-9a-fA-F]+")


class QmpCommandError(HarnessError):
    """QEMU answered a command with an error."""

    def __init__(self, command: str, error_class: str, desc: str, log: Path) -> None:
        super().__init__(f"QMP {command} failed: {error_class}: {desc}", log)
        self.command = command
        self.error_class = error_class
        self.desc = desc


class Qmp:
    """One QMP connection with its own event loop; every exchange is logged."""

    def __init__(self, address: Path | tuple[str, int], log: Path, name: str) -> None:
        """`address`: a UNIX socket path, or (host, port) for QMP over TCP."""
        self.address = address
        self.log = log
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(name)
        self._events = EventListener()
        self._client.register_listener(self._events)
        self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    def _sync(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def _write(self, direction: str, payload: object) -> None:
        with self.log.open("a") as out:
            out.write(f"{time.strftime('%H:%M:%S')} {direction} {json.dumps(payload)}\n")

    def _drain_events(self) -> None:
        for event in self._events.clear():
            self._write("event", dict(event))

    def connect(self, timeout: float, alive: Callable[[], None]) -> None:
        """Connects once QEMU listens; `alive` raises if QEMU died."""
        if isinstance(self.address, tuple):
            self._connect_tcp(self.address, timeout, alive)
        else:
            self._connect_unix(self.address, timeout, alive)
        self._connected = True
        self._write("greeting", {"version": self.version()})

    def _connect_unix(self, path: Path, timeout: float, alive: Callable[[], None]) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            alive()
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"QEMU did not create its QMP socket within {timeout:.0f}s", self.log
                )
            time.sleep(0.02)
        # QEMU binds the socket before it listens: a connection refused in
        # between is retried (seen with several QEMUs starting at once).
        while True:
            try:
                self._sync(self._client.connect(str(path)), timeout=10)
                return
            except (TimeoutError, ConnectError, OSError) as exc:
                alive()
                refused = isinstance(exc, ConnectionRefusedError) or isinstance(
                    getattr(exc, "exc", None), ConnectionRefusedError
                )
                if not refused or time.monotonic() > deadline:
                    raise HarnessError(
                        f"QMP connection to {path} failed: {exc}", self.log
                    ) from None
                self._reset_client()
                time.sleep(0.05)

    def _connect_tcp(
        self, address: tuple[str, int], timeout: float, alive: Callable[[], None]
    ) -> None:
        """Retries: a forwarded port accepts before the QEMU behind it listens."""
        deadline = time.monotonic() + timeout
        last = "no attempt"
        while time.monotonic() < deadline:
            alive()
            try:
                self._sync(self._client.connect(address), timeout=10)
                return
            except (TimeoutError, ConnectError, OSError) as exc:
                last = str(exc) or type(exc).__name__
                self._reset_client()
                time.sleep(1.0)
        alive()
        raise HarnessError(
            f"QMP on {address[0]}:{address[1]} did not answer within {timeout:.0f}s (last: {last})",
            self.log,
        )

    def _reset_client(self) -> None:
        """A fresh client after a failed connect (qemu.qmp keeps the old state)."""
        with contextlib.suppress(Exception):  # nothing was connected
            self._sync(self._client.disconnect(), 5)
        self._client = QMPClient(self._client.name)
        self._events = EventListener()
        self._client.register_listener(self._events)

    def execute(
        self, command: str, args: dict[str, object] | None = None, timeout: float = 30.0
    ) -> Any:
        self._drain_events()
        self._write(">>>", {"execute": command, "arguments": args or {}})
        try:
            result = self._sync(self._client.execute(command, args), timeout)
        except ExecuteError as exc:
            self._write("<<<", {"error": {"class": exc.error_class, "desc": str(exc)}})
            raise QmpCommandError(command, exc.error_class, str(exc), self.log) from None
        except (TimeoutError, QMPError, OSError) as exc:
            self._write("!!!", {"exception": repr(exc)})
            raise HarnessError(f"QMP {command} failed: {exc!r}", self.log) from None
        self._write("<<<", {"return": result})
        return result

    def version(self) -> str:
        qemu = self._sync(self._client.execute("query-version"), 10)["qemu"]
        return f"{qemu['major']}.{qemu['minor']}.{qemu['micro']}"

    def status(self) -> str:
        return str(self.execute("query-status")["status"])

    def reset(self) -> None:
        self.execute("system_reset")

    def hmp(self, command: str, timeout: float = 30.0) -> str:
        """A human monitor command's output (human-monitor-command)."""
        return str(self.execute("human-monitor-command", {"command-line": command}, timeout))

    def read_phys(self, address: int, size: int) -> bytes:
        """Guest physical memory, as QEMU sees it (HMP `xp`, which needs no
        file on QEMU's side, so it works for a QEMU inside a nested guest)."""
        words = size % 8 == 0 and address % 8 == 0
        unit, count = (8, size // 8) if words else (1, size)
        text = self.hmp(f"xp /{count}{'g' if words else 'b'}x {address:#x}")
        values = [
            int(token, 16)
            for line in text.splitlines()
            if ":" in line
            for token in _HEX.findall(line.split(":", 1)[1])
        ]
        if len(values) != count:
            raise HarnessError(
                f"xp at {address:#x} gave {len(values)} values, not {count}", self.log
            )
        return b"".join(v.to_bytes(unit, "little") for v in values)

    def quit(self) -> None:
        """Asks QEMU to exit; the connection dropping is the expected answer."""
        if not self._connected:
            return
        self._write(">>>", {"execute": "quit"})
        try:
            self._sync(self._client.execute("quit"), 5)
        except Exception as exc:  # QEMU may close before it answers
            self._write("!!!", {"exception": repr(exc)})
        self._disconnect()

    def _disconnect(self) -> None:
        if not self._connected:
            return
        self._connected = False
        try:
            self._drain_events()
            self._sync(self._client.disconnect(), 5)
        except Exception:  # after quit, EOF is how it ends
            pass

    def close(self) -> None:
        """Disconnects and closes the event loop, reaping qemu.qmp's tasks."""
        if self._loop.is_closed():
            return
        self._disconnect()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        if pending:
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()
