"""Where the built QEMU and guest image are: the manifests the builders write."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from orchestrator import sanitize
from orchestrator.errors import HarnessError

# Debian packages that hold the firmware QEMU loads: seabios, qemu-system-data
# (option ROMs such as linuxboot_dma.bin) and ipxe-qemu (NIC ROMs).
FIRMWARE_DIRS = (Path("/usr/share/seabios"), Path("/usr/share/qemu"), Path("/usr/lib/ipxe/qemu"))
REQUIRED_FIRMWARE = ("bios-256k.bin", "linuxboot_dma.bin")


# The QEMU series, in the order they apply (qemu-patches/SERIES); the last one
# brings Hyper-V under TCG.
STACK_FILE = Path(__file__).resolve().parents[1] / "qemu-patches" / "SERIES"
HYPERV_TCG_SERIES = "hyperv-tcg"


def cache_dir() -> Path:
    if explicit := os.environ.get("HVSD_CACHE"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hv-signal-direct"


@dataclass(frozen=True)
class QemuBuild:
    binary: Path
    base: str
    series_hash: str
    series_length: int
    version: str
    # Built with ASan and UBSan (make qemu SANITIZE=1): run with
    # sanitize.environment(), reports counted at the end.
    sanitized: bool = False
    # The series it was built with, in order (empty: unknown or none)
    series: tuple[str, ...] = ()

    def offers_hyperv_tcg(self) -> bool:
        """Whether this QEMU emulates Hyper-V under TCG: its CPUs have the
        x-hv-tcg property (a prefix of the stack without the hyperv-tcg
        series, or a QEMU without the series, does not)."""
        try:
            out = subprocess.run(
                [str(self.binary), "-device", "max-x86_64-cpu,help"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HarnessError(f"cannot run {self.binary}: {exc}") from None
        return "x-hv-tcg" in out.stdout


@dataclass(frozen=True)
class GuestImage:
    key: str
    kernel: Path
    initrd: Path
    rootfs: Path
    kernel_release: str
    headers: Path
    ssh_key: Path
    host_key_pub: Path
    # The nested-kvm KVM host's own kernel, newer than the test guest's (whose
    # KVM is what the leg tests), booted from the same root disk, where its
    # modules sit beside the test guest kernel's; its headers are for
    # building KVM modules for it.
    host_kernel: Path
    host_initrd: Path
    host_kernel_release: str
    host_headers: Path


def _read_manifest(name: str, make_target: str) -> dict[str, object]:
    path = cache_dir() / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise HarnessError(f"{path} not found: run 'make {make_target}' first") from None
    except json.JSONDecodeError as exc:
        raise HarnessError(f"{path} is not valid JSON ({exc}): run 'make {make_target}'") from None


def find_qemu(stock: bool = False) -> QemuBuild:
    """The QEMU to run: $QEMU if set (a developer's own binary), else the built
    one: with HVSD_SANITIZE=1 the one built with the sanitizers. `stock`: the
    same base built without the series (`make qemu-stock`), whatever is set."""
    if stock:
        return _build_of(_read_manifest("qemu-stock.json", "qemu-stock"), "qemu-stock")
    if override := os.environ.get("QEMU"):
        binary = Path(override) if "/" in override else Path(shutil.which(override) or override)
        if not binary.is_file():
            raise HarnessError(f"QEMU binary {override} (from $QEMU) not found")
        return QemuBuild(binary, "$QEMU override", "", 0, "")
    if sanitize.enabled():
        data = _read_manifest("qemu-asan.json", "qemu SANITIZE=1")
    elif prefix := selected_prefix():
        make_target = f"qemu SERIES={','.join(prefix)}"
        return _build_of(_read_manifest(f"qemu-series-{prefix[-1]}.json", make_target), make_target)
    else:
        data = _read_manifest("qemu.json", "qemu")
    return _build_of(data, "qemu")


def stack() -> tuple[str, ...]:
    """The QEMU series, in the order they apply."""
    lines = STACK_FILE.read_text().splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def selected_prefix() -> tuple[str, ...]:
    """$HVSD_SERIES (make ... SERIES=a,b) when it names a proper prefix of
    the stack, whose build has a manifest of its own; () for the whole stack."""
    wanted = tuple(name for name in os.environ.get("HVSD_SERIES", "").split(",") if name)
    if not wanted:
        return ()
    whole = stack()
    if wanted != whole[: len(wanted)]:
        raise HarnessError(
            f"SERIES={','.join(wanted)} is not a prefix of the stack ({','.join(whole)})"
        )
    return wanted if len(wanted) < len(whole) else ()


def _build_of(data: dict[str, object], make_target: str) -> QemuBuild:
    build = QemuBuild(
        binary=Path(str(data["binary"])),
        base=str(data["base"]),
        series_hash=str(data["series_hash"]),
        series_length=int(str(data["series_length"])),
        version=str(data["version"]),
        sanitized=data.get("sanitized") is True,
        series=tuple(name for name in str(data.get("series", "")).split(",") if name),
    )
    if not build.binary.is_file():
        raise HarnessError(f"QEMU binary {build.binary} not found: run 'make {make_target}'")
    return build


def find_image() -> GuestImage:
    data = _read_manifest("image.json", "image")
    try:
        image = GuestImage(
            key=str(data["key"]),
            kernel=Path(str(data["kernel"])),
            initrd=Path(str(data["initrd"])),
            rootfs=Path(str(data["rootfs"])),
            kernel_release=str(data["kernel_release"]),
            headers=Path(str(data["headers"])),
            ssh_key=Path(str(data["ssh_key"])),
            host_key_pub=Path(str(data["host_key_pub"])),
            host_kernel=Path(str(data["host_kernel"])),
            host_initrd=Path(str(data["host_initrd"])),
            host_kernel_release=str(data["host_kernel_release"]),
            host_headers=Path(str(data["host_headers"])),
        )
    except KeyError as exc:
        # An image.json from before a field existed: the build script that
        # writes it has changed since, so 'make image' builds anew.
        raise HarnessError(f"{cache_dir() / 'image.json'} has no {exc}: run 'make image'") from None
    for path in (
        image.kernel,
        image.initrd,
        image.host_kernel,
        image.host_initrd,
        image.rootfs,
        image.ssh_key,
        image.host_key_pub,
    ):
        if not path.is_file():
            raise HarnessError(f"guest image file {path} is missing: run 'make image'")
    return _with_guest_kernel(image, os.environ.get("HVSD_GUEST_KERNEL", ""))


def _with_guest_kernel(image: GuestImage, wanted: str) -> GuestImage:
    """The test guest on the kernel $HVSD_GUEST_KERNEL (make test GUEST_KERNEL=):
    the image's own (6.1, the default) or its KVM host's (7.2), named by the
    start of its release. Both boot the one root disk, which holds the
    modules of both; the probe's module for the second comes from
    `make kvm-modules`, built with that kernel's compiler."""
    kernels = {
        image.kernel_release: image,
        image.host_kernel_release: replace(
            image,
            kernel=image.host_kernel,
            initrd=image.host_initrd,
            kernel_release=image.host_kernel_release,
            headers=image.host_headers,
        ),
    }
    if not wanted:
        return image
    chosen = [release for release in kernels if _names_release(wanted, release)]
    if len(chosen) != 1:
        raise HarnessError(
            f"GUEST_KERNEL={wanted} names none of the image's kernels: "
            + ", ".join(
                f"{release.split('.')[0]}.{release.split('.')[1]} ({release})"
                for release in kernels
            )
        )
    return kernels[chosen[0]]


def _names_release(wanted: str, release: str) -> bool:
    return release == wanted or release.startswith(wanted + ".") or release.startswith(wanted + "-")


def prebuilt_probe(kernel_release: str) -> Path | None:
    """The probe module `make kvm-modules` built for this kernel, if it did."""
    try:
        data = json.loads((cache_dir() / "kvm-modules.json").read_text())
    except (OSError, ValueError):
        return None
    module = Path(str(data.get("probe", "")))
    if data.get("kernel_release") != kernel_release or not module.is_file():
        return None
    return module


def firmware_dirs() -> list[Path]:
    """The firmware directories, checked for the files a boot needs."""
    dirs = [d for d in FIRMWARE_DIRS if d.is_dir()]
    for name in REQUIRED_FIRMWARE:
        if not any((d / name).is_file() for d in dirs):
            searched = ", ".join(str(d) for d in FIRMWARE_DIRS)
            raise HarnessError(
                f"firmware {name} not found in {searched}: "
                "install seabios, qemu-system-data and ipxe-qemu ('make setup')"
            )
    return dirs
