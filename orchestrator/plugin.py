"""pytest plugin: booted VMs as fixtures, and a log directory per test.

Fixtures: `vm` (one per session), `fresh_vm` (one per test; options from the
`vm_options` marker), and `guest` / `qmp` for the session VM. Each test gets
test-logs/<test>/ holding, for every VM it touched, the QEMU command line and
the part of the serial, QMP and command logs written while it ran.
"""

from __future__ import annotations

import re
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import pytest

from orchestrator.command import VmOptions
from orchestrator.errors import HarnessError
from orchestrator.qmp import Qmp
from orchestrator.ssh import Guest
from orchestrator.vm import Vm, VmLogs

SLICED_LOGS = ("serial", "qmp", "commands", "qemu")


@dataclass
class LiveVms:
    """The VMs alive in this session, so each test can slice their logs."""

    vms: dict[str, Vm] = field(default_factory=dict)

    def offsets(self) -> dict[str, dict[str, int]]:
        return {name: _sizes(vm.logs) for name, vm in self.vms.items()}


live_vms_key = pytest.StashKey[LiveVms]()


def _sizes(logs: VmLogs) -> dict[str, int]:
    sizes = {}
    for name in SLICED_LOGS:
        path: Path = getattr(logs, name)
        sizes[name] = path.stat().st_size if path.exists() else 0
    return sizes


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hvsd", "hv-signal-direct guests")
    group.addoption("--hvsd-logs", default="test-logs", help="where per-test logs go")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm_options(**kw): VmOptions for the fresh_vm fixture")
    config.addinivalue_line("markers", "hyperv: fresh_vm is a Hyper-V guest (VmOptions.hyperv)")
    config.stash[live_vms_key] = LiveVms()
    # pytest turns SIGINT into KeyboardInterrupt; do the same for SIGTERM so
    # fixture teardown (and with it QEMU's shutdown) runs.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)


def _sigterm_to_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _log_root(config: pytest.Config) -> Path:
    root = Path(config.getoption("--hvsd-logs"))
    return root if root.is_absolute() else Path(config.rootpath) / root


def _test_dir(config: pytest.Config, nodeid: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")
    return _log_root(config) / safe


def _boot(config: pytest.Config, log_dir: Path, options: VmOptions, name: str) -> Vm:
    if log_dir.exists():
        shutil.rmtree(log_dir)
    vm = Vm(log_dir, options, name=name)
    failure = None
    try:
        vm.start()
    except HarnessError as exc:
        failure = str(exc)
    if failure is not None:
        pytest.fail(f"VM did not start: {failure}", pytrace=False)
    config.stash[live_vms_key].vms[name] = vm
    return vm


def _session_vm(config: pytest.Config, name: str, options: VmOptions) -> Iterator[Vm]:
    booted = _boot(config, _log_root(config) / name, options, name)
    yield booted
    booted.stop()
    config.stash[live_vms_key].vms.pop(name, None)


@pytest.fixture(scope="session")
def vm(pytestconfig: pytest.Config) -> Iterator[Vm]:
    """A plain guest (no Hyper-V) shared by the whole session; keep it clean."""
    yield from _session_vm(pytestconfig, "session-vm", VmOptions())


@pytest.fixture(scope="session")
def hv_vm(pytestconfig: pytest.Config) -> Iterator[Vm]:
    """A Hyper-V guest (hv-relaxed, hv-vpindex, hv-synic, hyperv-testdev)
    shared by the whole session; tests undo what they set up."""
    yield from _session_vm(pytestconfig, "session-hv-vm", VmOptions.hyperv())


@pytest.fixture
def fresh_vm(request: pytest.FixtureRequest) -> Iterator[Vm]:
    """A guest of this test's own, with options from @pytest.mark.vm_options(...)."""
    marker = request.node.get_closest_marker("vm_options")
    kwargs = marker.kwargs if marker else {}
    hyperv = request.node.get_closest_marker("hyperv") is not None
    options = VmOptions.hyperv(**kwargs) if hyperv else VmOptions(**kwargs)
    log_dir = _test_dir(request.config, request.node.nodeid) / "fresh-vm"
    booted = _boot(request.config, log_dir, options, f"fresh-vm-{id(request)}")
    yield booted
    booted.stop()
    request.config.stash[live_vms_key].vms.pop(booted.name, None)


@pytest.fixture
def guest(vm: Vm) -> Guest:
    return vm.guest


@pytest.fixture
def qmp(vm: Vm) -> Qmp:
    return vm.qmp


@pytest.fixture(autouse=True)
def _per_test_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    live = request.config.stash[live_vms_key]
    before = live.offsets()
    yield
    test_dir = _test_dir(request.config, request.node.nodeid)
    for name, vm in list(live.vms.items()):
        target = test_dir if name.startswith("fresh-vm") else test_dir / name
        if target == vm.logs.dir.parent:
            continue  # a fresh VM already logs inside this test's directory
        target.mkdir(parents=True, exist_ok=True)
        if vm.logs.cmdline.exists():
            shutil.copyfile(vm.logs.cmdline, target / "cmdline.txt")
        start = before.get(name, {})
        for log in SLICED_LOGS:
            source: Path = getattr(vm.logs, log)
            if source.exists():
                with source.open("rb") as src:
                    src.seek(start.get(log, 0))
                    (target / source.name).write_bytes(src.read())
