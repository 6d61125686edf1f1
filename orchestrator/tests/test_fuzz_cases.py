"""The fuzzer's predictions, without a guest: stable per seed, every row
reachable, and each prediction consistent with the inputs it was drawn for."""

from __future__ import annotations

from orchestrator.contract import load
from orchestrator.fuzz import (
    CPUS,
    LAYOUTS,
    USER_MODE,
    VECTORS,
    cases,
    fuzz_vm_options,
    pairs_covered,
    top_of_ram_pages,
)
from orchestrator.synic_pages import FLAGS_PER_SLOT


def test_same_seed_same_cases_other_seed_other_cases() -> None:
    assert cases(7, 50) == cases(7, 50)
    assert cases(7, 50) != cases(8, 50)


def test_every_row_but_c2_is_drawn_and_calls_from_cpl3() -> None:
    rows = {case.row_id for case in cases(1, 400)}
    assert rows == {"C1", "C3", "C4", USER_MODE} | {f"D{n}" for n in range(1, 8)} | {
        f"E{n}" for n in range(1, 8)
    }
    assert all(case.args.user for case in cases(1, 400) if case.row_id == USER_MODE)


def test_successes_target_a_live_vp_sint_and_bit() -> None:
    for case in cases(3, 400):
        if case.row_id in ("D7", "E7"):
            assert case.effect is not None
            cpu, sint, bit = case.effect
            assert cpu in CPUS and sint in VECTORS and 0 <= bit < FLAGS_PER_SLOT
        else:
            assert case.effect is None, case


def test_event_successes_land_inside_their_layouts_port() -> None:
    seen = set()
    for case in cases(5, 400, batch=50):
        if case.row_id != "E7":
            continue
        layout = LAYOUTS[case.layout]
        connection = int.from_bytes(case.args.input[:4], "little")
        flag = int.from_bytes(case.args.input[4:6], "little")
        port = layout.live[layout.connections[connection]]
        assert flag < port.flag_count
        assert case.effect == (port.vp, port.sint, port.base_flag + flag)
        seen.add((case.layout, connection))
    # Both layouts, and a connection that reaches other ports in each
    assert {layout for layout, _ in seen} == {0, 1}
    assert any(connection == 0x50 for layout, connection in seen if layout == 1)


def test_the_layout_changes_every_batch_and_each_reaches_every_event_row() -> None:
    drawn = cases(2, 800, batch=100)
    assert [case.layout for case in drawn[::100]] == [0, 1] * 4
    for index in range(len(LAYOUTS)):
        rows = {c.row_id for c in drawn if c.layout == index and c.row_id.startswith("E")}
        assert rows == {f"E{n}" for n in range(1, 8)}, (index, rows)
    # The same ids change meaning: deleted in one, live (and elsewhere) in the other
    first, second = LAYOUTS
    assert first.deleted.port_id in second.live and second.deleted.port_id in first.live
    assert first.connections.keys() - second.connections.keys()


def test_top_of_ram_pages_end_ram_above_4_gib_and_are_kept_from_the_kernel() -> None:
    pages = top_of_ram_pages(2816)
    # q35 with 2816 MiB: 2 GiB below 4 GiB, 768 MiB from 4 GiB: RAM ends at 0x130000000
    assert (pages.sief_gpa, pages.sim_gpa) == (0x12FFFF000, 0x12FFFE000)
    options = fuzz_vm_options()
    assert options.memory_mb == 2816
    assert "memmap=8K$0x12fffe000" in options.kernel_args.split()


def test_the_deciding_row_is_the_first_broken_in_the_contracts_order() -> None:
    order = [row.id for row in load()]
    for case in cases(9, 600):
        if case.row_id in ("D7", "E7", USER_MODE):
            assert case.broken == (), case
            continue
        assert case.broken[0] == case.row_id, case
        positions = [order.index(row_id) for row_id in case.broken]
        assert positions == sorted(positions), case


def test_rules_are_broken_two_at_a_time_across_both_calls() -> None:
    pairs = pairs_covered(cases(1, 2000))
    # rows checked before the call's own, and rows of one call among themselves
    assert {("C1", "D1"), ("C3", "D5"), ("C4", "D3"), ("C1", "E2"), ("C3", "E4")} <= pairs
    assert {("D1", "D5"), ("D3", "D6"), ("E1", "E2"), ("E4", "E6")} <= pairs
