#!/usr/bin/env bash
# fetch-deb.sh SUITE DEST PKG[=VERSION]...
# fetch-deb.sh --apt-cache SUITE APT-CACHE-ARGS...
#
# Downloads binary packages of another Debian suite (sid, trixie) into DEST,
# verified against that suite's signed index, without making the suite a
# source of the host's own packages: apt runs with a configuration of its own
# (sources, lists, cache and preferences under the cache), so the host's
# `apt-get install` never sees it. Prints nothing but apt's errors; exits
# non-zero naming the package that could not be had.
# With --apt-cache it runs apt-cache (depends, policy, ...) against that same
# index instead and prints its answer: how a build resolves a metapackage to
# the ABI it points at today, rather than hard-coding it.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

usage="usage: fetch-deb.sh SUITE DEST PKG[=VERSION]... | fetch-deb.sh --apt-cache SUITE ARGS..."
query=0
if [ "${1:-}" = --apt-cache ]; then
    query=1
    shift
    [ $# -ge 2 ] || die "$usage"
    suite=$1
    shift
else
    [ $# -ge 3 ] || die "$usage"
    suite=$1 dest=$2
    shift 2
fi
case "$suite" in
    *[!a-z-]*) die "fetch-deb.sh: bad suite name '$suite'" ;;
esac
need_tool apt-get

root=$HVSD_CACHE/apt/$suite
mkdir -p "$root/lists/partial" "$root/archives/partial" "$root/etc/sources.list.d" \
    "$root/etc/preferences.d"
# Rewritten only when it changes: a newer sources.list makes apt rebuild its
# binary caches.
sources="deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main"
if [ "$(cat "$root/etc/sources.list" 2>/dev/null)" != "$sources" ]; then
    echo "$sources" >"$root/etc/sources.list"
fi
OPTS=(-o "Dir::Etc::SourceList=$root/etc/sources.list"
      -o "Dir::Etc::SourceParts=$root/etc/sources.list.d"
      -o "Dir::Etc::Preferences=$root/etc/preferences"
      -o "Dir::Etc::PreferencesParts=$root/etc/preferences.d"
      -o "Dir::State::Lists=$root/lists"
      -o "Dir::State::Status=/dev/null"
      -o "Dir::Cache=$root"
      -o "Dir::Cache::Archives=$root/archives"
      -o "Dir::Cache::pkgcache=$root/pkgcache.bin"
      -o "Dir::Cache::srcpkgcache=$root/srcpkgcache.bin"
      -o "APT::Get::List-Cleanup=0")
# (The binary caches are named by absolute path: with the default relative
# names apt-cache finds them not writable and parses the lists anew, a second
# or so each time, on every query.)
APT=(apt-get -q "${OPTS[@]}")

# The suite's index, once a day at most.
stamp=$root/updated.$(date +%Y%m%d)
if [ ! -e "$stamp" ]; then
    "${APT[@]}" update >"$root/update.log" 2>&1 \
        || die "apt-get update for $suite failed; see $root/update.log"
    rm -f "$root"/updated.*
    touch "$stamp"
fi
if [ "$query" = 1 ]; then
    exec apt-cache "${OPTS[@]}" "$@"
fi
mkdir -p "$dest"
cd "$dest"
"${APT[@]}" download "$@" >"$root/download.log" 2>&1 \
    || die "apt-get download from $suite failed ($*): $(grep -m1 '^E:' "$root/download.log" || tail -n1 "$root/download.log"); see $root/download.log"
