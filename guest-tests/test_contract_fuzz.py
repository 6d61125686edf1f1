"""The contract fuzzer (orchestrator/fuzz.py) in a guest: random calls of
both kinds, each checked against the row of orchestrator/contract.toml that applies
first, with its effect (one bit and one interrupt) or none. Ports and
connections are deleted and re-made between batches. A fixed seed here;
`make fuzz SEED=... CASES=...` for more."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from orchestrator.errors import HarnessError
from orchestrator.fuzz import (
    LAYOUTS,
    TOP_OF_RAM_CPU,
    Fuzzer,
    Outcome,
    fuzz_vm_options,
    summary,
    top_of_ram_pages,
)
from orchestrator.probe import Probe
from orchestrator.synic import HostSynic
from orchestrator.vm import Vm

pytestmark = pytest.mark.vm

SEED, CASES = 20261121, 160
FUZZ_VM = fuzz_vm_options()


def assert_as_the_contract_says(outcomes: Sequence[Outcome], cases: int) -> None:
    assert len(outcomes) == cases
    # C2 needs a partition without the privilege: test_signal_event_*.py
    assert {o.case.row_id for o in outcomes} >= {
        *(f"C{n}" for n in (1, 3, 4)),
        *(f"D{n}" for n in range(1, 8)),
        *(f"E{n}" for n in range(1, 8)),
    }
    assert {o.case.layout for o in outcomes} == set(range(len(LAYOUTS)))
    failed = [o for o in outcomes if o.problem]
    assert not failed, "\n".join(summary(outcomes))


def test_random_calls_do_what_their_contract_row_says(hv_vm: Vm) -> None:
    outcomes = Fuzzer(hv_vm, Probe(hv_vm.guest)).fuzz(SEED, CASES, batch=40)
    assert_as_the_contract_says(outcomes, CASES)


@pytest.mark.hyperv
@pytest.mark.vm_options(memory_mb=FUZZ_VM.memory_mb, kernel_args=FUZZ_VM.kernel_args)
def test_a_vp_whose_synic_pages_end_ram_signals_and_is_signalled(fresh_vm: Vm) -> None:
    top = top_of_ram_pages(FUZZ_VM.memory_mb)
    probe = Probe(fresh_vm.guest)
    where: list[tuple[int | None, int | None]] = []

    def check_pages(done: int, total: int) -> None:
        # While the SynICs are on: the guest's pages and QEMU's SIEFP agree
        pages = probe.pages(TOP_OF_RAM_CPU)
        host = HostSynic(fresh_vm.qmp).state()[TOP_OF_RAM_CPU]
        where.append((pages.sief_gpa, host.sief_gpa))

    fuzzer = Fuzzer(fresh_vm, probe, top_of_ram=top)
    outcomes = fuzzer.fuzz(SEED + 1, 400, batch=100, progress=check_pages)
    assert where and set(where) == {(top.sief_gpa, top.sief_gpa)}
    assert_as_the_contract_says(outcomes, 400)
    # Calls from that VP and to it, both succeeding
    successes = [o.case for o in outcomes if o.case.effect is not None]
    assert any(case.effect[0] == TOP_OF_RAM_CPU for case in successes if case.effect)
    assert any(case.args.cpu == TOP_OF_RAM_CPU for case in successes)
    # Pages elsewhere are refused until the SynIC is torn down
    probe.synic_setup(TOP_OF_RAM_CPU, at=top)
    try:
        with pytest.raises(HarnessError, match="synic-teardown first"):
            probe.synic_setup(TOP_OF_RAM_CPU)
    finally:
        probe.synic_teardown(TOP_OF_RAM_CPU)
