"""The cross-vCPU rows on a topology where the numbers differ.

With `-smp 2` a vCPU's Hyper-V VP index, QEMU's CPU index and its APIC ID
are all equal, so a QEMU that routed by the wrong one would pass every other
module. Here two sockets of three cores, four of them present, leave a hole
in the APIC IDs: CPU index 3 is socket 1, core 0, APIC ID 4 (a core takes
two bits of the ID). VP indices are CPU indices (0..3), so:

- a call to VP 3 must set the flag on, and interrupt, the vCPU with APIC
  ID 4: a QEMU that looked the VP up by APIC ID would answer
  INVALID_VP_INDEX, one that sent the interrupt to APIC ID 3 would lose it;
- VP 4 does not exist although APIC ID 4 does: INVALID_VP_INDEX, no effect
  (a lookup by APIC ID would signal CPU index 3); VP 5 is a hot-pluggable
  slot with no vCPU in it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from orchestrator.accel import Accel
from orchestrator.contract import HvStatus, load, row
from orchestrator.expect import expected_direct_status
from orchestrator.hvdefs import Msr
from orchestrator.ports import HostPorts, Port
from orchestrator.probe import HypercallResult, Probe
from orchestrator.sief_watch import SiefWatch, Snapshot
from orchestrator.signal_direct import CALL_CODE, OUTPUT_BYTES, direct_call
from orchestrator.signal_event import event_call
from orchestrator.synic import HostSynic
from orchestrator.synic_pages import slot_flags
from orchestrator.vm import Vm

CPUS = 4
TOPOLOGY = "maxcpus=6,sockets=2,cores=3,threads=1"
# What QEMU gives that topology (query-hotpluggable-cpus, qom apic-id): the
# present vCPUs in CPU-index order.
APIC_IDS = (0, 1, 2, 4)
VP_INDICES = (0, 1, 2, 3)
# No vCPU has these VP indices: 4 is the APIC ID of VP 3, 5 an empty slot.
ABSENT_VPS = (4, 5)

pytestmark = [
    pytest.mark.vm,
    pytest.mark.hyperv,
    # Four vCPUs under TCG on a small host boot slower than two.
    pytest.mark.vm_options(cpus=CPUS, topology=TOPOLOGY, boot_timeout=300.0),
]

SINT, VECTOR, FLAG = 2, 0xE2, 9
CONN = 0x20
OUTPUT_FILL = bytes([0xAA]) * OUTPUT_BYTES  # the probe's --out-fill default
ROWS = load()


@dataclass(frozen=True)
class Vcpu:
    """One present vCPU by each of its numbers."""

    cpu: int  # Linux's CPU number: the probe's --cpu
    apic_id: int  # /proc/cpuinfo's apicid
    vp_index: int  # HV_X64_MSR_VP_INDEX read on that CPU


def guest_apic_ids(vm: Vm) -> dict[int, int]:
    """Linux CPU number -> APIC ID, from /proc/cpuinfo."""
    text = vm.guest.run("cat /proc/cpuinfo", check=True).out
    cpus = [int(n) for n in re.findall(r"^processor\s*:\s*(\d+)", text, re.M)]
    apic_ids = [int(n) for n in re.findall(r"^apicid\s*:\s*(\d+)", text, re.M)]
    assert len(cpus) == len(apic_ids), "every processor of /proc/cpuinfo has an apicid"
    return dict(zip(cpus, apic_ids, strict=True))


def host_apic_ids(vm: Vm) -> tuple[int, ...]:
    """The APIC ID QEMU gave each present vCPU, in CPU-index order."""
    present = sorted(vm.qmp.execute("query-cpus-fast"), key=lambda c: int(c["cpu-index"]))
    return tuple(
        int(vm.qmp.execute("qom-get", {"path": c["qom-path"], "property": "apic-id"}))
        for c in present
    )


@pytest.fixture(scope="module")
def probe(module_vm: Vm) -> Probe:
    return Probe(module_vm.guest)


@pytest.fixture(scope="module")
def vcpus(module_vm: Vm, probe: Probe) -> tuple[Vcpu, ...]:
    apic_ids = guest_apic_ids(module_vm)
    found = tuple(
        Vcpu(cpu, apic_id, probe.rdmsr(Msr.VP_INDEX, cpu=cpu).value)
        for cpu, apic_id in sorted(apic_ids.items())
    )
    # SiefWatch and the host's x-query-synic name a vCPU by one number: the
    # probe's CPU and the VP index must agree for the module to hold.
    assert all(v.cpu == v.vp_index for v in found), f"Linux CPU numbers are not VP indices: {found}"
    return found


@pytest.fixture(scope="module")
def moved(vcpus: tuple[Vcpu, ...]) -> Vcpu:
    """The vCPU whose APIC ID is not its VP index."""
    (vcpu,) = [v for v in vcpus if v.apic_id != v.vp_index]
    return vcpu


@pytest.fixture(scope="module")
def watch(module_vm: Vm, probe: Probe, vcpus: tuple[Vcpu, ...]) -> Iterator[SiefWatch]:
    """SINT `SINT` with `VECTOR` on every vCPU; snapshots in CPU order."""
    synic = SiefWatch(module_vm, probe, SINT, VECTOR, cpus=tuple(v.cpu for v in vcpus))
    for vcpu in vcpus:
        synic.setup(vcpu.cpu)
    yield synic
    synic.teardown()


@pytest.fixture
def clean(watch: SiefWatch) -> Iterator[SiefWatch]:
    for cpu in watch.cpus:
        watch.clear(cpu)
    yield watch
    HostPorts(watch.vm.qmp).clear()


def flags_on(watch: SiefWatch, cpu: int) -> frozenset[int]:
    """SINT's flags on `cpu`, guest view, checked against the host's."""
    guest_view = slot_flags(watch.probe.sief(cpu, SINT))
    assert watch.host_page(cpu)[SINT] == guest_view, f"guest and host disagree on cpu {cpu}"
    return guest_view


def one_more_irq(before: Snapshot, watch: SiefWatch, cpu: int) -> tuple[int, ...]:
    return tuple(n + (c == cpu) for c, n in zip(watch.cpus, before.irqs, strict=True))


def assert_only_flag(watch: SiefWatch, target: int, flag: int) -> None:
    """`flag` alone on `target`, no flag on any other vCPU, in both views."""
    for cpu in watch.cpus:
        assert flags_on(watch, cpu) == ({flag} if cpu == target else set()), f"cpu {cpu}"


def pair_ids(pair: tuple[int, int]) -> str:
    return f"cpu{pair[0]}-to-vp{pair[1]}"


# (caller's CPU, target VP): from vCPU 0 to VP 3 (APIC ID 4), and back.
DIRECTIONS = [(0, VP_INDICES[3]), (VP_INDICES[3], 0)]


def test_apic_ids_have_a_hole_and_are_not_the_vp_indices(
    module_vm: Vm, vcpus: tuple[Vcpu, ...], moved: Vcpu
) -> None:
    assert tuple(v.vp_index for v in vcpus) == VP_INDICES
    assert tuple(v.apic_id for v in vcpus) == APIC_IDS, "the guest's /proc/cpuinfo"
    assert host_apic_ids(module_vm) == APIC_IDS, "QEMU's apic-id properties"
    assert sorted(HostSynic(module_vm.qmp).state()) == list(VP_INDICES), (
        "x-query-synic's VP indices"
    )
    assert (moved.vp_index, moved.apic_id) == (3, 4)


def signalled_directly(result: HypercallResult) -> int:
    """NewlySignaled of a successful SignalEventDirect; its 7 other bytes are zero."""
    assert (result.ud, result.status) == (False, HvStatus.SUCCESS), result
    assert result.output[1:] == bytes(OUTPUT_BYTES - 1), result.output
    return result.output[0]


@pytest.mark.direct_in_qemu
@pytest.mark.parametrize("pair", DIRECTIONS, ids=pair_ids)
def test_direct_call_reaches_the_vp_whatever_its_apic_id(
    clean: SiefWatch, pair: tuple[int, int]
) -> None:
    caller, vp = pair
    before = clean.snapshot()
    first = clean.probe.hypercall_with(direct_call(vp, SINT, FLAG, cpu=caller))
    assert signalled_directly(first) == 1
    assert_only_flag(clean, vp, FLAG)
    assert clean.snapshot().irqs == one_more_irq(before, clean, vp), "one interrupt, on the VP"

    again = clean.probe.hypercall_with(direct_call(vp, SINT, FLAG, cpu=caller))
    assert signalled_directly(again) == 0
    assert clean.snapshot().irqs == one_more_irq(before, clean, vp), "no second interrupt"


@pytest.mark.parametrize("pair", DIRECTIONS, ids=pair_ids)
def test_event_port_on_the_vp_whatever_its_apic_id(clean: SiefWatch, pair: tuple[int, int]) -> None:
    caller, vp = pair
    port = HostPorts(clean.vm.qmp).create(Port(0x10, vp, SINT, base_flag=100, flag_count=8))
    HostPorts(clean.vm.qmp).connect(CONN, port.port_id)
    before = clean.snapshot()
    result = clean.probe.hypercall_with(event_call(CONN, 5, cpu=caller))
    assert (result.ud, result.status) == (False, HvStatus.SUCCESS), result
    assert_only_flag(clean, vp, port.bit(5))
    assert clean.snapshot().irqs == one_more_irq(before, clean, vp), "one interrupt, on the VP"


@pytest.mark.parametrize("vp", ABSENT_VPS, ids=lambda vp: f"vp-{vp}")
def test_direct_call_to_an_absent_vp_is_invalid_vp_index(
    clean: SiefWatch, accel: Accel, vp: int
) -> None:
    before = clean.snapshot()
    result = clean.probe.hypercall_with(direct_call(vp, SINT, FLAG))
    expected = expected_direct_status(accel, row("D5", ROWS).status, CALL_CODE)
    assert (result.ud, result.status) == (False, expected), result
    assert clean.snapshot() == before, "no flag and no interrupt on any vCPU"
    assert result.output == OUTPUT_FILL, "output written on error"


@pytest.mark.parametrize("vp", ABSENT_VPS, ids=lambda vp: f"vp-{vp}")
def test_event_port_on_an_absent_vp_is_invalid_vp_index(clean: SiefWatch, vp: int) -> None:
    port = HostPorts(clean.vm.qmp).create(Port(0x10, vp, SINT, base_flag=100, flag_count=8))
    HostPorts(clean.vm.qmp).connect(CONN, port.port_id)
    before = clean.snapshot()
    result = clean.probe.hypercall_with(event_call(CONN, 5))
    assert (result.ud, result.status) == (False, row("E5", ROWS).status), result
    assert clean.snapshot() == before, "no flag and no interrupt on any vCPU"
