"""A typed client of the in-guest probe (guest-tests/probe).

`Probe(guest)` runs `hvprobe ...` in the guest over SSH, parses the one JSON
object it prints and returns a dataclass; every failure is a HarnessError
with a one-line cause. If the module is not loaded (hvprobe exits with 3),
the client loads it once and retries. The pages it reads are decoded by
orchestrator/synic_pages.py. guest-tests/README.md documents the CLI.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, cast

from orchestrator.artifacts import prebuilt_probe
from orchestrator.errors import HarnessError
from orchestrator.ssh import CommandResult
from orchestrator.synic_pages import SLOT_BYTES, check_size

HVPROBE = "/usr/local/bin/hvprobe"
LOAD_MODULE = "busybox modprobe hvprobe"
PREBUILT_MODULE = "/tmp/hvprobe.ko"
EXIT_NO_MODULE = 3

UD_VECTOR = 6
Insn = Literal["vmcall", "vmmcall", "page", "native"]
T = TypeVar("T")


class GuestShell(Protocol):
    """What the client needs of orchestrator.ssh.Guest."""

    commands_log: Path

    def run(self, command: str, timeout: float = ..., check: bool = ...) -> CommandResult: ...

    def put(self, local: Path, remote: str) -> None: ...


class LineServer(Protocol):
    """orchestrator.ssh.GuestServer: a line of reply per line of request."""

    def requests(self, lines: Sequence[str], timeout: float) -> list[str]: ...


class ServingGuest(GuestShell, Protocol):
    """A guest that also keeps a command running to talk to (ssh.Guest)."""

    def server(self, command: str) -> LineServer: ...

    def record(self, result: CommandResult) -> None: ...


@dataclass(frozen=True)
class ProbeInfo:
    abi: int
    nr_cpu_ids: int
    online_cpus: tuple[int, ...]
    hypercall_page: bool
    x2apic: bool
    irq_probes: tuple[str, ...]


@dataclass(frozen=True)
class CpuidResult:
    cpu: int
    leaf: int
    subleaf: int
    eax: int
    ebx: int
    ecx: int
    edx: int

    def text(self, *registers: Literal["eax", "ebx", "ecx", "edx"]) -> str:
        """The registers' bytes as text, e.g. text("ebx", "edx", "ecx") for leaf 0."""
        raw = b"".join(getattr(self, name).to_bytes(4, "little") for name in registers)
        return raw.rstrip(b"\0").decode("ascii", errors="replace")


@dataclass(frozen=True)
class MsrResult:
    cpu: int
    msr: int
    value: int
    gp: bool


@dataclass(frozen=True)
class PagePlacement:
    """Where a SynIC's SIEF and SIM pages go, when not where the probe would
    allocate them."""

    sief_gpa: int
    sim_gpa: int


@dataclass(frozen=True)
class SynicState:
    """What synic-setup or synic-teardown wrote, and which writes raised #GP."""

    cpu: int
    sief_gpa: int
    sim_gpa: int
    scontrol: int
    siefp: int
    simp: int
    faults: frozenset[str]


@dataclass(frozen=True)
class SintResult:
    cpu: int
    sint: int
    value: int
    gp: bool


@dataclass(frozen=True)
class SynicPages:
    cpu: int
    synic: bool
    sief_gpa: int | None
    sim_gpa: int | None
    buffer_gpa: int
    buffer_bytes: int


@dataclass(frozen=True)
class HypercallResult:
    """One hypercall. When it faulted (`trap` set), rax and status are None."""

    cpu: int
    mode: Literal["kernel", "user"]
    insn: Insn
    control: int
    fast: bool
    rdx: int
    r8: int
    ud: bool
    trap: int | None
    signal: str | None
    rax: int | None
    status: int | None
    reps_completed: int | None
    output_gpa: int | None
    output: bytes
    xmm: tuple[bytes, ...]

    @property
    def xmm0(self) -> bytes | None:
        return self.xmm[0] if self.xmm else None


def _opt(name: str, value: int | str | None) -> list[str]:
    return [] if value is None else [name, str(value)]


def _flag(name: str, on: bool) -> list[str]:
    return [name] if on else []


def _ints(values: Sequence[Any]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _info(d: dict[str, Any]) -> ProbeInfo:
    return ProbeInfo(
        abi=int(d["abi"]),
        nr_cpu_ids=int(d["nr_cpu_ids"]),
        online_cpus=_ints(d["online_cpus"]),
        hypercall_page=bool(d["hypercall_page"]),
        x2apic=bool(d["x2apic"]),
        irq_probes=tuple(str(p) for p in d["irq_probes"]),
    )


def _cpuid(d: dict[str, Any]) -> CpuidResult:
    return CpuidResult(*(int(d[k]) for k in ("cpu", "leaf", "subleaf", "eax", "ebx", "ecx", "edx")))


def _msr(d: dict[str, Any]) -> MsrResult:
    return MsrResult(int(d["cpu"]), int(d["msr"]), int(d["value"]), bool(d["gp"]))


def _synic(d: dict[str, Any]) -> SynicState:
    fields = ("cpu", "sief_gpa", "sim_gpa", "scontrol", "siefp", "simp")
    return SynicState(*(int(d[k]) for k in fields), faults=frozenset(d["faults"]))


def _sint(d: dict[str, Any]) -> SintResult:
    return SintResult(int(d["cpu"]), int(d["sint"]), int(d["value"]), bool(d["gp"]))


def _pages(d: dict[str, Any]) -> SynicPages:
    return SynicPages(
        cpu=int(d["cpu"]),
        synic=bool(d["synic"]),
        sief_gpa=_opt_int(d["sief_gpa"]),
        sim_gpa=_opt_int(d["sim_gpa"]),
        buffer_gpa=int(d["buffer_gpa"]),
        buffer_bytes=int(d["buffer_bytes"]),
    )


def _hypercall(d: dict[str, Any]) -> HypercallResult:
    return HypercallResult(
        cpu=int(d["cpu"]),
        mode=d["mode"],
        insn=d["insn"],
        control=int(d["control"]),
        fast=bool(d["fast"]),
        rdx=int(d["rdx"]),
        r8=int(d["r8"]),
        ud=bool(d["ud"]),
        trap=_opt_int(d["trap"]),
        signal=d["signal"],
        rax=_opt_int(d["rax"]),
        status=_opt_int(d["status"]),
        reps_completed=_opt_int(d["reps_completed"]),
        output_gpa=_opt_int(d["output_gpa"]),
        output=bytes.fromhex(d["output"] or ""),
        xmm=tuple(bytes.fromhex(x) for x in d["xmm"] or ()),
    )


def _slot_bytes(d: dict[str, Any]) -> bytes:
    data = bytes.fromhex(d["bytes"])
    check_size(data, SLOT_BYTES, "slot")
    return data


def _irq_counts(d: dict[str, Any]) -> dict[int, dict[int, int]]:
    return {
        int(cpu): {int(vector): int(n) for vector, n in counts.items()}
        for cpu, counts in d["irqs"].items()
    }


@dataclass(frozen=True)
class HypercallArgs:
    """The hypercall command's options; None leaves the CLI's default."""

    control: int
    cpu: int = 0
    fast: bool = False
    input: bytes = b""
    in_offset: int | None = None
    out_offset: int | None = None
    in_gpa: int | None = None
    out_gpa: int | None = None
    out_len: int | None = None
    out_fill: int | None = None
    xmm: tuple[bytes, ...] = ()
    insn: Insn = "native"
    user: bool = False

    def argv(self) -> list[str]:
        args = ["--cpu", str(self.cpu), "--control", hex(self.control), "--insn", self.insn]
        args += _flag("--fast", self.fast) + _flag("--user", self.user)
        if self.input:
            args += ["--input", self.input.hex()]
        args += _opt("--in-offset", self.in_offset) + _opt("--out-offset", self.out_offset)
        args += _opt("--in-gpa", self.in_gpa) + _opt("--out-gpa", self.out_gpa)
        args += _opt("--out-len", self.out_len) + _opt("--out-fill", self.out_fill)
        for register in self.xmm:
            args += ["--xmm", register.hex()]
        return args


@dataclass(frozen=True)
class RaceResult:
    """What `hvprobe race` saw: several CPUs making one memory-form call at
    once, released together by a barrier in the module, round after round."""

    calls: int
    newly: int  # answers with NewlySignaled = 1
    bad_rounds: int  # rounds without exactly one of those (newly_output)
    errors: int  # answers other than SUCCESS, or faults
    first_error: int  # its status, or 0x10000 + the exception vector
    flag_missing: int  # rounds after which the target's flag was clear
    irqs: int  # interrupts on the vector at the target meanwhile
    irq_timeouts: int  # rounds whose interrupt did not arrive in time
    neighbour_toggles: int  # set-and-clear pairs of the flag's neighbour bit (neighbour)
    neighbour_lost: int  # of those, ones that found the bit changed under them


@dataclass(frozen=True)
class Watch:
    """A SIEF slot `cases` reads and clears after each call, and the vector
    whose interrupts it counts on that CPU."""

    cpu: int
    sint: int
    vector: int

    def spec(self) -> str:
        return f"{self.cpu}:{self.sint}:{self.vector}"


@dataclass(frozen=True)
class CaseResult:
    """One call of `cases`, and what it left: per watched slot the flags found
    set (then cleared) and the interrupts taken on its vector."""

    call: HypercallResult
    flags: tuple[frozenset[int], ...]
    irqs: tuple[int, ...]


def _case(d: dict[str, Any]) -> CaseResult:
    return CaseResult(
        call=_hypercall(d["call"]),
        flags=tuple(frozenset(int(n) for n in slot["flags"]) for slot in d["flags"]),
        irqs=tuple(int(n) for n in d["irqs"]),
    )


# A `cases` request's line: the probe's server reads lines of up to 64 KiB.
CASES_LINE_BYTES = 60_000
# Requests in flight at once: their replies must fit the SSH channel's window
# while the next requests are still being written.
CASES_PIPELINE = 4


def _race(d: dict[str, Any]) -> RaceResult:
    return RaceResult(**{name: int(d[name]) for name in RaceResult.__dataclass_fields__})


class Probe:
    """The probe in one guest; each method is one `hvprobe` call over SSH."""

    def __init__(self, guest: GuestShell, binary: str = HVPROBE, timeout: float = 60.0) -> None:
        self.guest = guest
        self.binary = binary
        self.timeout = timeout

    def _serving(self) -> ServingGuest | None:
        """The guest, when it can keep `hvprobe serve` running for us."""
        if hasattr(self.guest, "server") and hasattr(self.guest, "record"):
            return cast(ServingGuest, self.guest)
        return None

    def _served(self, requests: Sequence[Sequence[str]]) -> list[CommandResult] | None:
        """`requests` through the guest's one `hvprobe serve`, pipelined: no
        process and no SSH round trip per call. None where that cannot be
        (a guest without servers, or a word a line cannot carry)."""
        guest = self._serving()
        if guest is None or any(not word or " " in word for args in requests for word in args):
            return None
        lines = [" ".join(args) for args in requests]
        start = time.monotonic()
        replies = guest.server(f"{self.binary} serve").requests(lines, self.timeout)
        seconds = (time.monotonic() - start) / len(lines)
        results = []
        for line, reply in zip(lines, replies, strict=True):
            try:
                envelope = json.loads(reply)
                rc, out = int(envelope["rc"]), json.dumps(envelope["reply"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                rc, out = -1, reply
            result = CommandResult(f"{self.binary} {line}", rc, out, "", seconds)
            guest.record(result)
            results.append(result)
        return results

    def _run_all(self, requests: Sequence[Sequence[str]]) -> list[CommandResult]:
        """Each request's result, in order; a missing module is loaded and
        the requests made again."""
        for attempt in range(2):
            results = self._served(requests)
            if results is None:
                results = [
                    self.guest.run(shlex.join([self.binary, *args]), timeout=self.timeout)
                    for args in requests
                ]
            if attempt or all(result.rc != EXIT_NO_MODULE for result in results):
                break
            self.load()
        return results

    def _run(self, args: Sequence[str]) -> CommandResult:
        return self._run_all([args])[0]

    def call(self, *args: str | int) -> dict[str, Any]:
        """Runs `hvprobe ARGS...`, returns its JSON object; HarnessError if it failed."""
        argv = [str(a) for a in args]
        result = self._run(argv)
        verb = argv[0] if argv else "(none)"
        try:
            reply = json.loads(result.out)
        except json.JSONDecodeError:
            reply = None
        if not isinstance(reply, dict):
            raise HarnessError(
                f"hvprobe {verb} printed no JSON object (rc {result.rc}): "
                f"{(result.out or result.err).strip()[:200]}",
                self.guest.commands_log,
            )
        if result.rc != 0 or "error" in reply:
            raise HarnessError(
                f"hvprobe {verb} failed (rc {result.rc}): {reply.get('error', 'no error text')}",
                self.guest.commands_log,
            )
        return reply

    def batch(self, *calls: Sequence[str | int]) -> list[dict[str, Any]]:
        """Several `hvprobe` calls in one SSH round trip; their JSON objects, in order.

        Under TCG a round trip costs far more than a call, so tests that read
        several things at once (a SIEF slot and interrupt counts) batch them.
        """
        results = self._run_all([[str(a) for a in args] for args in calls])
        replies = []
        for result in results:
            try:
                replies.append(json.loads(result.out))
            except json.JSONDecodeError:
                continue
        if len(replies) != len(calls) or any(
            not isinstance(r, dict) or "error" in r for r in replies
        ):
            failed = next((r.out for r in results if r.rc), results[-1].out if results else "")
            raise HarnessError(
                f"hvprobe batch of {len(calls)} calls failed: {failed.strip()[:200]}",
                self.guest.commands_log,
            )
        return replies

    def _parsed(self, parse: Callable[[dict[str, Any]], T], *args: str | int) -> T:
        reply = self.call(*args)
        try:
            return parse(reply)
        except (KeyError, TypeError, ValueError) as exc:
            raise HarnessError(
                f"hvprobe {args[0]} printed unexpected JSON ({exc!r}): {json.dumps(reply)[:200]}",
                self.guest.commands_log,
            ) from None

    def load(self) -> None:
        """Loads the module: the image's rc does at boot for the kernel the
        image built it for; this is for after an rmmod, and for a kernel whose
        module `make kvm-modules` built (copied in, then insmod)."""
        result = self.guest.run(LOAD_MODULE, timeout=self.timeout)
        if result.rc != 0:
            release = self.guest.run("busybox uname -r", timeout=self.timeout).out.strip()
            if (module := prebuilt_probe(release)) is not None:
                self.guest.put(module, PREBUILT_MODULE)
                result = self.guest.run(f"busybox insmod {PREBUILT_MODULE}", timeout=self.timeout)
        if result.rc != 0:
            raise HarnessError(
                f"cannot load the hvprobe module: {result.err.strip() or result.out.strip()}",
                self.guest.commands_log,
            )

    def info(self) -> ProbeInfo:
        return self._parsed(_info, "info")

    def cpuid(self, leaf: int, subleaf: int = 0, cpu: int = 0) -> CpuidResult:
        return self._parsed(_cpuid, "cpuid", "--cpu", cpu, hex(leaf), hex(subleaf))

    def rdmsr(self, msr: int, cpu: int = 0) -> MsrResult:
        return self._parsed(_msr, "rdmsr", "--cpu", cpu, hex(msr))

    def wrmsr(self, msr: int, value: int, cpu: int = 0) -> MsrResult:
        return self._parsed(_msr, "wrmsr", "--cpu", cpu, hex(msr), hex(value))

    def synic_setup(
        self,
        cpu: int,
        scontrol: bool = True,
        sief: bool = True,
        sim: bool = True,
        at: PagePlacement | None = None,
    ) -> SynicState:
        """`at`: pages the guest kernel was kept from (memmap=), instead of
        pages the module allocates."""
        flags = _flag("--no-scontrol", not scontrol) + _flag("--no-sief", not sief)
        flags += _flag("--no-sim", not sim)
        if at is not None:
            flags += ["--sief-gpa", hex(at.sief_gpa), "--sim-gpa", hex(at.sim_gpa)]
        return self._parsed(_synic, "synic-setup", "--cpu", cpu, *flags)

    def synic_teardown(self, cpu: int) -> SynicState:
        return self._parsed(_synic, "synic-teardown", "--cpu", cpu)

    def sint(
        self,
        cpu: int,
        sint: int,
        vector: int,
        masked: bool = False,
        auto_eoi: bool = False,
        polling: bool = False,
    ) -> SintResult:
        flags = _flag("--masked", masked) + _flag("--auto-eoi", auto_eoi)
        flags += _flag("--polling", polling)
        return self._parsed(_sint, "sint", "--cpu", cpu, "--sint", sint, "--vector", vector, *flags)

    def sint_raw(self, cpu: int, sint: int, value: int) -> SintResult:
        return self._parsed(_sint, "sint", "--cpu", cpu, "--sint", sint, "--raw", hex(value))

    def hypercall(
        self,
        control: int,
        *,
        cpu: int = 0,
        fast: bool = False,
        input: bytes = b"",
        in_offset: int | None = None,
        out_offset: int | None = None,
        in_gpa: int | None = None,
        out_gpa: int | None = None,
        out_len: int | None = None,
        out_fill: int | None = None,
        xmm: tuple[bytes, ...] = (),
        insn: Insn = "native",
        user: bool = False,
    ) -> HypercallResult:
        """One hypercall; the arguments are HypercallArgs' (and the CLI's options)."""
        return self.hypercall_with(
            HypercallArgs(
                control,
                cpu=cpu,
                fast=fast,
                input=input,
                in_offset=in_offset,
                out_offset=out_offset,
                in_gpa=in_gpa,
                out_gpa=out_gpa,
                out_len=out_len,
                out_fill=out_fill,
                xmm=xmm,
                insn=insn,
                user=user,
            )
        )

    def hypercall_with(self, args: HypercallArgs) -> HypercallResult:
        return self._parsed(_hypercall, "hypercall", *args.argv())

    def cases(self, watch: Sequence[Watch], calls: Sequence[HypercallArgs]) -> list[CaseResult]:
        """Every call made in turn in the guest, each followed by what it did
        to the watched slots and their interrupts (`hvprobe cases`), sent as
        few requests as the server's line length allows, pipelined a few at
        a time."""
        head = ["cases", "--watch", ",".join(w.spec() for w in watch), "--"]
        requests: list[list[str]] = []
        request: list[str] = []
        length = 0
        for args in calls:
            words = args.argv()
            size = sum(len(word) + 1 for word in words) + 2
            if request and length + size > CASES_LINE_BYTES:
                requests.append([*head, *request[:-1]])
                request, length = [], 0
            request += [*words, ";"]
            length += size
        if request:
            requests.append([*head, *request[:-1]])
        results: list[CaseResult] = []
        for start in range(0, len(requests), CASES_PIPELINE):
            for reply in self.batch(*requests[start : start + CASES_PIPELINE]):
                try:
                    results += [_case(case) for case in reply["cases"]]
                except (KeyError, TypeError, ValueError) as exc:
                    raise HarnessError(
                        f"hvprobe cases printed unexpected JSON ({exc!r})",
                        self.guest.commands_log,
                    ) from None
        return results

    def race(
        self,
        args: HypercallArgs,
        cpus: Sequence[int],
        target: int,
        sint: int,
        flag: int,
        vector: int,
        rounds: int,
        newly_output: bool = False,
        neighbour: bool = False,
        calls_per_round: int = 1,
    ) -> RaceResult:
        """`args`' call (memory form) made by every CPU of `cpus` at once,
        `rounds` times; between rounds the module waits for the interrupt on
        `vector` at `target`, checks flag `flag` of its SIEF slot `sint`, and
        clears it. With `newly_output` the call writes NewlySignaled, and a
        round without exactly one NewlySignaled=1 is a bad round. With
        `neighbour` the target, which must not be among `cpus`, sets and clears
        bit `flag` ^ 1 of the same word atomically while the calls run, and
        counts the times the bit was not as it left it. With `calls_per_round`
        each caller makes that many calls back to back in a round: the flag is
        still set once, so a round still owes one NewlySignaled and one
        interrupt."""
        argv = [
            "--cpus", ",".join(str(cpu) for cpu in cpus), "--cpu", target, "--sint", sint,
            "--flag", flag, "--vector", vector, "--control", hex(args.control),
            "--insn", args.insn, "--rounds", rounds, "--calls-per-round", calls_per_round,
        ]  # fmt: skip
        if args.input:
            argv += ["--input", args.input.hex()]
        argv += [*_flag("--newly-output", newly_output), *_flag("--neighbour", neighbour)]
        return self._parsed(_race, "race", *argv)

    def sief(self, cpu: int, sint: int, clear: bool = False) -> bytes:
        """The 256 bytes of SIEF slot `sint` on `cpu` (zeroed after reading with clear)."""
        args = ["--cpu", cpu, "--sint", sint, *_flag("--clear", clear)]
        return self._parsed(_slot_bytes, "sief", *args)

    def sim(self, cpu: int, sint: int, clear: bool = False) -> bytes:
        """The 256 bytes of SIM slot `sint` on `cpu`; SimMessage.from_slot decodes it."""
        args = ["--cpu", cpu, "--sint", sint, *_flag("--clear", clear)]
        return self._parsed(_slot_bytes, "sim", *args)

    def irqs(self, cpu: int, vector: int) -> int:
        """Interrupts with `vector` taken on `cpu` since the module was loaded."""
        counts = self._parsed(_irq_counts, "irqs", "--cpu", cpu, "--vector", vector)
        try:
            return counts[cpu][vector]
        except KeyError:
            raise HarnessError(
                f"hvprobe irqs gave no count for cpu {cpu} vector {vector}",
                self.guest.commands_log,
            ) from None

    def in_service(self, cpu: int, vector: int) -> int:
        """Of irqs(cpu, vector), those taken with the vector in service in the
        local APIC, i.e. not acknowledged by auto-EOI."""
        counts = self._parsed(_irq_counts, "irqs", "--cpu", cpu, "--vector", vector, "--in-service")
        return counts[cpu][vector]

    def irq_counts(self, cpu: int | None = None) -> dict[int, dict[int, int]]:
        """Non-zero counts per CPU (all online CPUs, or one) and vector."""
        return self._parsed(_irq_counts, "irqs", *_opt("--cpu", cpu))

    def ipi(self, cpu: int, vector: int, from_cpu: int = 0) -> None:
        """Sends an IPI with `vector` from `from_cpu` to `cpu` (test-only: no hypervisor)."""
        self.call("ipi", "--from", from_cpu, "--cpu", cpu, "--vector", vector)

    def pages(self, cpu: int) -> SynicPages:
        return self._parsed(_pages, "pages", "--cpu", cpu)

    def outl(self, port: int, value: int, cpu: int = 0) -> None:
        """One 32-bit OUT to `port` from `cpu` (e.g. hyperv-testdev's 0x3000)."""
        self.call("outl", "--cpu", cpu, hex(port), hex(value))

    def inl(self, port: int, cpu: int = 0) -> int:
        """One 32-bit IN from `port` on `cpu`."""
        return self._parsed(lambda d: int(d["value"]), "inl", "--cpu", cpu, hex(port))
