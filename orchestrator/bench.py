"""Boot figures: boot-to-SSH set against the same kernel reaching its init."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.accel import Accel, choose_accel
from orchestrator.artifacts import find_image, find_qemu, firmware_dirs
from orchestrator.command import Launch, LaunchPaths, VmOptions, render
from orchestrator.errors import HarnessError
from orchestrator.process import QemuProcess
from orchestrator.vm import Vm, free_port

INIT_ONLY_TIMEOUT = 120.0


@dataclass(frozen=True)
class BootSample:
    accel: Accel
    to_init: float
    to_ssh: float

    @property
    def ratio(self) -> float:
        return self.to_ssh / self.to_init


def time_to_init(log_dir: Path, options: VmOptions, accel: Accel) -> float:
    """Launch to exit of a QEMU whose initramfs powers off as its first act."""
    log_dir.mkdir(parents=True, exist_ok=True)
    runtime = Path(tempfile.mkdtemp(prefix="hvsd-"))
    try:
        init_only = dataclasses.replace(
            options, kernel_args=f"{options.kernel_args} hvsd.init_only".strip()
        )
        launch = Launch(
            qemu=find_qemu().binary,
            name="hvsd-init-only",
            accel=accel.qemu_accel,
            image=find_image(),
            options=init_only,
            paths=LaunchPaths(runtime / "qmp.sock", log_dir / "serial.log"),
            ssh_port=free_port(),
            firmware_dirs=firmware_dirs(),
        )
        start = time.monotonic()
        with QemuProcess(render(launch), log_dir / "qemu.log") as process:
            code = process.wait(INIT_ONLY_TIMEOUT)
            elapsed = time.monotonic() - start
            if code is None:
                raise HarnessError(
                    f"init-only boot did not power off within {INIT_ONLY_TIMEOUT:.0f}s",
                    log_dir / "serial.log",
                )
        return elapsed
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def measure_boot(log_dir: Path, options: VmOptions, accel: Accel | None = None) -> BootSample:
    accel = accel or choose_accel()
    to_init = time_to_init(log_dir / "init-only", options, accel)
    with Vm(log_dir / "full", options, accel=accel) as vm:
        to_ssh = vm.boot_seconds
    return BootSample(accel, to_init, to_ssh)
