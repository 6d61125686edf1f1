"""Fixtures the guest-test modules share: the probe in the session Hyper-V
guest, hyperv-testdev driven through it, and a check after every module that
the session guests' kernels logged no oops, BUG or WARNING meanwhile, and
that their QEMU logged no guest error but those the tests provoke
(orchestrator/guest_errors.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from orchestrator.guest_errors import log_size, unexpected_since
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


@dataclass(frozen=True)
class LogMarks:
    """Where a session guest's logs stood when the module began."""

    kernel_lines: int = 0
    guest_error_bytes: int = 0


def marks(vm: Vm) -> LogMarks:
    return LogMarks(len(kernel_log_lines(vm)), log_size(vm.logs.guest_errors))


def problems_since(name: str, vm: Vm, start: LogMarks) -> list[str]:
    """What `vm`'s kernel and QEMU logged past `start` that they should not have."""
    problems = []
    new = kernel_log_lines(vm)[start.kernel_lines :]
    trouble = [line for line in new if KERNEL_TROUBLE.search(line)]
    if trouble:
        problems.append(f"{name}'s kernel logged: {trouble[:5]}")
    errors = unexpected_since(vm.logs.guest_errors, start.guest_error_bytes)
    if errors:
        problems.append(f"{name}'s QEMU logged ({vm.logs.guest_errors}): {errors[:5]}")
    return problems


@pytest.fixture(scope="module", autouse=True)
def session_guests_stay_healthy(request: pytest.FixtureRequest) -> Iterator[None]:
    """A module that leaves a kernel oops or WARNING in a shared guest, or
    makes its QEMU log a guest error the tests do not provoke on purpose,
    fails at its teardown, naming the lines, instead of passing and leaving
    the next module a broken guest. Only the lines logged during the module
    count (all of them for a guest booted during the module)."""
    live = request.config.stash[live_vms_key].vms
    seen = {name: marks(live[name]) for name in SESSION_VMS if name in live}
    yield
    problems = [
        problem
        for name in SESSION_VMS
        if (vm := live.get(name)) is not None
        for problem in problems_since(name, vm, seen.get(name, LogMarks()))
    ]
    assert not problems, f"during {request.node.name}: " + "; ".join(problems)
