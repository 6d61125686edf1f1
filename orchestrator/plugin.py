"""pytest plugin: booted VMs as fixtures, and a log directory per test.

Fixtures: `vm` (one per session), `fresh_vm` (one per test; options from the
`vm_options` marker), `module_vm` (one per module; options from the module's
markers), `guest` / `qmp` for the session VM, and `accel` (the accelerator of
this session: ACCEL=tcg|kvm|nested-kvm, TCG by default).

Markers: `accel("tcg", ..., reason=...)` runs a test only on the accelerators
named, and skips it elsewhere with the reason; `direct_in_qemu` runs a test
only where HvCallSignalEventDirect reaches QEMU (TCG, or KVM_MODULES=patched): a stock
KVM answers it in the kernel, which other tests assert. `kvm_leg` is the KVM
leg's selection (`make test-kvm`): every test on the session Hyper-V guest
(`hv_vm`) and no other VM gets it automatically, and a test may carry it
explicitly. Each test gets
test-logs/<test>/ holding, for every VM it touched, the QEMU command line and
the part of the serial, QMP and command logs written while it ran.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import pytest

from orchestrator import sanitize
from orchestrator.accel import Accel, choose_accel, kvm_kind
from orchestrator.artifacts import HYPERV_TCG_SERIES, find_qemu
from orchestrator.command import VmOptions
from orchestrator.contract_coverage import ContractCoveragePlugin
from orchestrator.errors import HarnessError
from orchestrator.expect import direct_reaches_qemu
from orchestrator.nested import KvmUnavailable
from orchestrator.profile import VmProfile
from orchestrator.qmp import Qmp
from orchestrator.ssh import Guest
from orchestrator.vm import Vm, VmLogs

SLICED_LOGS = ("serial", "qmp", "commands", "qemu", "guest_errors")


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
    config.addinivalue_line(
        "markers", "accel(*names, reason=...): run only on these accelerators, else skip"
    )
    config.addinivalue_line(
        "markers", "direct_in_qemu: needs HvCallSignalEventDirect to reach QEMU's handler"
    )
    config.addinivalue_line(
        "markers", "kvm_leg: part of the KVM leg (make test-kvm); automatic for hv_vm tests"
    )
    config.addinivalue_line(
        "markers", "long(seconds=N): tens of seconds of waiting; its file runs first, longest first"
    )
    if not hasattr(config, "workerinput") and "not vm" not in (config.option.markexpr or ""):
        _stop_without_hyperv_under_tcg()
    config.stash[live_vms_key] = LiveVms()
    config.pluginmanager.register(ContractCoveragePlugin(), "hvsd-contract-coverage")
    if sanitize.enabled():
        config.pluginmanager.register(
            sanitize.SanitizerPlugin(_log_root(config)), "hvsd-sanitizer-reports"
        )
    # pytest turns SIGINT into KeyboardInterrupt; do the same for SIGTERM so
    # fixture teardown (and with it QEMU's shutdown) runs.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)


def _stop_without_hyperv_under_tcg() -> None:
    """A TCG run on a QEMU without Hyper-V under TCG (a prefix of the stack
    without the hyperv-tcg series) would fail every guest test: it stops
    instead, with one line saying so."""
    try:
        if choose_accel().name != "tcg":
            return
        build = find_qemu()
        if build.offers_hyperv_tcg():
            return
    except HarnessError:
        return  # the tests report it, one line each
    series = ",".join(build.series) or "none"
    raise pytest.UsageError(
        f"this QEMU ({build.binary}, series: {series}) has no Hyper-V under TCG, "
        f"which the TCG leg tests (series {HYPERV_TCG_SERIES}); "
        f"its suites run on the KVM legs: make test-kvm KVM_MODULES=patched SERIES={series}"
    )


def pytest_report_header(config: pytest.Config) -> str:
    try:
        chosen = choose_accel()
    except HarnessError as exc:
        return f"accelerator: {exc}"
    kvm = f", KVM_MODULES={kvm_kind()}" if chosen.is_kvm else ""
    try:
        profile = VmProfile.from_environment().describe()
    except HarnessError as exc:
        profile = str(exc.cause)
    kernel = os.environ.get("HVSD_GUEST_KERNEL")
    kernel_note = f", GUEST_KERNEL={kernel}" if kernel else ""
    return f"accelerator: {chosen}{kvm}; guests: {profile}{kernel_note}"


# Fixtures that boot a VM other than the session Hyper-V guest.
_OTHER_VMS = {"vm", "fresh_vm", "module_vm", "guest", "qmp"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if "hv_vm" in names and not names & _OTHER_VMS:
            item.add_marker(pytest.mark.kvm_leg)
    # Files holding a `long` test first, longest first: xdist's workers take
    # files in this order, and a long wait started last would end the run alone.
    longest: dict[Path, float] = {}
    for item in items:
        if (marker := item.get_closest_marker("long")) is not None:
            seconds = float(marker.kwargs.get("seconds", 0))
            longest[item.path] = max(longest.get(item.path, 0.0), seconds)
    items.sort(key=lambda item: -longest.get(item.path, -1.0))


def pytest_runtest_setup(item: pytest.Item) -> None:
    wanted = item.get_closest_marker("accel")
    direct = item.get_closest_marker("direct_in_qemu")
    if wanted is None and direct is None:
        return
    chosen = choose_accel()
    if wanted is not None and chosen.name not in wanted.args:
        why = wanted.kwargs.get("reason", "")
        pytest.skip(
            f"needs accelerator {' or '.join(wanted.args)}, this run is {chosen.name}"
            + (f": {why}" if why else "")
        )
    if direct is not None and not direct_reaches_qemu(chosen):
        pytest.skip(
            f"{chosen.name} with a stock kernel answers HvCallSignalEventDirect itself "
            "(INVALID_HYPERCALL_CODE, asserted by test_direct_call_on_this_accelerator); "
            "this test checks QEMU's handler (runs under TCG or KVM_MODULES=patched)"
        )


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
    except KvmUnavailable as exc:
        pytest.skip(f"KVM leg skipped: {exc}")
    except HarnessError as exc:
        failure = str(exc)
    if failure is not None:
        pytest.fail(f"VM did not start: {failure}", pytrace=False)
    config.stash[live_vms_key].vms[name] = vm
    return vm


def _session_vm(config: pytest.Config, name: str, options: VmOptions) -> Iterator[Vm]:
    # Under pytest-xdist every worker has session guests of its own
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    log_dir = _log_root(config) / (f"{name}-{worker}" if worker else name)
    booted = _boot(config, log_dir, options, name)
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


def _marked_options(node: pytest.Item | pytest.Collector) -> VmOptions:
    """VmOptions from the `vm_options` and `hyperv` markers nearest `node`."""
    marker = node.get_closest_marker("vm_options")
    kwargs = marker.kwargs if marker else {}
    hyperv = node.get_closest_marker("hyperv") is not None
    return VmOptions.hyperv(**kwargs) if hyperv else VmOptions(**kwargs)


def _own_vm(request: pytest.FixtureRequest, kind: str) -> Iterator[Vm]:
    log_dir = _test_dir(request.config, request.node.nodeid) / kind
    booted = _boot(request.config, log_dir, _marked_options(request.node), f"{kind}-{id(request)}")
    yield booted
    booted.stop()
    request.config.stash[live_vms_key].vms.pop(booted.name, None)


@pytest.fixture
def fresh_vm(request: pytest.FixtureRequest) -> Iterator[Vm]:
    """A guest of this test's own, with options from @pytest.mark.vm_options(...)."""
    yield from _own_vm(request, "fresh-vm")


@pytest.fixture(scope="module")
def module_vm(request: pytest.FixtureRequest) -> Iterator[Vm]:
    """A guest of this module's own, shared by its tests, with options from
    the module's markers (pytestmark): for a VM the session guests cannot be,
    e.g. another CPU topology, booted once rather than once per test."""
    yield from _own_vm(request, "module-vm")


@pytest.fixture(scope="session")
def accel() -> Accel:
    """The accelerator this session's VMs run on."""
    return choose_accel()


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
    if test_dir.exists():
        # junit reports carry it, so a CI failure points at its logs
        request.node.user_properties.append(("logs", str(test_dir)))
