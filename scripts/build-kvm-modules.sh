#!/usr/bin/env bash
# Builds kvm.ko, kvm-intel.ko and kvm-amd.ko for the guest image's kernel
# (image.json, from `make image`) from Debian's source of exactly that kernel
# with kvm-patches/series applied, as out-of-tree modules against the image's
# linux-headers. The result lands in the cache under a key hashed from every
# input; the same inputs twice build nothing. Writes kvm-modules.json.
#
# The source is Debian's linux-source-<major.minor> package of the image
# kernel's version: the tree of Debian's `linux` source package with Debian's
# patches applied, the tree the linux-headers packages were made from. apt
# fetches it and checks it against the signed index.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

PATCH_DIR=$PROJECT_ROOT/kvm-patches
SCRIPT=$PROJECT_ROOT/scripts/build-kvm-modules.sh
MODULES="kvm kvm-intel kvm-amd"
# What is taken out of the source tarball: what the series touches and what
# the modules, checkpatch.pl and the selftests need.
SOURCE_PARTS="arch/x86 include virt scripts tools Documentation/virt usr
              Makefile Kbuild Kconfig MAINTAINERS COPYING"
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

need_tool apt-get dpkg-deb tar xz git make gcc objcopy sha256sum

series_patches() {
    grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$PATCH_DIR/series" || true
}

# image_field NAME: a string field of image.json.
image_field() {
    sed -n "s|^ *\"$1\": \"\(.*\)\",\{0,1\}$|\1|p" "$HVSD_CACHE/image.json"
}

[ -f "$HVSD_CACHE/image.json" ] \
    || die "no $HVSD_CACHE/image.json: build the guest image first ('make image')"
KERNEL_RELEASE=$(image_field kernel_release)
KERNEL_VERSION=$(image_field kernel_package_version)
HEADERS=$(image_field headers)
[ -n "$KERNEL_RELEASE" ] && [ -n "$KERNEL_VERSION" ] && [ -f "$HEADERS/.config" ] \
    || die "image.json names no usable kernel headers ($HEADERS); rebuild the image ('make image')"
# 6.1.0-56-cloud-amd64 -> linux-source-6.1
SOURCE_PACKAGE=linux-source-$(echo "$KERNEL_RELEASE" | cut -d. -f1-2)

mkdir -p "$HVSD_CACHE/logs" "$HVSD_CACHE/kvm-modules"
LOG=$HVSD_CACHE/logs/kvm-build.log
: >"$LOG"

[ -f "$PATCH_DIR/series" ] || die "kvm-patches/series is missing"
key=$( {
    echo "$KERNEL_RELEASE $KERNEL_VERSION $SOURCE_PACKAGE"
    sha256sum "$SCRIPT" "$PROJECT_ROOT/scripts/lib.sh" "$PATCH_DIR/series" "$PATCH_DIR/BASE" \
        | sed "s|$PROJECT_ROOT/||"
    for patch in $(series_patches); do
        [ -f "$PATCH_DIR/$patch" ] || die "series lists $patch but kvm-patches/$patch does not exist"
        sha256sum "$PATCH_DIR/$patch" | sed "s|$PROJECT_ROOT/||"
    done
} | sha256sum | cut -c1-16)
OUT=$HVSD_CACHE/kvm-modules/$key
SRC_ROOT=$HVSD_CACHE/linux-src/$(echo "$KERNEL_VERSION" | tr ':+~' '___')
TREE=$SRC_ROOT/src

write_manifest() {
    cat >"$HVSD_CACHE/kvm-modules.json" <<JSON
{
  "key": "$key",
  "kernel_release": "$KERNEL_RELEASE",
  "kernel_package_version": "$KERNEL_VERSION",
  "source": "$SOURCE_PACKAGE=$KERNEL_VERSION",
  "series_length": $(series_patches | wc -l),
  "vermagic": "$(cat "$OUT/vermagic")",
  "modules": {
    "kvm": "$OUT/kvm.ko",
    "kvm-intel": "$OUT/kvm-intel.ko",
    "kvm-amd": "$OUT/kvm-amd.ko"
  },
  "selftests": {
    "hyperv_features": "$OUT/selftests/hyperv_features"
  }
}
JSON
    cp "$HVSD_CACHE/kvm-modules.json" "$OUT/kvm-modules.json"
}

if [ -f "$OUT/complete" ]; then
    write_manifest
    echo "kvm-modules: up to date ($key, kernel $KERNEL_RELEASE $KERNEL_VERSION)"
    exit 0
fi

# apt-get download checks the .deb against the signed index (Release ->
# Packages -> SHA256).
fetch_source() {
    local dir=$SRC_ROOT/download
    mkdir -p "$dir"
    ls "$dir"/"$SOURCE_PACKAGE"_*.deb >/dev/null 2>&1 && return 0
    (cd "$dir" && apt-get download "$SOURCE_PACKAGE=$KERNEL_VERSION")
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
        sed -e 's|\$(srctree)/arch/x86/kvm|$(src)|' \
            -e 's|\$(srctree)/virt/kvm/|$(src)/../../../virt/kvm/|' \
            "$TREE/arch/x86/kvm/Makefile"
    } >"$stage/arch/x86/kvm/Kbuild"
}

build_modules() {
    local stage=$1
    make -C "$HEADERS" M="$stage/arch/x86/kvm" -j"$(nproc)" modules
}

# KVM's own selftest that the series extends, built from the patched tree
# against its uapi headers (`make headers` writes them to the tree's usr/).
SELFTESTS="x86_64/hyperv_features"
build_selftests() {
    local test
    make -C "$TREE" headers
    for test in $SELFTESTS; do
        make -C "$TREE/tools/testing/selftests/kvm" OUTPUT="$TREE/tools/testing/selftests/kvm" \
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
    echo "note: the series was written against linux $BASE_VERSION (kvm-patches/BASE); the image's kernel is $KERNEL_VERSION"
fi
if [ ! -d "$TREE/.git" ]; then
    kstep "kvm-modules: fetch $SOURCE_PACKAGE=$KERNEL_VERSION with apt" fetch_source
    kstep "kvm-modules: unpack and commit base" unpack_source
fi
printf 'kvm-modules: apply series (%s patches) ... ' "$(series_patches | wc -l)"
apply_series
echo "done"
kstep "kvm-modules: stage arch/x86/kvm, virt/kvm and the patched headers" stage_build "$STAGE/build"
kstep "kvm-modules: build $(echo "$MODULES" | sed 's/ /, /g') against $HEADERS" build_modules "$STAGE/build"
kstep "kvm-modules: check vermagic against $KERNEL_RELEASE" check_modules "$STAGE/build"
kstep "kvm-modules: build the selftest ($(echo $SELFTESTS)) from the patched tree" build_selftests

mkdir -p "$OUT"
for module in $MODULES; do
    install -m 644 "$STAGE/build/arch/x86/kvm/$module.ko" "$OUT/$module.ko"
done
cp "$STAGE/build/vermagic" "$OUT/vermagic"
for test in $SELFTESTS; do
    install -D -m 755 "$TREE/tools/testing/selftests/kvm/$test" "$OUT/selftests/$(basename "$test")"
done
"${GIT[@]}" -C "$TREE" log --format='%h %s' hvsd-base..HEAD >"$OUT/series.txt"
write_manifest
touch "$OUT/complete"
echo "kvm-modules: $OUT ($(cat "$OUT/vermagic"))"
