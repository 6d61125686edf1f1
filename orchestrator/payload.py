"""The read-only disk the nested KVM host gets: our QEMU, its libraries, its
firmware and the test guest's kernel and initrd, as an ext4 image in the cache.
For a migration between two QEMUs in one KVM host (the stock one and ours), a
second QEMU goes in beside the first.

Built once per set of inputs (the key hashes every file that goes in), with
`mke2fs -d`, so nothing is copied over SSH into the TCG guest."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator.artifacts import GuestImage, QemuBuild, cache_dir
from orchestrator.errors import HarnessError

LAYOUT_VERSION = "1"
# What QEMU loads for a -kernel boot on q35 with SeaBIOS (and the option ROMs
# it may look for); each is taken from the first firmware directory holding it.
FIRMWARE_FILES = (
    "bios-256k.bin",
    "linuxboot_dma.bin",
    "linuxboot.bin",
    "multiboot_dma.bin",
    "multiboot.bin",
    "kvmvapic.bin",
    "pvh.bin",
)
PAYLOAD_MOUNT = PurePosixPath("/mnt/hvsd-payload")
LOADER = "ld-linux-x86-64.so.2"
# Where each QEMU's binary goes: the first, and a second one's (a migration
# peer); bin/<wrapper> runs bin/<binary>.
BINARIES = {"qemu": "qemu-system-x86_64", "qemu-peer": "qemu-peer-system-x86_64"}
# The wrapper runs QEMU through the copied loader, so that the outer guest's
# own libraries (if any differ) play no part.
WRAPPER = f"""#!/bin/sh
here=$(dirname "$0")/..
exec "$here/lib/{LOADER}" --library-path "$here/lib" "$here/bin/BINARY" "$@"
"""
_LDD_LINE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")


@dataclass(frozen=True)
class PayloadLayout:
    """Where things are once the outer guest has mounted the payload disk."""

    mount: PurePosixPath = PAYLOAD_MOUNT

    @property
    def qemu(self) -> PurePosixPath:
        return self.mount / "bin" / "qemu"

    @property
    def peer_qemu(self) -> PurePosixPath:
        """The second QEMU, where the payload carries one."""
        return self.mount / "bin" / "qemu-peer"

    @property
    def firmware(self) -> PurePosixPath:
        return self.mount / "firmware"

    @property
    def kernel(self) -> PurePosixPath:
        return self.mount / "guest" / "vmlinuz"

    @property
    def initrd(self) -> PurePosixPath:
        return self.mount / "guest" / "initrd.img"

    @property
    def kvm_modules(self) -> PurePosixPath:
        """The patched kvm.ko, kvm-amd.ko and kvm-intel.ko, with KVM_MODULES=patched."""
        return self.mount / "kvm"


@dataclass(frozen=True)
class PayloadInputs:
    """Host file -> path inside the payload disk."""

    files: dict[str, Path]

    def key(self) -> str:
        digest = hashlib.sha256(LAYOUT_VERSION.encode())
        for inside, source in sorted(self.files.items()):
            digest.update(inside.encode() + b"\0")
            with source.open("rb") as data:
                for block in iter(lambda: data.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()[:16]


def shared_libraries(binary: Path) -> list[Path]:
    """The libraries `ldd` says the binary loads, the loader included."""
    try:
        done = subprocess.run(
            ["ldd", str(binary)], capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise HarnessError(f"ldd {binary} failed: {exc}") from None
    libs = [Path(m.group(1)) for line in done.stdout.splitlines() if (m := _LDD_LINE.search(line))]
    if not any(lib.name == LOADER for lib in libs):
        raise HarnessError(f"ldd {binary} names no {LOADER}: is it a dynamic x86_64 binary?")
    return libs


KVM_MODULES = ("kvm", "kvm-amd", "kvm-intel")


def _kvm_modules_manifest() -> tuple[Path, dict[str, Any]]:
    manifest = cache_dir() / "kvm-modules.json"
    if not manifest.exists():
        raise HarnessError(
            f"KVM_MODULES=patched, but {manifest} not found: run 'make kvm-modules' first"
        )
    return manifest, json.loads(manifest.read_text())


def patched_kvm_vermagic() -> str:
    """The vermagic of the modules `make kvm-modules` built ("<release> SMP ...")."""
    return str(_kvm_modules_manifest()[1]["vermagic"])


def patched_kvm_capability() -> int:
    """KVM_CAP_HYPERV_SIGNAL_EVENT_DIRECT's number in the series those modules carry."""
    return int(_kvm_modules_manifest()[1]["capability"])


def patched_kvm_selftests() -> dict[str, Path]:
    """KVM's Hyper-V selftests built from the patched tree, by name."""
    manifest, data = _kvm_modules_manifest()
    found = {str(name): Path(path) for name, path in data["selftests"].items()}
    for name, path in found.items():
        if not path.is_file():
            raise HarnessError(
                f"selftest {name} not found at {path}: run 'make kvm-modules'", manifest
            )
    return found


def patched_kvm_modules() -> dict[str, Path]:
    """The modules `make kvm-modules` built (kvm-modules.json), by name."""
    manifest, data = _kvm_modules_manifest()
    modules = data["modules"]
    found = {name: Path(modules[name]) for name in KVM_MODULES}
    for name, path in found.items():
        if not path.is_file():
            raise HarnessError(f"KVM_MODULES=patched: {name}.ko not found at {path}", manifest)
    return found


def payload_inputs(
    qemu: QemuBuild,
    image: GuestImage,
    firmware_dirs: list[Path],
    patched_kvm: bool = False,
    peer_qemu: QemuBuild | None = None,
) -> PayloadInputs:
    files = {f"bin/{BINARIES['qemu']}": qemu.binary}
    if peer_qemu is not None:
        files[f"bin/{BINARIES['qemu-peer']}"] = peer_qemu.binary
    if patched_kvm:
        for name, path in patched_kvm_modules().items():
            files[f"kvm/{name}.ko"] = path
    for build in (qemu, peer_qemu):
        for lib in shared_libraries(build.binary) if build else ():
            files[f"lib/{lib.name}"] = lib.resolve()
    for name in FIRMWARE_FILES:
        found = next((d / name for d in firmware_dirs if (d / name).is_file()), None)
        if found is not None:
            files[f"firmware/{name}"] = found.resolve()
    files["guest/vmlinuz"] = image.kernel
    files["guest/initrd.img"] = image.initrd
    return PayloadInputs(files)


def _stage(inputs: PayloadInputs, root: Path) -> None:
    for inside, source in inputs.files.items():
        target = root / inside
        target.parent.mkdir(parents=True, exist_ok=True)
        if inside.removeprefix("bin/") in BINARIES.values():
            # Debug info would triple the disk; the outer guest needs none.
            subprocess.run(["strip", "-o", str(target), str(source)], check=True, timeout=120)
        else:
            shutil.copyfile(source, target)
        target.chmod(0o755 if inside.startswith(("bin/", "lib/")) else 0o644)
    for name, binary in BINARIES.items():
        if f"bin/{binary}" in inputs.files:
            wrapper = root / "bin" / name
            wrapper.write_text(WRAPPER.replace("BINARY", binary))
            wrapper.chmod(0o755)


def _make_ext4(root: Path, disk: Path, log: Path) -> None:
    used = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    size_mb = used * 5 // 4 // (1 << 20) + 32
    with log.open("w") as out:
        done = subprocess.run(
            ["mke2fs", "-q", "-F", "-t", "ext4", "-L", "hvsd-payload", "-d", str(root),
             str(disk), f"{size_mb}M"],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=300,
        )  # fmt: skip
    if done.returncode != 0:
        raise HarnessError("mke2fs of the nested-KVM payload disk failed", log)


KEPT_PAYLOADS = 3


def ensure_payload(
    qemu: QemuBuild,
    image: GuestImage,
    firmware_dirs: list[Path],
    patched_kvm: bool = False,
    peer_qemu: QemuBuild | None = None,
) -> Path:
    """The payload disk for these inputs, built now if the cache lacks it."""
    inputs = payload_inputs(qemu, image, firmware_dirs, patched_kvm, peer_qemu)
    folder = cache_dir() / "nested"
    folder.mkdir(parents=True, exist_ok=True)
    disk = folder / f"payload-{inputs.key()}.ext4"
    if disk.is_file():
        return disk
    # Keep the newest few: stock and patched KVM legs, or an older QEMU for a
    # before/after run, each have their own, and a run may hold one open.
    kept = sorted(folder.glob("payload-*.ext4"), key=lambda path: path.stat().st_mtime)
    for stale in kept[: -KEPT_PAYLOADS + 1]:
        stale.unlink(missing_ok=True)
    log = folder / "payload-build.log"
    with tempfile.TemporaryDirectory(prefix="hvsd-payload-", dir=folder) as tmp:
        root = Path(tmp) / "root"
        try:
            _stage(inputs, root)
        except (OSError, subprocess.SubprocessError) as exc:
            raise HarnessError(f"staging the nested-KVM payload failed: {exc}") from None
        partial = Path(tmp) / "disk.ext4"
        _make_ext4(root, partial, log)
        partial.rename(disk)
    return disk
