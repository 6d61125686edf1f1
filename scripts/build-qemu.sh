#!/usr/bin/env bash
# Builds qemu-system-x86_64 from the pinned base (qemu-patches/BASE) with the
# series applied, into the cache. qemu-patches/SERIES lists the series in the
# order they apply, each based on the ones before it; each has a directory
# with its own `series` file and cover letter.
#
#   build-qemu.sh build    fetch, apply, configure, build; write qemu.json
#   build-qemu.sh stock    the base alone, without the series: qemu-stock.json
#   build-qemu.sh dev      a git worktree (./qemu-dev) with the series as commits
#   build-qemu.sh export   write ./qemu-dev's commits back to qemu-patches/
#   build-qemu.sh upstream-fixes  fill in the Fixes: ids from QEMU_UPSTREAM's history
#   build-qemu.sh mail     the series as mail in series-out/, signed off by the sender
#   build-qemu.sh check    what QEMU's CI would run: checkpatch, other builds, qtests, each patch
#
# QEMU_SRC=/path/to/qemu.git builds that tree's HEAD with the series instead.
# SERIES=fixes,signal-event-direct (build, check): a prefix of the stack
# instead of all of it. A prefix is built in a worktree and build directory of
# its own, with its own manifest (qemu-series-<last>.json), so the full
# stack's tree and binary are never touched by it.
# SANITIZE=1 (build): the same tree with AddressSanitizer and UBSan, in its own
# build directory (build-asan) with its own manifest (qemu-asan.json).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

PATCH_DIR=${HVSD_PATCH_DIR:-$PROJECT_ROOT/qemu-patches}
DEV_TREE=$PROJECT_ROOT/qemu-dev
PYTHON=${PYTHON:-$PROJECT_ROOT/.venv/bin/python}
# shellcheck source=qemu-patches/BASE
. "$PATCH_DIR/BASE"

GIT=(git -c user.name=hv-signal-direct -c user.email=hv-signal-direct@localhost
     -c advice.detachedHead=false)
CONFIGURE_FLAGS=(
    --target-list=x86_64-softmmu --without-default-features
    --enable-tcg --enable-kvm --enable-slirp --enable-fdt=system
    --disable-docs --disable-rust --disable-download --disable-install-blobs
    # QEMU's one VMBus device, a real client of the SynIC for the tests
    --enable-hv-balloon
)

listed() {
    grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$1" || true
}

# The series of the stack, in the order they apply.
all_series() {
    listed "$PATCH_DIR/SERIES"
}

# Checks SERIES (a comma-separated prefix of the stack; empty: all of it) and
# sets SELECTED to the series it names, in order.
select_series() {
    local -a all wanted
    local i
    mapfile -t all < <(all_series)
    [ "${#all[@]}" -gt 0 ] || die "$PATCH_DIR/SERIES lists no series"
    if [ -z "${SERIES:-}" ]; then
        SELECTED=("${all[@]}")
        return 0
    fi
    IFS=, read -r -a wanted <<<"$SERIES"
    for i in "${!wanted[@]}"; do
        if [ "$i" -ge "${#all[@]}" ] || [ "${wanted[$i]}" != "${all[$i]}" ]; then
            die "SERIES=$SERIES is not a prefix of the stack ($(IFS=,; echo "${all[*]}")): each series applies on the ones before it"
        fi
    done
    SELECTED=("${wanted[@]}")
}

# The selection is the whole stack.
full_stack() {
    [ "${#SELECTED[@]}" -eq "$(all_series | wc -l)" ]
}

# The patches of one series, as paths under qemu-patches/.
patches_of() {
    local series=$1
    [ -f "$PATCH_DIR/$series/series" ] || die "qemu-patches/$series/series is missing"
    listed "$PATCH_DIR/$series/series" | sed "s|^|$series/|"
}

# The selected series' patches, in the order they apply.
series_patches() {
    local series
    for series in "${SELECTED[@]}"; do
        patches_of "$series"
    done
}

series_hash() {
    local patch series
    {
        for series in "${SELECTED[@]}"; do
            echo "$series"
            cat "$PATCH_DIR/$series/series"
        done
        for patch in $(series_patches); do
            [ -f "$PATCH_DIR/$patch" ] || die "a series lists $patch but qemu-patches/$patch does not exist"
            cat "$PATCH_DIR/$patch"
        done
    } | sha256sum | cut -c1-16
}

# Fetches Debian's source package of the given version into the cache.
fetch_debian_source() {
    local version=$1 dir=$2 log=$3
    mkdir -p "$dir"
    ls "$dir"/*.dsc >/dev/null 2>&1 && return 0
    (cd "$dir" && apt-get source --download-only "qemu=$version") >>"$log" 2>&1
}

# Makes a git tree of the Debian source: tag hvsd-upstream is the tarball as
# shipped, tag hvsd-base adds Debian's build-enabling patches.
make_base_tree() {
    local version=$1 tree=$2 log=$3 dl=$4 unpack patch
    unpack=$(mktemp -d "$HVSD_CACHE/unpack.XXXXXX")
    dpkg-source -x --skip-patches "$dl"/*.dsc "$unpack/src" >>"$log" 2>&1
    mkdir -p "$(dirname "$tree")/debian-patches"
    cp -r "$unpack/src/debian/patches/." "$(dirname "$tree")/debian-patches/"
    rm -rf "$unpack/src/debian"
    (
        cd "$unpack/src"
        "${GIT[@]}" init -q
        "${GIT[@]}" add -A -f
        "${GIT[@]}" commit -q -m "QEMU $UPSTREAM_VERSION as shipped in Debian's qemu $version"
        "${GIT[@]}" tag hvsd-upstream
        for patch in $DEBIAN_BUILD_PATCHES; do
            "${GIT[@]}" apply "$(dirname "$tree")/debian-patches/$patch"
        done
        "${GIT[@]}" commit -q -a -m "debian: build fixes for the +ds tarball ($DEBIAN_BUILD_PATCHES)"
        "${GIT[@]}" tag hvsd-base
    ) >>"$log" 2>&1
    mv "$unpack/src" "$tree"
    rm -rf "$unpack"
}

# Makes a tree from the user's own QEMU repository at its HEAD.
make_user_tree() {
    local tree=$1 log=$2 head
    head=$(git -C "$QEMU_SRC" rev-parse HEAD)
    if [ ! -d "$tree/.git" ]; then
        "${GIT[@]}" clone -q --shared --no-checkout "$QEMU_SRC" "$tree" >>"$log" 2>&1
    fi
    "${GIT[@]}" -C "$tree" fetch -q "$QEMU_SRC" HEAD >>"$log" 2>&1
    "${GIT[@]}" -C "$tree" tag -f hvsd-base "$head" >>"$log" 2>&1
}

# Resets the tree to hvsd-base and applies the series one patch at a time, so a
# patch that does not apply is named together with git's own message.
apply_series() {
    local tree=$1 log=$2 patch out
    "${GIT[@]}" -C "$tree" checkout -q -f --detach hvsd-base >>"$log" 2>&1
    for patch in $(series_patches); do
        if ! out=$("${GIT[@]}" -C "$tree" am -q --3way "$PATCH_DIR/$patch" 2>&1); then
            echo "$out" >>"$log"
            "${GIT[@]}" -C "$tree" am --abort >>"$log" 2>&1 || true
            die "patch $patch does not apply: $(echo "$out" | grep -m1 -E 'error|failed|conflict' || echo "$out" | head -n1); see $log"
        fi
    done
}

configure_tree() {
    local tree=$1 build=$2 log=$3 flags_hash
    flags_hash=$(echo "${CONFIGURE_FLAGS[*]} $PYTHON" | sha256sum | cut -c1-16)
    if [ -f "$build/build.ninja" ] && [ "$(cat "$build/.hvsd-flags" 2>/dev/null)" = "$flags_hash" ]; then
        return 0
    fi
    rm -rf "$build"
    mkdir -p "$build"
    (cd "$build" && clean_env "$tree/configure" --python="$PYTHON" "${CONFIGURE_FLAGS[@]}" "$@") >>"$log" 2>&1 || return 1
    echo "$flags_hash" >"$build/.hvsd-flags"
}

resolve_tree() {
    # Sets TREE_ROOT, SOURCE_DESC and FETCH_VERSION for the base in use.
    local log=$1 version
    if [ -n "${QEMU_SRC:-}" ]; then
        [ -d "$QEMU_SRC/.git" ] || [ -f "$QEMU_SRC/.git" ] || die "QEMU_SRC=$QEMU_SRC is not a git tree"
        TREE_ROOT=$HVSD_CACHE/qemu/user-$(realpath "$QEMU_SRC" | sha256sum | cut -c1-12)
        mkdir -p "$TREE_ROOT"
        step "qemu: clone $QEMU_SRC" "$log" make_user_tree "$TREE_ROOT/src" "$log"
        SOURCE_DESC="$QEMU_SRC at $(git -C "$QEMU_SRC" rev-parse --short HEAD)"
        return 0
    fi
    for version in "$DEBIAN_VERSION" "$FALLBACK_DEBIAN_VERSION"; do
        TREE_ROOT=$HVSD_CACHE/qemu/$(echo "$version" | tr ':+~' '___')
        mkdir -p "$TREE_ROOT"
        if [ -d "$TREE_ROOT/src/.git" ] \
            || step "qemu: fetch Debian source qemu=$version" "$log" \
                    fetch_debian_source "$version" "$TREE_ROOT/download" "$log" 2>/dev/null; then
            if [ "$version" != "$DEBIAN_VERSION" ]; then
                echo "note: qemu=$DEBIAN_VERSION could not be fetched; using fallback qemu=$version"
            fi
            if [ ! -d "$TREE_ROOT/src/.git" ]; then
                step "qemu: unpack and commit base" "$log" \
                    make_base_tree "$version" "$TREE_ROOT/src" "$log" "$TREE_ROOT/download"
            fi
            SOURCE_DESC="Debian qemu $version"
            return 0
        fi
        rm -rf "$TREE_ROOT"
        echo "warning: could not fetch Debian source qemu=$version" >&2
    done
    die "no QEMU source: tried Debian source packages qemu=$DEBIAN_VERSION and qemu=$FALLBACK_DEBIAN_VERSION (deb-src entries missing? run 'make setup' as root); see $log"
}

write_manifest() {
    local binary=$1 hash=$2 manifest=$3 length=${4:-$(series_patches | wc -l)} version series
    series=$(IFS=,; echo "${SELECTED[*]}")
    [ "$length" -gt 0 ] || series=
    # (a sanitized QEMU warns on stderr about swapcontext at every start)
    version=$("$binary" --version 2>/dev/null | head -n1)
    cat >"$HVSD_CACHE/$manifest" <<JSON
{
  "binary": "$binary",
  "sanitized": $([ "${SANITIZE:-}" = 1 ] && echo true || echo false),
  "base": "$SOURCE_DESC",
  "series": "$series",
  "series_hash": "$hash",
  "series_length": $length,
  "version": "$version"
}
JSON
}

# scripts/mutate.py builds its mutants in this tree and marks it meanwhile; a
# mark left by a run that died means the tree may still hold a mutation.
restore_after_mutate() {
    local tree=$1 marker=$TREE_ROOT/mutating pid
    [ -e "$marker" ] || return 0
    pid=$(cat "$marker" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        die "'make mutate' (pid $pid) is building mutants in $tree; wait for it"
    fi
    echo "qemu: restoring $tree after an interrupted 'make mutate'"
    "${GIT[@]}" -C "$tree" checkout -q -f HEAD -- .
    rm -f "$TREE_ROOT/built-series" "$marker"
}

cmd_build() {
    local log hash tree build marker applied manifest=qemu.json variant='' prefix_root
    need_tool git ninja dpkg-source apt-get
    [ -x "$PYTHON" ] || die "python $PYTHON not found (run 'make venv')"
    if [ "${SANITIZE:-}" = 1 ]; then
        full_stack || die "SANITIZE=1 builds the whole stack; leave SERIES unset"
        # Beside the normal build, never instead of it: own directory, marker,
        # manifest and log.
        variant=-asan
        manifest=qemu-asan.json
        CONFIGURE_FLAGS+=(--enable-asan --enable-ubsan)
    fi
    if ! full_stack; then
        variant=-series-${SELECTED[-1]}
        manifest=qemu-series-${SELECTED[-1]}.json
    fi
    mkdir -p "$HVSD_CACHE/logs"
    log=$HVSD_CACHE/logs/qemu$variant-build.log
    : >"$log"
    resolve_tree "$log"
    tree=$TREE_ROOT/src
    build=$TREE_ROOT/build$variant
    marker=$TREE_ROOT/built-series$variant
    applied=$TREE_ROOT/applied-series
    if ! full_stack; then
        # A prefix: a worktree and build directory of its own
        prefix_root=$TREE_ROOT/series-${SELECTED[-1]}
        tree=$prefix_root/src
        build=$prefix_root/build
        marker=$prefix_root/built-series
        applied=$prefix_root/applied-series
        if [ ! -e "$tree/.git" ]; then
            "${GIT[@]}" -C "$TREE_ROOT/src" worktree prune
            rm -rf "$tree"
            mkdir -p "$prefix_root"
            step "qemu$variant: worktree of the base" "$log" \
                "${GIT[@]}" -C "$TREE_ROOT/src" worktree add -q -f --detach "$tree" hvsd-base
        fi
    fi
    BUILT_TREE=$tree
    hash=$(series_hash)
    if full_stack; then
        restore_after_mutate "$tree"
    fi
    if [ -x "$build/qemu-system-x86_64" ] && [ "$(cat "$marker" 2>/dev/null)" = "$hash" ]; then
        write_manifest "$build/qemu-system-x86_64" "$hash" "$manifest"
        echo "qemu$variant: up to date ($SOURCE_DESC, series $hash)"
        return 0
    fi
    if [ "$(cat "$applied" 2>/dev/null)" != "$hash" ]; then
        rm -f "$applied"
        printf 'qemu%s: apply %s (%s patches) ... ' "$variant" "$(IFS=,; echo "${SELECTED[*]}")" "$(series_patches | wc -l)"
        apply_series "$tree" "$log"
        echo "done"
        echo "$hash" >"$applied"
    fi
    step "qemu$variant: configure" "$log" configure_tree "$tree" "$build" "$log"
    ninja_step "qemu$variant: build qemu-system-x86_64 (log: $log)" "$log" \
        -C "$build" qemu-system-x86_64
    echo "$hash" >"$marker"
    write_manifest "$build/qemu-system-x86_64" "$hash" "$manifest"
    echo "qemu$variant: $build/qemu-system-x86_64"
}

# The QEMU users run today: the same base and configuration without the
# series, for migration from and to it. Its own worktree of the base and its
# own build directory, keyed by the base, so the patched build is never
# touched.
cmd_stock() {
    local log tree build base
    need_tool git ninja dpkg-source apt-get
    [ -x "$PYTHON" ] || die "python $PYTHON not found (run 'make venv')"
    mkdir -p "$HVSD_CACHE/logs"
    log=$HVSD_CACHE/logs/qemu-stock-build.log
    : >"$log"
    resolve_tree "$log"
    base=$(git -C "$TREE_ROOT/src" rev-parse --short hvsd-base)
    tree=$TREE_ROOT/stock-$base/src
    build=$TREE_ROOT/stock-$base/build
    if [ -x "$build/qemu-system-x86_64" ] && [ -e "$TREE_ROOT/stock-$base/complete" ]; then
        SANITIZE='' write_manifest "$build/qemu-system-x86_64" none qemu-stock.json 0
        echo "qemu-stock: up to date ($SOURCE_DESC without the series)"
        return 0
    fi
    if [ ! -e "$tree/.git" ]; then
        "${GIT[@]}" -C "$TREE_ROOT/src" worktree prune
        rm -rf "$tree"
        step "qemu-stock: worktree of the base" "$log" \
            "${GIT[@]}" -C "$TREE_ROOT/src" worktree add -q -f --detach "$tree" hvsd-base
    fi
    step "qemu-stock: configure" "$log" configure_tree "$tree" "$build" "$log"
    ninja_step "qemu-stock: build qemu-system-x86_64 (log: $log)" "$log" \
        -C "$build" qemu-system-x86_64
    touch "$TREE_ROOT/stock-$base/complete"
    SANITIZE='' write_manifest "$build/qemu-system-x86_64" none qemu-stock.json 0
    echo "qemu-stock: $build/qemu-system-x86_64"
}

# The tag in ./qemu-dev on the last commit of a series.
end_tag() {
    echo "hvsd-end/$1"
}

cmd_dev() {
    local log series patch
    mkdir -p "$HVSD_CACHE/logs"
    log=$HVSD_CACHE/logs/qemu-dev.log
    : >"$log"
    if [ -e "$DEV_TREE" ]; then
        echo "qemu-dev: $DEV_TREE exists; leaving it alone (remove it to start over)"
        return 0
    fi
    resolve_tree "$log"
    "${GIT[@]}" -C "$TREE_ROOT/src" worktree prune
    "${GIT[@]}" -C "$TREE_ROOT/src" worktree add -q -f -B hvsd-dev "$DEV_TREE" hvsd-base >>"$log" 2>&1 \
        || die "git worktree add failed; see $log"
    for series in "${SELECTED[@]}"; do
        for patch in $(patches_of "$series"); do
            "${GIT[@]}" -C "$DEV_TREE" am -q --3way "$PATCH_DIR/$patch" >>"$log" 2>&1 \
                || die "patch $patch does not apply in $DEV_TREE; see $log"
        done
        "${GIT[@]}" -C "$DEV_TREE" tag -f "$(end_tag "$series")" >>"$log" 2>&1
    done
    echo "qemu-dev: $DEV_TREE (branch hvsd-dev, the series as commits on tag hvsd-base;"
    echo "qemu-dev: tags $(end_tag '<series>') mark each one's last commit: move them along when you rebase)"
    echo "qemu-dev: build with: (mkdir -p $DEV_TREE/build && cd $DEV_TREE/build && ../configure --python=$PYTHON ${CONFIGURE_FLAGS[*]}) && ninja -C $DEV_TREE/build qemu-system-x86_64"
    echo "qemu-dev: test with: make test QEMU=$DEV_TREE/build/qemu-system-x86_64; export with: make qemu-export"
}

cmd_export() {
    local series from=hvsd-base to n=0 patch
    [ -e "$DEV_TREE/.git" ] || die "no $DEV_TREE; run 'make qemu-dev' first"
    git -C "$DEV_TREE" diff --quiet HEAD || die "$DEV_TREE has uncommitted changes; commit them first"
    # Each series' commits: from the previous one's end tag to its own; the
    # last series ends at HEAD.
    for series in "${SELECTED[@]}"; do
        to=$(end_tag "$series")
        [ "$series" = "${SELECTED[-1]}" ] && to=HEAD
        git -C "$DEV_TREE" rev-parse -q --verify "$to^{commit}" >/dev/null \
            || die "no tag $to in $DEV_TREE: tag the last commit of $series with it"
        if ! git -C "$DEV_TREE" merge-base --is-ancestor "$from" "$to" ||
            ! git -C "$DEV_TREE" merge-base --is-ancestor "$to" HEAD; then
            die "tag $to is not between $from and HEAD in $DEV_TREE: after a rebase, move it to the last commit of $series (git tag -f $to <commit>)"
        fi
        from=$to
    done
    from=hvsd-base
    for series in "${SELECTED[@]}"; do
        to=$(end_tag "$series")
        [ "$series" = "${SELECTED[-1]}" ] && to=HEAD
        for patch in $(patches_of "$series" 2>/dev/null || true); do
            rm -f "$PATCH_DIR/$patch"
        done
        mkdir -p "$PATCH_DIR/$series"
        {
            echo "# One patch file name per line, applied in order with git am."
            git -C "$DEV_TREE" format-patch --no-signature --zero-commit \
                -o "$PATCH_DIR/$series" "$from..$to" | xargs -r -n1 basename
        } >"$PATCH_DIR/$series/series.new"
        mv "$PATCH_DIR/$series/series.new" "$PATCH_DIR/$series/series"
        echo "qemu-export: $series: $(patches_of "$series" | wc -l) patches written to $PATCH_DIR/$series"
        n=$((n + $(patches_of "$series" | wc -l)))
        from=$to
    done
    echo "qemu-export: $n patches in ${#SELECTED[@]} series"
}

# With an upstream QEMU git tree (QEMU_UPSTREAM): turns each patch's
#   Fixes: <first upstream commit with "CODE">
# into "Fixes: <12-char id> ("subject")" naming the commit that introduced CODE
# (git log -S), in qemu-patches/. The Debian tarball the series is made on has
# no history to find them in.
cmd_upstream_fixes() {
    local patch code id found=0
    [ -n "${QEMU_UPSTREAM:-}" ] || die "usage: make series-check-upstream QEMU_UPSTREAM=/path/to/qemu.git"
    git -C "$QEMU_UPSTREAM" rev-parse -q --verify HEAD >/dev/null \
        || die "QEMU_UPSTREAM=$QEMU_UPSTREAM is not a git tree"
    for patch in $(series_patches); do
        while IFS= read -r code; do
            printf 'series-check-upstream: %s: the commit that added "%s" ... ' "$patch" "$code"
            id=$(git -C "$QEMU_UPSTREAM" log -S"$code" --reverse --abbrev=12 --format='%h ("%s")' | sed -n 1p)
            [ -n "$id" ] || { echo "not found"; die "no commit of $QEMU_UPSTREAM adds \"$code\""; }
            echo "$id"
            CODE=$code FIXES="Fixes: $id" perl -pi -e \
                's/^Fixes: <first upstream commit with "\Q$ENV{CODE}\E">$/$ENV{FIXES}/' "$PATCH_DIR/$patch"
            found=$((found + 1))
        done < <(sed -n 's/^Fixes: <first upstream commit with "\(.*\)">$/\1/p' "$PATCH_DIR/$patch")
    done
    echo "series-check-upstream: $found Fixes: id(s) written to $PATCH_DIR"
}

# The series as mail, under the sender's own identity: every patch's author
# and Signed-off-by are the sender's (this repository's git user.name and
# user.email), which is what certifies the DCO. The series itself carries no
# Signed-off-by: nobody may sign for the sender. Written to series-out/.
cmd_mail() {
    local log name email tree out subject series start letter patch
    name=$(git -C "$PROJECT_ROOT" config user.name || true)
    email=$(git -C "$PROJECT_ROOT" config user.email || true)
    if [ -z "$name" ] || [ -z "$email" ] || [ "$email" = hv-signal-direct@localhost ]; then
        die "series-export: set your own identity (git config user.name / user.email): the Signed-off-by it adds is your DCO certification; see README, 'Sending the series'"
    fi
    mkdir -p "$HVSD_CACHE/logs"
    log=$HVSD_CACHE/logs/series-export.log
    : >"$log"
    resolve_tree "$log"
    tree=$(mktemp -d "$HVSD_CACHE/mail.XXXXXX")
    out=$PROJECT_ROOT/series-out
    local -a as_sender=(git -c "user.name=$name" -c "user.email=$email" -c advice.detachedHead=false)
    {
        git clone -q --shared "$TREE_ROOT/src" "$tree/src" &&
            "${as_sender[@]}" -C "$tree/src" checkout -q --detach hvsd-base
    } >>"$log" 2>&1 || die "series-export: cannot clone $TREE_ROOT/src; see $log"
    rm -rf "$out"
    # One thread per series, each with its cover letter (which names the
    # series it is based on), in the order they apply.
    for series in "${SELECTED[@]}"; do
        start=$(git -C "$tree/src" rev-parse HEAD)
        for patch in $(patches_of "$series"); do
            "${as_sender[@]}" -C "$tree/src" am -q --3way "$PATCH_DIR/$patch" >>"$log" 2>&1 \
                || die "series-export: $patch does not apply; see $log"
        done
        "${as_sender[@]}" -C "$tree/src" rebase -q \
            --exec "git commit -q --amend --no-edit --reset-author --signoff" "$start" >>"$log" 2>&1 \
            || die "series-export: could not sign $series; see $log"
        "${as_sender[@]}" -C "$tree/src" format-patch -q --cover-letter --thread=shallow \
            -o "$out/$series" "$start..HEAD" >>"$log" 2>&1 || die "series-export: format-patch of $series failed; see $log"
        letter=$PATCH_DIR/$series/cover-letter.txt
        [ -f "$letter" ] || die "series-export: $letter is missing"
        subject=$(sed -n '1s/^Subject: \[PATCH [0-9]*\/[0-9]*\] //p' "$letter")
        SUBJECT=$subject BLURB=$(sed '1,2d' "$letter") perl -0pi -e \
            's/\*\*\* SUBJECT HERE \*\*\*/$ENV{SUBJECT}/; s/\*\*\* BLURB HERE \*\*\*/$ENV{BLURB}/' \
            "$out/$series"/0000-cover-letter.patch
    done
    rm -rf "$tree"
    echo "series-export: $(find "$out" -name '*.patch' | wc -l) mails in $out (one directory per series), signed off by $name <$email>"
}

# What QEMU's own CI would run against the series, one progress line and one
# log per step (logs/check-series/): checkpatch on every patch; at the tip of
# each series (each prefix of the stack: fixes, then fixes and
# signal-event-direct, ...) a build, the qtests that touch what the series
# change and the base's command lines (qemu-patches/base-command-lines); at
# the tip of the selection, builds with one accelerator left out each time,
# for x86_64-linux-user and for one non-x86 softmmu target (avr, the
# smallest: the QMP stubs are target-neutral), and QEMU's x86_64 system
# tests under TCG (check-tcg), the series' bare-metal one among them once
# Hyper-V under TCG is in; then at every commit a build and the base's
# command lines.
# The checks' own worktree of the selection's tip, beside the harness's tree,
# and build directories of their own under $TREE_ROOT/check: building every
# patch there, finished, failed or interrupted, never changes the tree or
# the binary `make qemu` built and the tests run. Sets CHECK_ROOT,
# CHECK_TREE and CHECK_TIP.
check_tree() {
    CHECK_ROOT=$TREE_ROOT/check
    CHECK_TREE=$CHECK_ROOT/src
    CHECK_TIP=$(git -C "$BUILT_TREE" rev-parse HEAD)
    if [ ! -e "$CHECK_TREE/.git" ]; then
        "${GIT[@]}" -C "$TREE_ROOT/src" worktree prune
        rm -rf "$CHECK_TREE"
        mkdir -p "$CHECK_ROOT"
        "${GIT[@]}" -C "$TREE_ROOT/src" worktree add -q -f --detach "$CHECK_TREE" "$CHECK_TIP"
    fi
    # (an interrupted run left it at some patch of the series)
    "${GIT[@]}" -C "$CHECK_TREE" checkout -q -f --detach "$CHECK_TIP"
}

# The commit that ends each selected series in the checks' tree, in order.
series_ends() {
    local series n=0
    local -a commits
    mapfile -t commits < <(git -C "$CHECK_TREE" rev-list --reverse "hvsd-base..$CHECK_TIP")
    for series in "${SELECTED[@]}"; do
        n=$((n + $(patches_of "$series" | wc -l)))
        echo "$series ${commits[$((n - 1))]}"
    done
}

cmd_check() {
    local logs variant build flag patch test series end
    local -a flags qtests
    cmd_build
    step "qemu: the checks' worktree ($TREE_ROOT/check)" "$HVSD_CACHE/logs/qemu-build.log" check_tree
    logs=$HVSD_CACHE/logs/check-series
    rm -rf "$logs"
    mkdir -p "$logs"
    for patch in $(series_patches); do
        step "checkpatch $patch" "$logs/checkpatch.log" \
            checkpatch_clean "$CHECK_TREE" "$PATCH_DIR/$patch"
    done
    configure_other "$CHECK_ROOT/build" "$logs/build.log" "${CONFIGURE_FLAGS[@]}"
    while read -r series end; do
        "${GIT[@]}" -C "$CHECK_TREE" checkout -q -f --detach "$end"
        qtests=()
        for test in "${X86_QTESTS[@]}"; do
            [ -f "$CHECK_TREE/tests/qtest/$test.c" ] && qtests+=("$test")
        done
        step "qemu: build up to $series, and its qtests" "$logs/qtests-$series.log" \
            clean_env ninja -C "$CHECK_ROOT/build" qemu-system-x86_64 "${qtests[@]/#/tests/qtest/}"
        for test in "${qtests[@]}"; do
            step "qtest x86_64 $test (up to $series)" "$logs/qtest-x86_64-$test-$series.log" \
                run_qtest "$CHECK_ROOT/build" qemu-system-x86_64 "$test"
        done
        step "qemu: the base's command lines start (up to $series)" "$logs/command-lines-$series.log" \
            start_base_command_lines "$CHECK_ROOT/build"
    done < <(series_ends)
    "${GIT[@]}" -C "$CHECK_TREE" checkout -q -f --detach "$CHECK_TIP"
    for variant in kvm tcg; do
        build=$CHECK_ROOT/build-no-$variant
        flags=()
        for flag in "${CONFIGURE_FLAGS[@]}"; do
            [ "$flag" = "--enable-$variant" ] || flags+=("$flag")
        done
        flags+=("--disable-$variant")
        configure_other "$build" "$logs/no-$variant.log" "${flags[@]}"
        step "qemu: build --disable-$variant" "$logs/no-$variant.log" \
            clean_env ninja -C "$build" qemu-system-x86_64
    done
    configure_other "$CHECK_ROOT/build-linux-user" "$logs/linux-user.log" \
        --target-list=x86_64-linux-user "${OTHER_TARGET_FLAGS[@]}"
    step "qemu: build x86_64-linux-user" "$logs/linux-user.log" \
        clean_env ninja -C "$CHECK_ROOT/build-linux-user" qemu-x86_64
    configure_other "$CHECK_ROOT/build-avr" "$logs/avr.log" \
        --target-list=avr-softmmu --without-default-devices "${OTHER_TARGET_FLAGS[@]}"
    step "qemu: build avr-softmmu and its qmp-cmd-test" "$logs/avr.log" \
        clean_env ninja -C "$CHECK_ROOT/build-avr" qemu-system-avr tests/qtest/qmp-cmd-test
    step "qtest avr qmp-cmd-test" "$logs/qtest-avr-qmp-cmd-test.log" \
        run_qtest "$CHECK_ROOT/build-avr" qemu-system-avr qmp-cmd-test
    step "qemu: build qemu-system-x86_64 at the tip" "$logs/build.log" \
        clean_env ninja -C "$CHECK_ROOT/build" qemu-system-x86_64
    step "check-tcg x86_64-softmmu$(has_hyperv_tcg && echo ' (hyperv-signal among them)')" "$logs/check-tcg.log" \
        check_tcg "$CHECK_ROOT/build"
    check_each_patch "$logs/each-patch.log"
}

# Hyper-V under TCG is in the selection (and with it the bare-metal test).
has_hyperv_tcg() {
    local series
    for series in "${SELECTED[@]}"; do
        [ "$series" = hyperv-tcg ] && return 0
    done
    return 1
}

# Starts every command line of qemu-patches/base-command-lines, stopped
# before the guest runs, and quits it over QMP: each must start.
start_base_command_lines() {
    local build=$1 line status dir
    local -a args firmware=()
    for dir in "${FIRMWARE_DIRS[@]}"; do
        firmware+=(-L "$dir")
    done
    while IFS= read -r line; do
        read -r -a args <<<"$line"
        echo "start: ${args[*]}"
        status=0
        printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"quit"}' |
            timeout 120 "$build/qemu-system-x86_64" -display none -nodefaults -S -qmp stdio \
                "${firmware[@]}" "${args[@]}" || status=$?
        if [ "$status" -ne 0 ]; then
            echo "error: did not start (exit $status): ${args[*]}"
            return 1
        fi
    done < <(listed "$PATCH_DIR/base-command-lines")
}

# The qtests of QEMU's own suite that touch what the series changes: every
# query command (x-query-synic, x-query-hv-ports), every device's properties
# (hyperv-testdev), and the CPU models' CPUID.
X86_QTESTS=(qmp-cmd-test device-introspect-test test-x86-cpuid-compat hyperv-ports-test)
OTHER_TARGET_FLAGS=(--without-default-features --enable-tcg --disable-docs --disable-rust
                    --disable-download --disable-install-blobs)

configure_other() {
    local build=$1 log=$2
    shift 2
    [ -f "$build/build.ninja" ] && return 0
    mkdir -p "$build"
    step "qemu: configure $(basename "$build")" "$log" \
        clean_env env -C "$build" "$CHECK_TREE/configure" --python="$PYTHON" "$@"
}

# The +ds tarball has no firmware blobs: a qtest's QEMU finds Debian's in the
# build tree's data directory (qemu-bundle/), as it would find the tree's own.
FIRMWARE_DIRS=(/usr/share/seabios /usr/share/qemu /usr/lib/ipxe/qemu)

run_qtest() {
    local build=$1 binary=$2 test=$3 datadir dir blob
    datadir=$(find "$build/qemu-bundle" -name trace-events-all -print -quit 2>/dev/null)
    if [ -z "$datadir" ]; then
        echo "no data directory (qemu-bundle/.../trace-events-all) in $build"
        return 1
    fi
    datadir=$(dirname "$datadir")
    for dir in "${FIRMWARE_DIRS[@]}"; do
        for blob in "$dir"/*; do
            [ -e "$datadir/$(basename "$blob")" ] || ln -s "$blob" "$datadir/"
        done
    done
    env -C "$build" QTEST_QEMU_BINARY="./$binary" QTEST_QEMU_IMG=/bin/false \
        timeout 1200 "./tests/qtest/$test"
}

# QEMU's system tests for x86_64 under TCG, with the native compiler, and,
# with Hyper-V under TCG, proof that the series' own one ran and passed.
check_tcg() {
    local build=$1
    clean_env make -C "$build" run-tcg-tests-x86_64-softmmu || return 1
    if has_hyperv_tcg; then
        grep -H "PASS: 0 failure" "$build/tests/tcg/x86_64-softmmu/hyperv-signal.out"
    fi
}

# 0 errors from QEMU's own scripts/checkpatch.pl. Its one warning on this
# series is a line over 80 columns in code that patch 6 moves unchanged out
# of kvm.c, kept as it was so that the move reads as a move.
checkpatch_clean() {
    local tree=$1 patch=$2 out
    out=$(perl "$tree/scripts/checkpatch.pl" --no-signoff "$patch" 2>&1) || true
    echo "$out"
    echo "$out" | grep -q "has no obvious style problems\|^total: 0 errors"
}

check_each_patch() {
    local log=$1 tree=$CHECK_TREE n=0 total commit
    total=$(series_patches | wc -l)
    for commit in $(git -C "$tree" rev-list --reverse "hvsd-base..$CHECK_TIP"); do
        n=$((n + 1))
        "${GIT[@]}" -C "$tree" checkout -q -f --detach "$commit" >>"$log" 2>&1
        step "qemu: build patch $n/$total: $(git -C "$tree" log -1 --format=%s "$commit")" "$log" \
            clean_env ninja -C "$CHECK_ROOT/build" qemu-system-x86_64
        step "qemu: the base's command lines start at patch $n/$total" "$log" \
            start_base_command_lines "$CHECK_ROOT/build"
    done
    "${GIT[@]}" -C "$tree" checkout -q -f --detach "$CHECK_TIP" >>"$log" 2>&1
}

select_series
case ${1:-build} in
    build) cmd_build ;;
    stock) cmd_stock ;;
    dev) cmd_dev ;;
    export) cmd_export ;;
    check) cmd_check ;;
    mail) cmd_mail ;;
    upstream-fixes) cmd_upstream_fixes ;;
    *) die "usage: $0 build|stock|dev|export|check|mail|upstream-fixes" ;;
esac
