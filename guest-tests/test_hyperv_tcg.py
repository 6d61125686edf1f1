"""Hyper-V under TCG, seen from inside a guest: detection, CPUID, MSRs, the
hypercall instruction. Each test states what the TLFS (or docs/hyperv-tcg.md)
says and checks it with the probe, and from the host where there is a host
view."""

from __future__ import annotations

import pytest

from orchestrator.accel import Accel
from orchestrator.contract import HvStatus
from orchestrator.hvdefs import (
    PRIVILEGE_POST_MESSAGES,
    PRIVILEGE_SIGNAL_EVENTS,
    SINT_MASKED,
    Call,
    Msr,
)
from orchestrator.probe import Insn, Probe
from orchestrator.synic import HostSynic
from orchestrator.vm import Vm

pytestmark = pytest.mark.vm

# CPUID leaves and bits (TLFS; QEMU's target/i386/kvm/hyperv-proto.h)
VENDOR_AND_MAX, INTERFACE, FEATURES, ENLIGHTENMENTS, LIMITS = (
    0x40000000,
    0x40000001,
    0x40000003,
    0x40000004,
    0x40000005,
)
SYNIC_AVAILABLE, HYPERCALL_AVAILABLE, VP_INDEX_AVAILABLE = 1 << 2, 1 << 5, 1 << 6
POST_MESSAGES, SIGNAL_EVENTS = PRIVILEGE_POST_MESSAGES, PRIVILEGE_SIGNAL_EVENTS
RELAXED_TIMING, DEPRECATING_AEOI = 1 << 5, 1 << 9

GUEST_OS_ID, HYPERCALL, VP_INDEX, VP_RUNTIME = (
    Msr.GUEST_OS_ID,
    Msr.HYPERCALL,
    Msr.VP_INDEX,
    Msr.VP_RUNTIME,
)
SCONTROL, SVERSION, SIEFP, SIMP, SINT0 = Msr.SCONTROL, Msr.SVERSION, Msr.SIEFP, Msr.SIMP, Msr.SINT0
INVALID_HYPERCALL_CODE = HvStatus.INVALID_HYPERCALL_CODE
INVALID_HYPERCALL_INPUT = HvStatus.INVALID_HYPERCALL_INPUT
SIGNAL_EVENT = Call.SIGNAL_EVENT
UNASSIGNED_CODE = 0x7FFF


@pytest.fixture(scope="module")
def probe(hv_vm: Vm) -> Probe:
    return Probe(hv_vm.guest)


@pytest.fixture(scope="module")
def cpus(hv_vm: Vm) -> range:
    return range(hv_vm.options.cpus)


def test_linux_detects_hyper_v_and_uses_the_hypercall_page(hv_vm: Vm, probe: Probe) -> None:
    dmesg = hv_vm.guest.run("dmesg", check=True).out
    assert "Hypervisor detected: Microsoft Hyper-V" in dmesg
    assert "unchecked MSR access error" not in dmesg
    assert probe.info().hypercall_page

    hypercall = probe.rdmsr(HYPERCALL)
    assert not hypercall.gp
    assert hypercall.value & 1, "Linux enables the hypercall page"
    assert probe.rdmsr(GUEST_OS_ID).value != 0, "the page needs a guest OS id first"
    vendor = probe.cpuid(0).text("ebx", "edx", "ecx")
    expected = bytes.fromhex("0f01d9c3" if vendor == "AuthenticAMD" else "0f01c1c3")
    # The host's view of the page QEMU wrote: VMMCALL or VMCALL, then RET.
    assert hv_vm.qmp.read_phys(hypercall.value & ~0xFFF, 4) == expected


def test_partition_wide_msrs_read_the_same_on_every_vcpu(probe: Probe, cpus: range) -> None:
    for msr in (GUEST_OS_ID, HYPERCALL):
        values = {probe.rdmsr(msr, cpu=cpu).value for cpu in cpus}
        assert len(values) == 1, f"MSR {msr:#x} differs across vCPUs: {values}"


def test_cpuid_leaves_describe_the_configured_features(probe: Probe, cpus: range) -> None:
    for cpu in cpus:
        top = probe.cpuid(VENDOR_AND_MAX, cpu=cpu)
        assert top.eax == LIMITS
        assert top.text("ebx", "ecx", "edx") == "Microsoft Hv"
        assert probe.cpuid(INTERFACE, cpu=cpu).text("eax") == "Hv#1"
        features = probe.cpuid(FEATURES, cpu=cpu)
        wanted = HYPERCALL_AVAILABLE | VP_INDEX_AVAILABLE | SYNIC_AVAILABLE
        assert features.eax & wanted == wanted
        assert features.ebx & (POST_MESSAGES | SIGNAL_EVENTS) == POST_MESSAGES | SIGNAL_EVENTS
        hints = probe.cpuid(ENLIGHTENMENTS, cpu=cpu)
        # Auto-EOI is emulated, so not deprecated (KVM sets the hint only with hv-avic).
        assert hints.eax & (RELAXED_TIMING | DEPRECATING_AEOI) == RELAXED_TIMING
        # x-hv-max-vps, -1 (no limit) by default, as QEMU shows it under KVM
        assert probe.cpuid(LIMITS, cpu=cpu).eax == 0xFFFFFFFF


def test_a_guest_without_hv_flags_sees_no_hyper_v(vm: Vm) -> None:
    plain = Probe(vm.guest)
    assert plain.cpuid(VENDOR_AND_MAX).text("ebx", "ecx", "edx") != "Microsoft Hv"
    assert "Hypervisor detected: Microsoft Hyper-V" not in vm.guest.run("dmesg").out


def test_vp_index_is_the_vcpu_index_and_read_only(probe: Probe, cpus: range) -> None:
    for cpu in cpus:
        assert probe.rdmsr(VP_INDEX, cpu=cpu).value == cpu
    write = probe.wrmsr(VP_INDEX, 5, cpu=1)
    assert write.gp
    assert probe.rdmsr(VP_INDEX, cpu=1).value == 1


def instructions(accel: Accel) -> tuple[Insn, ...]:
    """The hypercall instructions to try: both under TCG, where QEMU decodes
    both; under KVM the CPU vendor's own, since KVM emulates the other from
    #UD by rewriting the caller's code (on AMD, VMCALL becomes VMMCALL),
    which faults in read-only kernel text."""
    return ("native",) if accel.is_kvm else ("vmcall", "vmmcall")


def test_read_only_and_unoffered_msrs_fault(probe: Probe, accel: Accel) -> None:
    assert probe.wrmsr(SVERSION, 2).gp
    assert probe.rdmsr(SVERSION).value == 1
    runtime = probe.rdmsr(VP_RUNTIME)
    if accel.is_kvm:
        # KVM serves every Hyper-V MSR it knows, offered in CPUID or not,
        # unless hv-enforce-cpuid is set; under TCG, QEMU offers only what
        # CPUID says.
        assert not runtime.gp and runtime.value > 0
    else:
        assert runtime.gp
    assert probe.wrmsr(VP_RUNTIME, 0).gp


def test_an_unmasked_sint_vector_below_16_is_refused(probe: Probe) -> None:
    sint = 3
    try:
        refused = probe.sint_raw(cpu=1, sint=sint, value=15)
        assert refused.gp
        assert probe.rdmsr(SINT0 + sint, cpu=1).value == SINT_MASKED
        # Masked, the same vector is fine: nothing will be delivered with it.
        accepted = probe.sint_raw(cpu=1, sint=sint, value=SINT_MASKED | 15)
        assert not accepted.gp
        assert probe.rdmsr(SINT0 + sint, cpu=1).value == SINT_MASKED | 15
    finally:
        probe.sint_raw(cpu=1, sint=sint, value=SINT_MASKED)


def test_sint_reserved_bits_read_as_zero(probe: Probe, accel: Accel) -> None:
    sint = 4
    value = (1 << 40) | (1 << 19) | SINT_MASKED | 0x40
    try:
        written = probe.sint_raw(cpu=0, sint=sint, value=value)
        assert not written.gp
        # KVM keeps the reserved bits as written; QEMU under TCG drops them.
        kept = value if accel.is_kvm else SINT_MASKED | 0x40
        assert probe.rdmsr(SINT0 + sint).value == kept
    finally:
        probe.sint_raw(cpu=0, sint=sint, value=SINT_MASKED)


def test_hypercall_from_user_mode_raises_ud(probe: Probe, accel: Accel) -> None:
    for insn in instructions(accel):
        result = probe.hypercall(SIGNAL_EVENT | (1 << 16), user=True, insn=insn)
        assert result.ud, insn
        assert result.status is None


@pytest.mark.parametrize(
    ("control", "status"),
    [
        (UNASSIGNED_CODE, INVALID_HYPERCALL_CODE),
        (SIGNAL_EVENT | (1 << 16) | (1 << 27), INVALID_HYPERCALL_INPUT),  # reserved 30:27
        (SIGNAL_EVENT | (1 << 16) | (1 << 44), INVALID_HYPERCALL_INPUT),  # reserved 47:44
        (SIGNAL_EVENT | (1 << 16) | (1 << 63), INVALID_HYPERCALL_INPUT),  # reserved 63:60
        (SIGNAL_EVENT | (1 << 16) | (1 << 31), INVALID_HYPERCALL_INPUT),  # nested
        (SIGNAL_EVENT | (1 << 16) | (1 << 32), INVALID_HYPERCALL_INPUT),  # rep count
        (SIGNAL_EVENT | (1 << 16) | (1 << 48), INVALID_HYPERCALL_INPUT),  # rep start
        (SIGNAL_EVENT | (1 << 16) | (1 << 17), INVALID_HYPERCALL_INPUT),  # var header
    ],
)
def test_control_word_is_decoded_before_the_call_runs(
    probe: Probe, accel: Accel, control: int, status: int
) -> None:
    for insn in instructions(accel):
        result = probe.hypercall(control, insn=insn)
        assert not result.ud, insn
        assert result.status == status, (insn, hex(control), result.rax)
        assert result.reps_completed == 0


def test_the_hypercall_page_issues_the_call_too(probe: Probe) -> None:
    result = probe.hypercall(UNASSIGNED_CODE, insn="page")
    assert (result.ud, result.status) == (False, INVALID_HYPERCALL_CODE)


def assert_synic_msrs_at_reset_values(probe: Probe, cpus: range) -> None:
    for cpu in cpus:
        assert probe.rdmsr(SVERSION, cpu=cpu).value == 1
        for msr in (SCONTROL, SIEFP, SIMP):
            reading = probe.rdmsr(msr, cpu=cpu)
            assert (reading.gp, reading.value) == (False, 0), f"MSR {msr:#x} on cpu {cpu}"
        assert [probe.rdmsr(SINT0 + s, cpu=cpu).value for s in range(16)] == [SINT_MASKED] * 16


@pytest.mark.long(seconds=15)
@pytest.mark.hyperv
def test_system_reset_puts_the_synic_msrs_back(fresh_vm: Vm) -> None:
    """The values at power-on, on a VM no earlier test touched, then the same
    values again after the guest set them and the VM was reset."""
    probe = Probe(fresh_vm.guest)
    assert_synic_msrs_at_reset_values(probe, range(fresh_vm.options.cpus))
    state = probe.synic_setup(1)
    assert not state.faults
    probe.sint(1, 5, 0xE5)
    assert probe.rdmsr(SCONTROL, cpu=1).value & 1
    assert probe.rdmsr(SIEFP, cpu=1).value & 1
    assert probe.rdmsr(SINT0 + 5, cpu=1).value == 0xE5

    fresh_vm.reboot()

    probe = Probe(fresh_vm.guest)
    assert_synic_msrs_at_reset_values(probe, range(fresh_vm.options.cpus))
    # The host agrees: every SINT masked, nothing enabled, no overlay mapped.
    for vp, info in HostSynic(fresh_vm.qmp).state().items():
        assert (info.scontrol, info.siefp, info.simp) == (0, 0, 0), vp
        assert info.sints == (SINT_MASKED,) * 16, vp
        assert not info.sief_mapped and not info.sim_mapped, vp
    # The rebooted Linux found Hyper-V again and re-enabled its hypercall page.
    assert probe.rdmsr(HYPERCALL).value & 1


def test_host_and_guest_agree_on_the_synic(hv_vm: Vm, probe: Probe) -> None:
    state = probe.synic_setup(1)
    probe.sint(1, 7, 0xE7, polling=True)
    try:
        host = HostSynic(hv_vm.qmp).state()[1]
        assert host.scontrol == probe.rdmsr(SCONTROL, cpu=1).value == 1
        assert host.siefp == probe.rdmsr(SIEFP, cpu=1).value == state.sief_gpa | 1
        assert host.simp == probe.rdmsr(SIMP, cpu=1).value == state.sim_gpa | 1
        assert host.sints[7] == probe.rdmsr(SINT0 + 7, cpu=1).value == (1 << 18) | 0xE7
        assert host.sief_mapped and host.sim_mapped
        assert not HostSynic(hv_vm.qmp).state()[0].sief_mapped
    finally:
        probe.sint(1, 7, 0xE7, masked=True)
        probe.synic_teardown(1)
    after = HostSynic(hv_vm.qmp).state()[1]
    assert (after.scontrol, after.sief_mapped, after.sim_mapped) == (0, False, False)


def test_a_guest_without_hv_synic_has_no_synic_for_the_host(vm: Vm) -> None:
    assert HostSynic(vm.qmp).state() == {}


@pytest.mark.hyperv
@pytest.mark.vm_options(cpus=2, extra_args=("-smp", "2,maxcpus=3"))
def test_a_hot_plugged_vcpu_starts_with_its_sints_masked(fresh_vm: Vm) -> None:
    slot = next(
        cpu for cpu in fresh_vm.qmp.execute("query-hotpluggable-cpus") if "qom-path" not in cpu
    )
    fresh_vm.qmp.execute("device_add", {"driver": slot["type"], "id": "cpu2", **slot["props"]})
    fresh_vm.guest.run(
        "cpu2=/sys/devices/system/cpu/cpu2/online;"
        " for i in $(seq 50); do [ -e $cpu2 ] && break; sleep 0.2; done; echo 1 > $cpu2",
        check=True,
    )
    probe = Probe(fresh_vm.guest)
    assert probe.rdmsr(VP_INDEX, cpu=2).value == 2
    assert [probe.rdmsr(SINT0 + s, cpu=2).value for s in range(16)] == [SINT_MASKED] * 16
    assert probe.rdmsr(SCONTROL, cpu=2).value == 0
