# shellcheck shell=bash
# Source me (". deploy/env.sh"): puts cargo on PATH and exports the paths that install-deps.sh
# recorded, which the tests and the agent read.
#   FLOTILLA_CRIU     criu binary to use (system criu >= 4.2, or the private-prefix wrapper)
#   FLOTILLA_BUSYBOX  static busybox for minimal root filesystems

# rustup's usual home first, like ~/.cargo/env; the Docker-style location only as a fallback.
if [[ -x ${HOME:-/root}/.cargo/bin/cargo && ":$PATH:" != *":${HOME:-/root}/.cargo/bin:"* ]]; then
    PATH=${HOME:-/root}/.cargo/bin:$PATH
fi
if ! command -v cargo >/dev/null && [[ -x /usr/local/cargo/bin/cargo ]]; then
    PATH=/usr/local/cargo/bin:$PATH
fi
# cargo-nextest may live in /usr/local/bin, which minimal environments leave out.
if [[ ":$PATH:" != *":/usr/local/bin:"* && -d /usr/local/bin ]]; then
    PATH=$PATH:/usr/local/bin
fi
export PATH

if [[ -r ${FLOTILLA_OPT:-/opt/flotilla}/criu.path ]]; then
    FLOTILLA_CRIU=$(<"${FLOTILLA_OPT:-/opt/flotilla}/criu.path")
    export FLOTILLA_CRIU
fi
export FLOTILLA_BUSYBOX=${FLOTILLA_OPT:-/opt/flotilla}/busybox/busybox
