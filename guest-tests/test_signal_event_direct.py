"""HvCallSignalEventDirect (0x00C0), row by row of orchestrator/contract.toml, from
inside a guest (the probe) and from the host (the SIEF page over QMP).

Every error row asserts its status and that nothing changed: no flag in the
target's SIEF page (guest and host view), no interrupt on either vCPU, the
output bytes as the probe left them. D7 asserts NewlySignaled, the output
bytes, the flag in both views and exactly one interrupt on the target."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import pytest

from orchestrator.accel import Accel
from orchestrator.command import HYPERV_CPU
from orchestrator.contract import HvStatus, load, ordered_pairs, row
from orchestrator.error_case import ErrorCase, unchanged
from orchestrator.error_case import State as ErrorState
from orchestrator.error_case import msr_set as target_msr_set
from orchestrator.expect import direct_reaches_qemu, expected_direct_status
from orchestrator.hvdefs import PRIVILEGE_POST_MESSAGES, PRIVILEGE_SIGNAL_EVENTS, Msr
from orchestrator.probe import HypercallArgs, HypercallResult, Probe
from orchestrator.sief_watch import SiefWatch, sief_page
from orchestrator.signal_direct import (
    ANY_VP,
    CALL_CODE,
    FAST,
    SELF_PARTITION,
    VP_INDEX_SELF,
    direct_call,
)
from orchestrator.signal_direct import direct_input as encode_input
from orchestrator.synic import HostSynic
from orchestrator.synic_pages import slot_flags
from orchestrator.vm import Vm

pytestmark = pytest.mark.vm

CALL = CALL_CODE
SCONTROL, SIEFP, SINT0 = Msr.SCONTROL, Msr.SIEFP, Msr.SINT0
TARGET, OTHER, SINT, VECTOR = 1, 0, 2, 0xE2
OUT = 8192  # the probe's default output offset in its 16 KiB buffer
FILL = 0xAA
ROWS = load()


def direct_input(
    vp: int = TARGET, sint: int = SINT, flag: int = 5, partition: int = SELF_PARTITION, vtl: int = 0
) -> bytes:
    return encode_input(vp, sint, flag, partition, vtl)


OUT_WINDOW = 16  # the 8 output bytes, then 8 that must keep the probe's fill
XMM0_FILL = bytes(range(0x30, 0x40))  # in XMM0 before a fast call, there after a failed one


def with_xmm0_fill(args: HypercallArgs) -> HypercallArgs:
    return replace(args, xmm=(XMM0_FILL,)) if args.fast else args


def assert_xmm0_kept(args: HypercallArgs, result: HypercallResult) -> None:
    if args.fast:
        assert result.xmm0 == XMM0_FILL, "a failed fast call changed XMM0"


def call(**overrides: object) -> HypercallArgs:
    return direct_call(TARGET, SINT, 5, **{"out_len": OUT_WINDOW, **overrides})


def watch(vm: Vm, probe: Probe) -> SiefWatch:
    """SINT `SINT` of the target and the other vCPU; irqs are (target, other)."""
    return SiefWatch(vm, probe, SINT, VECTOR, cpus=(TARGET, OTHER))


@pytest.fixture(scope="module")
def target(hv_vm: Vm) -> Iterator[SiefWatch]:
    synic = watch(hv_vm, Probe(hv_vm.guest))
    for cpu in (TARGET, OTHER):
        synic.setup(cpu)
    yield synic
    synic.teardown()


@pytest.fixture
def clean(target: SiefWatch) -> SiefWatch:
    target.clear(TARGET)
    target.clear(OTHER)
    return target


# --- error rows: the call, and a change of SynIC state around it ---

Case = ErrorCase[Probe]
State = ErrorState[Probe]


def msr_set(msr: int, value: int) -> State:
    return target_msr_set(msr, value, TARGET)


ERROR_CASES: list[Case] = [
    Case("C1", "rep-count", call(control=CALL | 1 << 32)),
    Case("C1", "rep-start", call(control=CALL | 1 << 48)),
    Case("C1", "var-header", call(control=CALL | 1 << 17)),
    Case("C1", "reserved-27", call(control=CALL | 1 << 27)),
    Case("C1", "reserved-44", call(control=CALL | 1 << 44)),
    Case("C1", "reserved-60", call(control=CALL | 1 << 60)),
    Case("C1", "nested", call(control=CALL | 1 << 31)),
    *[Case("C3", f"input-misaligned-{n}", call(in_offset=n)) for n in range(1, 8)],
    *[Case("C3", f"output-misaligned-{n}", call(out_offset=OUT + n)) for n in range(1, 8)],
    Case("C3", "input-crosses-page-4088", call(in_offset=4088)),
    Case("C3", "overlap", call(in_offset=OUT, out_offset=OUT + 8)),
    Case("C3", "input-in-mmio", call(in_gpa=0xFEC00000)),
    Case("C3", "input-beyond-ram", call(in_gpa=0x1000_0000_0000)),
    Case("C3", "output-in-rom", call(out_gpa=0xFFFFF000)),
    Case("C4", "fast", call(control=CALL | FAST, fast=True, input=direct_input()[:16])),
    Case("D1", "partition-0", call(input=direct_input(partition=0))),
    Case("D1", "partition-1", call(input=direct_input(partition=1))),
    Case("D1", "partition-self-minus-1", call(input=direct_input(partition=2**64 - 2))),
    Case("D2", "vtl-1", call(input=direct_input(vtl=1))),
    Case("D2", "vtl-2", call(input=direct_input(vtl=2))),
    Case("D3", "sint-16", call(input=direct_input(sint=16))),
    Case("D3", "sint-255", call(input=direct_input(sint=255))),
    Case("D4", "flag-2048", call(input=direct_input(flag=2048))),
    Case("D4", "flag-65535", call(input=direct_input(flag=65535))),
    Case("D5", "vp-2", call(input=direct_input(vp=2))),
    Case("D5", "vp-self", call(input=direct_input(vp=VP_INDEX_SELF))),
    Case("D5", "any-vp", call(input=direct_input(vp=ANY_VP))),
    Case("D6", "scontrol-disabled", call(), msr_set(SCONTROL, 0)),
    Case("D6", "siefp-disabled", call(), msr_set(SIEFP, 0)),
    Case("D6", "sint-masked", call(), msr_set(SINT0 + SINT, 1 << 16 | VECTOR)),
]


def output_as_laid_out(args: HypercallArgs) -> bytes:
    """The output area as the probe prepares it: the fill, with the input
    copied over wherever the two overlap (guest-tests/README.md)."""
    out_offset = OUT if args.out_offset is None else args.out_offset
    in_offset = 0 if args.in_offset is None else args.in_offset
    length = 8 if args.out_len is None else args.out_len
    area = bytearray([FILL] * length)
    for i, byte in enumerate(args.input):
        if out_offset <= in_offset + i < out_offset + length and args.in_gpa is None:
            area[in_offset + i - out_offset] = byte
    return bytes(area)


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in ERROR_CASES])
def test_error_row(clean: SiefWatch, accel: Accel, case: Case) -> None:
    row_id, args = case.row_id, case.args
    # A stock KVM answers 0x00C0 itself (orchestrator/expect.py): its status,
    # and still nothing changed.
    expected = expected_direct_status(accel, row(row_id, ROWS).status, args.control)
    args = with_xmm0_fill(args)
    before = clean.snapshot()
    with case.around(clean.probe):
        result = clean.probe.hypercall_with(args)
    assert not result.ud
    assert result.status == expected, f"{row_id}: got {result.status!r}, rax {result.rax!r}"
    assert_xmm0_kept(args, result)
    assert result.reps_completed == 0
    after = clean.snapshot()
    assert after == before, f"{row_id} changed the SynIC: {before} -> {after}"
    if result.output:
        assert result.output == output_as_laid_out(args), "output written on error"


# --- two rules broken at once: the row checked first decides ---


@dataclass(frozen=True)
class Fault:
    """One way to break one row's rule, made to combine with another."""

    row_id: str
    control_bits: int = 0
    fast: bool = False
    in_offset: int | None = None
    fields: tuple[tuple[str, int], ...] = ()  # direct_input() keywords
    state: State = unchanged


# One fault per row the session guest can break, in the contract's order.
FAULTS = (
    Fault("C1", control_bits=1 << 32),
    Fault("C3", in_offset=4),
    Fault("C4", fast=True),
    Fault("D1", fields=(("partition", 1),)),
    Fault("D2", fields=(("vtl", 1),)),
    Fault("D3", fields=(("sint", 16),)),
    Fault("D4", fields=(("flag", 2048),)),
    Fault("D5", fields=(("vp", 2),)),
    Fault("D6", state=msr_set(SINT0 + SINT, 1 << 16 | VECTOR)),
)
NO_FAULT = Fault("")
# A fast call has no buffers to misalign.
INCOMPATIBLE = {("C3", "C4")}
FAULT_PAIRS = ordered_pairs(FAULTS, INCOMPATIBLE, ROWS)


def both(first: Fault, second: Fault) -> tuple[HypercallArgs, State]:
    fast = first.fast or second.fast
    fields = dict(first.fields + second.fields)
    control = CALL | first.control_bits | second.control_bits | (FAST if fast else 0)
    payload = direct_input(**fields)
    in_offset = first.in_offset if first.in_offset is not None else second.in_offset
    args = call(control=control, fast=fast, input=payload[:16] if fast else payload)
    if in_offset is not None:
        args = replace(args, in_offset=in_offset)

    @contextmanager
    def around(probe: Probe) -> Iterator[None]:
        with first.state(probe), second.state(probe):
            yield

    return args, around


@pytest.mark.parametrize(
    ("first", "second"),
    [pytest.param(a, b, id=f"{a.row_id}+{b.row_id}") for a, b in FAULT_PAIRS],
)
def test_two_broken_rules_answer_the_first(
    clean: SiefWatch, accel: Accel, first: Fault, second: Fault
) -> None:
    args, state = both(first, second)
    args = with_xmm0_fill(args)
    expected = expected_direct_status(accel, row(first.row_id, ROWS).status, args.control)
    before = clean.snapshot()
    with state(clean.probe):
        result = clean.probe.hypercall_with(args)
    assert (result.ud, result.status) == (False, expected), (
        f"{first.row_id}+{second.row_id}: got {result.status!r}, rax {result.rax!r}"
    )
    assert_xmm0_kept(args, result)
    assert clean.snapshot() == before, "an error changed the SynIC"
    if result.output:
        assert result.output == output_as_laid_out(args), "output written on error"


@pytest.mark.kvm_leg  # C2 under KVM: the privilege comes from the guest's CPUID
@pytest.mark.hyperv
@pytest.mark.contract_rows("C2")
@pytest.mark.vm_options(cpu=HYPERV_CPU + ",x-hv-signal-events=off")
def test_error_row_c2_without_the_signal_events_privilege(fresh_vm: Vm, accel: Accel) -> None:
    probe = Probe(fresh_vm.guest)
    privileges = probe.cpuid(0x40000003).ebx
    assert not privileges & PRIVILEGE_SIGNAL_EVENTS
    assert privileges & PRIVILEGE_POST_MESSAGES, "only SignalEvents is withdrawn"
    synic = watch(fresh_vm, probe)
    synic.setup(TARGET)
    synic.clear(TARGET)

    before = synic.snapshot()
    args = call(input=direct_input(flag=9))
    result = probe.hypercall_with(args)
    assert result.status == expected_direct_status(accel, row("C2", ROWS).status, CALL)
    assert synic.snapshot() == before
    assert result.output == output_as_laid_out(args)
    # C1 is checked first: a malformed call keeps its own status.
    malformed = CALL | 1 << 27
    assert probe.hypercall_with(call(control=malformed)).status == expected_direct_status(
        accel, row("C1", ROWS).status, malformed
    )
    # C2 comes before every rule after it: each broken along with C2 still
    # answers ACCESS_DENIED, and changes nothing.
    for later in FAULTS[1:]:
        args, state = both(later, NO_FAULT)
        with state(probe):
            status = probe.hypercall_with(args).status
        assert status == expected_direct_status(accel, row("C2", ROWS).status, args.control), (
            f"C2+{later.row_id}: got {status!r}"
        )
    assert synic.snapshot() == before


def test_every_row_with_a_guest_test_has_cases_here() -> None:
    covered = {case.row_id for case in ERROR_CASES} | {"C2", "D7"}
    assert covered == {
        r.id for r in ROWS if r.call in ("common", "SignalEventDirect") and r.has_guest_test
    }


# --- D7: success ---


def newly_signaled(result: HypercallResult) -> int:
    assert (result.ud, result.status) == (False, HvStatus.SUCCESS), result
    assert result.output[1:8] == bytes(7), "the 7 reserved output bytes must be zero"
    if len(result.output) > 8:
        assert result.output[8:] == bytes([FILL] * (len(result.output) - 8)), "written past 8 bytes"
    return result.output[0]


@pytest.mark.contract_rows("D7")
@pytest.mark.direct_in_qemu
@pytest.mark.parametrize("caller", [TARGET, OTHER], ids=["self", "other-vcpu"])
def test_new_flag_interrupts_once_and_a_set_flag_does_not(clean: SiefWatch, caller: int) -> None:
    probe = clean.probe
    before = clean.snapshot()
    first = probe.hypercall_with(call(cpu=caller, input=direct_input(flag=9)))
    assert newly_signaled(first) == 1
    assert first.output == bytes([1]) + bytes(7) + bytes([FILL] * (OUT_WINDOW - 8))
    after = clean.snapshot()
    # Flag 9 of SINT 2 on the target, and nothing else in either vCPU's page
    assert after.guest_pages == (sief_page({SINT: {9}}), sief_page())
    assert after.host_pages == after.guest_pages
    assert after.irqs == (before.irqs[0] + 1, before.irqs[1])
    assert after.other_irqs == before.other_irqs, "an interrupt on another SINT's vector"

    second = probe.hypercall_with(call(cpu=caller, input=direct_input(flag=9)))
    assert newly_signaled(second) == 0
    assert clean.snapshot() == after

    probe.sief(TARGET, SINT, clear=True)
    third = probe.hypercall_with(call(cpu=caller, input=direct_input(flag=9)))
    assert newly_signaled(third) == 1
    assert clean.snapshot().irqs == (before.irqs[0] + 2, before.irqs[1])


@pytest.mark.direct_in_qemu
def test_polling_sint_gets_the_flag_without_an_interrupt(clean: SiefWatch) -> None:
    probe = clean.probe
    probe.sint(TARGET, SINT, VECTOR, polling=True)
    try:
        before = clean.snapshot()
        assert newly_signaled(probe.hypercall_with(call(input=direct_input(flag=3)))) == 1
        assert clean.host_page()[SINT] == {3}
        assert clean.snapshot().irqs == before.irqs
    finally:
        probe.sint(TARGET, SINT, VECTOR)


@pytest.mark.direct_in_qemu
def test_auto_eoi_sint_is_delivered_and_does_not_block_the_next(clean: SiefWatch) -> None:
    # Auto-EOI is not emulated under TCG (docs/hyperv-tcg.md): the interrupt
    # comes as a normal one, which the guest ends; two in a row both arrive.
    probe = clean.probe
    probe.sint(TARGET, SINT, VECTOR, auto_eoi=True)
    try:
        before = clean.snapshot()
        for n, flag in enumerate((20, 21), 1):
            assert newly_signaled(probe.hypercall_with(call(input=direct_input(flag=flag)))) == 1
            # The first taken before the second raises the vector again:
            # what is checked is that the first does not block the second.
            assert clean.snapshot().irqs[0] == before.irqs[0] + n
        assert clean.host_page()[SINT] == {20, 21}
        assert clean.snapshot().irqs == (before.irqs[0] + 2, before.irqs[1])
    finally:
        probe.sint(TARGET, SINT, VECTOR)


@pytest.mark.direct_in_qemu
def test_every_sint_gets_its_flag_and_its_vector(clean: SiefWatch) -> None:
    probe = clean.probe
    try:
        for sint in range(16):
            vector = 0xD0 + sint
            flag = (sint * 131) % 2048
            probe.sint(TARGET, sint, vector)
            try:
                before = probe.irqs(TARGET, vector)
                result = probe.hypercall_with(call(input=direct_input(sint=sint, flag=flag)))
                assert newly_signaled(result) == 1, f"SINT{sint}"
                assert slot_flags(probe.sief(TARGET, sint, clear=True)) == {flag}
                assert probe.irqs(TARGET, vector) == before + 1, f"SINT{sint}"
            finally:
                if sint != SINT:
                    probe.sint(TARGET, sint, vector, masked=True)
    finally:
        # SINT is the module's: its vector back whatever failed above
        probe.sint(TARGET, SINT, VECTOR)


@pytest.mark.direct_in_qemu
@pytest.mark.parametrize("flag", [0, 1, 7, 8, 255, 2047])
def test_flag_number_lands_on_its_bit(clean: SiefWatch, flag: int) -> None:
    result = clean.probe.hypercall_with(call(input=direct_input(flag=flag)))
    assert newly_signaled(result) == 1
    slot = clean.probe.sief(TARGET, SINT)
    assert slot[flag // 8] == 1 << (flag % 8)
    assert slot_flags(slot) == {flag}
    assert clean.host_page()[SINT] == {flag}


@pytest.mark.direct_in_qemu
@pytest.mark.parametrize(
    ("in_offset", "out_offset"),
    [(0, OUT), (8, OUT + 8), (4080, OUT), (0, OUT + 4088), (4096, OUT + 2048)],
    ids=["0-0", "8-8", "in-4080", "out-4088", "second-page"],
)
def test_buffers_anywhere_aligned_within_a_page(
    clean: SiefWatch, in_offset: int, out_offset: int
) -> None:
    result = clean.probe.hypercall_with(
        call(in_offset=in_offset, out_offset=out_offset, input=direct_input(flag=11))
    )
    assert newly_signaled(result) == 1
    assert clean.host_page()[SINT] == {11}


RACE_ROUNDS = 200


@pytest.mark.direct_in_qemu
@pytest.mark.parametrize("to_vp", [TARGET, OTHER], ids=["to-vp1", "to-vp0"])
def test_racing_callers_see_newly_signaled_exactly_once(clean: SiefWatch, to_vp: int) -> None:
    """Both vCPUs call at once, released together by a barrier in the probe
    module, one of them signalling itself: in every round exactly one of them
    is told NewlySignaled=1, the flag is set, and the target takes exactly one
    interrupt. A non-atomic test-and-set in QEMU gives two NewlySignaled in a
    round; a lost or doubled assertion shows in the interrupt count."""
    args = direct_call(to_vp, SINT, 33, cpu=OTHER)
    result = clean.probe.race(
        args, cpus=(TARGET, OTHER), target=to_vp, sint=SINT, flag=33, vector=VECTOR,
        rounds=RACE_ROUNDS, newly_output=True,
    )  # fmt: skip
    assert (result.errors, result.first_error) == (0, 0), result
    assert result.calls == 2 * RACE_ROUNDS
    assert (result.newly, result.bad_rounds) == (RACE_ROUNDS, 0), result
    assert (result.irqs, result.irq_timeouts) == (RACE_ROUNDS, 0), result
    assert result.flag_missing == 0, result
    assert clean.probe.sief(to_vp, SINT) == bytes(256), "the module cleared the flag last"


@pytest.mark.direct_in_qemu
@pytest.mark.parametrize("to_vp", [TARGET, OTHER], ids=["to-vp1", "to-vp0"])
def test_racing_signal_leaves_the_neighbour_bit_alone(clean: SiefWatch, to_vp: int) -> None:
    """The other vCPU signals flag 33 of `to_vp` round after round while
    `to_vp` itself sets and clears flag 32, in the same 64-bit word, with
    atomic operations. QEMU must set its flag atomically too: one that reads
    the word and writes it back undoes the guest's change in between, which
    the guest sees as its bit found not as it left it. Every round still
    answers NewlySignaled=1 with one interrupt."""
    caller = OTHER if to_vp == TARGET else TARGET
    args = direct_call(to_vp, SINT, 33, cpu=caller)
    result = clean.probe.race(
        args, cpus=(caller,), target=to_vp, sint=SINT, flag=33, vector=VECTOR,
        rounds=RACE_ROUNDS, newly_output=True, neighbour=True,
    )  # fmt: skip
    assert (result.errors, result.first_error) == (0, 0), result
    assert result.neighbour_toggles >= RACE_ROUNDS, "the target toggled in every round"
    assert result.neighbour_lost == 0, result
    assert (result.newly, result.bad_rounds) == (RACE_ROUNDS, 0), result
    assert (result.irqs, result.irq_timeouts) == (RACE_ROUNDS, 0), result
    assert clean.probe.sief(to_vp, SINT) == bytes(256), "the module cleared both bits last"


# --- the same call on every accelerator: QEMU's answer, or a stock KVM's ---


def test_direct_call_on_this_accelerator(clean: SiefWatch, accel: Accel) -> None:
    """Replaces the old test_kvm_exit_path, which skipped everywhere. Under TCG
    (or KVM_MODULES=patched) 0x00C0 reaches QEMU, and QEMU says so in x-query-synic
    (under KVM, from KVM_CAP_HYPERV_SIGNAL_EVENT_DIRECT): SUCCESS,
    NewlySignaled, the flag in both views and one interrupt. Under a stock KVM
    the kernel answers it: INVALID_HYPERCALL_CODE, no flag, no interrupt, the
    output untouched."""
    reported = {
        vp: info.signal_event_direct for vp, info in HostSynic(clean.vm.qmp).state().items()
    }
    assert set(reported.values()) == {direct_reaches_qemu(accel)}, (
        f"QEMU's x-query-synic says the call reaches it: {reported}"
    )
    before = clean.snapshot()
    args = call(input=direct_input(flag=17))
    result = clean.probe.hypercall_with(args)
    if direct_reaches_qemu(accel):
        assert newly_signaled(result) == 1
        assert clean.host_page()[SINT] == {17}
        assert 17 in slot_flags(clean.probe.sief(TARGET, SINT))
        assert clean.snapshot().irqs == (before.irqs[0] + 1, before.irqs[1])
    else:
        assert (result.ud, result.status) == (False, HvStatus.INVALID_HYPERCALL_CODE), result
        assert result.reps_completed == 0
        assert clean.snapshot() == before, "a stock KVM must not touch the SynIC"
        assert clean.host_page()[SINT] == frozenset()
        assert result.output == output_as_laid_out(args)
