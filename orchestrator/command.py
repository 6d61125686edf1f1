"""The QEMU command line, rendered from the jinja2 template."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from orchestrator.artifacts import GuestImage

# Kernel arguments that matter under TCG: no speculative-execution mitigations
# (pure cost under emulation), trust the CPU's RNG so sshd need not wait.
BASE_KERNEL_CMDLINE = (
    "console=ttyS0 panic=-1 mitigations=off random.trust_cpu=on "
    "tsc=reliable no_timer_check loglevel=4"
)


# The Hyper-V enlightenments the series implements under TCG, where they are
# opt-in (x-hv-tcg=on, the hyperv-tcg series' property: under KVM it is left
# out, see guest_cpu()).
HYPERV_CPU = "max,x-hv-tcg=on,hv-relaxed,hv-vpindex,hv-synic"
# The Hyper-V guest with synthetic timers (the clock they need, direct mode):
# Linux then takes them as its clockevent.
STIMER_CPU = HYPERV_CPU + ",hv-time,hv-stimer,hv-stimer-direct"
# An ISA device whose port 0x3000 lets the guest create SINT routes and
# message/event connections that echo back what the guest sends.
HYPERV_TESTDEV = ("-device", "hyperv-testdev")


@dataclass(frozen=True)
class VmOptions:
    """What a test may choose about its VM."""

    cpus: int = 2
    # The rest of -smp after the CPU count, e.g. "maxcpus=6,sockets=2,cores=3,
    # threads=1": a topology whose APIC IDs are not the CPU indices.
    topology: str = ""
    memory_mb: int = 512
    cpu: str = "max"
    machine: str = "q35"
    kernel_args: str = ""
    extra_args: tuple[str, ...] = ()
    boot_timeout: float = 120.0

    @classmethod
    def hyperv(cls, **overrides: object) -> VmOptions:
        """A Hyper-V guest: the enlightenments and hyperv-testdev."""
        fields: dict[str, object] = {"cpu": HYPERV_CPU, "extra_args": HYPERV_TESTDEV}
        fields.update(overrides)
        return cls(**fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LaunchPaths:
    qmp_socket: Path
    serial_log: Path
    # Where QEMU writes its LOG_GUEST_ERROR lines (-d guest_errors -D), for
    # the tests to check; None: not logged.
    guest_errors_log: Path | None = None


@dataclass(frozen=True)
class Launch:
    """Everything the template needs for one start of QEMU."""

    qemu: Path
    name: str
    accel: str
    image: GuestImage
    options: VmOptions
    paths: LaunchPaths
    ssh_port: int
    firmware_dirs: list[Path] = field(default_factory=list)
    # Nested KVM: the inner QEMU listens where the outer guest's user network
    # can reach it (0.0.0.0), serves QMP on TCP and writes its console to a
    # serial port of the outer guest (a tty, so the `serial` backend).
    ssh_bind: str = "127.0.0.1"
    qmp_tcp_port: int | None = None
    serial_backend: str = "file"
    # More (host port, guest port) TCP forwards beside SSH's.
    forwards: tuple[tuple[int, int], ...] = ()
    # A migration destination: QEMU waits for migrate-incoming (-incoming
    # defer) instead of booting the guest.
    incoming: bool = False


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("orchestrator", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


TCG_OPT_IN = "x-hv-tcg=on"


def guest_cpu(cpu: str, accel: str) -> str:
    """-cpu for this accelerator. Under KVM, QEMU also shows KVM's signature (at
    0x40000100), and Linux then prefers KVM's paravirt interface to Hyper-V's:
    no guest OS id, no hypercall page, and vmmcall answered as a KVM
    hypercall. kvm=off hides it, so that the guest uses Hyper-V as under TCG,
    where QEMU shows no KVM signature anyway. The TCG opt-in is left out under
    KVM, where it changes nothing: a QEMU without the hyperv-tcg series (make
    qemu SERIES=fixes,signal-event-direct) has no such property."""
    if accel != "kvm":
        return cpu
    cpu = ",".join(part for part in cpu.split(",") if part != TCG_OPT_IN)
    if "hv-" in cpu and "kvm=" not in cpu:
        return f"{cpu},kvm=off"
    return cpu


def _qmp_spec(launch: Launch) -> str:
    if launch.qmp_tcp_port is not None:
        return f"tcp:0.0.0.0:{launch.qmp_tcp_port},server=on,wait=off"
    return f"unix:{launch.paths.qmp_socket},server=on,wait=off"


def _smp(options: VmOptions) -> str:
    return f"{options.cpus},{options.topology}" if options.topology else str(options.cpus)


def render(launch: Launch) -> list[str]:
    template = _environment().get_template("qemu.cmdline.j2")
    text = template.render(
        qemu=launch.qemu,
        name=launch.name,
        machine=launch.options.machine,
        accel=launch.accel,
        cpu=guest_cpu(launch.options.cpu, launch.accel),
        smp=_smp(launch.options),
        memory_mb=launch.options.memory_mb,
        firmware_dirs=launch.firmware_dirs,
        image=launch.image,
        kernel_cmdline=f"{BASE_KERNEL_CMDLINE} {launch.options.kernel_args}".strip(),
        ssh_port=launch.ssh_port,
        ssh_bind=launch.ssh_bind,
        forwards=launch.forwards,
        serial_backend=launch.serial_backend,
        serial_log=launch.paths.serial_log,
        guest_errors_log=launch.paths.guest_errors_log,
        qmp=_qmp_spec(launch),
        extra_args=launch.options.extra_args,
        incoming=launch.incoming,
    )
    return [line for line in text.splitlines() if line.strip()]
