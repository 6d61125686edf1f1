"""Fixtures the guest-test modules share: the probe in the session Hyper-V
guest, hyperv-testdev driven through it, and a check after every module that
the session guests' kernels logged no oops, BUG or WARNING meanwhile."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from orchestrator.plugin import live_vms_key
from orchestrator.probe import Probe
from orchestrator.testdev import HypervTestDev
from orchestrator.vm import Vm


@pytest.fixture(scope="module")
def probe(hv_vm: Vm) -> Probe:
    return Probe(hv_vm.guest)


@pytest.fixture(scope="module")
def testdev(probe: Probe) -> HypervTestDev:
    return HypervTestDev(probe)


KERNEL_TROUBLE = re.compile(r"Oops|BUG:|WARNING:|general protection fault|Kernel panic|Call Trace:")
SESSION_VMS = ("session-vm", "session-hv-vm")


def kernel_log_lines(vm: Vm) -> list[str]:
    return vm.guest.run("dmesg", check=True).out.splitlines()


@pytest.fixture(scope="module", autouse=True)
def session_guest_kernels_stay_healthy(request: pytest.FixtureRequest) -> Iterator[None]:
    """A module that leaves a kernel oops or WARNING in a shared guest fails
    at its teardown, naming the lines, instead of passing and leaving the
    next module a broken guest. Only the lines logged during the module
    count (all of them for a guest the module booted)."""
    live = request.config.stash[live_vms_key].vms
    seen = {name: len(kernel_log_lines(live[name])) for name in SESSION_VMS if name in live}
    yield
    for name in SESSION_VMS:
        vm = live.get(name)
        if vm is None:
            continue
        new = kernel_log_lines(vm)[seen.get(name, 0) :]
        trouble = [line for line in new if KERNEL_TROUBLE.search(line)]
        assert not trouble, f"{name}'s kernel logged during {request.node.name}: {trouble[:5]}"
