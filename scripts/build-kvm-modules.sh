#!/usr/bin/env bash
# Builds kvm.ko, kvm-intel.ko and kvm-amd.ko for the nested-kvm KVM host's
# kernel (image.json's host_kernel, from `make image`) from Debian's source of
# exactly that kernel with kvm-patches/series applied, as out-of-tree modules
# against that kernel's linux-headers. The result lands in the cache under a key hashed from every
# input; the same inputs twice build nothing. Writes kvm-modules.json.
#
# The source is Debian's linux-source-<major.minor> package of the image
# kernel's version: the tree of Debian's `linux` source package with Debian's
# patches applied, the tree the linux-headers packages were made from.
# scripts/fetch-deb.sh fetches it from the kernel's suite (sid for 7.2) and
# checks it against that suite's signed index.
#
# kbuild insists on the compiler the kernel was built with (its headers'
# CONFIG_CC_VERSION_TEXT). When the host has no such compiler (7.2 wants
# gcc-16, the host has bookworm's gcc-12), the modules are built in a
# toolchain root of the kernel's suite, made once with mmdebstrap into the
# cache and entered in a mount namespace of its own, so nothing stays mounted.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

PATCH_DIR=$PROJECT_ROOT/kvm-patches
# The in-guest probe's module, built here for this kernel too: a test guest
# may boot it (make test GUEST_KERNEL=7.2), and it needs this compiler.
PROBE_DIR=$PROJECT_ROOT/guest-tests/probe
SCRIPT=$PROJECT_ROOT/scripts/build-kvm-modules.sh
MODULES="kvm kvm-intel kvm-amd"
# KVM's Hyper-V selftests, the one the series extends among them, built from
# the patched tree against its uapi headers (`make headers` writes them to
# the tree's usr/): make kvm-modules-smoke runs each with the stock modules
# and with ours, and the results must agree.
SELFTESTS="x86/hyperv_features x86/hyperv_clock x86/hyperv_cpuid x86/hyperv_evmcs
           x86/hyperv_extended_hypercalls x86/hyperv_ipi x86/hyperv_svm_test
           x86/hyperv_tlb_flush"
# What is taken out of the source tarball: what the series touches and what
# the modules, checkpatch.pl and the selftests need.
SOURCE_PARTS="arch/x86 include virt scripts tools Documentation/virt usr
              Makefile Kbuild Kconfig MAINTAINERS COPYING CREDITS README"
# Top-level directories checkpatch.pl looks for to know it is in a kernel
# tree; empty ones do.
CHECKPATCH_DIRS="drivers fs init ipc kernel lib"
# The toolchain root: what kbuild runs for external modules.
TOOLCHAIN_PACKAGES="make binutils dwarves libc6-dev libelf-dev"
GIT=(git -c user.name=hv-signal-direct -c user.email=hv-signal-direct@localhost
     -c advice.detachedHead=false -c init.defaultBranch=main)

# kstep LABEL CMD...: like step (lib.sh), with errexit on in CMD, and on
# failure one line naming the step, the first error CMD logged, and the log.
kstep() {
    local label=$1 start rc from cause
    shift
    from=$(($(stat -c %s "$LOG") + 1))
    start=$(date +%s.%N)
    printf '%s ... ' "$label"
    set +e
    (set -e; "$@") >>"$LOG" 2>&1
    rc=$?
    set -e
    if [ "$rc" -ne 0 ]; then
        echo "failed"
        cause=$(tail -c +"$from" "$LOG" | grep -m1 -E '^E: |error|Error|failed|not ' || true)
        cause=${cause//"${STAGE:-/nonexistent}/build/"/}
        die "$label failed (exit $rc)${cause:+: $cause}; see $LOG"
    fi
    awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "done (%.1fs)\n", e - s }'
}

need_tool apt-get dpkg-deb tar xz git make gcc objcopy sha256sum perl

series_patches() {
    grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$PATCH_DIR/series" || true
}

# image_field NAME: a string field of image.json.
image_field() {
    sed -n "s|^ *\"$1\": \"\(.*\)\",\{0,1\}$|\1|p" "$HVSD_CACHE/image.json"
}

[ -f "$HVSD_CACHE/image.json" ] \
    || die "no $HVSD_CACHE/image.json: build the guest image first ('make image')"
KERNEL_RELEASE=$(image_field host_kernel_release)
KERNEL_VERSION=$(image_field host_kernel_package_version)
KERNEL_SUITE=$(image_field host_kernel_suite)
HEADERS=$(image_field host_headers)
[ -n "$KERNEL_RELEASE" ] && [ -n "$KERNEL_VERSION" ] && [ -n "$KERNEL_SUITE" ] \
    && [ -f "$HEADERS/.config" ] \
    || die "image.json names no usable KVM host kernel headers ($HEADERS); rebuild the image ('make image')"
# 7.2.13+deb14-cloud-amd64 -> linux-source-7.2
SOURCE_PACKAGE=linux-source-$(echo "$KERNEL_RELEASE" | cut -d. -f1-2)
# "x86_64-linux-gnu-gcc-16 (Debian 16.2.0-4) 16.2.0" -> x86_64-linux-gnu-gcc-16
KERNEL_CC=$(sed -n 's/^CONFIG_CC_VERSION_TEXT="\([^ ]*\) .*/\1/p' "$HEADERS/.config")
[ -n "$KERNEL_CC" ] || die "$HEADERS/.config names no compiler (CONFIG_CC_VERSION_TEXT)"
# gcc-16 from x86_64-linux-gnu-gcc-16; a plain "gcc" is the suite's default.
CC_PACKAGE=$(echo "$KERNEL_CC" | sed -n 's/^\(x86_64-linux-gnu-\)\{0,1\}\(gcc.*\)/\2/p')

mkdir -p "$HVSD_CACHE/logs" "$HVSD_CACHE/kvm-modules"
LOG=$HVSD_CACHE/logs/kvm-build.log
: >"$LOG"

[ -f "$PATCH_DIR/series" ] || die "kvm-patches/series is missing"
key=$( {
    echo "$KERNEL_RELEASE $KERNEL_VERSION $SOURCE_PACKAGE"
    find "$PROBE_DIR" -maxdepth 1 -type f \( -name '*.[ch]' -o -name Kbuild -o -name Makefile \) \
        -print0 | sort -z | xargs -0 sha256sum | sed "s|$PROJECT_ROOT/||"
    sha256sum "$SCRIPT" "$PROJECT_ROOT/scripts/lib.sh" "$PROJECT_ROOT/scripts/fetch-deb.sh" \
        "$PATCH_DIR/series" "$PATCH_DIR/BASE" \
        | sed "s|$PROJECT_ROOT/||"
    for patch in $(series_patches); do
        [ -f "$PATCH_DIR/$patch" ] || die "series lists $patch but kvm-patches/$patch does not exist"
        sha256sum "$PATCH_DIR/$patch" | sed "s|$PROJECT_ROOT/||"
    done
} | sha256sum | cut -c1-16)
OUT=$HVSD_CACHE/kvm-modules/$key
SRC_ROOT=$HVSD_CACHE/linux-src/$(echo "$KERNEL_VERSION" | tr ':+~' '___')
TREE=$SRC_ROOT/src
TOOLCHAIN=$HVSD_CACHE/toolchain/$KERNEL_SUITE-$(echo "$KERNEL_CC $TOOLCHAIN_PACKAGES" \
    | sha256sum | cut -c1-12)

write_manifest() {
    cat >"$HVSD_CACHE/kvm-modules.json" <<JSON
{
  "key": "$key",
  "kernel_release": "$KERNEL_RELEASE",
  "kernel_package_version": "$KERNEL_VERSION",
  "source": "$SOURCE_PACKAGE=$KERNEL_VERSION ($KERNEL_SUITE)",
  "series_length": $(series_patches | wc -l),
  "vermagic": "$(cat "$OUT/vermagic")",
  "capability": $(sed -n 's/^KVM_CAP_HYPERV_SIGNAL_EVENT_DIRECT=//p' "$PATCH_DIR/BASE"),
  "modules": {
    "kvm": "$OUT/kvm.ko",
    "kvm-intel": "$OUT/kvm-intel.ko",
    "kvm-amd": "$OUT/kvm-amd.ko"
  },
  "selftests": {
$(for test in $SELFTESTS; do
    name=$(basename "$test")
    printf '    "%s": "%s"' "$name" "$OUT/selftests/$name"
    if [ "$test" = "${SELFTESTS##* }" ]; then echo; else echo ,; fi
  done)
  },
  "checkpatch": "$OUT/checkpatch.txt",
  "probe": "$OUT/hvprobe.ko"
}
JSON
    cp "$HVSD_CACHE/kvm-modules.json" "$OUT/kvm-modules.json"
}

if [ -f "$OUT/complete" ]; then
    write_manifest
    echo "kvm-modules: up to date ($key, kernel $KERNEL_RELEASE $KERNEL_VERSION)"
    exit 0
fi

# fetch-deb.sh checks the .deb against the suite's signed index (Release ->
# Packages -> SHA256).
fetch_source() {
    local dir=$SRC_ROOT/download
    mkdir -p "$dir"
    ls "$dir"/"$SOURCE_PACKAGE"_*.deb >/dev/null 2>&1 && return 0
    bash "$PROJECT_ROOT/scripts/fetch-deb.sh" "$KERNEL_SUITE" "$dir" "$SOURCE_PACKAGE=$KERNEL_VERSION"
}

# A root of the kernel's suite holding its compiler and what kbuild runs, for
# a kernel the host's compiler cannot build modules for. Made in a staging
# directory and renamed, so an interrupted run leaves no half root.
make_toolchain() {
    local stage
    [ -x "$TOOLCHAIN/usr/bin/$KERNEL_CC" ] && return 0
    mkdir -p "$(dirname "$TOOLCHAIN")"
    rm -rf "$TOOLCHAIN".stage.*
    stage=$(mktemp -d "$TOOLCHAIN.stage.XXXXXX")
    # (The archive's index is a snapshot older than this machine's clock.)
    mmdebstrap --mode=root --variant=apt --aptopt='Acquire::Check-Valid-Until "false"' \
        --include="$CC_PACKAGE,${TOOLCHAIN_PACKAGES// /,}" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        "$KERNEL_SUITE" "$stage" http://deb.debian.org/debian
    [ -x "$stage/usr/bin/$KERNEL_CC" ] || { echo "$KERNEL_CC missing from the $KERNEL_SUITE root"; return 1; }
    mv "$stage" "$TOOLCHAIN"
}

# kbuild CMD...: CMD as kbuild needs it, on the host when it has the kernel's
# compiler, else in the toolchain root, with the cache (the headers, the
# staged sources) at the same path, in a mount namespace that dies with it.
kbuild() {
    if command -v "$KERNEL_CC" >/dev/null 2>&1; then
        clean_env "$@"
        return
    fi
    mkdir -p "$TOOLCHAIN$HVSD_CACHE"
    clean_env unshare --mount --propagation private -- sh -ec '
        root=$1 cache=$2
        shift 2
        mount --rbind /dev "$root/dev"
        mount -t proc proc "$root/proc"
        mount --bind "$cache" "$root$cache"
        exec chroot "$root" "$@"' sh "$TOOLCHAIN" "$HVSD_CACHE" "$@"
}

# The parts of the tree that are needed, committed to git: tag hvsd-base.
unpack_source() {
    local unpack deb part members=()
    [ -d "$TREE/.git" ] && return 0
    deb=$(ls "$SRC_ROOT"/download/"$SOURCE_PACKAGE"_*.deb)
    unpack=$(mktemp -d "$SRC_ROOT/unpack.XXXXXX")
    for part in $SOURCE_PARTS; do
        members+=("$SOURCE_PACKAGE/$part")
    done
    dpkg-deb --fsys-tarfile "$deb" \
        | tar -xO "./usr/src/$SOURCE_PACKAGE.tar.xz" \
        | tar -xJ -C "$unpack" "${members[@]}"
    [ -f "$unpack/$SOURCE_PACKAGE/arch/x86/kvm/hyperv.c" ] \
        || { echo "arch/x86/kvm/hyperv.c missing from $deb"; return 1; }
    (
        cd "$unpack/$SOURCE_PACKAGE"
        "${GIT[@]}" init -q
        "${GIT[@]}" add -A -f
        "${GIT[@]}" commit -q -m "$SOURCE_PACKAGE $KERNEL_VERSION (parts: $(echo $SOURCE_PARTS))"
        "${GIT[@]}" tag hvsd-base
    )
    mv "$unpack/$SOURCE_PACKAGE" "$TREE"
    rm -rf "$unpack"
}

# Resets the tree to hvsd-base and applies the series one patch at a time, so
# a patch that does not apply is named together with git's own message.
apply_series() {
    local patch out
    "${GIT[@]}" -C "$TREE" am --abort >>"$LOG" 2>&1 || true
    "${GIT[@]}" -C "$TREE" checkout -q -f --detach hvsd-base >>"$LOG" 2>&1
    "${GIT[@]}" -C "$TREE" clean -q -f -d -x >>"$LOG" 2>&1
    for patch in $(series_patches); do
        if ! out=$("${GIT[@]}" -C "$TREE" am -q --3way "$PATCH_DIR/$patch" 2>&1); then
            echo "$out" >>"$LOG"
            "${GIT[@]}" -C "$TREE" am --abort >>"$LOG" 2>&1 || true
            die "patch $patch does not apply to $SOURCE_PACKAGE=$KERNEL_VERSION: $(echo "$out" | grep -m1 -E 'error|failed|conflict' || echo "$out" | head -n1); see $LOG"
        fi
    done
}

# A build directory laid out like the tree (arch/x86/kvm beside virt/kvm, as
# the Makefile's ../../../virt/kvm expects), plus an overlay of the headers
# the series changes under include/ and arch/x86/include/, searched before
# the linux-headers package's unpatched copies.
stage_build() {
    local stage=$1 file
    rm -rf "$stage"
    mkdir -p "$stage/arch/x86" "$stage/virt" "$stage/overlay"
    cp -a "$TREE/arch/x86/kvm" "$stage/arch/x86/kvm"
    cp -a "$TREE/virt/kvm" "$stage/virt/kvm"
    "${GIT[@]}" -C "$TREE" diff --name-only hvsd-base HEAD -- include arch/x86/include \
        | while read -r file; do
            install -D -m 644 "$TREE/$file" "$stage/overlay/$file"
        done
    # $(srctree) is the headers package here, which has no KVM sources.
    {
        echo "# build-kvm-modules.sh: the series' headers first, then the kernel's"
        echo "LINUXINCLUDE := -I$stage/overlay/arch/x86/include -I$stage/overlay/include \\"
        echo "	-I$stage/overlay/arch/x86/include/uapi -I$stage/overlay/include/uapi \\"
        echo "	\$(LINUXINCLUDE)"
        sed -e 's|\$(srctree)/arch/x86/kvm|$(src)|g' \
            -e 's|\$(srctree)/virt/kvm|$(src)/../../../virt/kvm|g' \
            "$TREE/arch/x86/kvm/Makefile"
    } >"$stage/arch/x86/kvm/Kbuild"
}

build_modules() {
    local stage=$1
    kbuild make -C "$HEADERS" M="$stage/arch/x86/kvm" -j"$(nproc)" modules
}

build_probe() {
    local stage=$1
    mkdir -p "$stage"
    cp "$PROBE_DIR"/*.[ch] "$PROBE_DIR/Kbuild" "$stage/"
    kbuild make -C "$HEADERS" M="$stage" -j"$(nproc)" modules
}

# The kernel's own checkpatch.pl --strict on every patch of the series, from
# the tree it applies to: 0 errors, 0 warnings, 0 checks.
checkpatch_series() {
    local patch out dir
    for dir in $CHECKPATCH_DIRS; do
        mkdir -p "$TREE/$dir"
    done
    for patch in $(series_patches); do
        out=$(cd "$TREE" && perl scripts/checkpatch.pl --strict "$PATCH_DIR/$patch" 2>&1) || true
        echo "$patch: $(echo "$out" | grep -m1 '^total:')"
        if ! echo "$out" | grep -q '^total: 0 errors, 0 warnings, 0 checks'; then
            echo "$out"
            echo "checkpatch.pl --strict: $patch is not clean"
            return 1
        fi
    done >"$STAGE/checkpatch.txt"
}

build_selftests() {
    local test
    clean_env make -C "$TREE" headers
    for test in $SELFTESTS; do
        clean_env make -C "$TREE/tools/testing/selftests/kvm" OUTPUT="$TREE/tools/testing/selftests/kvm" \
            "$TREE/tools/testing/selftests/kvm/$test"
    done
}

# vermagic of a module, with modinfo if there is one.
vermagic() {
    if command -v modinfo >/dev/null 2>&1; then
        modinfo -F vermagic "$1"
    else
        objcopy -O binary --only-section=.modinfo "$1" /dev/stdout | tr '\0' '\n' \
            | sed -n 's/^vermagic=//p'
    fi
}

check_modules() {
    local stage=$1 module magic first=""
    # modpost resolved every symbol against the headers' Module.symvers?
    if grep -E 'modpost: .*undefined' "$LOG"; then
        echo "modpost: symbols the image kernel does not export"
        return 1
    fi
    for module in $MODULES; do
        [ -f "$stage/arch/x86/kvm/$module.ko" ] || { echo "$module.ko was not built"; return 1; }
        magic=$(vermagic "$stage/arch/x86/kvm/$module.ko")
        echo "$module.ko: vermagic $magic"
        case "$magic" in
            "$KERNEL_RELEASE "*) ;;
            *) echo "$module.ko: vermagic '$magic' is not for $KERNEL_RELEASE"; return 1 ;;
        esac
        first=${first:-$magic}
    done
    echo "$first" >"$stage/vermagic"
}

STAGE=$(mktemp -d "$HVSD_CACHE/kvm-modules/stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

echo "kvm-modules: kernel $KERNEL_RELEASE ($SOURCE_PACKAGE=$KERNEL_VERSION), key $key (log: $LOG)"
BASE_VERSION=$(sed -n 's/^DEBIAN_VERSION=//p' "$PATCH_DIR/BASE")
if [ "$BASE_VERSION" != "$KERNEL_VERSION" ]; then
    echo "note: the series was written against linux $BASE_VERSION (kvm-patches/BASE); the KVM host's kernel is $KERNEL_VERSION"
fi
if [ ! -d "$TREE/.git" ]; then
    kstep "kvm-modules: fetch $SOURCE_PACKAGE=$KERNEL_VERSION from $KERNEL_SUITE" fetch_source
    kstep "kvm-modules: unpack and commit base" unpack_source
fi
printf 'kvm-modules: apply series (%s patches) ... ' "$(series_patches | wc -l)"
apply_series
echo "done"
kstep "kvm-modules: checkpatch.pl --strict on the series" checkpatch_series
if ! command -v "$KERNEL_CC" >/dev/null 2>&1; then
    kstep "kvm-modules: $KERNEL_SUITE root with $KERNEL_CC (the kernel's compiler)" make_toolchain
fi
kstep "kvm-modules: stage arch/x86/kvm, virt/kvm and the patched headers" stage_build "$STAGE/build"
kstep "kvm-modules: build $(echo "$MODULES" | sed 's/ /, /g') against $HEADERS" build_modules "$STAGE/build"
kstep "kvm-modules: check vermagic against $KERNEL_RELEASE" check_modules "$STAGE/build"
kstep "kvm-modules: build the probe module (hvprobe.ko) for $KERNEL_RELEASE" build_probe "$STAGE/probe"
kstep "kvm-modules: build the Hyper-V selftests ($(echo $SELFTESTS | wc -w)) from the patched tree" build_selftests

mkdir -p "$OUT"
for module in $MODULES; do
    install -m 644 "$STAGE/build/arch/x86/kvm/$module.ko" "$OUT/$module.ko"
done
install -m 644 "$STAGE/probe/hvprobe.ko" "$OUT/hvprobe.ko"
cp "$STAGE/build/vermagic" "$OUT/vermagic"
cp "$STAGE/checkpatch.txt" "$OUT/checkpatch.txt"
for test in $SELFTESTS; do
    install -D -m 755 "$TREE/tools/testing/selftests/kvm/$test" "$OUT/selftests/$(basename "$test")"
done
"${GIT[@]}" -C "$TREE" log --format='%h %s' hvsd-base..HEAD >"$OUT/series.txt"
write_manifest
touch "$OUT/complete"
echo "kvm-modules: $OUT ($(cat "$OUT/vermagic"))"
