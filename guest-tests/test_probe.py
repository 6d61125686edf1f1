"""The in-guest probe (guest-tests/probe) against the QEMU of today.

Today's QEMU has no Hyper-V under TCG: HV MSR writes neither fault nor
store, and VMCALL/VMMCALL raise #UD. These tests check what the probe does
that is true regardless: it runs on the CPU asked for, reports #GP and #UD
instead of crashing, places hypercall buffers where asked, owns readable
SynIC pages, and counts interrupts exactly. Where a check only holds while
no Hyper-V interface is advertised, it skips once one is.
"""

from __future__ import annotations

import json
import time

import pytest

from orchestrator.artifacts import prebuilt_probe
from orchestrator.errors import HarnessError
from orchestrator.probe import Insn, PagePlacement, Probe
from orchestrator.ssh import Guest
from orchestrator.synic_pages import decode_sief_page
from orchestrator.vm import Vm

pytestmark = pytest.mark.vm

MSR_APIC_BASE = 0x1B
MSR_PKRS = 0x6E1
MSR_X2APIC_ID = 0x802
MSR_TSC_AUX = 0xC0000103
MSR_VM_HSAVE_PA = 0xC0010117
APIC_BASE_BSP = 1 << 8
APIC_BASE_ENABLE = 1 << 11
XAPIC_BASE = 0xFEE00000
UD = 6
OUT_FILL = b"\xaa"  # the CLI's default fill of the output area
NO_SUCH_CPU = 4096


@pytest.fixture(scope="module")
def probe(vm: Vm) -> Probe:
    return Probe(vm.guest)


@pytest.fixture(scope="module")
def cpus(vm: Vm) -> range:
    return range(vm.options.cpus)


def cpuinfo_field(guest: Guest, name: str) -> dict[int, str]:
    """One /proc/cpuinfo field for every processor."""
    values: dict[int, str] = {}
    processor = -1
    for line in guest.run("cat /proc/cpuinfo", check=True).out.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "processor":
            processor = int(value)
        elif key == name:
            values[processor] = value
    return values


def hyperv_advertised(probe: Probe) -> bool:
    if not probe.cpuid(1).ecx >> 31 & 1:
        return False
    return probe.cpuid(0x40000000).text("ebx", "ecx", "edx") == "Microsoft Hv"


def skip_if_hyperv(probe: Probe) -> None:
    if hyperv_advertised(probe):
        pytest.skip("Hyper-V is advertised: hypercall results belong to the conformance tests")


def kernel_log(guest: Guest) -> str:
    return guest.run("dmesg", check=True).out


def test_the_image_loads_the_module_at_boot(vm: Vm, probe: Probe, cpus: range) -> None:
    assert vm.image is not None
    if prebuilt_probe(vm.image.kernel_release) is not None:
        # A kernel the image built no module for (GUEST_KERNEL=7.2): the
        # probe copies in the one `make kvm-modules` built, at first use
        probe.info()
    modules = vm.guest.run("cat /proc/modules", check=True).out.splitlines()
    assert [line.split()[0] for line in modules].count("hvprobe") == 1
    assert vm.guest.run("test -c /dev/hvprobe").rc == 0
    info = probe.info()
    assert info.abi == 7
    assert info.online_cpus == tuple(cpus)
    assert "__common_interrupt" in info.irq_probes


def test_cpuid_leaf_0_names_the_vendor_proc_cpuinfo_names(vm: Vm, probe: Probe) -> None:
    leaf0 = probe.cpuid(0)
    assert leaf0.text("ebx", "edx", "ecx") == cpuinfo_field(vm.guest, "vendor_id")[0]
    assert leaf0.eax >= 1


def test_cpuid_runs_on_the_cpu_asked_for(vm: Vm, probe: Probe, cpus: range) -> None:
    apic_ids = cpuinfo_field(vm.guest, "apicid")
    for cpu in cpus:
        initial_apic_id = probe.cpuid(1, cpu=cpu).ebx >> 24
        assert initial_apic_id == cpu == int(apic_ids[cpu])


def test_cpuid_passes_the_subleaf(probe: Probe, cpus: range) -> None:
    if probe.cpuid(0).eax < 0xB:
        pytest.skip("no CPUID leaf 0xB on this CPU model")
    for cpu in cpus:
        for subleaf in (0, 1):
            topology = probe.cpuid(0xB, subleaf, cpu=cpu)
            assert topology.ecx & 0xFF == subleaf  # leaf 0xB echoes the subleaf
            assert topology.edx == cpu  # and gives the x2APIC id


def test_apic_base_is_enabled_at_fee00000_and_bsp_only_on_cpu_0(probe: Probe, cpus: range) -> None:
    for cpu in cpus:
        apic_base = probe.rdmsr(MSR_APIC_BASE, cpu=cpu)
        assert not apic_base.gp
        assert apic_base.value & APIC_BASE_ENABLE
        assert apic_base.value & ~0xFFF == XAPIC_BASE
        assert bool(apic_base.value & APIC_BASE_BSP) == (cpu == 0)


def test_rdmsr_reads_the_value_linux_put_on_that_cpu(probe: Probe, cpus: range) -> None:
    # Linux writes each CPU's number into TSC_AUX (for RDTSCP/RDPID).
    for cpu in cpus:
        tsc_aux = probe.rdmsr(MSR_TSC_AUX, cpu=cpu)
        assert not tsc_aux.gp
        assert tsc_aux.value & 0xFFF == cpu


def test_wrmsr_writes_only_the_cpu_asked_for(probe: Probe) -> None:
    # PKRS: TCG stores it, and Linux 6.1 does not use it.
    before = {cpu: probe.rdmsr(MSR_PKRS, cpu=cpu).value for cpu in (0, 1)}
    try:
        written = probe.wrmsr(MSR_PKRS, before[1] ^ 0x5, cpu=1)
        assert not written.gp
        assert probe.rdmsr(MSR_PKRS, cpu=1).value == before[1] ^ 0x5
        assert probe.rdmsr(MSR_PKRS, cpu=0).value == before[0]
    finally:
        probe.wrmsr(MSR_PKRS, before[1], cpu=1)
    assert probe.rdmsr(MSR_PKRS, cpu=1).value == before[1]


def test_msr_accesses_that_fault_report_gp_and_change_nothing(vm: Vm, probe: Probe) -> None:
    before = probe.rdmsr(MSR_PKRS, cpu=1).value
    assert probe.wrmsr(MSR_PKRS, 1 << 32, cpu=1).gp  # reserved bits: #GP in TCG
    assert probe.rdmsr(MSR_PKRS, cpu=1).value == before
    assert probe.wrmsr(MSR_VM_HSAVE_PA, 0x1).gp  # not page-aligned: #GP in TCG
    # x2APIC MSRs fault unless the APIC is in x2APIC mode.
    x2apic_id = probe.rdmsr(MSR_X2APIC_ID, cpu=1)
    assert x2apic_id.gp == (not probe.info().x2apic)
    assert x2apic_id.value == (0 if x2apic_id.gp else 1)
    assert vm.guest.run("echo alive").out == "alive\n"


@pytest.mark.parametrize("insn", ["vmcall", "vmmcall"])
def test_a_kernel_mode_hypercall_is_ud_and_the_guest_goes_on(
    vm: Vm, probe: Probe, cpus: range, insn: Insn
) -> None:
    skip_if_hyperv(probe)
    for cpu in cpus:
        result = probe.hypercall(0xC0, cpu=cpu, insn=insn, input=bytes(16))
        assert (result.mode, result.cpu, result.ud, result.trap) == ("kernel", cpu, True, UD)
        assert result.rax is None and result.status is None
        assert result.output == OUT_FILL * 64  # nothing was written
    log = kernel_log(vm.guest)
    assert "invalid opcode" not in log and "Oops" not in log
    assert probe.cpuid(0).eax >= 1


def test_repeat_runs_the_call_n_times_and_times_them(vm: Vm, probe: Probe) -> None:
    skip_if_hyperv(probe)
    reply = probe.call("hypercall", "--cpu", 1, "--control", "0xc0", "--repeat", 50)
    assert (reply["cpu"], reply["ud"], reply["repeat"]) == (1, True, 50)
    assert reply["elapsed_ns"] > 0
    single = probe.call("hypercall", "--cpu", 1, "--control", "0xc0")
    assert "repeat" not in single and "elapsed_ns" not in single
    log = kernel_log(vm.guest)
    assert "invalid opcode" not in log and "Oops" not in log


@pytest.mark.parametrize("insn", ["vmcall", "vmmcall"])
def test_a_user_mode_hypercall_is_ud(probe: Probe, insn: Insn) -> None:
    result = probe.hypercall(0xC0, user=True, insn=insn)
    assert (result.mode, result.ud, result.trap, result.signal) == ("user", True, UD, "SIGILL")
    assert result.rax is None


def test_the_fast_form_loads_rdx_r8_and_xmm_and_reads_xmm_back(probe: Probe) -> None:
    skip_if_hyperv(probe)
    block = bytes(range(0x10, 0x20))
    xmm = (b"\x01", *(bytes([n]) * 16 for n in range(2, 7)))
    result = probe.hypercall(0x100C0, cpu=1, fast=True, input=block, xmm=xmm)
    assert result.rdx == int.from_bytes(block[:8], "little")
    assert result.r8 == int.from_bytes(block[8:], "little")
    assert result.ud
    # A #UD changes no register: XMM0..5 read back are those loaded.
    assert result.xmm == (b"\x01" + bytes(15), *xmm[1:])
    assert result.xmm0 == b"\x01" + bytes(15)


def test_hypercall_buffers_sit_at_the_offsets_asked_for(vm: Vm, probe: Probe) -> None:
    buffer = probe.pages(1).buffer_gpa
    data = bytes(range(1, 17))
    result = probe.hypercall(
        0xC0, cpu=1, input=data, in_offset=4088, out_offset=12280, out_len=16, out_fill=0x5A
    )
    assert (result.rdx, result.r8) == (buffer + 4088, buffer + 12280)
    assert result.output_gpa == result.r8
    assert result.output == b"\x5a" * 16
    # The host sees the same bytes there; the input crosses into the next page.
    assert vm.qmp.read_phys(buffer + 4088, 8) + vm.qmp.read_phys(buffer + 4096, 8) == data
    assert vm.qmp.read_phys(buffer + 12280, 16) == b"\x5a" * 16


def test_explicit_gpas_go_to_rdx_and_r8_unchanged(probe: Probe) -> None:
    buffer = probe.pages(0).buffer_gpa
    inside = probe.hypercall(0xC0, in_gpa=0x123, out_gpa=buffer + 8200, out_len=8)
    assert (inside.rdx, inside.r8) == (0x123, buffer + 8200)
    assert (inside.output_gpa, inside.output) == (buffer + 8200, OUT_FILL * 8)
    outside = probe.hypercall(0xC0, out_gpa=1 << 40)
    assert outside.r8 == 1 << 40
    assert (outside.output_gpa, outside.output) == (None, b"")


def test_the_hypercall_page_form_needs_the_kernels_page(probe: Probe) -> None:
    if probe.info().hypercall_page:
        assert not probe.hypercall(0, insn="page").ud
        return
    with pytest.raises(HarnessError, match="no hypercall page"):
        probe.hypercall(0, insn="page")


def test_synic_setup_makes_zeroed_pages_the_host_can_read(vm: Vm, probe: Probe) -> None:
    state = probe.synic_setup(1)
    try:
        assert state.sief_gpa % 4096 == 0 and state.sim_gpa % 4096 == 0
        assert state.sief_gpa != state.sim_gpa
        assert (state.scontrol, state.siefp, state.simp) == (
            1,
            state.sief_gpa | 1,
            state.sim_gpa | 1,
        )
        assert state.faults == frozenset()
        pages = probe.pages(1)
        assert pages.synic and (pages.sief_gpa, pages.sim_gpa) == (state.sief_gpa, state.sim_gpa)
        for sint in (0, 7, 15):
            assert probe.sief(1, sint) == bytes(256)
            assert probe.sim(1, sint, clear=True) == bytes(256)
        assert decode_sief_page(vm.qmp.read_phys(state.sief_gpa, 4096)) == {
            sint: frozenset() for sint in range(16)
        }
        assert vm.qmp.read_phys(state.sim_gpa, 4096) == bytes(4096)
    finally:
        down = probe.synic_teardown(1)
    assert down.faults == frozenset()
    assert not probe.pages(1).synic
    with pytest.raises(HarnessError, match="synic-setup first"):
        probe.sief(1, 0)


def test_synic_setup_refuses_pages_the_kernel_owns(probe: Probe) -> None:
    # 16 MiB is the kernel's RAM in every guest here: no memmap= keeps it free
    in_use = PagePlacement(sief_gpa=0x1000000, sim_gpa=0x1001000)
    with pytest.raises(HarnessError, match="pages the kernel does not own"):
        probe.synic_setup(1, at=in_use)
    assert not probe.pages(1).synic, "nothing was left set up"
    unaligned = PagePlacement(sief_gpa=0x12FFFF008, sim_gpa=0x12FFFE000)
    with pytest.raises(HarnessError, match="pages the kernel does not own"):
        probe.synic_setup(1, at=unaligned)


def test_synic_setup_can_leave_each_register_disabled(probe: Probe) -> None:
    try:
        state = probe.synic_setup(0, scontrol=False, sief=False, sim=False)
        assert (state.scontrol, state.siefp, state.simp) == (0, state.sief_gpa, state.sim_gpa)
        assert probe.pages(0).synic
    finally:
        probe.synic_teardown(0)


def test_sint_values_are_the_vector_and_the_bits_asked_for(probe: Probe) -> None:
    try:
        assert probe.sint(1, 2, 0x50).value == 0x50
        both = probe.sint(1, 2, 0x51, masked=True, auto_eoi=True, polling=True)
        assert both.value == 0x70051
        assert probe.sint_raw(1, 3, 0x10000).value == 0x10000
        assert not both.gp
    finally:
        probe.sint_raw(1, 2, 0x10000)


def test_the_decoder_reads_flags_the_guest_placed_at_a_known_gpa(vm: Vm, probe: Probe) -> None:
    flags = {0, 9, 1000, 2047}
    slot = bytearray(256)
    for n in flags:
        slot[n // 8] |= 1 << (n % 8)
    # Call code 0 is no hypercall; the probe leaves its buffer filled afterwards.
    probe.hypercall(0, cpu=0, input=bytes(slot), in_offset=3 * 256)
    page = vm.qmp.read_phys(probe.pages(0).buffer_gpa, 4096)
    assert decode_sief_page(page) == {
        sint: frozenset(flags if sint == 3 else ()) for sint in range(16)
    }


def wait_for_count(probe: Probe, cpu: int, vector: int, target: int) -> int:
    deadline = time.monotonic() + 5
    count = probe.irqs(cpu, vector)
    while count < target and time.monotonic() < deadline:
        time.sleep(0.1)
        count = probe.irqs(cpu, vector)
    return count


@pytest.mark.parametrize(("sender", "target", "vector"), [(0, 0, 0xE0), (0, 1, 0xE1), (1, 0, 0xE2)])
def test_an_ipi_with_an_unowned_vector_is_counted_once_on_its_target(
    vm: Vm, probe: Probe, cpus: range, sender: int, target: int, vector: int
) -> None:
    before = {cpu: probe.irqs(cpu, vector) for cpu in cpus}
    probe.ipi(target, vector, from_cpu=sender)
    assert wait_for_count(probe, target, vector, before[target] + 1) == before[target] + 1
    time.sleep(0.3)  # nothing more arrives
    after = {cpu: probe.irqs(cpu, vector) for cpu in cpus}
    assert after == {cpu: before[cpu] + (cpu == target) for cpu in cpus}
    # No Linux handler owns the vector; Linux says so (rate-limited).
    # (6.1 says "0.224 No irq handler for vector", 7.2 "No irq handler for 0.224")
    unowned = (
        f"{target}.{vector} No irq handler for vector",
        f"No irq handler for {target}.{vector}",
    )
    log = kernel_log(vm.guest)
    assert any(line in log for line in unowned), log[-2000:]


def test_device_interrupts_are_counted_too(probe: Probe, cpus: range) -> None:
    counts = probe.irq_counts()
    assert set(counts) == set(cpus)
    # This SSH session alone raises virtio-net interrupts on device vectors.
    assert sum(n for per_cpu in counts.values() for v, n in per_cpu.items() if v < 0xE0) > 0


def test_port_io_reads_the_host_bridge_ids_through_the_pci_config_ports(
    vm: Vm, probe: Probe
) -> None:
    ids = vm.guest.run("cd /sys/bus/pci/devices/0000:00:00.0 && cat vendor device", check=True)
    vendor, device = (int(text, 16) for text in ids.out.split())
    probe.outl(0xCF8, 0x80000000)  # configuration mechanism 1: bus 0, device 0, register 0
    assert probe.inl(0xCFC) == device << 16 | vendor


@pytest.mark.parametrize(
    ("args", "rc"),
    [
        ("sint --cpu 0 --sint 16 --vector 64", 1),
        (f"cpuid --cpu {NO_SUCH_CPU} 0", 1),
        (f"rdmsr --cpu {NO_SUCH_CPU} 0x1b", 1),
        (f"irqs --cpu {NO_SUCH_CPU}", 1),
        ("sief --cpu 0 --sint 16", 1),
        ("hypercall --control 0 --in-offset 16380 --input 0011223344556677", 1),
        ("hypercall --control 0 --out-offset 16384 --out-len 1", 1),
        ("ipi --cpu 0 --vector 31", 1),
        ("", 2),
        ("bogus", 2),
        ("cpuid", 2),
        ("wrmsr 0x10", 2),
        ("hypercall", 2),
        ("hypercall --control 1 --fast --input " + "00" * 17, 2),
        ("hypercall --control 1 --xmm 00", 2),
        ("hypercall --control 1 --repeat 0", 2),
        ("hypercall --control 1 --repeat 2 --user", 2),
        ("hypercall --control 1 --repeat 100001", 2),
        ("sint --sint 1 --vector 256", 2),
        ("sief --cpu x --sint 0", 2),
        ("outl 0x10000 1", 2),
    ],
)
def test_bad_requests_are_refused_with_one_error_object(guest: Guest, args: str, rc: int) -> None:
    result = guest.run(f"hvprobe {args}")
    assert result.rc == rc
    reply = json.loads(result.out)
    assert list(reply) == ["error"] and reply["error"]


def test_without_the_module_the_cli_exits_3_and_the_client_reloads_it(vm: Vm, probe: Probe) -> None:
    probe.synic_setup(1)  # unloading takes this down
    vm.guest.run("busybox rmmod hvprobe", check=True)
    absent = vm.guest.run("hvprobe info")
    assert absent.rc == 3
    assert "module loaded" in json.loads(absent.out)["error"]
    assert probe.info().abi == 7  # the client loaded it again
    assert not probe.pages(1).synic
    log = kernel_log(vm.guest)
    assert "leaked" not in log and "Oops" not in log
