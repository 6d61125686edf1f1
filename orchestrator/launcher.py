"""How a VM's QEMU gets started: directly on this host (TCG, or the host's
KVM), or inside a KVM-host guest (orchestrator/nested.py). Tests see neither:
`Vm` picks the launcher by accelerator and talks to what it returns."""

from __future__ import annotations

import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from orchestrator import sanitize
from orchestrator.accel import Accel
from orchestrator.artifacts import GuestImage, QemuBuild
from orchestrator.command import Launch, LaunchPaths, VmOptions, render
from orchestrator.console import ConsoleWatch
from orchestrator.errors import HarnessError
from orchestrator.process import QemuProcess
from orchestrator.qmp import Qmp
from orchestrator.vmlogs import VmLogs

PORT_ATTEMPTS = 3
QMP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class LaunchContext:
    """What every launcher is given."""

    qemu: QemuBuild
    image: GuestImage
    firmware: list[Path]
    accel: Accel
    options: VmOptions
    name: str
    logs: VmLogs
    runtime: Path
    console: ConsoleWatch
    # A migration destination (-incoming defer): no guest boots.
    incoming: bool = False
    # Nested KVM: a second QEMU the KVM host carries, for a migration peer
    # started in the same KVM host later (`cohost`).
    peer_qemu: QemuBuild | None = None
    # Nested KVM: the launcher of a running VM whose KVM host this VM's QEMU
    # is to run in, beside that VM's (a migration destination).
    cohost: Launcher | None = None


class Launcher(Protocol):
    """Starts the test guest's QEMU; afterwards `ssh_port` (on 127.0.0.1)
    reaches the guest's sshd and `qmp` is connected to that QEMU."""

    ssh_port: int
    qmp: Qmp | None

    @property
    def boot_timeout(self) -> float: ...

    @property
    def pid(self) -> int | None: ...

    def start(self) -> float:
        """Starts QEMU and connects QMP; returns when (monotonic) the guest started."""
        ...

    def check_alive(self, what: str = "before the guest was ready") -> None:
        """Raises, saying QEMU ended `what`, if it has."""
        ...

    def stop(self) -> None: ...


class DirectLauncher:
    """QEMU as a child of this process, with a QMP UNIX socket."""

    def __init__(self, ctx: LaunchContext) -> None:
        self.ctx = ctx
        self.ssh_port = 0
        self.qmp: Qmp | None = None
        self._process: QemuProcess | None = None

    @property
    def boot_timeout(self) -> float:
        return self.ctx.options.boot_timeout

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def launch(self, ssh_port: int) -> Launch:
        ctx = self.ctx
        return Launch(
            qemu=ctx.qemu.binary,
            name=ctx.name,
            accel=ctx.accel.qemu_accel,
            image=ctx.image,
            options=ctx.options,
            paths=LaunchPaths(ctx.runtime / "qmp.sock", ctx.logs.serial, ctx.logs.guest_errors),
            ssh_port=ssh_port,
            firmware_dirs=ctx.firmware,
            incoming=ctx.incoming,
        )

    def start(self) -> float:
        """Retries if the SSH port was taken between choosing and binding it."""
        logs = self.ctx.logs
        for attempt in range(PORT_ATTEMPTS):
            self.ssh_port = free_port()
            argv = render(self.launch(self.ssh_port))
            # A serial log left by an earlier run would show a stale boot.
            logs.serial.unlink(missing_ok=True)
            self.ctx.console.mark()
            logs.cmdline.write_text(shlex.join(argv) + "\n")
            started = time.monotonic()
            env = sanitize.prepare(logs.dir) if self.ctx.qemu.sanitized else None
            self._process = QemuProcess(argv, logs.qemu, env)
            self._process.start()
            self.qmp = Qmp(self.ctx.runtime / "qmp.sock", logs.qmp, self.ctx.name)
            try:
                self.qmp.connect(QMP_TIMEOUT, self.check_alive)
                return started
            except HarnessError:
                port_taken = "host forwarding" in self._process.last_line()
                self.stop()
                if not port_taken or attempt == PORT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def check_alive(self, what: str = "before the guest was ready") -> None:
        if self._process is not None:
            self._process.check_running(what)

    def stop(self) -> None:
        if self.qmp is not None:
            self.qmp.quit()
        if self._process is not None:
            if self._process.wait(3.0) is None:
                self._process.stop()
            self._process = None
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
