"""One booted guest: QEMU process, QMP handle and SSH guest, with its logs."""

from __future__ import annotations

import shlex
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from orchestrator.accel import Accel, choose_accel
from orchestrator.artifacts import GuestImage, QemuBuild, find_image, find_qemu, firmware_dirs
from orchestrator.command import Launch, LaunchPaths, VmOptions, render
from orchestrator.console import ConsoleWatch
from orchestrator.errors import HarnessError
from orchestrator.ports import HostPorts
from orchestrator.process import QemuProcess
from orchestrator.qmp import Qmp
from orchestrator.ssh import Guest
from orchestrator.synic import HostSynic

PORT_ATTEMPTS = 3
QMP_TIMEOUT = 30.0


@dataclass(frozen=True)
class VmLogs:
    """The files one VM writes; tests slice them per test."""

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
    def qmp(self) -> Path:
        return self.dir / "qmp.log"

    @property
    def commands(self) -> Path:
        return self.dir / "commands.log"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Vm:
    """Boots on enter, and on exit (however it comes) leaves nothing running."""

    def __init__(
        self,
        log_dir: Path,
        options: VmOptions | None = None,
        accel: Accel | None = None,
        name: str = "hvsd",
    ) -> None:
        self.options = options or VmOptions()
        self.logs = VmLogs(log_dir)
        self.name = name
        self._accel = accel
        self.accel: Accel | None = None
        self.qemu: QemuBuild | None = None
        self.image: GuestImage | None = None
        self.ssh_port = 0
        self.boot_seconds = 0.0
        self._runtime: Path | None = None
        self._process: QemuProcess | None = None
        self._qmp: Qmp | None = None
        self._guest: Guest | None = None
        self._console = ConsoleWatch(self.logs.serial)

    def __enter__(self) -> Vm:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def qmp(self) -> Qmp:
        if self._qmp is None:
            raise HarnessError("VM not started")
        return self._qmp

    @property
    def guest(self) -> Guest:
        if self._guest is None:
            raise HarnessError("VM not started")
        return self._guest

    @property
    def synic(self) -> HostSynic:
        """The host's view of the SynICs (x-query-synic and SIEF pages)."""
        return HostSynic(self.qmp)

    @property
    def ports(self) -> HostPorts:
        """The event ports and connections QEMU holds (x-hv-port-* commands)."""
        return HostPorts(self.qmp)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        if self._process is not None:
            raise HarnessError(f"VM {self.name} is already started")
        self.logs.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.qemu = find_qemu()
            self.image = find_image()
            firmware = firmware_dirs()
            self.accel = self._accel or choose_accel()
            self._runtime = Path(tempfile.mkdtemp(prefix="hvsd-"))
            started = self._launch(firmware)
            self._guest = Guest(
                "127.0.0.1",
                self.ssh_port,
                self.image.ssh_key,
                self.image.host_key_pub,
                self.logs.commands,
                self.logs.serial,
            )
            self._guest.wait_ready(
                self.options.boot_timeout - (time.monotonic() - started),
                self._check_alive,
                self._console.sshd_listening,
            )
            self.boot_seconds = time.monotonic() - started
        except BaseException:
            self.stop()
            raise

    def _launch(self, firmware: list[Path]) -> float:
        """Starts QEMU and connects QMP, retrying if the SSH port was taken meanwhile."""
        assert self.qemu and self.image and self.accel and self._runtime
        for attempt in range(PORT_ATTEMPTS):
            self.ssh_port = free_port()
            launch = Launch(
                qemu=self.qemu.binary,
                name=self.name,
                accel=self.accel.name,
                image=self.image,
                options=self.options,
                paths=LaunchPaths(self._runtime / "qmp.sock", self.logs.serial),
                ssh_port=self.ssh_port,
                firmware_dirs=firmware,
            )
            argv = render(launch)
            # A serial log left by an earlier run would show a stale boot.
            self.logs.serial.unlink(missing_ok=True)
            self._console.mark()
            self.logs.cmdline.write_text(shlex.join(argv) + "\n")
            started = time.monotonic()
            self._process = QemuProcess(argv, self.logs.qemu)
            self._process.start()
            self._qmp = Qmp(self._runtime / "qmp.sock", self.logs.qmp, self.name)
            try:
                self._qmp.connect(QMP_TIMEOUT, self._check_alive)
                return started
            except HarnessError:
                port_taken = "host forwarding" in self._process.last_line()
                self._stop_process()
                if not port_taken or attempt == PORT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _check_alive(self) -> None:
        if self._process is not None:
            self._process.check_running("before the guest was ready")
        self._console.check_panic()

    def reboot(self, guest_command: str | None = None) -> None:
        """system_reset over QMP, or `guest_command` run in the guest to reset it
        itself (in the background, a second later), then wait until the guest
        answers SSH again."""
        if guest_command is not None:
            self.guest.run(f"(sleep 1; {guest_command}) >/dev/null 2>&1 &", check=True)
        self.guest.close()
        self._console.mark()
        if guest_command is None:
            self.qmp.reset()
        self.guest.wait_ready(
            self.options.boot_timeout, self._check_alive, self._console.sshd_listening
        )

    def _stop_process(self) -> None:
        if self._qmp is not None:
            self._qmp.quit()
        if self._process is not None:
            if self._process.wait(3.0) is None:
                self._process.stop()
            self._process = None
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None

    def stop(self) -> None:
        if self._guest is not None:
            self._guest.close()
            self._guest = None
        self._stop_process()
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None
