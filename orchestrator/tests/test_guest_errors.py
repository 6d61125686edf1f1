from pathlib import Path

from orchestrator.guest_errors import EXPECTED, log_size, unexpected, unexpected_since

# One line per expected message, as a full `make test` logged it.
PROVOKED = [
    "hyperv: hypercall control 0x80000c0 sets reserved or nested bits",
    "hyperv: simple hypercall 0x1000000c0 with reps or a variable header",
    "hyperv: hypercall 0x5d without the privilege it needs",
    "hyperv: SignalEventDirect buffers in 0x1bff0007 out 0x1bff2000 misplaced",
    "hyperv: SignalEvent input at 0x1bff0007 misplaced",
    "hyperv: fast SignalEventDirect",
    "hyperv: SignalEventDirect to partition 0xc0290103855dbf55",
    "hyperv: SignalEventDirect with vtl 2 sint 3 flag 2047",
    "hyperv: event for VP 0x2, which does not exist",
    "hyperv: SignalEvent input 0xf346ffff00000054 sets reserved bits",
    "hyperv: SignalEvent on unknown connection 0x1d8a4e",
    "hyperv: SignalEvent connection 0x53 has no event port",
    "hyperv: SignalEvent flag 2047 past the 1 of port 0x44",
    "hyperv: SignalEvent flag 1 past the 1 of connection 0x21",
    "hyperv: SINT3 vector 15 is reserved",
]


def test_every_provoked_line_is_expected_and_each_pattern_is_used() -> None:
    assert unexpected(PROVOKED) == []
    for expected in EXPECTED:
        assert any(expected.matches(line) for line in PROVOKED), expected.pattern


def test_any_other_line_is_unexpected() -> None:
    others = [
        "Invalid read at addr 0xFEE00000, size 4, region 'apic-msi', reason: rejected",
        "hyperv: SignalEventDirect took a new path",
        "hyperv: event for VP 0x4, which does not exist, and more",
        "hyperv: fast SignalEventDirect: assertion failed",
        "hyperv-testdev: unknown command 9",
    ]
    assert unexpected([*PROVOKED, *others, ""]) == others


def test_only_lines_past_the_offset_count(tmp_path: Path) -> None:
    log = tmp_path / "guest-errors.log"
    assert log_size(log) == 0 and unexpected_since(log, 0) == []
    log.write_text("apic: earlier module\n")
    offset = log_size(log)
    with log.open("a") as more:
        more.write(f"{PROVOKED[0]}\nvirtio: this module\n")
    assert unexpected_since(log, offset) == ["virtio: this module"]
    assert unexpected_since(log, 0) == ["apic: earlier module", "virtio: this module"]
