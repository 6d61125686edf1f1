"""ACCEL=nested-kvm: the test guest runs under KVM inside a "KVM host" guest
that itself runs under TCG.

The KVM host boots the same root disk with a kernel of its own, newer than the
test guest's (the image's host_kernel: its modules are in that root disk too),
with `-cpu max` (no hv-* flags: SVM with nested paging), loads kvm and
kvm_amd, and gets three virtio disks: its own root (a snapshot), the payload
(our QEMU, libraries, firmware, the test guest's kernel and initrd;
orchestrator/payload.py) and the test guest's root disk. It then runs our QEMU
with the command line the TCG path renders, with `-accel kvm` and paths
translated to its mounts. The outer QEMU forwards SSH and QMP (TCP inside) out
to this host, and the test guest's console goes to the outer guest's second
serial port, which is the host file ConsoleWatch reads. The inner QEMU's log
is copied out to the VM's qemu.log when it stops or fails; the KVM host's own
logs go to <log dir>/kvm-host/.

A migration destination runs in the KVM host of its source: a second inner
QEMU (NestedPeerLauncher) on ports of its own, which the outer QEMU forwards
from the start; the payload then carries the peer's QEMU too (the stock one,
or ours), so the two can be different builds."""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import time
from pathlib import Path, PurePosixPath

from orchestrator.accel import Accel, kvm_kind
from orchestrator.artifacts import GuestImage, QemuBuild
from orchestrator.command import Launch, LaunchPaths, VmOptions, render
from orchestrator.console import ConsoleWatch
from orchestrator.errors import HarnessError
from orchestrator.launcher import DirectLauncher, LaunchContext, free_port
from orchestrator.payload import (
    PayloadLayout,
    ensure_payload,
    patched_kvm_capability,
    patched_kvm_vermagic,
)
from orchestrator.qmp import Qmp
from orchestrator.ssh import Guest

HOST_MEMORY_MB = 3072
# One vCPU: with two, the KVM host guest crashed now and then under TCG (a
# kernel #PF on a bad GS base right after a nested #VMEXIT, or the test guest
# reset), which one vCPU has not shown.
HOST_CPUS = 1
HOST_BOOT_TIMEOUT = 300.0
# Inner boots take 50-90 s against ~10 s under plain TCG.
INNER_BOOT_FACTOR = 4.0
INNER_QMP_TIMEOUT = 180.0
INNER_SSH_PORT = 2222
INNER_QMP_PORT = 4444
INNER_CONSOLE = PurePosixPath("/dev/ttyS1")
INNER_DIR = PurePosixPath("/tmp/hvsd-inner")
INNER_LOG = INNER_DIR / "qemu.log"
INNER_GUEST_ERRORS = INNER_DIR / "guest-errors.log"
# The migration peer's QEMU in the same KVM host
PEER_SSH_PORT = 2223
PEER_QMP_PORT = 4445
PEER_DIR = INNER_DIR / "peer"
# The KVM host's virtio disks, in command-line order: vda is its root.
PAYLOAD_DEVICE, ROOTFS_DEVICE = "/dev/vdb", "/dev/vdc"
ALIVE_EVERY = 3.0

# Exit codes of the KVM host's set-up, each a cause the user is told.
NO_VIRT, KVM_LOAD_FAILED, NO_DEV_KVM, MOUNT_FAILED, NO_ROOTFS = 10, 11, 12, 13, 14
PATCHED_LOAD_FAILED = 15


def prepare_script(patched_kvm: bool) -> str:
    """Mounts the payload, loads KVM (the stock modules, or with KVM_MODULES=patched ours
    from the payload: never the stock ones instead) and checks /dev/kvm."""
    mount = PayloadLayout().mount
    modules = PayloadLayout().kvm_modules
    if patched_kvm:
        load = (
            f"busybox modprobe irqbypass 2>&1; busybox insmod {modules}/kvm.ko 2>&1 &&\n"
            f"    busybox insmod {modules}/$module.ko 2>&1 &&\n"
            "    grep -q O /sys/module/kvm/taint ||\n"
            f"    {{ dmesg | grep -i -e kvm -e svm | tail -n 3; exit {PATCHED_LOAD_FAILED}; }}"
        )
    else:
        load = (
            "busybox modprobe $(echo $module | tr - _) 2>&1 ||\n"
            f"    {{ dmesg | grep -i -e kvm -e svm | tail -n 3; exit {KVM_LOAD_FAILED}; }}"
        )
    # uname first: a failure's one line then names the kernel that failed.
    return f"""
echo "kernel $(uname -r)"
if grep -qw svm /proc/cpuinfo; then module=kvm-amd
elif grep -qw vmx /proc/cpuinfo; then module=kvm-intel
else grep -m1 '^model name' /proc/cpuinfo; exit {NO_VIRT}; fi
mkdir -p {mount} {INNER_DIR}
busybox mount -t ext4 -o ro {PAYLOAD_DEVICE} {mount} 2>&1 || exit {MOUNT_FAILED}
{load}
[ -c /dev/kvm ] || exit {NO_DEV_KVM}
[ -b {ROOTFS_DEVICE} ] || exit {NO_ROOTFS}
"""


class KvmUnavailable(HarnessError):
    """The KVM host guest's CPU offers no virtualization: the KVM leg is skipped."""


def kvm_host_image(image: GuestImage, modules_vermagic: str | None = None) -> GuestImage:
    """What the KVM host boots: the image's root disk with the host kernel and
    its initramfs. With KVM_MODULES=patched, `modules_vermagic` is our modules'
    (kvm-modules.json): a module loads only into the kernel it was built for."""
    if modules_vermagic is not None and modules_vermagic.split()[0] != image.host_kernel_release:
        raise HarnessError(
            f"KVM_MODULES=patched: our modules' vermagic is '{modules_vermagic}', the KVM "
            f"host's kernel's is '{image.host_kernel_release}': run 'make kvm-modules'"
        )
    return dataclasses.replace(
        image,
        kernel=image.host_kernel,
        initrd=image.host_initrd,
        kernel_release=image.host_kernel_release,
    )


def host_options(payload: Path, rootfs: Path, inner_console: Path) -> VmOptions:
    """The KVM host guest: no Hyper-V, room for the test guest, three disks and
    a second serial port that carries the test guest's console out."""
    return VmOptions(
        cpus=HOST_CPUS,
        memory_mb=HOST_MEMORY_MB,
        cpu="max",
        boot_timeout=HOST_BOOT_TIMEOUT,
        extra_args=(
            "-drive", f"file={payload},if=virtio,format=raw,readonly=on",
            "-drive", f"file={rootfs},if=virtio,format=raw,readonly=on",
            "-chardev", f"file,id=inner-console,path={inner_console}",
            "-serial", "chardev:inner-console",
        ),
    )  # fmt: skip


def inner_launch(ctx: LaunchContext, layout: PayloadLayout) -> Launch:
    """The test guest's QEMU as the TCG path renders it, with -accel kvm and
    every host path replaced by where the KVM host sees it."""
    image = dataclasses.replace(
        ctx.image,
        kernel=Path(layout.kernel),
        initrd=Path(layout.initrd),
        rootfs=Path(ROOTFS_DEVICE),
    )
    return Launch(
        qemu=Path(layout.qemu),
        name=ctx.name,
        accel="kvm",
        image=image,
        options=ctx.options,
        paths=LaunchPaths(Path("/nonexistent"), Path(INNER_CONSOLE), Path(INNER_GUEST_ERRORS)),
        ssh_port=INNER_SSH_PORT,
        firmware_dirs=[Path(layout.firmware)],
        ssh_bind="0.0.0.0",
        qmp_tcp_port=INNER_QMP_PORT,
        serial_backend="serial",
    )


def inner_start_command(
    argv: list[str], workdir: PurePosixPath = INNER_DIR, log: PurePosixPath = INNER_LOG
) -> str:
    """Starts an inner QEMU detached (the SSH channel may close); prints its pid."""
    return (
        f"mkdir -p {workdir} && cd {workdir} || exit 1; TMPDIR={workdir} nohup "
        f"{shlex.join(argv)} </dev/null >{log} 2>&1 & echo $!"
    )


class KvmHostLauncher(DirectLauncher):
    """The outer QEMU (TCG, on this host), forwarding the inner guest's ports."""

    def __init__(self, ctx: LaunchContext, forwards: tuple[tuple[int, int], ...]) -> None:
        super().__init__(ctx)
        self.forwards = forwards

    def launch(self, ssh_port: int) -> Launch:
        return dataclasses.replace(super().launch(ssh_port), forwards=self.forwards)


class NestedLauncher:
    """The test guest under KVM inside a TCG guest; see the module docstring."""

    def __init__(self, ctx: LaunchContext) -> None:
        self.ctx = ctx
        self.layout = PayloadLayout()
        self.ssh_port = 0
        self.qmp: Qmp | None = None
        self.host_logs = ctx.logs.kvm_host
        self.patched_kvm = kvm_kind() == "patched"
        self._host: KvmHostLauncher | None = None
        self._host_guest: Guest | None = None
        self._inner_pid: int | None = None
        self._last_check = 0.0
        self._boot_resets_left = 1
        # This host's ports that reach a migration peer's SSH and QMP
        self.peer_ssh_port = 0
        self.peer_qmp_port = 0

    @property
    def boot_timeout(self) -> float:
        return self.ctx.options.boot_timeout * INNER_BOOT_FACTOR

    @property
    def pid(self) -> int | None:
        """The outer QEMU's: the inner one dies with it."""
        return self._host.pid if self._host else None

    @property
    def host_guest(self) -> Guest:
        if self._host_guest is None:
            raise HarnessError("the KVM host guest is not running")
        return self._host_guest

    def start(self) -> float:
        ctx = self.ctx
        if ctx.incoming:
            raise HarnessError("a migration destination cannot start nested (ACCEL=nested-kvm)")
        self.host_logs.dir.mkdir(parents=True, exist_ok=True)
        payload = ensure_payload(ctx.qemu, ctx.image, ctx.firmware, self.patched_kvm, ctx.peer_qemu)
        self.ssh_port, qmp_port = free_port(), free_port()
        self.peer_ssh_port, self.peer_qmp_port = free_port(), free_port()
        self._boot_host(payload, qmp_port)
        self._prepare_kvm()
        started = time.monotonic()
        self._start_inner()
        self.qmp = Qmp(("127.0.0.1", qmp_port), ctx.logs.qmp, ctx.name)
        self.qmp.connect(INNER_QMP_TIMEOUT, self.check_alive)
        if self.patched_kvm and "hv-synic" in ctx.options.cpu:
            self._check_forwarding(self.qmp)
        return started

    def _check_forwarding(self, qmp: Qmp) -> None:
        """With our modules the kernel must offer the capability that says it
        forwards 0x00C0; QEMU reports what KVM_CHECK_EXTENSION answered."""
        vps = qmp.execute("x-query-synic")
        if all(vp.get("signal-event-direct") for vp in vps):
            return
        modules = self.host_guest.run(
            "grep -E '^kvm(_amd|_intel)? ' /proc/modules | cut -d' ' -f1,6-;"
            " echo taint=$(cat /sys/module/kvm/taint)",
            timeout=30,
        ).out
        raise HarnessError(
            f"KVM_MODULES=patched, but KVM_CHECK_EXTENSION(KVM_CAP_HYPERV_SIGNAL_EVENT_DIRECT="
            f"{patched_kvm_capability()}) answered 0 in the KVM host (loaded: "
            f"{' '.join(modules.split())})",
            self.ctx.logs.qmp,
        )

    def _boot_host(self, payload: Path, qmp_port: int) -> None:
        ctx, logs = self.ctx, self.host_logs
        ctx.logs.serial.unlink(missing_ok=True)
        modules_vermagic = patched_kvm_vermagic() if self.patched_kvm else None
        host_ctx = dataclasses.replace(
            ctx,
            image=kvm_host_image(ctx.image, modules_vermagic),
            accel=Accel("tcg", "KVM host guest for nested-kvm"),
            options=host_options(payload, ctx.image.rootfs, ctx.logs.serial),
            name=f"{ctx.name}-kvm-host",
            logs=logs,
            console=ConsoleWatch(logs.serial),
        )
        forwards = (
            (self.ssh_port, INNER_SSH_PORT),
            (qmp_port, INNER_QMP_PORT),
            (self.peer_ssh_port, PEER_SSH_PORT),
            (self.peer_qmp_port, PEER_QMP_PORT),
        )
        self._host = KvmHostLauncher(host_ctx, forwards)
        self._host.start()
        ctx.console.mark()
        self._host_guest = Guest(
            "127.0.0.1",
            self._host.ssh_port,
            ctx.image.ssh_key,
            ctx.image.host_key_pub,
            logs.commands,
            logs.serial,
        )
        try:
            self._host_guest.wait_ready(
                HOST_BOOT_TIMEOUT, self._host_alive, host_ctx.console.sshd_listening
            )
        except HarnessError as exc:
            raise HarnessError(f"the KVM host guest did not boot: {exc.cause}", exc.log) from None

    def _host_alive(self) -> None:
        if self._host is not None:
            try:
                self._host.check_alive()
            except HarnessError as exc:
                raise HarnessError(f"KVM host guest's {exc.cause}", exc.log) from None

    def _prepare_kvm(self) -> None:
        done = self.host_guest.run(prepare_script(self.patched_kvm), timeout=120)
        said = " ".join(done.out.split()) or " ".join(done.err.split()) or "(no output)"
        log = self.host_logs.commands
        if done.rc == NO_VIRT:
            raise KvmUnavailable(
                f"no svm or vmx in the KVM host guest's CPU ({said}): "
                "this host's QEMU offers no nested virtualization",
                log,
            )
        causes = {
            KVM_LOAD_FAILED: "kvm_amd/kvm_intel did not load in the KVM host guest",
            NO_DEV_KVM: "no /dev/kvm in the KVM host guest after loading kvm",
            MOUNT_FAILED: "the payload disk did not mount in the KVM host guest",
            PATCHED_LOAD_FAILED: (
                "KVM_MODULES=patched: our kvm modules did not load in the KVM host guest"
            ),
            NO_ROOTFS: f"no {ROOTFS_DEVICE} (the test guest's disk) in the KVM host guest",
        }
        if done.rc != 0:
            cause = causes.get(done.rc, f"KVM host set-up failed with status {done.rc}")
            raise HarnessError(f"{cause}: {said}", log)

    def inner_qemu(self, build: QemuBuild) -> PurePosixPath:
        """Where the KVM host runs `build`: the payload's first QEMU or its peer."""
        if build.binary == self.ctx.qemu.binary:
            return self.layout.qemu
        if self.ctx.peer_qemu is not None and build.binary == self.ctx.peer_qemu.binary:
            return self.layout.peer_qemu
        raise HarnessError(
            f"the KVM host of {self.ctx.name} carries no {build.binary}: "
            "start the source VM with that QEMU as its peer"
        )

    def _restart_or_report(self, what: str) -> None:
        """KVM under TCG's emulated SVM now and then fails to deliver an event
        to a guest that is booting (seen once in a loaded run: "KVM internal
        error. Suberror: 3", an MMIO exit during event delivery). Before the
        guest is ready it has run nothing of a test's: it is reset and started
        once more. Any other time, or twice, it is an error, said at once
        rather than at the end of the boot timeout."""
        if what == "before the guest was ready" and self._boot_resets_left and self.qmp:
            self._boot_resets_left -= 1
            self._copy_inner_log()
            (self.host_logs.dir / "boot-reset.txt").write_text(_last_line(self.ctx.logs.qemu))
            self.qmp.execute("system_reset")
            self.qmp.execute("cont")
            return
        self._copy_inner_log()
        raise HarnessError(
            f"KVM stopped the guest {what} (internal error): see QEMU's log", self.ctx.logs.qemu
        )

    def _start_inner(self) -> None:
        argv = render(inner_launch(self.ctx, self.layout))
        self.ctx.logs.cmdline.write_text(shlex.join(argv) + "\n")
        done = self.host_guest.run(inner_start_command(argv), timeout=60, check=True)
        self._inner_pid = int(done.out.split()[-1])
        self._last_check = time.monotonic()

    def _inner_running(self) -> bool:
        if self._inner_pid is None:
            return False
        return self.host_guest.run(f"kill -0 {self._inner_pid}", timeout=30).rc == 0

    def check_alive(self, what: str = "before the guest was ready") -> None:
        self._host_alive()
        if self._inner_pid is None or time.monotonic() - self._last_check < ALIVE_EVERY:
            return
        self._last_check = time.monotonic()
        if not self._inner_running():
            self._inner_pid = None
            self._copy_inner_log()
            last = _last_line(self.ctx.logs.qemu)
            raise HarnessError(
                f"QEMU in the KVM host guest exited {what}: {last}",
                self.ctx.logs.qemu,
            )
        if _stopped_by_kvm(self.qmp):
            self._restart_or_report(what)

    def _copy_inner_log(self) -> None:
        """The inner QEMU's logs and the KVM host's dmesg, out to the log dir."""
        if self._host_guest is None:
            return
        try:
            self._host_guest.get(str(INNER_LOG), self.ctx.logs.qemu)
            dmesg = self._host_guest.run("dmesg", timeout=30).out
            (self.host_logs.dir / "dmesg.txt").write_text(dmesg)
            self._host_guest.get(str(INNER_GUEST_ERRORS), self.ctx.logs.guest_errors)
        except Exception:  # best effort: the KVM host may be gone already
            pass

    def stop(self) -> None:
        if self.qmp is not None:
            self.qmp.quit()
            self.qmp.close()
            self.qmp = None
        if self._host_guest is not None:
            self._stop_inner()
            self._copy_inner_log()
            self._host_guest.close()
            self._host_guest = None
        if self._host is not None:
            self._host.stop()
            self._host = None

    def _stop_inner(self) -> None:
        if self._inner_pid is None:
            return
        pid, self._inner_pid = self._inner_pid, None
        # If this fails, the outer QEMU's end takes the inner one with it.
        with contextlib.suppress(Exception):
            self.host_guest.run(
                f"for i in $(seq 50); do kill -0 {pid} 2>/dev/null || exit 0; sleep 0.1; done; "
                f"kill -9 {pid}",
                timeout=30,
            )


class NestedPeerLauncher:
    """A migration destination's QEMU, in the KVM host of a running source
    (`host`): started incoming, on the peer ports that the host forwards. It
    must end before the source does, whose KVM host it runs in."""

    def __init__(self, ctx: LaunchContext, host: NestedLauncher) -> None:
        if not ctx.incoming:
            raise HarnessError("a second QEMU in a KVM host is only a migration destination")
        self.ctx = ctx
        self.host = host
        self.layout = host.layout
        self.ssh_port = host.peer_ssh_port
        self.qmp: Qmp | None = None
        self._pid: int | None = None
        self._last_check = 0.0

    @property
    def boot_timeout(self) -> float:
        return self.ctx.options.boot_timeout * INNER_BOOT_FACTOR

    @property
    def pid(self) -> int | None:
        return self.host.pid

    def start(self) -> float:
        ctx = self.ctx
        ctx.logs.dir.mkdir(parents=True, exist_ok=True)
        launch = dataclasses.replace(
            inner_launch(ctx, self.layout),
            qemu=Path(self.host.inner_qemu(ctx.qemu)),
            ssh_port=PEER_SSH_PORT,
            qmp_tcp_port=PEER_QMP_PORT,
            paths=LaunchPaths(
                Path("/nonexistent"), Path(PEER_DIR / "serial.log"), Path(PEER_DIR / "errors.log")
            ),
            serial_backend="file",
            incoming=True,
        )
        argv = render(launch)
        ctx.logs.cmdline.write_text(shlex.join(argv) + "\n")
        started = time.monotonic()
        done = self.host.host_guest.run(
            inner_start_command(argv, PEER_DIR, PEER_DIR / "qemu.log"), timeout=60, check=True
        )
        self._pid = int(done.out.split()[-1])
        self.qmp = Qmp(("127.0.0.1", self.host.peer_qmp_port), ctx.logs.qmp, ctx.name)
        self.qmp.connect(INNER_QMP_TIMEOUT, self.check_alive)
        return started

    def check_alive(self, what: str = "before the guest was ready") -> None:
        self.host.check_alive(what)
        if self._pid is None or time.monotonic() - self._last_check < ALIVE_EVERY:
            return
        self._last_check = time.monotonic()
        if self.host.host_guest.run(f"kill -0 {self._pid}", timeout=30).rc != 0:
            self._pid = None
            self._copy_log()
            raise HarnessError(
                f"QEMU {self.ctx.name} in the KVM host guest exited {what}: "
                f"{_last_line(self.ctx.logs.qemu)}",
                self.ctx.logs.qemu,
            )

    def _copy_log(self) -> None:
        with contextlib.suppress(Exception):  # best effort: the KVM host may be gone
            self.host.host_guest.get(str(PEER_DIR / "qemu.log"), self.ctx.logs.qemu)

    def stop(self) -> None:
        if self.qmp is not None:
            self.qmp.quit()
            self.qmp.close()
            self.qmp = None
        if self._pid is not None:
            pid, self._pid = self._pid, None
            with contextlib.suppress(Exception):
                self.host.host_guest.run(
                    f"for i in $(seq 50); do kill -0 {pid} 2>/dev/null || exit 0; sleep 0.1;"
                    f" done; kill -9 {pid}",
                    timeout=30,
                )
        self._copy_log()


def _stopped_by_kvm(qmp: Qmp | None) -> bool:
    """Whether KVM stopped the guest with an internal error (QEMU lives on)."""
    if qmp is None or not qmp.connected:
        return False
    try:
        return qmp.status() == "internal-error"
    except HarnessError:
        return False  # the process check says why


def _last_line(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no output)"
    return lines[-1].strip() if lines else "(no output)"
