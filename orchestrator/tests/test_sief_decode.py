"""Host-side parts of orchestrator.probe: SIEF decoding and the client's parsing (no VM)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.errors import HarnessError
from orchestrator.probe import HypercallArgs, Probe
from orchestrator.ssh import CommandResult
from orchestrator.synic_pages import SimMessage, decode_sief_page, slot_flags


def page_with(flags: dict[int, list[int]]) -> bytes:
    page = bytearray(4096)
    for sint, numbers in flags.items():
        for n in numbers:
            page[sint * 256 + n // 8] |= 1 << (n % 8)
    return bytes(page)


def test_an_empty_page_has_no_flags_in_any_sint() -> None:
    decoded = decode_sief_page(bytes(4096))
    assert decoded == {sint: frozenset() for sint in range(16)}


def test_flags_land_in_their_sint_with_their_number() -> None:
    wanted = {0: [0], 1: [7, 8], 5: [9, 255, 256, 1000], 15: [2047]}
    decoded = decode_sief_page(page_with(wanted))
    assert {s: f for s, f in decoded.items() if f} == {s: frozenset(n) for s, n in wanted.items()}


def test_flag_n_is_bit_n_mod_8_of_byte_n_div_8() -> None:
    page = bytearray(4096)
    page[3 * 256 + 2] = 0b1000_0001  # slot 3, byte 2: flags 16 and 23
    page[3 * 256 + 255] = 0x80  # the last flag of slot 3
    page[4 * 256] = 0x01  # the first flag of slot 4, not of slot 3
    decoded = decode_sief_page(bytes(page))
    assert decoded[3] == {16, 23, 2047}
    assert decoded[4] == {0}


def test_every_flag_of_a_full_slot_is_seen() -> None:
    assert slot_flags(b"\xff" * 256) == frozenset(range(2048))


@pytest.mark.parametrize("size", [0, 4095, 4097, 8192])
def test_a_page_of_the_wrong_size_is_refused(size: int) -> None:
    with pytest.raises(HarnessError, match="4096 bytes"):
        decode_sief_page(bytes(size))


def test_sim_header_fields() -> None:
    slot = (0x80000001).to_bytes(4, "little") + bytes([24, 1, 0, 0]) + bytes(8) + b"x" * 240
    message = SimMessage.from_slot(slot)
    assert (message.message_type, message.payload_size, message.message_flags) == (
        0x80000001,
        24,
        1,
    )
    assert message.payload == b"x" * 240


@dataclass
class FakeGuest:
    """Answers commands from a script of (rc, stdout) and records them."""

    replies: list[tuple[int, str]]
    commands_log: Path = Path("/nonexistent/commands.log")
    commands: list[str] = field(default_factory=list)

    def run(self, command: str, timeout: float = 120.0, check: bool = False) -> CommandResult:
        self.commands.append(command)
        rc, out = self.replies.pop(0)
        return CommandResult(command, rc, out, "", 0.0)


MSR_REPLY = json.dumps({"cpu": 1, "msr": 27, "value": 0xFEE00800, "gp": False})


def test_a_reply_becomes_a_dataclass_and_the_command_is_quoted() -> None:
    guest = FakeGuest([(0, MSR_REPLY)])
    result = Probe(guest).rdmsr(0x1B, cpu=1)
    assert (result.cpu, result.msr, result.value, result.gp) == (1, 0x1B, 0xFEE00800, False)
    assert guest.commands == ["/usr/local/bin/hvprobe rdmsr --cpu 1 0x1b"]


def test_a_missing_module_is_loaded_once_then_the_call_retried() -> None:
    missing = json.dumps({"error": "/dev/hvprobe: No such file or directory"})
    guest = FakeGuest([(3, missing), (0, ""), (0, MSR_REPLY)])
    assert Probe(guest).rdmsr(0x1B, cpu=1).value == 0xFEE00800
    assert guest.commands[1] == "busybox modprobe hvprobe"
    assert guest.commands[0] == guest.commands[2]


def test_an_error_reply_is_a_one_line_harness_error() -> None:
    guest = FakeGuest([(1, json.dumps({"error": "sint: Invalid argument"}))])
    with pytest.raises(HarnessError) as caught:
        Probe(guest).sint(0, 16, 0x40)
    assert "hvprobe sint failed (rc 1): sint: Invalid argument" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_output_that_is_not_json_is_a_harness_error() -> None:
    guest = FakeGuest([(127, "sh: hvprobe: not found\n")])
    with pytest.raises(HarnessError, match="printed no JSON object"):
        Probe(guest).info()


def test_json_missing_a_field_is_a_harness_error() -> None:
    guest = FakeGuest([(0, json.dumps({"cpu": 0, "msr": 27}))])
    with pytest.raises(HarnessError, match="unexpected JSON"):
        Probe(guest).rdmsr(0x1B)


def test_a_faulted_hypercall_has_no_status() -> None:
    reply = {
        "cpu": 0,
        "mode": "kernel",
        "insn": "vmcall",
        "control": 0x100C0,
        "fast": True,
        "rdx": 1,
        "r8": 2,
        "ud": True,
        "trap": 6,
        "signal": None,
        "rax": None,
        "status": None,
        "reps_completed": None,
        "output_gpa": None,
        "output": None,
        "xmm": ["01" + "00" * 15] + ["00" * 16] * 5,
    }
    result = Probe(FakeGuest([(0, json.dumps(reply))])).hypercall(0x100C0, fast=True)
    assert result.ud and result.trap == 6
    assert result.rax is None and result.status is None
    assert result.output == b""
    assert result.xmm0 == b"\x01" + bytes(15)


def test_hypercall_arguments_become_cli_options() -> None:
    args = HypercallArgs(
        0xC0, cpu=1, input=b"\x01\xff", in_offset=4088, out_gpa=0x1000, xmm=(b"\xaa",)
    )
    assert args.argv() == [
        "--cpu", "1", "--control", "0xc0", "--insn", "native", "--input", "01ff",
        "--in-offset", "4088", "--out-gpa", "4096", "--xmm", "aa",
    ]  # fmt: skip
