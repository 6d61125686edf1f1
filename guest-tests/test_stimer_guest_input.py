"""Synthetic timers programmed with hostile counts cannot hang QEMU.

A guest once stopped QEMU's main loop for good with three MSR writes: a
timer's count far in the future (its nanoseconds overflowed into the past),
then direct mode, then periodic; the timer was re-armed at or before now in
every pass of the timer list. Each test here is one such cause, and shows
both what the guest sees (the interrupt, or its absence, and the timer's
state read back) and that QEMU's monitor still answers afterwards."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from orchestrator.command import STIMER_CPU
from orchestrator.hvdefs import (
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
from orchestrator.synic_setup import synic_on
from orchestrator.vm import Vm

pytestmark = [
    pytest.mark.vm,
    pytest.mark.vm_options(cpu=STIMER_CPU),
]

CPU, SINT, VECTOR, DIRECT_VECTOR = 0, 3, 0xE3, 0xE7
# The reproducer: about 58,000 years of reference time away.
FAR_FUTURE = 0x194FC8777E66941E
DIRECT_ONE_SHOT = STIMER_ENABLE | STIMER_DIRECT | stimer_vector(DIRECT_VECTOR)
DIRECT_PERIODIC = DIRECT_ONE_SHOT | STIMER_PERIODIC
MESSAGE_PERIODIC = STIMER_ENABLE | STIMER_PERIODIC | stimer_sint(SINT)
# The monitor of a QEMU that spins in its timer list never answers.
MONITOR_TIMEOUT = 15.0


@pytest.fixture
def probe(module_vm: Vm) -> Iterator[Probe]:
    probe = Probe(module_vm.guest)
    with synic_on(probe, CPU, {SINT: VECTOR}):
        try:
            yield probe
        finally:
            probe.wrmsr(stimer_config_msr(1), 0, cpu=CPU)


def program(probe: Probe, timer: int, count: int, *configs: int) -> None:
    assert not probe.wrmsr(stimer_count_msr(timer), count, cpu=CPU).gp
    for config in configs:
        assert not probe.wrmsr(stimer_config_msr(timer), config, cpu=CPU).gp


def monitor_answers(vm: Vm) -> None:
    """QMP, and the guest over SSH, both answer: the main loop is not stuck."""
    assert vm.qmp.execute("query-status", timeout=MONITOR_TIMEOUT)["status"] == "running"
    assert vm.guest.run("echo alive", timeout=MONITOR_TIMEOUT).out.strip() == "alive"


def test_far_future_direct_timer_made_periodic(module_vm: Vm, probe: Probe) -> None:
    before = probe.irqs(CPU, DIRECT_VECTOR)
    program(probe, 1, FAR_FUTURE, DIRECT_ONE_SHOT, DIRECT_PERIODIC)
    time.sleep(1.0)
    monitor_answers(module_vm)
    # An expiry tens of thousands of years away has not come.
    assert probe.irqs(CPU, DIRECT_VECTOR) == before
    config = probe.rdmsr(stimer_config_msr(1), cpu=CPU).value
    assert config == DIRECT_PERIODIC
    assert probe.rdmsr(stimer_count_msr(1), cpu=CPU).value == FAR_FUTURE


@pytest.mark.parametrize("count", [FAR_FUTURE, (1 << 64) - 1, 1 << 63], ids=hex)
def test_periodic_count_past_the_clock_range(module_vm: Vm, probe: Probe, count: int) -> None:
    """now + count wraps past 2^64, or its nanoseconds past 2^63."""
    before = probe.irqs(CPU, VECTOR), probe.irqs(CPU, DIRECT_VECTOR)
    program(probe, 1, count, MESSAGE_PERIODIC)
    program(probe, 1, count, DIRECT_PERIODIC)
    time.sleep(0.5)
    monitor_answers(module_vm)
    assert (probe.irqs(CPU, VECTOR), probe.irqs(CPU, DIRECT_VECTOR)) == before
    assert probe.rdmsr(stimer_config_msr(1), cpu=CPU).value & STIMER_ENABLE


def test_shortest_periodic_direct_timer(module_vm: Vm, probe: Probe) -> None:
    """A period of one unit (100 ns) fires often but lets the main loop run,
    and writing the configuration stops it."""
    before = probe.irqs(CPU, DIRECT_VECTOR)
    program(probe, 1, 1, DIRECT_PERIODIC)
    eventually(lambda: probe.irqs(CPU, DIRECT_VECTOR) > before + 100, "periodic interrupts")
    monitor_answers(module_vm)
    assert not probe.wrmsr(stimer_config_msr(1), 0, cpu=CPU).gp
    stopped = probe.irqs(CPU, DIRECT_VECTOR)
    time.sleep(0.5)
    assert probe.irqs(CPU, DIRECT_VECTOR) == stopped
    monitor_answers(module_vm)


def test_one_shot_in_the_past_fires_once(module_vm: Vm, probe: Probe) -> None:
    before = probe.irqs(CPU, DIRECT_VECTOR)
    program(probe, 1, 1, DIRECT_ONE_SHOT)
    eventually(lambda: probe.irqs(CPU, DIRECT_VECTOR) == before + 1, "one direct interrupt")
    time.sleep(0.5)
    assert probe.irqs(CPU, DIRECT_VECTOR) == before + 1
    assert probe.rdmsr(stimer_config_msr(1), cpu=CPU).value & STIMER_ENABLE == 0
    monitor_answers(module_vm)


def test_count_of_zero_disables(module_vm: Vm, probe: Probe) -> None:
    program(probe, 1, REF_TIME_HZ, DIRECT_PERIODIC)
    assert probe.rdmsr(stimer_config_msr(1), cpu=CPU).value & STIMER_ENABLE
    before = probe.irqs(CPU, DIRECT_VECTOR)
    program(probe, 1, 0)
    assert probe.rdmsr(stimer_config_msr(1), cpu=CPU).value & STIMER_ENABLE == 0
    time.sleep(1.5)
    assert probe.irqs(CPU, DIRECT_VECTOR) == before
    monitor_answers(module_vm)


def test_reference_time_keeps_going(module_vm: Vm, probe: Probe) -> None:
    """After all of the above, the clock the timers count in still advances."""
    start = probe.rdmsr(Msr.TIME_REF_COUNT, cpu=CPU).value
    time.sleep(0.2)
    assert probe.rdmsr(Msr.TIME_REF_COUNT, cpu=CPU).value > start
