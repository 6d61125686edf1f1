"""A real client of the SynIC: Linux's own hv_vmbus and hv_balloon drivers
against QEMU's VMBus bridge and its one VMBus device, hv-balloon.

VMBus negotiates over messages (HvCallPostMessage, SINT 2 of the guest's
SynIC, with auto-EOI unless CPUID deprecates it) and signals channels with
events both ways (HvCallSignalEvent from the guest, SIEF flags from QEMU).
A balloon request made over QMP reaches the guest's driver through that
protocol, and the guest's memory shrinks as the guest itself reports it."""

from __future__ import annotations

import re

import pytest

from orchestrator.command import HYPERV_TESTDEV
from orchestrator.polling import eventually
from orchestrator.vm import Vm

pytestmark = pytest.mark.vm

MEMORY_MB = 1024
BALLOON_TARGET_MB = 768
# Linux's hv_balloon ignores balloon requests while the guest can hibernate,
# which q35's ACPI S4 would allow.
VMBUS_DEVICES = (
    "-global",
    "ICH9-LPC.disable_s4=1",
    "-device",
    "vmbus-bridge",
    "-device",
    "hv-balloon,id=balloon0",
)
BALLOON_DRIVER = "/sys/bus/vmbus/drivers/hv_balloon"


def mem_total_kib(vm: Vm) -> int:
    meminfo = vm.guest.run("cat /proc/meminfo", check=True).out
    found = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.MULTILINE)
    assert found, meminfo
    return int(found.group(1))


@pytest.mark.long(seconds=50)
@pytest.mark.hyperv
@pytest.mark.vm_options(memory_mb=MEMORY_MB, extra_args=HYPERV_TESTDEV + VMBUS_DEVICES)
def test_hv_balloon_binds_and_follows_a_qmp_inflate_and_deflate(fresh_vm: Vm) -> None:
    guest = fresh_vm.guest
    guest.run("busybox modprobe hv_vmbus && busybox modprobe hv_balloon", check=True)
    eventually(
        lambda: guest.run(f"ls {BALLOON_DRIVER}").out.count("-") >= 4,
        "hv_balloon bound to a VMBus device (a GUID in its driver directory)",
        timeout=60.0,
    )
    dmesg = guest.run("dmesg").out
    assert re.search(r"hv_vmbus: Vmbus version:\d+\.\d+", dmesg), dmesg[-2000:]

    before = mem_total_kib(fresh_vm)
    # QEMU's hv-balloon acts on requests only 50 s (virtual clock) after the
    # guest's driver announced itself (HV_BALLOON_POST_INIT_WAIT): most of
    # this test's time, whatever size is asked for.
    fresh_vm.qmp.execute("balloon", {"value": BALLOON_TARGET_MB << 20})
    # The guest gives back at least 3/4 of what was asked, as it reports it.
    wanted = (MEMORY_MB - BALLOON_TARGET_MB) * 1024 * 3 // 4
    eventually(
        lambda: before - mem_total_kib(fresh_vm) >= wanted,
        f"MemTotal down by {wanted} KiB after the balloon request",
        timeout=120.0,
    )
    # And QEMU hears it back from the guest over VMBus (its status reports).
    eventually(
        lambda: fresh_vm.qmp.execute("query-balloon")["actual"] <= (BALLOON_TARGET_MB + 64) << 20,
        "query-balloon reports the guest's new size",
        timeout=60.0,
    )
    # Deflated again, the guest has its memory back
    fresh_vm.qmp.execute("balloon", {"value": MEMORY_MB << 20})
    eventually(
        lambda: mem_total_kib(fresh_vm) >= before - wanted // 8,
        "MemTotal back up after the balloon is let out",
        timeout=120.0,
    )
