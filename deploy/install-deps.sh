#!/usr/bin/env bash
# Install what Flotilla's build, tests and demo need on a Debian/Ubuntu host (run as root).
#
# Idempotent: everything already in place is only checked, so a second run fetches and changes
# nothing. The machine's rules (docs in shared/platform.md, §4.2, §5.1, §7) shape this script:
#   * system packages: install missing ones only, never upgrade or remove anything;
#   * CRIU >= 4.2 comes from Debian sid into a private prefix under a private apt configuration,
#     because the distribution's CRIU cannot dump TCP sockets on kernels >= 6.16, and adding sid to
#     the system's sources once upgraded libc on a machine here;
#   * busybox-static is downloaded and unpacked, never installed (it would remove `busybox`).
#
# Outputs for the code and tests:
#   /opt/flotilla/criu.path          path of the criu binary to use (system criu or our wrapper)
#   /opt/flotilla/busybox/busybox    statically linked busybox for minimal root filesystems
#
# Environment knobs:
#   FLOTILLA_OPT              install root (default /opt/flotilla)
#   FLOTILLA_DEBIAN_MIRROR    Debian mirror for the private sid configuration (default: the
#                             system's own Debian mirror, else http://deb.debian.org/debian)
#   FLOTILLA_ALLOW_UPGRADES=1 let apt upgrade or remove installed packages if a new one needs it
set -euo pipefail

FLOTILLA_OPT=${FLOTILLA_OPT:-/opt/flotilla}
CRIU_PREFIX=$FLOTILLA_OPT/criu
CRIU_MIN=4.2
BUSYBOX_DIR=$FLOTILLA_OPT/busybox
DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

APT_PACKAGES=(
    iproute2 nftables iptables conntrack
    runc crun hyperfine skopeo umoci docker-registry
    curl ca-certificates jq procps util-linux psmisc
    python3 gcc libc6-dev make pkg-config git xz-utils zstd
    # the controller's write benchmark compares against a 3-member etcd (controller/bench/run.sh)
    etcd-server etcd-client
)

# CRIU's runtime closure from platform.md §4.2, used only if the computed closure is unavailable.
CRIU_FALLBACK_PACKAGES=(
    criu libcompel1 libc6 libgcc-s1 libbsd0 libmd0 libgnutls30t64 libgmp10 libhogweed6t64
    libnettle8t64 libidn2-0 libunistring5 libp11-kit0 libffi8 libtasn1-6 libnet9 libnftables1
    libjansson4 libmnl0 libnftnl11 libxtables12 libnl-3-200 libprotobuf-c1 libuuid1
)

export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C

log() { printf '==> %s\n' "$*"; }
warn() { printf 'install-deps: WARNING: %s\n' "$*" >&2; }
die() {
    printf 'install-deps: ERROR: %s\n' "$*" >&2
    exit 1
}

# True when version $1 >= version $2 (dpkg-style ordering).
version_ge() { printf '%s\n%s\n' "$2" "$1" | sort -V -C; }

# Note on pipelines: with pipefail, `producer | grep -q` (or head, or awk's exit) can fail when the
# consumer quits early and the producer dies of SIGPIPE; capture output first, then match.

# Replace file $1 (mode $2, default 644) with stdin only when the content differs, so reruns
# leave files, directories and mtimes alone.
write_if_changed() {
    local dst=$1 mode=${2:-644} new old="" tmp
    new=$(cat; echo .) # the dot keeps trailing newlines
    if [[ -f $dst ]]; then old=$(cat "$dst"; echo .); fi
    if [[ $old == "$new" ]]; then
        [[ $(stat -c %a "$dst") == "$mode" ]] || chmod "$mode" "$dst"
        return 0
    fi
    tmp=$(mktemp "$dst.XXXXXX")
    printf '%s' "${new%.}" >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$dst"
}

APT_UPDATED=0
apt_update_once() {
    [[ $APT_UPDATED == 1 ]] && return 0
    log "apt-get update"
    apt-get -q update || die "apt-get update failed"
    APT_UPDATED=1
}

apt_candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ && !done {print $2; done = 1}'; }

[[ $(id -u) == 0 ]] || die "run as root"
for tool in apt-get apt-cache dpkg dpkg-deb dpkg-query flock sort awk; do
    command -v "$tool" >/dev/null || die "'$tool' not found: this script needs a Debian-based system"
done

mkdir -p "$FLOTILLA_OPT"
# One installer at a time (test and main jobs may start together). Append mode: no mtime change.
mkdir -p /run/lock
exec 9>>/run/lock/flotilla-install-deps.lock
flock -w 1800 9 || die "timed out waiting for another install-deps.sh run"

PROBLEMS=()

# ---------------------------------------------------------------------------------------------
# 1. System packages
# ---------------------------------------------------------------------------------------------
install_system_packages() {
    local -a missing=() nocand=() changes=()
    local pkg installed
    installed=$(dpkg-query -W -f='${Package} ${Status}\n' "$@" 2>/dev/null | awk '$NF == "installed" && $(NF-1) == "ok" && $(NF-2) == "install" {print $1}' || true)
    for pkg in "$@"; do
        grep -qxF "$pkg" <<<"$installed" || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        log "system packages: all ${#} present"
        return 0
    fi
    log "system packages to install: ${missing[*]}"
    apt_update_once
    for pkg in "${missing[@]}"; do
        local cand
        cand=$(apt_candidate "$pkg")
        [[ -n $cand && $cand != "(none)" ]] || nocand+=("$pkg")
    done
    ((${#nocand[@]} == 0)) || die "no installation candidate in the system's apt sources for: ${nocand[*]}"

    # Refuse to let a dependency upgrade or remove what is already installed (platform.md §7).
    mapfile -t changes < <(apt-get install -s --no-install-recommends "${missing[@]}" 2>/dev/null |
        awk '/^Inst [^ ]+ \[/ {print "upgrade " $2} /^Remv / {print "remove " $2}')
    if ((${#changes[@]} > 0)) && [[ ${FLOTILLA_ALLOW_UPGRADES:-0} != 1 ]]; then
        printf '  %s\n' "${changes[@]}" >&2
        die "installing ${missing[*]} would change installed packages (above); refusing. Set FLOTILLA_ALLOW_UPGRADES=1 to allow."
    fi
    apt-get install -y -q --no-install-recommends "${missing[@]}" || die "apt-get install failed"
}

# ---------------------------------------------------------------------------------------------
# 2. CRIU >= 4.2
# ---------------------------------------------------------------------------------------------
# Prints the version reported by the criu command given as arguments (empty if it does not run).
criu_version() { { "$@" --version 2>/dev/null || true; } | awk '/^Version:/ && !done {print $2; done = 1}'; }

# True when the given criu command is new enough and `criu check` passes.
criu_usable() {
    local v out
    v=$(criu_version "$@")
    if [[ -z $v ]] || ! version_ge "$v" "$CRIU_MIN"; then return 1; fi
    out=$("$@" check 2>&1) || return 1
    grep -q '^Looks good' <<<"$out"
}

case "$(dpkg --print-architecture)" in
amd64) TRIPLET=x86_64-linux-gnu LDSO=ld-linux-x86-64.so.2 ;;
arm64) TRIPLET=aarch64-linux-gnu LDSO=ld-linux-aarch64.so.1 ;;
*) TRIPLET="" LDSO="" ;;
esac
CRIU_WRAPPER=$CRIU_PREFIX/bin/criu
CRIU_LIBPATH=$CRIU_PREFIX/usr/lib/$TRIPLET:$CRIU_PREFIX/lib/$TRIPLET
CRIU_LOADER=$CRIU_PREFIX/usr/lib/$TRIPLET/$LDSO

write_criu_wrapper() {
    mkdir -p "$CRIU_PREFIX/bin"
    write_if_changed "$CRIU_WRAPPER" 755 <<EOF
#!/bin/sh
# Written by deploy/install-deps.sh. The private CRIU needs newer libraries than the system has,
# so it runs through its own dynamic loader (platform.md §4.2). Same arguments and descriptors.
exec $CRIU_LOADER --library-path $CRIU_LIBPATH $CRIU_PREFIX/usr/sbin/criu "\$@"
EOF
}

# The Debian mirror the machine already uses; sid lives on any full Debian mirror.
debian_mirror() {
    if [[ -n ${FLOTILLA_DEBIAN_MIRROR:-} ]]; then
        echo "$FLOTILLA_DEBIAN_MIRROR"
        return
    fi
    local m=""
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        m=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    elif [[ -f /etc/apt/sources.list ]]; then
        m=$(grep -E '^deb ' /etc/apt/sources.list | grep -v security | grep -m1 -oE '(https?|file)://[^ ]*debian[^ ]*' || true)
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

install_private_criu() {
    [[ -n $TRIPLET ]] || die "private CRIU install supports amd64 and arm64 only, not $(dpkg --print-architecture)"
    local A=$CRIU_PREFIX/apt stage=$CRIU_PREFIX/.stage mirror
    local -a closure=() pkgs=() unavailable=() failed=()

    if [[ ! -f $DEBIAN_KEYRING ]]; then
        # Ubuntu hosts lack Debian's archive keys; the package is small and changes nothing else.
        install_system_packages debian-archive-keyring
    fi
    mkdir -p "$A"/{lists/partial,archives/partial,cache,sources.list.d,apt.conf.d,preferences.d,debs}
    mirror=$(debian_mirror)
    write_if_changed "$A/sources.list" <<<"deb [signed-by=$DEBIAN_KEYRING] $mirror sid main"
    write_if_changed "$A/apt.conf" <<EOF
Dir::Etc::main "/dev/null";
Dir::Etc::Parts "$A/apt.conf.d";
Dir::Etc::SourceList "$A/sources.list";
Dir::Etc::SourceParts "$A/sources.list.d";
Dir::Etc::Preferences "$A/preferences";
Dir::Etc::PreferencesParts "$A/preferences.d";
Dir::State::Lists "$A/lists";
Dir::Cache "$A/cache";
Dir::Cache::Archives "$A/archives";
Acquire::Check-Valid-Until "false";
Acquire::Languages "none";
EOF

    log "CRIU: fetching from Debian sid ($mirror) into $CRIU_PREFIX (private apt configuration)"
    # Subshell: APT_CONFIG must never leak into the system apt calls of this script.
    (
        export APT_CONFIG=$A/apt.conf # read before the system's apt.conf.d, so no system fragment loads
        apt-get -q update || die "apt-get update of the private sid configuration failed"

        local cand
        cand=$(apt_candidate criu)
        [[ -n $cand && $cand != "(none)" ]] || die "Debian sid offers no criu package"
        version_ge "${cand#*:}" "$CRIU_MIN" || die "Debian sid offers criu $cand, need >= $CRIU_MIN"

        # Runtime closure of criu, computed now because sid's library names move.
        mapfile -t closure < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
            --no-breaks --no-replaces --no-enhances criu 2>/dev/null |
            awk '/^[a-z0-9]/ {sub(/:(any|'"$(dpkg --print-architecture)"')$/, "", $1); print $1}' | sort -u)
        if ((${#closure[@]} < 2)) || [[ " ${closure[*]} " != *" libc6 "* ]]; then
            warn "could not compute criu's dependency closure; using the fixed list from platform.md"
            closure=("${CRIU_FALLBACK_PACKAGES[@]}")
        fi
        local info
        for p in "${closure[@]}"; do
            info=$(apt-cache show --no-all-versions "$p" 2>/dev/null || true)
            if grep -q '^Filename:' <<<"$info"; then
                pkgs+=("$p")
            else
                unavailable+=("$p")
            fi
        done
        ((${#unavailable[@]} == 0)) || warn "not downloadable from sid, skipped: ${unavailable[*]}"

        cd "$A/debs"
        rm -f ./*.deb
        # Sandbox user root: the download directory is root's, so _apt could not write to it.
        if ! apt-get -q -o APT::Sandbox::User=root download "${pkgs[@]}"; then
            for p in "${pkgs[@]}"; do
                apt-get -q -o APT::Sandbox::User=root download "$p" || failed+=("$p")
            done
        fi
        ((${#failed[@]} == 0)) || warn "could not download: ${failed[*]}"
        compgen -G 'criu_*.deb' >/dev/null || die "criu package was not downloaded"
        compgen -G 'libc6_*.deb' >/dev/null || die "libc6 (the private loader) was not downloaded"

        # Unpack into a staging root, check it runs, then swap it in.
        rm -rf --one-file-system "$stage"
        mkdir -p "$stage"
        for d in ./*.deb; do dpkg-deb -x "$d" "$stage"; done
        local sloader=$stage/usr/lib/$TRIPLET/$LDSO slib=$stage/usr/lib/$TRIPLET:$stage/lib/$TRIPLET
        [[ -e $sloader ]] || die "private loader $sloader missing after unpacking"
        local libs
        if ! libs=$("$sloader" --list --library-path "$slib" "$stage/usr/sbin/criu" 2>&1) ||
            grep -q 'not found' <<<"$libs"; then
            die "private CRIU cannot load its libraries (closure incomplete?):"$'\n'"$libs"
        fi
        local sv
        sv=$(criu_version "$sloader" --library-path "$slib" "$stage/usr/sbin/criu")
        if [[ -z $sv ]] || ! version_ge "$sv" "$CRIU_MIN"; then
            die "unpacked CRIU does not report a version >= $CRIU_MIN (got '${sv}')"
        fi

        local e
        for e in "$stage"/* "$stage"/.[!.]*; do
            [[ -e $e ]] || continue
            case "${e##*/}" in bin | apt) die "unexpected top-level '${e##*/}' in the CRIU packages" ;; esac
        done
        for e in "$stage"/*; do
            rm -rf --one-file-system "${CRIU_PREFIX:?}/${e##*/}"
            mv "$e" "$CRIU_PREFIX/"
        done
        rm -rf --one-file-system "$stage"
        for d in ./*.deb; do echo "${d#./}"; done >"$CRIU_PREFIX/packages.txt"
        # sid's indexes (~160 MB) are only needed to fetch; a reinstall updates them anyway.
        rm -rf --one-file-system "$A/lists" "$A/cache"
    )
}

setup_criu() {
    local sys
    sys=$(command -v criu || true)
    if [[ -n $sys && $sys != "$CRIU_WRAPPER" ]] && criu_usable "$sys"; then
        log "CRIU: using system $sys ($(criu_version "$sys"))"
        CRIU_BIN=$sys
    else
        [[ -z $sys ]] || log "CRIU: system $sys ($(criu_version "$sys")) is older than $CRIU_MIN or fails 'criu check'; using a private copy"
        [[ -z $TRIPLET ]] || write_criu_wrapper
        if [[ -x $CRIU_WRAPPER ]] && criu_usable "$CRIU_WRAPPER"; then
            log "CRIU: private $CRIU_WRAPPER ($(criu_version "$CRIU_WRAPPER")) already in place"
        else
            install_private_criu
            write_criu_wrapper
        fi
        CRIU_BIN=$CRIU_WRAPPER
    fi
    write_if_changed "$FLOTILLA_OPT/criu.path" <<<"$CRIU_BIN"

    # Final verification of whatever was chosen.
    local v out
    v=$(criu_version "$CRIU_BIN")
    if [[ -z $v ]] || ! version_ge "$v" "$CRIU_MIN"; then
        die "$CRIU_BIN --version reports '${v:-nothing}', need >= $CRIU_MIN"
    fi
    if ! out=$("$CRIU_BIN" check 2>&1) || ! grep -q '^Looks good' <<<"$out"; then
        printf '%s\n' "$out" >&2
        die "'$CRIU_BIN check' failed (output above)"
    fi
}

# ---------------------------------------------------------------------------------------------
# 3. busybox (static), for minimal container root filesystems
# ---------------------------------------------------------------------------------------------
setup_busybox() {
    local bb=$BUSYBOX_DIR/busybox cache=$BUSYBOX_DIR/cache spec=busybox-static codename tmp found
    if [[ -x $bb ]] && "$bb" --help >/dev/null 2>&1; then
        log "busybox: $bb already in place"
        return 0
    fi
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ $codename != bookworm ]] || spec=busybox-static/bookworm
    apt_update_once
    mkdir -p "$cache"
    rm -f "$cache"/busybox-static_*.deb
    log "busybox: apt-get download $spec"
    (cd "$cache" && apt-get -q -o APT::Sandbox::User=root download "$spec") || die "apt-get download $spec failed"
    tmp=$cache/unpack
    rm -rf --one-file-system "$tmp"
    dpkg-deb -x "$cache"/busybox-static_*.deb "$tmp"
    found=$(find "$tmp" -type f -name busybox -path '*bin/*' -print -quit)
    [[ -n $found ]] || die "no busybox binary inside the busybox-static package"
    install -m 0755 "$found" "$bb.new"
    rm -rf --one-file-system "$tmp"
    "$bb.new" --help >/dev/null 2>&1 || die "downloaded busybox does not run"
    mv -f "$bb.new" "$bb"
}

# ---------------------------------------------------------------------------------------------
# 4. Rust toolchain (checked, never downloaded)
# ---------------------------------------------------------------------------------------------
# Puts the directory holding tool $1 on PATH if it is not reachable yet; false if not found.
find_tool() {
    local d
    command -v "$1" >/dev/null && return 0
    for d in "${HOME:-/root}/.cargo/bin" /usr/local/cargo/bin /usr/local/bin; do
        if [[ -x $d/$1 ]]; then
            PATH=$d:$PATH
            return 0
        fi
    done
    return 1
}

check_rust() {
    if ! find_tool cargo; then
        PROBLEMS+=("Rust toolchain not found (no cargo on PATH, in \$HOME/.cargo/bin or /usr/local/cargo/bin); install Rust >= 1.85 with rustup")
        return 0
    fi
    log "Rust: $(command -v cargo) ($(cargo --version))"
    find_tool cargo-nextest || true
    if ! cargo nextest --version >/dev/null 2>&1; then
        log "cargo-nextest missing: cargo install cargo-nextest --locked (several minutes)"
        cargo install cargo-nextest --locked || PROBLEMS+=("cargo install cargo-nextest failed; tests will fall back to cargo test")
    fi
}

# ---------------------------------------------------------------------------------------------
first_line() {
    if command -v "$1" >/dev/null; then
        { "$@" 2>&1 || true; } | head -n1
    else
        echo "(not found)"
    fi
}

summary() {
    echo "---- versions ----"
    printf '%-16s %s\n' \
        runc "$(first_line runc --version)" \
        crun "$(first_line crun --version)" \
        criu "$CRIU_BIN ($(criu_version "$CRIU_BIN"))" \
        hyperfine "$(first_line hyperfine --version)" \
        skopeo "$(first_line skopeo --version)" \
        umoci "$(first_line umoci --version)" \
        docker-registry "$(first_line docker-registry --version)" \
        busybox "$(first_line "$BUSYBOX_DIR/busybox")" \
        cargo "$(first_line cargo --version)" \
        cargo-nextest "$(first_line cargo nextest --version)"
}

install_system_packages "${APT_PACKAGES[@]}"
setup_criu
setup_busybox
check_rust
summary

if ((${#PROBLEMS[@]} > 0)); then
    printf 'install-deps: ERROR: %s\n' "${PROBLEMS[@]}" >&2
    exit 1
fi
log "install-deps: done"
