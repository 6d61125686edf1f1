"""Watching a guest's serial log for the lines that matter during boot."""

from __future__ import annotations

from pathlib import Path

from orchestrator.errors import HarnessError

KERNEL_PANIC = "Kernel panic - "
# The image runs `sshd -D -e`, which says this on the console once it listens.
SSHD_LISTENING = "Server listening on"


class ConsoleWatch:
    """Reads the serial log incrementally, from a mark on (the last boot)."""

    def __init__(self, serial_log: Path) -> None:
        self.serial_log = serial_log
        self._offset = 0
        self._since_mark = ""

    def mark(self) -> None:
        """Forgets what was seen so far: the next boot starts here."""
        self._offset = self.serial_log.stat().st_size if self.serial_log.exists() else 0
        self._since_mark = ""

    def _poll(self) -> str:
        try:
            with self.serial_log.open("rb") as serial:
                serial.seek(self._offset)
                chunk = serial.read()
        except FileNotFoundError:
            return self._since_mark
        self._offset += len(chunk)
        self._since_mark += chunk.decode(errors="replace")
        return self._since_mark

    def check_panic(self) -> None:
        text = self._poll()
        if KERNEL_PANIC in text:
            line = next(ln for ln in text.splitlines() if KERNEL_PANIC in ln)
            raise HarnessError(f"guest kernel panicked: {line.strip()}", self.serial_log)

    def sshd_listening(self) -> bool:
        return SSHD_LISTENING in self._poll()
