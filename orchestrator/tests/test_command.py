from dataclasses import replace
from pathlib import Path

from orchestrator.artifacts import GuestImage
from orchestrator.command import STIMER_CPU, Launch, LaunchPaths, VmOptions, guest_cpu, render

IMAGE = GuestImage(
    key="k",
    kernel=Path("/img/vmlinuz"),
    initrd=Path("/img/initrd.cpio"),
    rootfs=Path("/img/root fs.ext4"),
    kernel_release="6.1.0-test",
    headers=Path("/img/headers"),
    ssh_key=Path("/img/id"),
    host_key_pub=Path("/img/host.pub"),
    host_kernel=Path("/img/host-vmlinuz"),
    host_initrd=Path("/img/host-initrd.cpio"),
    host_kernel_release="7.2.0-test",
    host_headers=Path("/img/host-headers"),
)


def launch(options: VmOptions) -> Launch:
    return Launch(
        qemu=Path("/q/qemu-system-x86_64"),
        name="t",
        accel="tcg",
        image=IMAGE,
        options=options,
        paths=LaunchPaths(Path("/run/q.sock"), Path("/logs/serial.log")),
        ssh_port=40022,
        firmware_dirs=[Path("/usr/share/seabios"), Path("/usr/share/qemu")],
    )


def arg_after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_render_gives_one_argv_entry_per_argument() -> None:
    argv = render(launch(VmOptions(cpus=4, memory_mb=768, cpu="max,hv-relaxed")))
    assert argv[0] == "/q/qemu-system-x86_64"
    assert arg_after(argv, "-smp") == ["4"]
    assert arg_after(argv, "-m") == ["768"]
    assert arg_after(argv, "-cpu") == ["max,hv-relaxed"]
    assert arg_after(argv, "-accel") == ["tcg"]
    assert arg_after(argv, "-L") == ["/usr/share/seabios", "/usr/share/qemu"]
    assert arg_after(argv, "-qmp") == ["unix:/run/q.sock,server=on,wait=off"]
    # A path with a space stays one argument.
    assert arg_after(argv, "-drive") == [
        "file=/img/root fs.ext4,if=virtio,format=raw,snapshot=on,cache=unsafe"
    ]
    assert "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22" in arg_after(argv, "-netdev")
    assert all(a.strip() == a and a for a in argv)


def test_a_topology_follows_the_cpu_count_in_smp() -> None:
    options = VmOptions(cpus=4, topology="maxcpus=6,sockets=2,cores=3,threads=1")
    assert arg_after(render(launch(options)), "-smp") == ["4,maxcpus=6,sockets=2,cores=3,threads=1"]


def test_kernel_args_and_extra_args_are_appended() -> None:
    argv = render(launch(VmOptions(kernel_args="hvsd.init_only", extra_args=("-S", "-x y"))))
    (cmdline,) = arg_after(argv, "-append")
    assert cmdline.startswith("console=ttyS0 ")
    assert cmdline.endswith(" hvsd.init_only")
    assert argv[-2:] == ["-S", "-x y"]


def test_guest_errors_go_to_their_log_when_asked() -> None:
    assert "-d" not in render(launch(VmOptions()))
    paths = LaunchPaths(Path("/run/q.sock"), Path("/l/serial.log"), Path("/l/guest-errors.log"))
    argv = render(replace(launch(VmOptions()), paths=paths))
    assert arg_after(argv, "-d") == ["guest_errors"]
    assert arg_after(argv, "-D") == ["/l/guest-errors.log"]


def test_under_kvm_the_tcg_opt_in_is_left_out_and_kvm_hidden() -> None:
    # A QEMU without the hyperv-tcg series has no x-hv-tcg property at all
    assert guest_cpu(STIMER_CPU, "kvm") == (
        "max,hv-relaxed,hv-vpindex,hv-synic,hv-time,hv-stimer,hv-stimer-direct,kvm=off"
    )
    assert guest_cpu(STIMER_CPU, "tcg") == STIMER_CPU
    assert guest_cpu("max", "kvm") == "max"
