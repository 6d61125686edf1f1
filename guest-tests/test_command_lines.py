"""Command lines that started before the series start the same way after it.

Before the series, hv-* CPU properties were accepted and ignored under TCG,
and management tools still pass them for every Windows guest. The series'
emulation is opt-in (x-hv-tcg=on): without it the guest sees no Hyper-V;
with it, the features TCG lacks are ignored with a warning, not refused."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from orchestrator.artifacts import FIRMWARE_DIRS, find_qemu
from orchestrator.command import VmOptions
from orchestrator.hvdefs import Msr
from orchestrator.probe import CpuidResult, MsrResult, Probe
from orchestrator.synic import HostSynic
from orchestrator.vm import Vm

pytestmark = [pytest.mark.vm, pytest.mark.accel("tcg")]

HV_VENDOR_LEAF = 0x40000000
# What management tools give a Windows guest, whatever the accelerator.
WINDOWS_DEFAULTS = ",".join(
    (
        "hv-relaxed,hv-vapic,hv-spinlocks=0x1fff,hv-time,hv-stimer,hv-runtime",
        "hv-vpindex,hv-synic,hv-reset,hv-frequencies",
    )
)


def hypervisor_vendor(vm: Vm) -> str:
    return Probe(vm.guest).cpuid(HV_VENDOR_LEAF).text("ebx", "ecx", "edx")


@pytest.mark.vm_options(cpu=f"max,{WINDOWS_DEFAULTS}")
def test_windows_style_hv_flags_without_opt_in_start_and_change_nothing(fresh_vm: Vm) -> None:
    # As before the series: TCG's own signature, no Hyper-V leaves, no SynIC.
    assert hypervisor_vendor(fresh_vm) == "TCGTCGTCGTCG"
    assert HostSynic(fresh_vm.qmp).state() == {}
    assert "Hyper-V" not in fresh_vm.guest.run("dmesg").out
    assert "warning" not in fresh_vm.logs.qemu.read_text()


@pytest.mark.vm_options(cpu="max,hv-passthrough")
def test_hv_passthrough_without_opt_in_starts(fresh_vm: Vm) -> None:
    assert hypervisor_vendor(fresh_vm) == "TCGTCGTCGTCG"


# Enlightenments TCG does not emulate (yet).
NOT_UNDER_TCG = ("hv-tlbflush", "hv-ipi", "hv-crash", "hv-reenlightenment")


@pytest.mark.vm_options(cpu=f"max,x-hv-tcg=on,{WINDOWS_DEFAULTS},{','.join(NOT_UNDER_TCG)}")
def test_opt_in_ignores_what_tcg_lacks_with_one_warning(fresh_vm: Vm) -> None:
    assert hypervisor_vendor(fresh_vm) == "Microsoft Hv"
    assert sorted(HostSynic(fresh_vm.qmp).state()) == [0, 1]
    warnings = [line for line in fresh_vm.logs.qemu.read_text().splitlines() if "warning" in line]
    assert len(warnings) == 1, warnings
    for ignored in NOT_UNDER_TCG:
        assert ignored in warnings[0]
    for kept in WINDOWS_DEFAULTS.split(","):
        assert kept.split("=")[0] not in warnings[0]


# vmbus-bridge warns at start when the guest lacks what VMBus guests want.
VMBUS_WARNING = "VMBus enabled without the recommended set of Hyper-V features"
VMBUS_CPU = "max,x-hv-tcg=on,hv-relaxed,hv-vpindex,hv-synic,hv-time"
VMBUS_RECOMMENDED = ("hv-stimer", "hv-vapic", "hv-runtime")


def vmbus_warnings(vm: Vm) -> list[str]:
    return [line for line in vm.logs.qemu.read_text().splitlines() if VMBUS_WARNING in line]


@pytest.mark.vm_options(
    cpu=",".join((VMBUS_CPU, *VMBUS_RECOMMENDED)), extra_args=("-device", "vmbus-bridge")
)
def test_vmbus_with_the_recommended_features_does_not_warn(fresh_vm: Vm) -> None:
    assert hypervisor_vendor(fresh_vm) == "Microsoft Hv"
    assert vmbus_warnings(fresh_vm) == []


@pytest.mark.vm_options(
    cpu=",".join((VMBUS_CPU, "hv-stimer", "hv-vapic")), extra_args=("-device", "vmbus-bridge")
)
def test_vmbus_without_hv_runtime_warns_once(fresh_vm: Vm) -> None:
    assert hypervisor_vendor(fresh_vm) == "Microsoft Hv"
    assert len(vmbus_warnings(fresh_vm)) == 1


# Every hv-* flag TCG emulates, spelled out.
EVERY_TCG_FLAG = (
    "max,x-hv-tcg=on,hv-relaxed,hv-vpindex,hv-synic,hv-time,hv-stimer,hv-stimer-direct,"
    "hv-vapic,hv-runtime,hv-frequencies,hv-reset,hv-xmm-input"
)
HV_LEAVES = range(0x40000000, 0x40000006)


def hyperv_leaves(vm: Vm) -> dict[int, tuple[int, int, int, int]]:
    probe = Probe(vm.guest)
    results = {leaf: probe.cpuid(leaf) for leaf in HV_LEAVES}
    return {leaf: (r.eax, r.ebx, r.ecx, r.edx) for leaf, r in results.items()}


def test_hv_passthrough_with_opt_in_is_every_flag_tcg_emulates(tmp_path: Path) -> None:
    """As under KVM, where it means every enlightenment the host offers: the
    guest sees what the flags spelled out give it, and QEMU warns of none."""
    with Vm(tmp_path / "spelled-out", VmOptions(cpu=EVERY_TCG_FLAG)) as spelled:
        expected = hyperv_leaves(spelled)
    with Vm(tmp_path / "passthrough", VmOptions(cpu="max,x-hv-tcg=on,hv-passthrough")) as vm:
        assert hypervisor_vendor(vm) == "Microsoft Hv"
        assert hyperv_leaves(vm) == expected
        assert sorted(HostSynic(vm.qmp).state()) == [0, 1]
        clocksource = vm.guest.run(
            "cat /sys/devices/system/clocksource/clocksource0/current_clocksource", check=True
        ).out.strip()
        assert clocksource == "hyperv_clocksource_tsc_page"
        assert "warning" not in vm.logs.qemu.read_text()


# The command lines that start on the base: qemu-patches/base-command-lines,
# which `make check-series` also starts at every patch.
BASE_COMMAND_LINES = Path(__file__).resolve().parents[1] / "qemu-patches" / "base-command-lines"


def base_command_lines() -> list[list[str]]:
    lines = BASE_COMMAND_LINES.read_text().splitlines()
    return [line.split() for line in lines if line.strip() and not line.startswith("#")]


def start_and_quit(binary: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    """QEMU with `args`, stopped before the guest runs, told to quit over QMP."""
    firmware = [arg for path in FIRMWARE_DIRS for arg in ("-L", str(path))]
    return subprocess.run(
        [str(binary), "-display", "none", "-nodefaults", "-S", "-qmp", "stdio", *firmware, *args],
        input='{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n',
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("args", base_command_lines(), ids=" ".join)
def test_what_started_on_the_base_starts_on_ours(args: list[str]) -> None:
    stock = start_and_quit(find_qemu(stock=True).binary, args)
    assert stock.returncode == 0, stock.stderr  # the set is what the base starts
    ours = start_and_quit(find_qemu().binary, args)
    assert ours.returncode == 0, ours.stderr
    assert '"return": {}' in ours.stdout


# Leaves 0x40000000 on, as far as KVM's 0x4000000A, and every Hyper-V MSR the
# harness knows: on the base TCG answers them as it does any leaf and MSR it
# does not know; so must ours without x-hv-tcg=on.
ALL_HV_LEAVES = range(0x40000000, 0x4000000B)
USERS_MACHINES = ("pc-q35-10.2", "pc-i440fx-9.2")


def guest_view(vm: Vm) -> tuple[list[CpuidResult], list[MsrResult]]:
    probe = Probe(vm.guest)
    leaves = [probe.cpuid(leaf, cpu=cpu) for cpu in (0, 1) for leaf in ALL_HV_LEAVES]
    msrs = [probe.rdmsr(msr) for msr in Msr]
    return leaves, msrs


@pytest.mark.parametrize("machine", USERS_MACHINES)
def test_an_existing_machine_types_guest_sees_what_it_saw_on_the_base(
    tmp_path: Path, machine: str
) -> None:
    options = VmOptions(cpu=f"max,{WINDOWS_DEFAULTS}", machine=machine)
    views = {}
    for name, stock in (("stock", True), ("ours", False)):
        with Vm(tmp_path / name, options, name=name, stock_qemu=stock) as vm:
            views[name] = guest_view(vm)
    leaves, msrs = views["ours"]
    assert leaves[0].text("ebx", "ecx", "edx") == "TCGTCGTCGTCG"
    # (TCG reads an MSR it does not know as 0, without #GP, on the base too)
    assert {(msr.value, msr.gp) for msr in msrs} == {(0, False)}
    assert views["ours"] == views["stock"]
