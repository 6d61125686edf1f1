"""Moving a running VM: live to another QEMU, or through a file, over QMP.
Machine layer: nothing here knows what the guest runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from orchestrator.errors import HarnessError
from orchestrator.launcher import free_port
from orchestrator.vm import Vm

MIGRATION_TIMEOUT = 120.0


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
    """Live migration over TCP on this host; `destination` was started incoming."""
    uri = f"tcp:127.0.0.1:{free_port()}"
    destination.qmp.execute("migrate-incoming", {"uri": uri})
    source.qmp.execute("migrate", {"uri": uri})
    wait_migrated(source)
    wait_running(destination)


def save_to_file(source: Vm, path: Path) -> None:
    """The whole VM state into `path`; the source is left paused."""
    source.qmp.execute("migrate", {"uri": f"file:{path}"})
    wait_migrated(source)


def load_from_file(destination: Vm, path: Path) -> None:
    """`destination` (started incoming) takes the state saved in `path` and runs."""
    destination.qmp.execute("migrate-incoming", {"uri": f"file:{path}"})
    wait_running(destination)
