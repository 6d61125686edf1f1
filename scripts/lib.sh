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
