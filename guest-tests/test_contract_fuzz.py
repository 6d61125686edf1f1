"""The contract fuzzer (orchestrator/fuzz.py) in a guest: random calls of
both kinds, each checked against the row of orchestrator/contract.toml that applies
first, with its effect (one bit and one interrupt) or none. A fixed seed
here; `make fuzz SEED=... CASES=...` for more."""

from __future__ import annotations

import pytest

from orchestrator.fuzz import Fuzzer, summary
from orchestrator.probe import Probe
from orchestrator.vm import Vm

pytestmark = pytest.mark.vm

SEED, CASES = 20261121, 160


def test_random_calls_do_what_their_contract_row_says(hv_vm: Vm) -> None:
    outcomes = Fuzzer(hv_vm, Probe(hv_vm.guest)).fuzz(SEED, CASES)
    assert len(outcomes) == CASES
    # C2 needs a partition without the privilege: test_signal_event_*.py
    assert {o.case.row_id for o in outcomes} >= {
        *(f"C{n}" for n in (1, 3, 4)),
        *(f"D{n}" for n in range(1, 8)),
        *(f"E{n}" for n in range(1, 8)),
    }
    failed = [o for o in outcomes if o.problem]
    assert not failed, "\n".join(summary(outcomes))
