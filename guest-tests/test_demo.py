"""`make demo`'s story, checked against the Hyper-V guest: what it shows is
what the contract says, and the text it prints tells the same."""

from __future__ import annotations

import re

import pytest

from orchestrator.demo import ERROR_CASES, Demo, Step
from orchestrator.expect import direct_reaches_qemu
from orchestrator.ports import HostPorts
from orchestrator.vm import Vm

pytestmark = pytest.mark.vm


def cells(step: Step) -> tuple[str, str, str, str, int]:
    return (step.status, step.newly, step.guest_flag, step.host_flag, step.interrupts)


def test_demo_shows_new_then_set_then_new_again_a_port_signal_and_every_error_row_ok(
    hv_vm: Vm,
) -> None:
    report = Demo(hv_vm).run()

    labels = [step.label for step in report.direct]
    assert labels == [
        "first call",
        "second call (already set)",
        "third call (guest cleared the flag)",
    ]
    if hv_vm.accel is not None and not direct_reaches_qemu(hv_vm.accel):
        # A stock KVM answers 0x00C0 in the kernel: nothing set, no interrupt.
        stock = ("INVALID_HYPERCALL_CODE", "-", "clear", "clear", 0)
        assert [cells(step) for step in report.direct] == [stock] * 3
    else:
        assert [cells(step) for step in report.direct] == [
            ("SUCCESS", "1", "set", "set", 1),
            ("SUCCESS", "0", "set", "set", 0),
            ("SUCCESS", "1", "set", "set", 1),
        ]
    # SignalEvent through the port: SIEF bit base + FlagNumber.
    assert report.port is not None, report.no_ports
    assert report.port.port.bit(report.port.flag) == 105
    assert [cells(step) for step in report.port.steps] == [
        ("SUCCESS", "-", "set", "set", 1),
        ("SUCCESS", "-", "set", "set", 0),
    ]
    assert HostPorts(hv_vm.qmp).table().ports == {}, "the demo removes its port"
    assert [row.row_id for row in report.errors] == [case.row_id for case in ERROR_CASES]
    assert [row for row in report.errors if not row.ok] == []

    # The text says the same: the step tables and the error table
    table = {
        parts[0]: parts[1:]
        for line in report.lines()
        if line.strip() and (parts := re.split(r"\s{2,}", line.strip()))
    }
    assert table["first call"] == [*cells(report.direct[0])[:4], f"+{report.direct[0].interrupts}"]
    assert any("sets SIEF bit 100 + 5 = 105" in line for line in report.lines())
    for row in report.errors:
        assert table[row.row_id][-1] == "ok", table[row.row_id]
