"""Moving a running VM: live to another QEMU, or through a file, over QMP.
Machine layer: nothing here knows what the guest runs."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from orchestrator.errors import HarnessError
from orchestrator.launcher import free_port
from orchestrator.vm import Vm

MIGRATION_TIMEOUT = 120.0
# The destination tells the source whether it loaded the stream
RETURN_PATH = {"capability": "return-path", "state": True}
# How long a destination that refused the stream is given to exit
REFUSAL_GRACE = 15.0
# A line QEMU writes about itself: "<its program name>: ..."
QEMU_SAYS = re.compile(r"^qemu[\w-]*: ")


def _migration_status(vm: Vm) -> dict[str, Any]:
    return dict(vm.qmp.execute("query-migrate"))


def wait_migrated(source: Vm, timeout: float = MIGRATION_TIMEOUT) -> None:
    """Until `source`'s outgoing migration completes; a failed one is an error
    naming QEMU's reason."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _migration_status(source)
        if status.get("status") == "completed":
            return
        if status.get("status") in ("failed", "cancelled"):
            raise HarnessError(
                f"migration from {source.name} {status['status']}: "
                f"{status.get('error-desc', 'no reason given')}",
                source.logs.qmp,
            )
        time.sleep(0.1)
    raise HarnessError(f"migration from {source.name} not done in {timeout:.0f}s", source.logs.qmp)


def wait_running(destination: Vm, timeout: float = MIGRATION_TIMEOUT) -> None:
    """Until the destination has loaded the state and runs the guest; then a new
    SSH connection to it."""
    deadline = time.monotonic() + timeout
    while destination.qmp.status() != "running":
        if time.monotonic() > deadline:
            raise HarnessError(
                f"{destination.name} did not run within {timeout:.0f}s of the migration",
                destination.logs.qemu,
            )
        time.sleep(0.1)
    destination.reconnect()


def migrate_live(source: Vm, destination: Vm) -> None:
    """Live migration over TCP on the host both QEMUs run on (this one, or one
    KVM host guest); `destination` was started incoming. With the return
    path, the source learns whether the destination loaded the stream: a
    refused one fails the migration and the source runs on. The failure is
    one line with the destination's own message, naming both QEMUs' logs."""
    uri = f"tcp:127.0.0.1:{free_port()}"
    for vm in (source, destination):
        vm.qmp.execute("migrate-set-capabilities", {"capabilities": [RETURN_PATH]})
    destination.qmp.execute("migrate-incoming", {"uri": uri})
    source.qmp.execute("migrate", {"uri": uri})
    try:
        wait_migrated(source)
        wait_running(destination)
    except HarnessError as exc:
        refused = _refusal(destination)
        raise HarnessError(
            f"{exc.cause}; {destination.name} said: {refused} (its log: {destination.logs.qemu})",
            source.logs.qmp,
        ) from None


def _refusal(destination: Vm) -> str:
    """What the destination's QEMU printed when it gave up on the stream."""
    destination.wait_exited(REFUSAL_GRACE)
    try:
        lines = destination.logs.qemu.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    said = [line.strip() for line in lines if QEMU_SAYS.match(line) and "warning:" not in line]
    return " / ".join(said[-2:]) or "(nothing)"


def save_to_file(source: Vm, path: Path) -> None:
    """The whole VM state into `path`; the source is left paused."""
    source.qmp.execute("migrate", {"uri": f"file:{path}"})
    wait_migrated(source)


def load_from_file(destination: Vm, path: Path) -> None:
    """`destination` (started incoming) takes the state saved in `path` and runs."""
    destination.qmp.execute("migrate-incoming", {"uri": f"file:{path}"})
    wait_running(destination)
