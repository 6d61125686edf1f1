"""The contract fuzzer: random HvCallSignalEventDirect and HvCallSignalEvent
calls, drawn towards the edges of every row, each checked against the row of
orchestrator/contract.toml that the contract says applies first.

Both vCPUs have their SynIC on for the whole run, SINT 2 unmasked, SINT 3
unmasked in polling mode, every other SINT masked; in the fuzzer's own guest
(fuzz_vm_options) vCPU 1's SynIC pages are the last two pages of RAM. Between
batches the host deletes every port and makes the next layout's (LAYOUTS),
re-pointing or deleting connections, so the same ids change meaning.

A case passes when its status is the predicted row's and its effect is the
row's: on success exactly the one bit on the one VP and SINT, and one
interrupt unless the SINT polls; on an error, no bit and no interrupt. The
watched SIEF slots are read and cleared after every case, in the guest:
cases go there in batches (`hvprobe cases`), a few hundred per request.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace

from orchestrator.command import VmOptions
from orchestrator.contract import Row, load, row
from orchestrator.expect import direct_reaches_qemu, stock_kvm_direct_status
from orchestrator.hvdefs import FAST, Call
from orchestrator.ports import HostPorts, Port
from orchestrator.probe import HypercallArgs, HypercallResult, PagePlacement, Probe, Watch
from orchestrator.signal_direct import ANY_VP, SELF_PARTITION, VP_INDEX_SELF, direct_call
from orchestrator.signal_direct import direct_input as encode_direct
from orchestrator.signal_event import event_call
from orchestrator.synic_setup import SintSetup, synic_on
from orchestrator.vm import Vm

CPUS = (0, 1)
VECTORS = {2: 0xE2, 3: 0xE3}  # the unmasked SINTs
POLLING = {3}
WATCHED = tuple((cpu, sint) for cpu in CPUS for sint in VECTORS)
WATCH = tuple(Watch(cpu, sint, VECTORS[sint]) for cpu, sint in WATCHED)
# Control-word bits that make any call C1: rep count, rep start, a reserved bit, nested
BAD_CONTROL = (1 << 32, 1 << 48, 1 << 27, 1 << 44, 1 << 60, 1 << 31, 1 << 17)


@dataclass(frozen=True)
class PortLayout:
    """The ports and connections the host has made while a batch runs: the
    live ports, one port made, connected and then deleted, and where each
    connection points."""

    ports: tuple[Port, ...]
    deleted: Port
    connections: dict[int, int]

    @property
    def live(self) -> dict[int, Port]:
        return {port.port_id: port for port in self.ports}


# The fuzzer goes from one layout to the next between batches, deleting every
# port and making the next layout's, re-pointing the connections that stay and
# deleting the one that goes: the same ids come back as other ports.
LAYOUTS = (
    PortLayout(
        ports=(
            Port(0x40, vp=1, sint=2, base_flag=100, flag_count=8),
            Port(0x41, vp=0, sint=2, base_flag=0, flag_count=2048),
            Port(0x42, vp=1, sint=3, base_flag=2040, flag_count=8),
            Port(0x43, vp=1, sint=2, type="message"),
            Port(0x44, vp=5, sint=2),
            Port(0x45, vp=0, sint=9, base_flag=7, flag_count=4),
        ),
        deleted=Port(0x46, vp=0, sint=2),
        connections={0x50 + i: 0x40 + i for i in range(7)},
    ),
    PortLayout(
        ports=(
            Port(0x40, vp=0, sint=3, base_flag=7, flag_count=16),
            Port(0x41, vp=1, sint=2, base_flag=0, flag_count=2048),
            Port(0x43, vp=0, sint=2, base_flag=2000, flag_count=48),
            Port(0x44, vp=1, sint=9),
            Port(0x45, vp=5, sint=3, flag_count=2),
            Port(0x46, vp=1, sint=2, type="monitor"),
        ),
        deleted=Port(0x42, vp=1, sint=2, base_flag=1, flag_count=2),
        connections={
            0x50: 0x41,
            0x51: 0x40,
            0x52: 0x43,
            0x53: 0x42,
            0x54: 0x46,
            0x55: 0x44,
            0x57: 0x45,  # 0x56 is deleted: E2 here
        },
    ),
)
# Cases go to the guest, and the layout changes, this many at a time.
BATCH = 2000


@dataclass(frozen=True)
class Case:
    label: str
    args: HypercallArgs
    row_id: str  # the row the contract says applies
    effect: tuple[int, int, int] | None = None  # (cpu, sint, bit) on success
    broken: tuple[str, ...] = ()  # every row whose rule the case breaks, in order
    layout: int = 0  # the LAYOUTS entry it was predicted against

    @property
    def pairs(self) -> set[tuple[str, str]]:
        """The ordered pairs this case tests: the row that decides, before
        each other row the case also breaks."""
        return {(self.broken[0], later) for later in self.broken[1:]}


@dataclass(frozen=True)
class Outcome:
    case: Case
    status: int | None
    problem: str | None  # None: as the contract says


def _pick(rng: random.Random, common: Sequence[int], edges: Sequence[int]) -> int:
    """A usual value three times in four, else an edge."""
    return rng.choice(common) if rng.random() < 0.75 else rng.choice(edges)


# Buffers C3 refuses, beside a misaligned input: where they are (the output in
# ROM, in MMIO or beyond RAM, the input in MMIO or beyond RAM), an input that
# crosses a page, and input and output overlapping. The probe's buffer spans
# pages, and its default output area is at OUTPUT_AREA.
OUTPUT_AREA = 8192
HOSTILE_PLACES: tuple[dict[str, int], ...] = (
    {"out_gpa": 0xFFFFF000},  # the BIOS ROM
    {"out_gpa": 0xFED00000},  # HPET
    {"out_gpa": 0x1000_0000_0000},  # beyond RAM
    {"in_gpa": 0xFEC00000},  # the I/O APIC
    {"in_gpa": 0x1000_0000_0000},
    {"in_offset": 4088},  # 16 bytes from here cross into the next page
    # The 8-byte output inside the 16-byte input, over its first or last half
    {"in_offset": OUTPUT_AREA, "out_offset": OUTPUT_AREA},
    {"in_offset": OUTPUT_AREA, "out_offset": OUTPUT_AREA + 8},
)


def _control_fault(
    rng: random.Random, args: HypercallArgs
) -> tuple[HypercallArgs, str, str] | None:
    """Now and then a call that C1 or C3 catches before its own checks: the
    call, the row, and what was done to it (for the case's label)."""
    draw = rng.random()
    if draw < 0.06:
        bit = rng.choice(BAD_CONTROL)
        return replace(args, control=args.control | bit), "C1", f"control|={bit:#x}"
    if draw < 0.12 and not args.fast:
        offset = rng.randrange(1, 8)
        return replace(args, in_offset=offset), "C3", f"in_offset={offset}"
    if draw < 0.16 and not args.fast and args.control == Call.SIGNAL_EVENT_DIRECT:
        place = rng.choice(HOSTILE_PLACES)
        note = " ".join(f"{key}={value:#x}" for key, value in place.items())
        return replace(args, **place), "C3", note  # type: ignore[arg-type]
    return None


def direct_case(rng: random.Random) -> Case:
    partition = _pick(rng, [SELF_PARTITION], [0, 1, SELF_PARTITION - 1, rng.getrandbits(64)])
    vp = _pick(rng, CPUS, [2, 5, VP_INDEX_SELF, ANY_VP, rng.getrandbits(32)])
    vtl = _pick(rng, [0], [1, 2, 255])
    sint = _pick(rng, [2, 3], [0, 9, 15, 16, 255])
    flag = _pick(rng, [rng.randrange(2048), 0, 2047], [2048, 2049, 65535])
    label = f"direct vp={vp:#x} vtl={vtl} sint={sint} flag={flag} partition={partition:#x}"
    args = direct_call(
        vp, sint, flag, cpu=rng.choice(CPUS), input=encode_direct(vp, sint, flag, partition, vtl)
    )
    checks = (
        ("D1", partition != SELF_PARTITION),
        ("D2", vtl != 0),
        ("D3", sint >= 16),
        ("D4", flag >= 2048),
        ("D5", vp not in CPUS),
        ("D6", sint not in VECTORS),
    )
    broken = tuple(row_id for row_id, applies in checks if applies)
    if rng.random() < 0.04:
        fast = replace(args, control=Call.SIGNAL_EVENT_DIRECT | FAST, fast=True)
        return Case(label + " fast", fast, "C4", broken=("C4", *broken))
    fault = _control_fault(rng, args)
    if fault:
        faulty, row_id, note = fault
        return Case(f"{label} {note}", faulty, row_id, broken=(row_id, *broken))
    if broken:
        return Case(label, args, broken[0], broken=broken)
    return Case(label, args, "D7", (vp, sint, flag))


def event_case(rng: random.Random, layout: PortLayout = LAYOUTS[0]) -> Case:
    connections = list(layout.connections)
    connection = _pick(
        rng,
        connections,
        [0x57, rng.getrandbits(24), rng.choice(connections) | rng.randrange(1, 256) << 24],
    )
    port = layout.live.get(layout.connections.get(connection, -1))
    count = port.flag_count if port else 1
    flag = _pick(rng, [0, rng.randrange(count), count - 1], [count, 2047, 2048, 65535])
    reserved = 0 if rng.random() < 0.9 else rng.randrange(1, 1 << 16)
    fast = rng.random() < 0.5
    label = f"event connection={connection:#x} flag={flag} rsvdz={reserved:#x} fast={fast}"
    args = event_call(connection, flag, fast=fast, reserved=reserved, cpu=rng.choice(CPUS))
    checks = (
        ("E1", connection >> 24 != 0 or reserved != 0),
        ("E2", connection not in layout.connections),
        ("E3", port is None or port.type != "event"),
        ("E4", port is not None and flag >= port.flag_count),
        ("E5", port is not None and port.vp not in CPUS),
        ("E6", port is not None and port.sint not in VECTORS),
    )
    broken = tuple(row_id for row_id, applies in checks if applies)
    fault = _control_fault(rng, args)
    if fault:
        faulty, row_id, note = fault
        return Case(f"{label} {note}", faulty, row_id, broken=(row_id, *broken))
    if broken:
        return Case(label, args, broken[0], broken=broken)
    assert port is not None
    return Case(label, args, "E7", (port.vp, port.sint, port.bit(flag)))


# Not a row of the table: a call from CPL 3 raises #UD and does nothing
# (SEMANTICS.md, below the C rows), whatever else it breaks.
USER_MODE = "CPL3"


def _from_user_mode(rng: random.Random, case: Case) -> Case:
    """Now and then the case's call made from CPL 3 instead."""
    if rng.random() >= 0.02 or case.args.xmm:
        return case
    return Case(f"{case.label} cpl3", replace(case.args, user=True), USER_MODE)


def layout_of(index: int, batch: int = BATCH) -> int:
    """The LAYOUTS entry the case at `index` runs under: the next one each batch."""
    return index // batch % len(LAYOUTS)


def cases(seed: int, count: int, batch: int = BATCH) -> list[Case]:
    """`count` cases, half for each call, the same for the same seed and batch."""
    rng = random.Random(seed)
    drawn = []
    for i in range(count):
        layout = layout_of(i, batch)
        case = direct_case(rng) if i % 2 == 0 else event_case(rng, LAYOUTS[layout])
        drawn.append(replace(_from_user_mode(rng, case), layout=layout))
    return drawn


# With fuzz_vm_options(), vCPU TOP_OF_RAM_CPU's SynIC pages are the last two
# pages of RAM, where no allocator would put them. A q35 machine with 2816 MiB
# or more has RAM below 4 GiB up to 2 GiB and the rest from 4 GiB on, so its
# last page has nothing after it; memmap= keeps the guest kernel off the two.
TOP_OF_RAM_CPU = 1
TOP_OF_RAM_MEMORY_MB = 2816


def top_of_ram_pages(memory_mb: int = TOP_OF_RAM_MEMORY_MB) -> PagePlacement:
    if memory_mb < TOP_OF_RAM_MEMORY_MB:
        raise ValueError(f"RAM above 4 GiB needs {TOP_OF_RAM_MEMORY_MB} MiB or more")
    end = (1 << 32) + (memory_mb << 20) - (2 << 30)
    return PagePlacement(sief_gpa=end - 4096, sim_gpa=end - 8192)


def fuzz_vm_options(memory_mb: int = TOP_OF_RAM_MEMORY_MB) -> VmOptions:
    """The fuzzer's guest: two vCPUs, the two top pages of RAM kept free."""
    pages = top_of_ram_pages(memory_mb)
    return VmOptions.hyperv(
        cpus=len(CPUS), memory_mb=memory_mb, kernel_args=f"memmap=8K${pages.sim_gpa:#x}"
    )


class Fuzzer:
    def __init__(
        self,
        vm: Vm,
        probe: Probe,
        rows: tuple[Row, ...] | None = None,
        top_of_ram: PagePlacement | None = None,
    ) -> None:
        """`top_of_ram`: where vCPU TOP_OF_RAM_CPU's SynIC pages go, in a
        guest started with fuzz_vm_options(); None: where the probe puts them."""
        self.vm = vm
        self.probe = probe
        self.rows = rows if rows is not None else load()
        self.top_of_ram = top_of_ram
        # A stock KVM answers 0x00C0 in the kernel: its answer is predicted there.
        self.direct_in_qemu = vm.accel is None or direct_reaches_qemu(vm.accel)

    @contextmanager
    def arranged(self) -> Iterator[None]:
        """The SynICs every case is predicted against; undone on exit, with
        every port and connection."""
        sints = {
            sint: SintSetup(vector, polling=sint in POLLING) for sint, vector in VECTORS.items()
        }
        with ExitStack() as synics:
            for cpu in CPUS:
                at = self.top_of_ram if cpu == TOP_OF_RAM_CPU else None
                synics.enter_context(synic_on(self.probe, cpu, sints, at=at))
            try:
                yield
            finally:
                HostPorts(self.vm.qmp).clear()

    def remake(self, old: PortLayout | None, new: PortLayout) -> None:
        """From `old`'s ports to `new`'s: every old port deleted, the new
        ones made, connections re-pointed or deleted."""
        ports = HostPorts(self.vm.qmp)
        if old is not None:
            for port in old.ports:
                ports.delete(port.port_id)
            for connection in old.connections.keys() - new.connections.keys():
                ports.disconnect(connection)
        for port in (*new.ports, new.deleted):
            ports.create(port)
        for connection, port_id in new.connections.items():
            ports.connect(connection, port_id)
        ports.delete(new.deleted.port_id)

    def run(self, batch: Sequence[Case]) -> list[Outcome]:
        """Runs `batch` in the guest (`hvprobe cases`: each call, then the
        watched slots read and cleared and their interrupts counted)."""
        # By calling CPU: the probe moves itself to each call's CPU, and every
        # case stands alone (its slots are read and cleared after it).
        batch = sorted(batch, key=lambda case: case.args.cpu)
        results = self.probe.cases(WATCH, [case.args for case in batch])
        outcomes = []
        for case, result in zip(batch, results, strict=True):
            flags = dict(zip(WATCHED, result.flags, strict=True))
            delta = {(w.cpu, w.vector): n for w, n in zip(WATCH, result.irqs, strict=True)}
            problem = self.check(case, result.call, flags, delta)
            outcomes.append(Outcome(case, result.call.status, problem))
        return outcomes

    def check(
        self,
        case: Case,
        call: HypercallResult,
        flags: dict[tuple[int, int], frozenset[int]],
        delta: dict[tuple[int, int], int],
    ) -> str | None:
        if case.row_id == USER_MODE:
            if not call.ud:
                return f"status {call.status!r} from CPL 3, not #UD"
            if any(flags.values()) or any(delta.values()):
                return f"#UD, but SIEF flags {flags} and interrupts {delta}"
            return None
        want = row(case.row_id, self.rows).status
        control = case.args.control
        if not self.direct_in_qemu and control & 0xFFFF == Call.SIGNAL_EVENT_DIRECT:
            want = stock_kvm_direct_status(control)
            case = replace(case, effect=None)
        if call.ud or call.status != want:
            return f"status {call.status!r} (ud {call.ud}), {case.row_id} says {want:#x}"
        want_flags = {where: frozenset() for where in WATCHED}
        want_irqs = dict.fromkeys(delta, 0)
        if case.effect is not None:
            cpu, sint, bit = case.effect
            want_flags[(cpu, sint)] = frozenset({bit})
            if sint not in POLLING:
                want_irqs[(cpu, VECTORS[sint])] = 1
            if case.row_id == "D7" and call.output[:1] != b"\x01":
                return f"NewlySignaled {call.output[:1].hex()} after clearing the slot"
        if flags != want_flags:
            return f"SIEF flags {flags}, want {want_flags}"
        if delta != want_irqs:
            return f"interrupts {delta}, want {want_irqs}"
        return None

    def fuzz(
        self,
        seed: int,
        count: int,
        batch: int = BATCH,
        progress: Callable[[int, int], None] = lambda done, total: None,
    ) -> list[Outcome]:
        todo = cases(seed, count, batch)
        outcomes: list[Outcome] = []
        layout: PortLayout | None = None
        with self.arranged():
            for start in range(0, len(todo), batch):
                next_layout = LAYOUTS[layout_of(start, batch)]
                if next_layout is not layout:
                    self.remake(layout, next_layout)
                    layout = next_layout
                outcomes += self.run(todo[start : start + batch])
                progress(len(outcomes), len(todo))
        return outcomes


def pairs_covered(drawn: Sequence[Case]) -> set[tuple[str, str]]:
    """The ordered pairs of rows the cases test: two rules broken at once, the
    first in the contract's order deciding."""
    return set().union(*(case.pairs for case in drawn))


def summary(outcomes: Sequence[Outcome]) -> list[str]:
    """A line per row (cases, failures), the pairs of rules broken together
    that the run tested, then one line per failing case."""
    by_row = Counter(o.case.row_id for o in outcomes)
    failed = [o for o in outcomes if o.problem]
    failing_rows = Counter(o.case.row_id for o in failed)
    lines = [
        f"{row_id}: {n} cases, {failing_rows[row_id]} failed"
        for row_id, n in sorted(by_row.items())
    ]
    pairs = sorted(pairs_covered([o.case for o in outcomes]))
    lines.append(f"two rules broken at once: {len(pairs)} ordered pairs tested")
    lines.append("  " + " ".join(f"{first}>{second}" for first, second in pairs))
    lines += [f"FAILED {o.case.row_id} {o.case.label}: {o.problem}" for o in failed]
    return lines
