"""The nested-KVM launcher's command lines and the accelerator's launcher
choice, without booting anything."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator import nested, payload
from orchestrator.accel import Accel
from orchestrator.artifacts import QemuBuild
from orchestrator.command import VmOptions, render
from orchestrator.console import ConsoleWatch
from orchestrator.errors import HarnessError
from orchestrator.launcher import DirectLauncher, LaunchContext
from orchestrator.nested import (
    HOST_CPUS,
    INNER_LOG,
    KvmHostLauncher,
    NestedLauncher,
    NestedPeerLauncher,
    host_options,
    inner_launch,
    inner_start_command,
    kvm_host_image,
)
from orchestrator.payload import PayloadInputs, PayloadLayout
from orchestrator.tests.test_command import IMAGE, arg_after
from orchestrator.vm import make_launcher
from orchestrator.vmlogs import VmLogs


def context(accel: str, tmp: Path, options: VmOptions | None = None) -> LaunchContext:
    logs = VmLogs(tmp / "logs")
    return LaunchContext(
        qemu=QemuBuild(Path("/build/qemu-system-x86_64"), "base", "hash", 24, "10.2"),
        image=IMAGE,
        firmware=[Path("/usr/share/seabios")],
        accel=Accel(accel, "test"),
        options=options or VmOptions.hyperv(),
        name="t",
        logs=logs,
        runtime=tmp / "run",
        console=ConsoleWatch(logs.serial),
    )


@pytest.mark.parametrize(
    ("accel", "kind"),
    [("tcg", DirectLauncher), ("kvm", DirectLauncher), ("nested-kvm", NestedLauncher)],
)
def test_the_accelerator_picks_the_launcher(tmp_path: Path, accel: str, kind: type) -> None:
    launcher = make_launcher(context(accel, tmp_path))
    assert type(launcher) is kind


def test_host_kvm_runs_the_tcg_command_line_with_accel_kvm(tmp_path: Path) -> None:
    tcg = render(DirectLauncher(context("tcg", tmp_path)).launch(40022))
    kvm = render(DirectLauncher(context("kvm", tmp_path)).launch(40022))
    assert arg_after(kvm, "-accel") == ["kvm"]
    assert arg_after(kvm, "-cpu") == [
        arg_after(tcg, "-cpu")[0].replace(",x-hv-tcg=on", "") + ",kvm=off"
    ]
    assert [{"tcg": "kvm"}.get(a, a) for a in tcg if "hv-" not in a] == [
        a for a in kvm if "hv-" not in a
    ]


def test_inner_qemu_gets_the_tcg_command_line_with_accel_kvm_and_translated_paths(
    tmp_path: Path,
) -> None:
    ctx = context("nested-kvm", tmp_path)
    layout = PayloadLayout()
    inner = render(inner_launch(ctx, layout))
    tcg = render(DirectLauncher(context("tcg", tmp_path)).launch(2222))

    assert inner[0] == "/mnt/hvsd-payload/bin/qemu"
    assert arg_after(inner, "-accel") == ["kvm"]
    assert arg_after(inner, "-cpu") == [
        arg_after(tcg, "-cpu")[0].replace(",x-hv-tcg=on", "") + ",kvm=off"
    ]
    assert arg_after(inner, "-device") == arg_after(tcg, "-device")
    assert arg_after(inner, "-append") == arg_after(tcg, "-append")
    assert arg_after(inner, "-L") == ["/mnt/hvsd-payload/firmware"]
    assert arg_after(inner, "-kernel") == ["/mnt/hvsd-payload/guest/vmlinuz"]
    assert arg_after(inner, "-initrd") == ["/mnt/hvsd-payload/guest/initrd.img"]
    assert arg_after(inner, "-drive")[0].startswith(
        "file=/dev/vdc,if=virtio,format=raw,snapshot=on"
    )
    assert "hostfwd=tcp:0.0.0.0:2222-:22" in arg_after(inner, "-netdev")[0]
    assert arg_after(inner, "-qmp") == ["tcp:0.0.0.0:4444,server=on,wait=off"]
    assert arg_after(inner, "-chardev") == ["serial,id=serial0,path=/dev/ttyS1"]
    # Nothing else differs from the TCG command line.
    differing = {i for i, (a, b) in enumerate(zip(inner, tcg, strict=True)) if a != b}
    flags = {inner[i - 1] for i in differing if i > 0}
    assert flags == {
        "-accel",
        "-cpu",
        "-L",
        "-kernel",
        "-initrd",
        "-drive",
        "-netdev",
        "-chardev",
        "-qmp",
        "-D",
    }
    assert arg_after(inner, "-D") == ["/tmp/hvsd-inner/guest-errors.log"]


def test_kvm_host_is_a_plain_tcg_guest_with_the_payload_and_two_serials(tmp_path: Path) -> None:
    ctx = context("nested-kvm", tmp_path)
    options = host_options(Path("/c/payload.ext4"), IMAGE.rootfs, ctx.logs.serial)
    host_ctx = LaunchContext(
        **{
            **ctx.__dict__,
            "image": kvm_host_image(IMAGE),
            "options": options,
            "accel": Accel("tcg", "h"),
        }
    )
    argv = render(KvmHostLauncher(host_ctx, ((41000, 2222), (41001, 4444))).launch(40022))

    assert arg_after(argv, "-accel") == ["tcg"]
    assert arg_after(argv, "-kernel") == [str(IMAGE.host_kernel)], "the KVM host's own kernel"
    assert arg_after(argv, "-initrd") == [str(IMAGE.host_initrd)]
    assert arg_after(argv, "-cpu") == ["max"], "no hv-* flags on the KVM host"
    assert arg_after(argv, "-m") == ["3072"]
    assert arg_after(argv, "-smp") == [str(HOST_CPUS)]
    drives = arg_after(argv, "-drive")
    assert drives[0].startswith(f"file={IMAGE.rootfs},") and "snapshot=on" in drives[0]
    assert drives[1] == "file=/c/payload.ext4,if=virtio,format=raw,readonly=on"
    assert drives[2] == f"file={IMAGE.rootfs},if=virtio,format=raw,readonly=on"
    netdev = arg_after(argv, "-netdev")[0]
    for forward in ("127.0.0.1:40022-:22", "127.0.0.1:41000-:2222", "127.0.0.1:41001-:4444"):
        assert f"hostfwd=tcp:{forward}" in netdev
    assert arg_after(argv, "-serial") == ["chardev:serial0", "chardev:inner-console"]
    assert f"file,id=inner-console,path={ctx.logs.serial}" in arg_after(argv, "-chardev")


def test_patched_modules_must_match_the_kvm_host_kernel() -> None:
    vermagic = f"{IMAGE.host_kernel_release} SMP preempt mod_unload "
    assert kvm_host_image(IMAGE, vermagic).kernel == IMAGE.host_kernel
    # Modules built for any other kernel (the test guest's, say) never load.
    stale = f"{IMAGE.kernel_release} SMP mod_unload "
    with pytest.raises(HarnessError) as failure:
        kvm_host_image(IMAGE, stale)
    assert stale in str(failure.value) and IMAGE.host_kernel_release in str(failure.value)
    assert "make kvm-modules" in str(failure.value)


def test_nested_boots_get_a_longer_timeout(tmp_path: Path) -> None:
    options = VmOptions.hyperv(boot_timeout=100)
    assert NestedLauncher(context("nested-kvm", tmp_path, options)).boot_timeout == 400
    assert DirectLauncher(context("tcg", tmp_path, options)).boot_timeout == 100


def test_inner_qemu_starts_detached_with_its_log_in_the_host_guest() -> None:
    command = inner_start_command(["/q", "-name", "a b"])
    assert "nohup /q -name 'a b' </dev/null" in command
    assert f">{INNER_LOG} 2>&1 & echo $!" in command


def test_ldd_output_gives_every_library_and_the_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    out = (
        "\tlinux-vdso.so.1 (0x00007ffd)\n"
        "\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f01)\n"
        "\t/lib64/ld-linux-x86-64.so.2 (0x00007f02)\n"
    )

    class Done:
        stdout = out

    monkeypatch.setattr(payload.subprocess, "run", lambda *a, **k: Done())
    libs = payload.shared_libraries(Path("/q"))
    assert libs == [Path("/lib/x86_64-linux-gnu/libz.so.1"), Path("/lib64/ld-linux-x86-64.so.2")]


def test_payload_key_follows_every_input(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    first = PayloadInputs({"bin/x": a, "guest/k": b}).key()
    assert first == PayloadInputs({"guest/k": b, "bin/x": a}).key()
    b.write_bytes(b"three")
    assert PayloadInputs({"bin/x": a, "guest/k": b}).key() != first


class _Answers:
    """Stands in for the inner QEMU's QMP and the KVM host's shell."""

    def __init__(self, forwards: bool) -> None:
        self.forwards = forwards

    def execute(self, command: str) -> list[dict[str, object]]:
        assert command == "x-query-synic"
        return [{"vp-index": vp, "signal-event-direct": self.forwards} for vp in (0, 1)]

    def run(self, command: str, timeout: float) -> object:
        class Done:
            out = "kvm_amd 217088 0 - Live 0x0 (O)\nkvm 1392640 1 kvm_amd, Live 0x0 (O)\ntaint=O\n"

        return Done()


@pytest.mark.parametrize("forwards", [True, False])
def test_patched_leg_stops_in_one_line_when_the_kernel_does_not_forward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forwards: bool
) -> None:
    monkeypatch.setenv("KVM_MODULES", "patched")
    monkeypatch.setattr("orchestrator.nested.patched_kvm_capability", lambda: 250)
    launcher = NestedLauncher(context("nested-kvm", tmp_path))
    answers = _Answers(forwards)
    launcher._host_guest = answers  # type: ignore[assignment]
    if forwards:
        launcher._check_forwarding(answers)  # type: ignore[arg-type]
        return
    with pytest.raises(HarnessError) as failure:
        launcher._check_forwarding(answers)  # type: ignore[arg-type]
    said = str(failure.value)
    assert "\n" not in said
    assert "KVM_CAP_HYPERV_SIGNAL_EVENT_DIRECT=250) answered 0" in said
    assert "kvm_amd" in said and "taint=O" in said


def test_a_migration_destination_runs_beside_its_source_in_the_kvm_host(tmp_path: Path) -> None:
    stock = QemuBuild(Path("/stock/qemu-system-x86_64"), "base", "none", 0, "10.2")
    source_ctx = replace(context("nested-kvm", tmp_path), peer_qemu=stock)
    source = NestedLauncher(source_ctx)
    source.peer_ssh_port = 40023
    destination_ctx = replace(
        context("nested-kvm", tmp_path), qemu=stock, incoming=True, cohost=source
    )
    destination = make_launcher(destination_ctx)
    assert isinstance(destination, NestedPeerLauncher)
    assert destination.ssh_port == 40023
    assert source.inner_qemu(stock) == PayloadLayout().peer_qemu
    assert source.inner_qemu(source_ctx.qemu) == PayloadLayout().qemu
    other = QemuBuild(Path("/other/qemu-system-x86_64"), "base", "x", 1, "10.2")
    with pytest.raises(HarnessError, match="carries no /other/qemu-system-x86_64"):
        source.inner_qemu(other)


def test_a_second_qemu_in_the_kvm_host_is_only_a_migration_destination(tmp_path: Path) -> None:
    source = NestedLauncher(context("nested-kvm", tmp_path))
    with pytest.raises(HarnessError, match="only a migration destination"):
        make_launcher(replace(context("nested-kvm", tmp_path), cohost=source))


def test_the_payload_carries_the_peer_qemu_with_a_wrapper_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, stock = tmp_path / "ours", tmp_path / "stock"
    for path in (ours, stock, tmp_path / "vmlinuz", tmp_path / "initrd"):
        path.write_bytes(path.name.encode())
    monkeypatch.setattr(payload, "shared_libraries", lambda binary: [])
    image = replace(IMAGE, kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd")
    inputs = payload.payload_inputs(
        QemuBuild(ours, "b", "h", 1, "v"), image, [], peer_qemu=QemuBuild(stock, "b", "", 0, "v")
    )
    assert inputs.files["bin/qemu-system-x86_64"] == ours
    assert inputs.files["bin/qemu-peer-system-x86_64"] == stock
    without = payload.payload_inputs(QemuBuild(ours, "b", "h", 1, "v"), image, [])
    assert "bin/qemu-peer-system-x86_64" not in without.files
    assert inputs.key() != without.key()


class FakeQmp:
    """QMP of a guest KVM stopped: query-status says internal-error."""

    connected = True

    def __init__(self) -> None:
        self.executed: list[str] = []

    def status(self) -> str:
        return "internal-error"

    def execute(self, command: str) -> dict[str, object]:
        self.executed.append(command)
        return {}


def test_a_guest_kvm_stops_while_booting_is_reset_once_then_reported(tmp_path: Path) -> None:
    launcher = NestedLauncher(context("nested-kvm", tmp_path))
    qmp = FakeQmp()
    launcher.qmp = qmp  # type: ignore[assignment]
    launcher.host_logs.dir.mkdir(parents=True)
    assert nested._stopped_by_kvm(launcher.qmp)
    launcher._restart_or_report("before the guest was ready")
    assert qmp.executed == ["system_reset", "cont"]
    with pytest.raises(HarnessError, match="KVM stopped the guest before the guest was ready"):
        launcher._restart_or_report("before the guest was ready")
    assert qmp.executed == ["system_reset", "cont"]


def test_a_guest_kvm_stops_in_use_is_reported_at_once(tmp_path: Path) -> None:
    launcher = NestedLauncher(context("nested-kvm", tmp_path))
    launcher.qmp = FakeQmp()  # type: ignore[assignment]
    with pytest.raises(HarnessError, match="while the guest was in use"):
        launcher._restart_or_report("while the guest was in use")
