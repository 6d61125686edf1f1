"""The files one VM writes; tests slice them per test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class VmLogs:
    dir: Path

    @property
    def cmdline(self) -> Path:
        return self.dir / "cmdline.txt"

    @property
    def serial(self) -> Path:
        return self.dir / "serial.log"

    @property
    def qemu(self) -> Path:
        return self.dir / "qemu.log"

    @property
    def guest_errors(self) -> Path:
        """QEMU's -d guest_errors lines (-D): what the guest did wrong, as QEMU saw it."""
        return self.dir / "guest-errors.log"

    @property
    def qmp(self) -> Path:
        return self.dir / "qmp.log"

    @property
    def commands(self) -> Path:
        return self.dir / "commands.log"

    @property
    def kvm_host(self) -> VmLogs:
        """The logs of the nested KVM host (outer guest and its QEMU)."""
        return VmLogs(self.dir / "kvm-host")
