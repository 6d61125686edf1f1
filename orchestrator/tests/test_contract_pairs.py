"""ordered_pairs: the two-rule tables' pairs, in the contract's order."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from orchestrator.contract import load, ordered_pairs


@dataclass(frozen=True)
class Fault:
    row_id: str


def test_every_pair_once_the_earlier_row_first_less_the_incompatible() -> None:
    faults = [Fault("C1"), Fault("C3"), Fault("C4"), Fault("D1")]
    pairs = ordered_pairs(faults, {("C3", "C4")}, load())
    assert [(a.row_id, b.row_id) for a, b in pairs] == [
        ("C1", "C3"), ("C1", "C4"), ("C1", "D1"), ("C3", "D1"), ("C4", "D1"),
    ]  # fmt: skip


def test_a_table_out_of_the_contracts_order_is_refused() -> None:
    with pytest.raises(ValueError, match="contract's order"):
        ordered_pairs([Fault("D2"), Fault("D1")], set(), load())
