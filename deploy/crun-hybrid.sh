#!/bin/sh
# Usage: crun-hybrid.sh <crun args...>      (e.g. crun-hybrid.sh run -b BUNDLE ID)
#
# crun refuses hybrid cgroup hosts ("cgroups in hybrid mode not supported, drop all controllers
# from cgroupv2") whenever /sys/fs/cgroup/unified/cgroup.controllers lists a controller, even with
# --cgroup-manager=disabled. Hiding that file behind an empty one in a private mount namespace
# lets crun use the v1 hierarchies without changing the host (platform.md §3.2).
# Set CRUN to use another crun binary.
#
# POSIX sh on purpose: it sits on the container start path, and dash starts faster than bash.
# The wrapper still adds several ms (mount namespace, inner sh, mount), so benchmarks of crun
# itself should be read with that in mind.
set -eu

CONTROLLERS=/sys/fs/cgroup/unified/cgroup.controllers
EMPTY=/run/flotilla/empty-controllers
CRUN=${CRUN:-crun}

if [ $# -eq 0 ]; then
    echo "usage: $0 <crun args...>" >&2
    exit 2
fi

# cgroupfs files always stat as size 0, so read the content to see whether any controller is listed.
controllers=
if [ -r "$CONTROLLERS" ]; then
    read -r controllers <"$CONTROLLERS" || true
fi
if [ -z "$controllers" ]; then
    exec "$CRUN" "$@" # not a hybrid host (pure v1 or v2), or its cgroup2 mount lists no controller
fi

if [ ! -f "$EMPTY" ] || [ -s "$EMPTY" ]; then
    mkdir -p "${EMPTY%/*}"
    : >"$EMPTY"
fi
# Paths go in as positional parameters, so no argument is ever re-parsed by a shell.
# shellcheck disable=SC2016 # the inner sh expands them, not this one
exec unshare --mount --propagation private \
    sh -c 'mount --bind "$1" "$2" && shift 2 && exec "$@"' crun-hybrid "$EMPTY" "$CONTROLLERS" "$CRUN" "$@"
