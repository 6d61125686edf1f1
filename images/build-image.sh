#!/usr/bin/env bash
# Builds the guest from Debian packages only: a Debian kernel (and its headers,
# for building guest modules), a tiny busybox initramfs that mounts the root
# disk, and an ext4 root disk made with mmdebstrap and mke2fs -d (no loop
# mounts). The output lands in the cache under a key hashed from every input;
# the same inputs twice build nothing. Writes image.json for the orchestrator.
# The in-guest probe (guest-tests/probe: a kernel module built against those
# headers, and its command-line tool) is built and installed into the image.
# The nested-kvm KVM host boots a second, newer kernel (HOST_KERNEL_SUITE,
# fetched with scripts/fetch-deb.sh) from the same root disk: its vmlinuz and
# initramfs sit beside the test guest's, its module tree in the same rootfs,
# its headers beside the other headers.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/../scripts/lib.sh"

IMAGE_DIR=$PROJECT_ROOT/images
# shellcheck source=images/image.conf
. "$IMAGE_DIR/image.conf"

need_tool apt-cache apt-get dpkg-deb mmdebstrap mke2fs cpio ssh-keygen sha256sum make gcc xz
PROBE_DIR=$PROJECT_ROOT/$PROBE_SOURCE_DIR
mkdir -p "$HVSD_CACHE/logs" "$HVSD_CACHE/image"
LOG=$HVSD_CACHE/logs/image-build.log
: >"$LOG"

kernel_package=$(apt-cache depends "linux-image-$KERNEL_FLAVOUR" 2>/dev/null \
                 | awk '/Depends: linux-image-/ {print $2; exit}')
[ -n "$kernel_package" ] \
    || die "cannot resolve linux-image-$KERNEL_FLAVOUR in the apt index (run 'make setup' as root)"
kernel_release=${kernel_package#linux-image-}
kernel_version=$(apt-cache policy "$kernel_package" | awk '/Candidate:/ {print $2}')

# The KVM host's kernel, from its suite's own index.
host_apt_cache() {
    bash "$PROJECT_ROOT/scripts/fetch-deb.sh" --apt-cache "$HOST_KERNEL_SUITE" "$@"
}
# (Each answer is read whole before it is parsed: a reader that stops at the
# first match could SIGPIPE apt-cache, and pipefail would take that as failure.)
deps=$(host_apt_cache depends "linux-image-$HOST_KERNEL_FLAVOUR")
host_kernel_release=$(awk '/Depends: linux-image-/ {sub("^linux-image-", "", $2); print $2; exit}' <<<"$deps")
[ -n "$host_kernel_release" ] \
    || die "cannot resolve linux-image-$HOST_KERNEL_FLAVOUR in $HOST_KERNEL_SUITE's index"
# From 7.x on, linux-image-* is an empty wrapper: the kernel is in
# linux-binary-unsigned-*, the modules in linux-modules-*, modules.builtin and
# the config in linux-base-*. Before (trixie's 6.12), linux-image-* holds it all.
deps=$(host_apt_cache depends "linux-image-$host_kernel_release")
if grep -qxF "  Depends: linux-modules-$host_kernel_release" <<<"$deps"; then
    host_kernel_packages="linux-binary-unsigned-$host_kernel_release linux-modules-$host_kernel_release linux-base-$host_kernel_release"
else
    host_kernel_packages="linux-image-$host_kernel_release"
fi
policy=$(host_apt_cache policy "${host_kernel_packages%% *}")
host_kernel_version=$(awk '/Candidate:/ {print $2}' <<<"$policy")
case "$host_kernel_version" in
    "" | "(none)") die "no candidate for ${host_kernel_packages%% *} in $HOST_KERNEL_SUITE's index" ;;
esac

# The probe's sources only: not what a developer's build leaves beside them.
probe_sources() {
    find "$PROBE_DIR" -maxdepth 1 -type f \( -name '*.c' -o -name '*.h' -o -name Kbuild \
        -o -name Makefile \) ! -name '*.mod.c' -print0 | sort -z
}

key=$( {
    echo "$kernel_package $kernel_version"
    echo "$HOST_KERNEL_SUITE $host_kernel_packages $host_kernel_version"
    find "$IMAGE_DIR" -type f -print0 | sort -z | xargs -0 sha256sum | sed "s|$IMAGE_DIR/||"
    probe_sources | xargs -0 sha256sum | sed "s|$PROJECT_ROOT/||"
} | sha256sum | cut -c1-16)
OUT=$HVSD_CACHE/image/$key

write_manifest() {
    cat >"$HVSD_CACHE/image.json" <<JSON
{
  "key": "$key",
  "kernel": "$OUT/vmlinuz",
  "initrd": "$OUT/initrd.cpio",
  "rootfs": "$OUT/rootfs.ext4",
  "kernel_release": "$kernel_release",
  "kernel_package_version": "$kernel_version",
  "headers": "$OUT/headers/usr/src/linux-headers-$kernel_release",
  "ssh_key": "$OUT/id_ed25519",
  "host_key_pub": "$OUT/ssh_host_ed25519_key.pub",
  "host_kernel": "$OUT/host-vmlinuz",
  "host_initrd": "$OUT/host-initrd.cpio",
  "host_kernel_release": "$host_kernel_release",
  "host_kernel_package_version": "$host_kernel_version",
  "host_kernel_suite": "$HOST_KERNEL_SUITE",
  "host_headers": "$OUT/headers/usr/src/linux-headers-$host_kernel_release"
}
JSON
}

if [ -f "$OUT/complete" ]; then
    write_manifest
    echo "image: up to date ($key, kernel $kernel_release $kernel_version," \
         "KVM host kernel $host_kernel_release $host_kernel_version)"
    exit 0
fi

STAGE=$(mktemp -d "$HVSD_CACHE/image/stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

fetch_kernel() {
    local common kbuild
    common=$(apt-cache depends "linux-headers-$kernel_release" | awk '/Depends: linux-headers-.*-common/ {print $2; exit}')
    kbuild=$(apt-cache depends "linux-headers-$kernel_release" | awk '/Depends: linux-kbuild-/ {print $2; exit}')
    mkdir -p "$STAGE/debs"
    (cd "$STAGE/debs" && apt-get download "$kernel_package" "linux-headers-$kernel_release" "$common" "$kbuild")
    dpkg-deb -x "$STAGE"/debs/linux-image-*.deb "$STAGE/kernel"
    for deb in "$STAGE"/debs/linux-headers-*.deb "$STAGE"/debs/linux-kbuild-*.deb; do
        dpkg-deb -x "$deb" "$STAGE/headers"
    done
    fix_headers_makefile "$kernel_release"
    cp "$STAGE/kernel/boot/vmlinuz-$kernel_release" "$STAGE/vmlinuz"
}

# fix_headers_makefile RELEASE: the headers' Makefile names the common tree
# by its absolute installed path; point it at the copy in the cache instead.
fix_headers_makefile() {
    sed -i "s|/usr/src/|$OUT/headers/usr/src/|" "$STAGE/headers/usr/src/linux-headers-$1/Makefile"
}

# A subshell with errexit, as step runs its command without it.
fetch_host_kernel() (
    set -e
    local unpacked=$STAGE/host-kernel deps common kbuild package modules
    deps=$(host_apt_cache depends "linux-headers-$host_kernel_release")
    common=$(awk '/Depends: linux-headers-.*-common/ {print $2; exit}' <<<"$deps")
    kbuild=$(awk '/Depends: linux-kbuild-/ {print $2; exit}' <<<"$deps")
    # shellcheck disable=SC2086
    bash "$PROJECT_ROOT/scripts/fetch-deb.sh" "$HOST_KERNEL_SUITE" "$STAGE/host-debs" \
        $host_kernel_packages "linux-headers-$host_kernel_release" "$common" "$kbuild"
    for package in $host_kernel_packages; do
        dpkg-deb -x "$STAGE/host-debs/${package}_"*.deb "$unpacked"
    done
    for package in "linux-headers-$host_kernel_release" "$common" "$kbuild"; do
        dpkg-deb -x "$STAGE/host-debs/${package}_"*.deb "$STAGE/headers"
    done
    fix_headers_makefile "$host_kernel_release"
    # /lib/modules (up to 6.12) or /usr/lib/modules (7.x, which also keeps
    # vmlinuz there rather than in /boot).
    modules=$(find "$unpacked" -maxdepth 4 -type d -path "*/lib/modules/$host_kernel_release")
    [ -d "$modules/kernel" ] || die "no module tree for $host_kernel_release in $host_kernel_packages"
    find "$unpacked/boot/vmlinuz-$host_kernel_release" "$modules/vmlinuz" "$modules/vmlinuz.unsigned" \
         -maxdepth 0 -type f -exec mv {} "$STAGE/host-vmlinuz" \; 2>/dev/null || true
    [ -f "$STAGE/host-vmlinuz" ] || die "no vmlinuz for $host_kernel_release in $host_kernel_packages"
    # The guest has only busybox's modprobe, insmod and depmod, which take
    # plain .ko files: Debian ships its newer kernels' modules compressed.
    find "$modules" -name '*.ko.xz' -print0 | xargs -0 -r xz -d
    find "$modules" -name '*.ko.gz' -print0 | xargs -0 -r gzip -d
    find "$modules" -name '*.ko.zst' -print0 | xargs -0 -r zstd -q -d --rm
    mkdir -p "$STAGE/host-modules"
    mv "$modules" "$STAGE/host-modules/"
)

make_rootfs() {
    # shellcheck disable=SC2086
    mmdebstrap --mode=root --variant=essential --include="${ROOTFS_PACKAGES// /,}" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        "$SUITE" "$STAGE/rootfs" "$MIRROR"
}

configure_rootfs() {
    local root=$STAGE/rootfs
    ssh-keygen -q -t ed25519 -N '' -C hvsd-host -f "$STAGE/ssh_host_ed25519_key"
    ssh-keygen -q -t ed25519 -N '' -C hvsd-client -f "$STAGE/id_ed25519"
    rm -f "$root"/etc/ssh/ssh_host_*
    install -m 600 "$STAGE/ssh_host_ed25519_key" "$root/etc/ssh/"
    install -m 644 "$STAGE/ssh_host_ed25519_key.pub" "$root/etc/ssh/"
    install -m 644 "$IMAGE_DIR/rootfs/sshd_config" "$root/etc/ssh/sshd_config"
    install -d -m 700 "$root/root/.ssh"
    install -m 600 "$STAGE/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
    install -d "$root/etc/hvsd"
    install -m 755 "$IMAGE_DIR/rootfs/rc" "$root/etc/hvsd/rc"
    install -m 644 "$IMAGE_DIR/rootfs/inittab" "$root/etc/inittab"
    echo hvsd-guest >"$root/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 hvsd-guest\n' >"$root/etc/hosts"
    printf 'nameserver 10.0.2.3\n' >"$root/etc/resolv.conf"
    # The whole module tree, so guest tests can load any driver (and, later,
    # modules built against the headers kept beside it).
    mkdir -p "$root/lib/modules"
    cp -a "$STAGE/kernel/lib/modules/$kernel_release" "$root/lib/modules/"
    busybox depmod -b "$root" "$kernel_release"
}

# The KVM host kernel's module tree (kvm, kvm_amd, irqbypass, ...), beside
# the test guest kernel's.
install_host_modules() {
    local root=$STAGE/rootfs
    cp -a "$STAGE/host-modules/$host_kernel_release" "$root/lib/modules/" \
        && busybox depmod -b "$root" "$host_kernel_release"
}

build_probe() {
    local root=$STAGE/rootfs build=$STAGE/probe
    local kdir=$STAGE/headers/usr/src/linux-headers-$kernel_release common
    # The headers' Makefile already names the common tree in $OUT, where it
    # is not yet: hand make the staged copy of that Makefile instead.
    common=$(sed -n 's|^include .*/usr/src/||p' "$kdir/Makefile")
    mkdir -p "$build"
    probe_sources | xargs -0 cp -t "$build"
    make -C "$build" KDIR="$kdir" KMAKEFILE="$STAGE/headers/usr/src/$common" all
    install -D -m 644 "$build/hvprobe.ko" "$root/lib/modules/$kernel_release/extra/hvprobe.ko"
    install -D -m 755 "$build/hvprobe" "$root/usr/local/bin/hvprobe"
    busybox depmod -b "$root" "$kernel_release"
}

# make_initramfs RELEASE OUTPUT: the initramfs for that kernel, with those of
# INITRAMFS_MODULES that are modules there (and what they depend on); the
# ones it has built in are left out of /etc/modules, which init loads. A
# subshell with errexit, as step runs its command without it.
make_initramfs() (
    set -e
    local release=$1 output=$2 root=$STAGE/initramfs-$1 module paths path
    local tree=$STAGE/rootfs/lib/modules/$1
    mkdir -p "$root"/{bin,dev,proc,newroot,etc,lib/modules/"$release"}
    cp "$STAGE/rootfs/bin/busybox" "$root/bin/busybox"
    install -m 755 "$IMAGE_DIR/rootfs/init" "$root/init"
    : >"$root/etc/modules"
    for module in $INITRAMFS_MODULES; do
        paths=$(awk -v m="/${module//-/[-_]}.ko:" '$1 ~ m {sub(":", "", $1); print}' "$tree/modules.dep")
        if [ -z "$paths" ]; then
            grep -Eq "/${module//-/[-_]}\.ko\$" "$tree/modules.builtin" \
                || die "initramfs module $module is neither a module of $release nor built in"
            continue
        fi
        echo "$module" >>"$root/etc/modules"
        for path in $paths; do
            install -D -m 644 "$tree/$path" "$root/lib/modules/$release/$path"
        done
    done
    busybox depmod -b "$root" "$release"
    (cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) >"$STAGE/$output"
)

make_disk() {
    mke2fs -q -t ext4 -L hvsd-root -d "$STAGE/rootfs" "$STAGE/rootfs.ext4" "${ROOTFS_SIZE_MB}M"
}

step "image: fetch kernel $kernel_package $kernel_version and headers" "$LOG" fetch_kernel
step "image: fetch KVM host kernel $host_kernel_release $host_kernel_version ($HOST_KERNEL_SUITE) and headers" \
    "$LOG" fetch_host_kernel
step "image: mmdebstrap $SUITE ($ROOTFS_PACKAGES)" "$LOG" make_rootfs
step "image: configure rootfs" "$LOG" configure_rootfs
step "image: install the KVM host kernel's modules" "$LOG" install_host_modules
step "image: build and install the probe (hvprobe.ko, hvprobe)" "$LOG" build_probe
step "image: initramfs" "$LOG" make_initramfs "$kernel_release" initrd.cpio
step "image: KVM host initramfs" "$LOG" make_initramfs "$host_kernel_release" host-initrd.cpio
step "image: ext4 root disk" "$LOG" make_disk

rm -rf "$OUT"
mkdir -p "$OUT"
mv "$STAGE/headers" "$STAGE/vmlinuz" "$STAGE/initrd.cpio" "$STAGE/rootfs.ext4" \
   "$STAGE/host-vmlinuz" "$STAGE/host-initrd.cpio" \
   "$STAGE/id_ed25519" "$STAGE/id_ed25519.pub" "$STAGE/ssh_host_ed25519_key.pub" "$OUT/"
touch "$OUT/complete"
write_manifest
echo "image: $OUT"
