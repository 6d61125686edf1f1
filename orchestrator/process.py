"""A QEMU process that cannot outlive the harness."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from orchestrator.errors import HarnessError

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the harness dies by any
    # means (SIGKILL included), the kernel kills QEMU too.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class QemuProcess:
    """Runs QEMU with its output in `log`; stops it on every exit path."""

    def __init__(
        self, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None
    ) -> None:
        """`env`: variables set for QEMU on top of this process's environment."""
        self.argv = list(argv)
        self.log = log
        self.env = dict(env or {})
        self._popen: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> QemuProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        with self.log.open("ab") as out:
            try:
                self._popen = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                    env={**os.environ, **self.env} if self.env else None,
                )
            except FileNotFoundError:
                raise HarnessError(f"QEMU binary {self.argv[0]} not found") from None
            except PermissionError:
                raise HarnessError(f"QEMU binary {self.argv[0]} is not executable") from None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def exit_code(self) -> int | None:
        """None while QEMU runs; its exit status once it has ended."""
        return self._popen.poll() if self._popen else None

    def check_running(self, what: str) -> None:
        """Raises with QEMU's last words if it has exited."""
        code = self.exit_code()
        if code is not None and code < 0:
            raise HarnessError(
                f"QEMU was killed by {signal.Signals(-code).name} {what}: {self.last_line()}",
                self.log,
            )
        if code is not None:
            raise HarnessError(
                f"QEMU exited with status {code} {what}: {self.last_line()}", self.log
            )

    def last_line(self) -> str:
        try:
            lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "(no output)"
        return lines[-1].strip() if lines else "(no output)"

    def wait(self, timeout: float) -> int | None:
        if self._popen is None:
            return None
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; always reaps."""
        popen = self._popen
        if popen is None or popen.poll() is not None:
            return
        popen.terminate()
        deadline = time.monotonic() + grace
        while popen.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if popen.poll() is None:
            popen.kill()
            popen.wait()
