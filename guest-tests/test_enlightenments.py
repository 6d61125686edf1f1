"""The enlightenments real guests expect beside the SynIC: the reference
counter and TSC page (hv-time), synthetic timers in message and direct mode
(hv-stimer, hv-stimer-direct), the synthetic APIC MSRs and VP assist page
(hv-vapic), hv-runtime, hv-frequencies and hv-reset. Linux is shown to use
them (its clocksource and clockevents), and the probe drives the timers that
Linux leaves alone (1..3) in every mode."""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Iterator

import pytest

from orchestrator.command import HYPERV_CPU, HYPERV_TESTDEV
from orchestrator.contract import HvStatus
from orchestrator.hvdefs import (
    MESSAGE_TIMER_EXPIRED,
    REF_TIME_HZ,
    STIMER_DIRECT,
    STIMER_ENABLE,
    STIMER_PERIODIC,
    Msr,
    stimer_config_msr,
    stimer_count_msr,
    stimer_sint,
    stimer_vector,
)
from orchestrator.polling import eventually
from orchestrator.probe import Probe
from orchestrator.signal_direct import fast_direct_call
from orchestrator.synic_pages import SimMessage, slot_flags
from orchestrator.synic_setup import synic_on
from orchestrator.vm import Vm

ENLIGHTENED_CPU = (
    HYPERV_CPU
    + ",hv-time,hv-stimer,hv-stimer-direct,hv-vapic,hv-runtime,hv-frequencies,hv-reset"
    + ",hv-xmm-input"
)
XMM_FAST_OUTPUT = 1 << 15  # CPUID 0x40000003 EDX
pytestmark = [
    pytest.mark.vm,
    pytest.mark.vm_options(cpu=ENLIGHTENED_CPU, extra_args=HYPERV_TESTDEV),
    pytest.mark.long(seconds=70),  # timers, clocks and a reset, one after another
]

CPU, SINT, VECTOR = 1, 3, 0xE3
DIRECT_VECTOR = 0xE7
MS = REF_TIME_HZ // 1000  # reference time units in a millisecond


@pytest.fixture
def probe(fresh_vm: Vm) -> Probe:
    return Probe(fresh_vm.guest)


@pytest.fixture
def synic(probe: Probe) -> Iterator[Probe]:
    with synic_on(probe, CPU, {SINT: VECTOR}):
        try:
            yield probe
        finally:
            for timer in (1, 2, 3):
                probe.wrmsr(stimer_config_msr(timer), 0, cpu=CPU)


def ref_time(probe: Probe, cpu: int = CPU) -> int:
    reading = probe.rdmsr(Msr.TIME_REF_COUNT, cpu=cpu)
    assert not reading.gp
    return reading.value


def timer_message(probe: Probe) -> tuple[int, int, int]:
    """(timer index, expiration time, delivery time) of the message in the slot."""
    message = eventually(
        lambda: (m := SimMessage.from_slot(probe.sim(CPU, SINT))).message_type and m,
        "a timer message",
    )
    assert message.message_type == MESSAGE_TIMER_EXPIRED
    assert message.payload_size == 24
    index, _, expiration, delivery = struct.unpack_from("<IIQQ", message.payload)
    return index, expiration, delivery


def test_linux_uses_the_hyper_v_clocks(fresh_vm: Vm) -> None:
    sysfs = "/sys/devices/system"
    clocksource = fresh_vm.guest.run(
        f"cat {sysfs}/clocksource/clocksource0/current_clocksource", check=True
    ).out.strip()
    assert clocksource == "hyperv_clocksource_tsc_page"
    events = fresh_vm.guest.run(
        f"cat {sysfs}/clockevents/clockevent*/current_device", check=True
    ).out.split("\n")
    assert [line for line in events if line] == ["Hyper-V clockevent"] * 2
    dmesg = fresh_vm.guest.run("dmesg", check=True).out
    assert "Hyper-V: Using enlightened APIC" in dmesg
    # The guest's clock keeps time with the host's, through the TSC page.
    start_host = time.monotonic()
    start_guest = float(fresh_vm.guest.run("cat /proc/uptime").out.split()[0])
    time.sleep(3.0)
    guest_elapsed = float(fresh_vm.guest.run("cat /proc/uptime").out.split()[0]) - start_guest
    host_elapsed = time.monotonic() - start_host
    assert abs(guest_elapsed - host_elapsed) < 0.5, (guest_elapsed, host_elapsed)


def test_reference_time_is_monotonic_across_vcpus_and_keeps_pace(
    fresh_vm: Vm, probe: Probe
) -> None:
    page = probe.rdmsr(Msr.REFERENCE_TSC).value
    assert page & 1, "Linux enables the reference TSC page"
    sequence, _, scale, _ = struct.unpack("<IIQq", fresh_vm.qmp.read_phys(page & ~0xFFF, 24))
    assert sequence != 0 and scale != 0
    readings = [
        reply["value"]
        for reply in probe.batch(
            *(["rdmsr", "--cpu", cpu % 2, hex(Msr.TIME_REF_COUNT)] for cpu in range(40))
        )
    ]
    assert readings == sorted(readings)
    start, host_start = ref_time(probe, 0), time.monotonic()
    time.sleep(2.0)
    elapsed = (ref_time(probe, 1) - start) / REF_TIME_HZ
    assert abs(elapsed - (time.monotonic() - host_start)) < 0.5


def test_frequency_runtime_and_read_only_msrs(probe: Probe) -> None:
    tsc_hz = probe.rdmsr(Msr.TSC_FREQUENCY).value
    assert 100_000_000 < tsc_hz < 10_000_000_000
    assert probe.rdmsr(Msr.APIC_FREQUENCY).value == 1_000_000_000
    first = probe.rdmsr(Msr.VP_RUNTIME, cpu=0).value
    probe.guest.run("taskset -c 0 sh -c 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done'")
    assert probe.rdmsr(Msr.VP_RUNTIME, cpu=0).value > first
    for msr in (Msr.TIME_REF_COUNT, Msr.TSC_FREQUENCY, Msr.APIC_FREQUENCY, Msr.VP_RUNTIME):
        assert probe.wrmsr(msr, 0).gp, hex(msr)


def test_one_shot_message_timer(synic: Probe) -> None:
    probe = synic
    before = probe.irqs(CPU, VECTOR)
    due = ref_time(probe) + 20 * MS
    assert not probe.wrmsr(stimer_count_msr(2), due, cpu=CPU).gp
    assert not probe.wrmsr(stimer_config_msr(2), STIMER_ENABLE | stimer_sint(SINT), cpu=CPU).gp
    index, expiration, delivery = timer_message(probe)
    assert (index, expiration) == (2, due)
    assert delivery >= due
    eventually(lambda: probe.irqs(CPU, VECTOR) == before + 1, "one interrupt")
    # A one-shot timer disables itself once its message is delivered.
    assert probe.rdmsr(stimer_config_msr(2), cpu=CPU).value & STIMER_ENABLE == 0
    probe.sim(CPU, SINT, clear=True)
    time.sleep(0.5)
    assert SimMessage.from_slot(probe.sim(CPU, SINT)).message_type == 0
    assert probe.irqs(CPU, VECTOR) == before + 1


def test_periodic_message_timer_waits_for_eom(synic: Probe) -> None:
    probe = synic
    period = 50 * MS
    assert not probe.wrmsr(stimer_count_msr(1), period, cpu=CPU).gp
    config = STIMER_ENABLE | STIMER_PERIODIC | stimer_sint(SINT)
    assert not probe.wrmsr(stimer_config_msr(1), config, cpu=CPU).gp
    expirations = []
    for _ in range(4):
        index, expiration, _ = timer_message(probe)
        assert index == 1
        expirations.append(expiration)
        probe.sim(CPU, SINT, clear=True)
        assert not probe.wrmsr(Msr.EOM, 0, cpu=CPU).gp
    assert expirations == sorted(set(expirations))
    assert all((e - expirations[0]) % period == 0 for e in expirations)
    assert probe.rdmsr(stimer_config_msr(1), cpu=CPU).value & STIMER_ENABLE


def test_one_shot_and_periodic_direct_timers(synic: Probe) -> None:
    probe = synic
    before = probe.irqs(CPU, DIRECT_VECTOR)
    direct = STIMER_ENABLE | STIMER_DIRECT | stimer_vector(DIRECT_VECTOR)
    assert not probe.wrmsr(stimer_count_msr(3), ref_time(probe) + 10 * MS, cpu=CPU).gp
    assert not probe.wrmsr(stimer_config_msr(3), direct, cpu=CPU).gp
    eventually(lambda: probe.irqs(CPU, DIRECT_VECTOR) == before + 1, "one direct interrupt")
    time.sleep(0.5)
    assert probe.irqs(CPU, DIRECT_VECTOR) == before + 1
    assert SimMessage.from_slot(probe.sim(CPU, SINT)).message_type == 0

    assert not probe.wrmsr(stimer_count_msr(3), 20 * MS, cpu=CPU).gp
    assert not probe.wrmsr(stimer_config_msr(3), direct | STIMER_PERIODIC, cpu=CPU).gp
    eventually(
        lambda: probe.irqs(CPU, DIRECT_VECTOR) >= before + 11, "ten periodic interrupts", 30.0
    )
    assert not probe.wrmsr(stimer_config_msr(3), 0, cpu=CPU).gp
    stopped = probe.irqs(CPU, DIRECT_VECTOR)
    time.sleep(0.5)
    assert probe.irqs(CPU, DIRECT_VECTOR) == stopped


def test_synthetic_apic_msrs(probe: Probe) -> None:
    assert not probe.wrmsr(Msr.TPR, 0x20, cpu=1).gp
    assert probe.rdmsr(Msr.TPR, cpu=1).value == 0x20
    assert not probe.wrmsr(Msr.TPR, 0, cpu=1).gp
    # An IPI through the synthetic ICR, fixed delivery to vCPU 1's APIC ID.
    apic_id = int(
        re.search(
            r"apicid\s*:\s*(\d+)", probe.guest.run("cat /proc/cpuinfo").out.split("\n\n")[1]
        ).group(1)
    )
    x2apic = probe.info().x2apic
    icr = (apic_id << 32 if x2apic else apic_id << 56) | 0xE9
    before = probe.irqs(1, 0xE9)
    assert not probe.wrmsr(Msr.ICR, icr, cpu=0).gp
    eventually(lambda: probe.irqs(1, 0xE9) == before + 1, "the IPI on vCPU 1")


def boot_id(vm: Vm) -> str:
    return vm.guest.run("cat /proc/sys/kernel/random/boot_id", check=True).out.strip()


def test_the_reset_msr_resets_the_vm(fresh_vm: Vm, probe: Probe) -> None:
    first_boot = boot_id(fresh_vm)
    probe.info()  # the module loaded before the write in the background needs it
    fresh_vm.reboot(guest_command=f"{probe.binary} wrmsr --cpu 0 {Msr.RESET:#x} 1")
    assert fresh_vm.qmp.status() == "running"
    assert boot_id(fresh_vm) != first_boot


def test_fast_signal_event_direct_returns_newly_signaled_in_xmm0(synic: Probe) -> None:
    probe = synic
    assert probe.cpuid(0x40000003).edx & XMM_FAST_OUTPUT
    probe.sief(CPU, SINT, clear=True)
    before = probe.irqs(CPU, VECTOR)
    fill = bytes([0xAA] * 16)
    fast = fast_direct_call(CPU, SINT, 77, xmm=(fill,))
    for newly in (1, 0):
        result = probe.hypercall_with(fast)
        assert result.status == HvStatus.SUCCESS
        # NewlySignaled in bits 7:0 of XMM0, the rest of its low qword zero.
        assert result.xmm0 is not None
        assert result.xmm0[:8] == bytes([newly]) + bytes(7)
    assert slot_flags(probe.sief(CPU, SINT)) == {77}
    eventually(lambda: probe.irqs(CPU, VECTOR) == before + 1, "one interrupt")
