#!/usr/bin/env bash
# Installs the Debian packages the build, the image and the tests need, and the
# deb-src entries that let apt fetch (and verify) QEMU's source package.
# Idempotent: a stamp keyed by this script's content skips the work next time.
set -euo pipefail

cache=${HVSD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hv-signal-direct}
mkdir -p "$cache"
stamp="$cache/host-setup.$(sha256sum "$0" | cut -c1-16).stamp"
[ -e "$stamp" ] && exit 0

packages=(
    # QEMU build (REFERENCE.md section 7)
    git build-essential pkg-config ninja-build python3-venv dpkg-dev
    libglib2.0-dev libpixman-1-dev libslirp-dev flex bison libfdt-dev
    zlib1g-dev device-tree-compiler
    # firmware QEMU loads at run time
    seabios qemu-system-data ipxe-qemu
    # guest image
    mmdebstrap e2fsprogs cpio busybox-static openssh-client
)

if [ "$(id -u)" -ne 0 ]; then
    missing=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "${packages[@]}" 2>&1 \
              | awk '$1 != "ii" {print $NF}' || true)
    if [ -n "$missing" ]; then
        echo "error: not root and these packages are missing: $missing" >&2
        exit 1
    fi
    touch "$stamp"
    exit 0
fi

src_list=/etc/apt/sources.list.d/hv-signal-direct-src.sources
if [ ! -e "$src_list" ]; then
    cat > "$src_list" <<'SRC'
# Added by hv-signal-direct: QEMU's source comes from Debian's source package.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: sid trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

log="$cache/apt.log"
echo "setup: apt-get update and install (log: $log)"
if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}"; } >"$log" 2>&1; then
    echo "error: apt-get failed; see $log" >&2
    exit 1
fi
touch "$stamp"
