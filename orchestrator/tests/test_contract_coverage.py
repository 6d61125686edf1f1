"""The contract coverage check judges what ran: rows shown by passing tests,
files judged only when all their tests passed."""

from __future__ import annotations

from pathlib import Path

from orchestrator.contract import load
from orchestrator.contract_coverage import ROW_IN_ID, Coverage, narrowed_files

DIRECT = "guest-tests/test_signal_event_direct.py"
PORTS = "guest-tests/test_signal_event_ports.py"


def ids_in(names: list[str]) -> list[str | None]:
    return [match[1] if (match := ROW_IN_ID.match(name)) else None for name in names]


def test_row_ids_are_read_from_parameter_ids() -> None:
    assert ids_in(["D5-vp-2", "C1+D3", "E4", "to-vp1", "D12-x", "self"]) == [
        "D5", "C1", "E4", None, "D12", None,
    ]  # fmt: skip


def everything_shown(coverage: Coverage) -> None:
    for row in load():
        coverage.passed(f"{row.tested}::test_x[{row.id}-case]", [row.id])


def test_a_full_run_showing_every_row_misses_none() -> None:
    coverage = Coverage()
    everything_shown(coverage)
    assert coverage.missing(load()) == []
    assert coverage.unjudged(load()) == []


def test_a_row_no_passing_test_showed_is_missing() -> None:
    coverage = Coverage()
    everything_shown(coverage)
    coverage.shown[DIRECT].discard("D5")
    assert [row.id for row in coverage.missing(load())] == ["D5"]


def test_a_file_whose_tests_did_not_all_pass_is_not_judged() -> None:
    coverage = Coverage()
    everything_shown(coverage)
    coverage.shown[PORTS].discard("E3")
    coverage.did_not_pass(f"{PORTS}::test_error_row[E3-port-deleted]")
    assert coverage.missing(load()) == []
    assert {row.id for row in coverage.unjudged(load())} == {f"E{n}" for n in range(1, 8)}


def test_a_file_that_never_ran_is_not_judged() -> None:
    coverage = Coverage()
    coverage.passed(f"{PORTS}::test_error_row[E1-x]", ["E1"])
    assert [row.id for row in coverage.missing(load())] == [f"E{n}" for n in range(2, 8)]
    assert all(row.tested == DIRECT for row in coverage.unjudged(load()))


def test_every_tested_path_in_the_contract_exists() -> None:
    root = Path(__file__).resolve().parents[2]
    for row in load():
        if row.has_guest_test:
            assert (root / row.tested).is_file(), row


def test_a_file_named_with_one_of_its_tests_did_not_run_in_full(tmp_path: Path) -> None:
    root = tmp_path
    (root / "guest-tests").mkdir()
    args = ["guest-tests/test_a.py::test_one", "guest-tests/test_b.py", "-k", "x"]
    assert narrowed_files(args, root, root) == ["guest-tests/test_a.py"]
    assert narrowed_files(["test_a.py::t"], root / "guest-tests", root) == ["guest-tests/test_a.py"]
