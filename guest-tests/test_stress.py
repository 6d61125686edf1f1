"""Racing vCPUs, short (issue 12): `make stress` runs the same at volume with 4
and 8 vCPUs. Three vCPUs signal one flag of the fourth at once, by
SignalEventDirect and by SignalEvent through a port, while the target toggles
the flag's neighbour bit; between batches it masks its SINT or turns SCONTROL
off, and every call must then fail with nothing set or delivered."""

from __future__ import annotations

import pytest

from orchestrator.accel import Accel
from orchestrator.expect import direct_reaches_qemu
from orchestrator.stress import STATE_CYCLE, run_batches
from orchestrator.vm import Vm

pytestmark = [
    pytest.mark.vm,
    # Its own 4-vCPU guest, so not picked for the KVM leg by the plugin
    pytest.mark.kvm_leg,
    pytest.mark.hyperv,
    pytest.mark.vm_options(cpus=4, boot_timeout=300.0),
    pytest.mark.contract_rows("D6", "D7", "E6", "E7"),
]

ROUNDS, CALLS_PER_ROUND = 100, 5


def test_racing_vcpus_lose_and_double_no_signal(module_vm: Vm, accel: Accel) -> None:
    # Two turns of the state cycle per call kind: 4 enabled batches in all.
    signals = 4 * ROUNDS * CALLS_PER_ROUND * (module_vm.options.cpus - 1)
    report = run_batches(module_vm, signals, ROUNDS, CALLS_PER_ROUND)
    assert report.problems() == []
    kinds_and_states = {(b.kind, b.state) for b in report.batches}
    assert kinds_and_states == {(k, s) for k in ("direct", "port") for s in STATE_CYCLE}
    due = [b for b in report.batches if b.signals_due]
    assert report.transitions == report.irqs == sum(b.rounds for b in due)
    # Three callers each round: every round that was due is a contested one.
    assert report.contested == sum(b.rounds for b in due)
    assert report.newly == sum(b.rounds for b in due if b.kind == "direct")
    assert (report.lost, report.doubled) == (0, 0)
    # Where a stock KVM answers SignalEventDirect itself, it refuses every
    # call in every state; QEMU (TCG, KVM_MODULES=patched) takes the enabled ones.
    direct = [b for b in report.batches if b.kind == "direct"]
    kernel = accel.is_kvm and not direct_reaches_qemu(accel)
    assert all((b.kernel_answer is not None) == kernel for b in direct)
    assert any(b.signals_due for b in direct) != kernel
