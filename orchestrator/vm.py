"""One booted guest: QEMU process, QMP handle and SSH guest, with its logs."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType

from orchestrator.accel import Accel, choose_accel
from orchestrator.artifacts import GuestImage, QemuBuild, find_image, find_qemu, firmware_dirs
from orchestrator.command import VmOptions
from orchestrator.console import ConsoleWatch
from orchestrator.errors import HarnessError
from orchestrator.launcher import DirectLauncher, LaunchContext, Launcher, free_port
from orchestrator.nested import NestedLauncher, NestedPeerLauncher
from orchestrator.profile import VmProfile
from orchestrator.qmp import Qmp
from orchestrator.ssh import Guest
from orchestrator.vmlogs import VmLogs

__all__ = ["Vm", "VmLogs", "free_port"]

# How long an SSH failure waits to see whether QEMU is ending
EXIT_GRACE = 1.0


def make_launcher(ctx: LaunchContext) -> Launcher:
    """Tests see one kind of VM: the accelerator picks how its QEMU starts."""
    if ctx.accel.nested and isinstance(ctx.cohost, NestedLauncher):
        return NestedPeerLauncher(ctx, ctx.cohost)
    if ctx.accel.nested:
        return NestedLauncher(ctx)
    return DirectLauncher(ctx)


class Vm:
    """Boots on enter, and on exit (however it comes) leaves nothing running."""

    def __init__(
        self,
        log_dir: Path,
        options: VmOptions | None = None,
        accel: Accel | None = None,
        name: str = "hvsd",
        incoming: bool = False,
        image: GuestImage | None = None,
        stock_qemu: bool = False,
        peer_stock_qemu: bool | None = None,
        cohost: Vm | None = None,
    ) -> None:
        """`incoming`: a migration destination, whose QEMU starts waiting for
        migrate-incoming; its guest answers SSH after `reconnect()`. `image`:
        another kernel of the image to boot (default: the test guest's).
        `stock_qemu`: the base QEMU without the series (`make qemu-stock`).
        Under nested KVM, where a migration stays inside one KVM host:
        `peer_stock_qemu` names the QEMU a destination started later will run
        (the stock one, or ours), which the KVM host then carries; `cohost`
        is the running source whose KVM host this destination runs in (it
        must be stopped before the source)."""
        # MACHINE= and CPU_MODEL= of make test: the defaults replaced here,
        # once, so that a test reads the options its guest really has.
        self.options = VmProfile.from_environment().apply(options or VmOptions())
        self.incoming = incoming
        self.logs = VmLogs(log_dir)
        self.name = name
        self._accel = accel
        self.accel: Accel | None = None
        self.qemu: QemuBuild | None = None
        self.image: GuestImage | None = None
        self._image = image
        self._stock_qemu = stock_qemu
        self._peer_stock_qemu = peer_stock_qemu
        self._cohost = cohost
        self.ssh_port = 0
        self.boot_seconds = 0.0
        self._runtime: Path | None = None
        self._launcher: Launcher | None = None
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
        if self._launcher is None or self._launcher.qmp is None:
            raise HarnessError("VM not started")
        return self._launcher.qmp

    @property
    def guest(self) -> Guest:
        if self._guest is None:
            raise HarnessError("VM not started")
        return self._guest

    @property
    def runtime(self) -> Path | None:
        """The private directory of the running QEMU (its QMP socket)."""
        return self._runtime

    @property
    def pid(self) -> int | None:
        return self._launcher.pid if self._launcher else None

    @property
    def boot_timeout(self) -> float:
        """The options' timeout, scaled by the launcher (nested boots are slower)."""
        return self._launcher.boot_timeout if self._launcher else self.options.boot_timeout

    def start(self) -> None:
        if self._launcher is not None:
            raise HarnessError(f"VM {self.name} is already started")
        self.logs.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.accel = self._accel or choose_accel()
            self.qemu = find_qemu(stock=self._stock_qemu)
            self.image = self._image or find_image()
            firmware = firmware_dirs()
            self._runtime = Path(tempfile.mkdtemp(prefix="hvsd-"))
            self._launcher = make_launcher(
                LaunchContext(
                    qemu=self.qemu,
                    image=self.image,
                    firmware=firmware,
                    accel=self.accel,
                    options=self.options,
                    name=self.name,
                    logs=self.logs,
                    runtime=self._runtime,
                    console=self._console,
                    incoming=self.incoming,
                    peer_qemu=(
                        None
                        if self._peer_stock_qemu is None
                        else find_qemu(stock=self._peer_stock_qemu)
                    ),
                    cohost=self._cohost._launcher if self._cohost is not None else None,
                )
            )
            started = self._launcher.start()
            self.ssh_port = self._launcher.ssh_port
            self._guest = Guest(
                "127.0.0.1",
                self.ssh_port,
                self.image.ssh_key,
                self.image.host_key_pub,
                self.logs.commands,
                self.logs.serial,
                explain_failure=self.explain_failure,
            )
            if self.incoming:
                return
            self._guest.wait_ready(
                self.boot_timeout - (time.monotonic() - started),
                self._check_alive,
                self._console.sshd_listening,
            )
            self.boot_seconds = time.monotonic() - started
        except BaseException:
            self.stop()
            raise

    def _check_alive(self) -> None:
        if self._launcher is not None:
            self._launcher.check_alive()
        self._console.check_panic()

    def explain_failure(self) -> None:
        """When the guest stopped answering: raises the cause, QEMU gone or
        the guest's kernel panicked, if it is one of those."""
        # A QEMU being killed closes its sockets before it can be reaped
        deadline = time.monotonic() + EXIT_GRACE
        while self._launcher is not None:
            self._launcher.check_alive("while the guest was in use")
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
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
        self.guest.wait_ready(self.boot_timeout, self._check_alive, self._console.sshd_listening)

    def wait_exited(self, timeout: float) -> bool:
        """Whether QEMU ends within `timeout` (its log is then complete here)."""
        deadline = time.monotonic() + timeout
        while self._launcher is not None and time.monotonic() < deadline:
            try:
                self._launcher.check_alive("after the migration")
            except HarnessError:
                return True
            time.sleep(0.5)
        return False

    def reconnect(self, timeout: float = 60.0) -> None:
        """A new SSH connection to the guest, once the old one cannot be
        trusted: after loadvm, the guest's TCP state is the snapshot's."""
        self.guest.close()
        self.guest.wait_ready(timeout, self._check_alive)

    def stop(self) -> None:
        if self._guest is not None:
            self._guest.close()
            self._guest = None
        if self._launcher is not None:
            self._launcher.stop()
            self._launcher = None
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None
