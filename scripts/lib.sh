# Shared by the build scripts: where the cache lives, and how a long step is
# run (output to a log, a progress line with its duration, and on failure one
# line naming the step and the log, then a non-zero exit).
# shellcheck shell=bash

HVSD_CACHE=${HVSD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hv-signal-direct}
export HVSD_CACHE
PROJECT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PROJECT_ROOT

die() {
    echo "error: $*" >&2
    exit 1
}

# clean_env CMD...: runs CMD with a fixed environment, so that nothing the
# caller set reaches kbuild, meson or ninja. (A variable given to make on its
# command line, such as KVM_MODULES=patched, is passed to every sub-make through
# MAKEFLAGS, and kbuild has variables of that name of its own.)
clean_env() {
    env -i PATH="$PATH" HOME="$HOME" LANG=C.UTF-8 TERM="${TERM:-dumb}" \
        ${TMPDIR:+TMPDIR="$TMPDIR"} "$@"
}

need_tool() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 \
            || die "required tool '$tool' not found (run 'make setup' as root)"
    done
}

# step LABEL LOG CMD...: run CMD with its output appended to LOG.
step() {
    local label=$1 log=$2 start rc
    shift 2
    start=$(date +%s.%N)
    printf '%s ... ' "$label"
    set +e
    "$@" >>"$log" 2>&1
    rc=$?
    set -e
    if [ "$rc" -ne 0 ]; then
        echo "failed"
        die "$label failed (exit $rc); see $log"
    fi
    awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "done (%.1fs)\n", e - s }'
}

# ninja_progress: reads ninja's output ("[n/N] what" per edge) and shows its
# progress: one line rewritten in place on a terminal, else a line each tenth
# of the way (CI logs).
ninja_progress() {
    local tty=0
    [ -t 1 ] && tty=1
    awk -v tty="$tty" '
        /^\[[0-9]+\/[0-9]+\]/ {
            split(substr($1, 2, length($1) - 2), n, "/")
            if (tty) { printf "\r  %s", $1; fflush(); shown = 1; next }
            tenth = int(n[1] * 10 / n[2])
            if (tenth != last) { print "  " $1; fflush(); last = tenth }
        }
        END { if (shown) print "" }'
}

# ninja_step LABEL LOG NINJA-ARGS...: step for a ninja build, its whole
# output in LOG and its [n/N] progress on stdout as it goes.
ninja_step() {
    local label=$1 log=$2 start rc
    shift 2
    start=$(date +%s.%N)
    echo "$label ..."
    set +e
    clean_env ninja "$@" 2>&1 | tee -a "$log" | ninja_progress
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -ne 0 ]; then
        echo "$label: failed"
        die "$label failed (exit $rc); see $log"
    fi
    awk -v s="$start" -v e="$(date +%s.%N)" -v l="$label" 'BEGIN { printf "%s: done (%.1fs)\n", l, e - s }'
}
