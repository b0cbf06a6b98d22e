#!/usr/bin/env bash
# Install what rnet's build, tests, demo and benchmarks need on Debian 12, and nothing else.
#
# Idempotent and silent when everything is already there: `make test`, `make demo` and CI run it
# every time, so the common case (all present) must cost a few `command -v` calls and print nothing.
# When something is missing it runs `apt-get update` once and installs only the missing packages.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

# package:command pairs. The command is how we notice the package without asking dpkg (fast, and
# it also accepts a tool installed some other way); dpkg is asked only when the command is absent.
readonly REQUIRED=(
    "protobuf-compiler:protoc" # etcd-client's build script compiles etcd's .proto files
    "libprotobuf-dev:-"        # google/protobuf/descriptor.proto, imported by etcd's .proto files (no command: dpkg decides)
    "libnftnl-dev:-"           # the nftnl crate links libnftnl (rnetd's NAT table for egress and published ports)
    "libmnl-dev:-"             # ... and libnftnl's libmnl
    "nftables:nft"             # tests inspect the NAT table (product code never runs it)
    "iproute2:ip"              # netns, links, fdb/neigh inspection in tests and the demo
    "iproute2:bridge"
    "iputils-ping:ping" # connectivity checks
    "iperf3:iperf3"     # throughput benchmarks
    "etcd-server:etcd"  # multi-host store for lab tests
    "etcd-client:etcdctl"
    "tcpdump:tcpdump"     # debugging captures on the underlay
    "util-linux:nsenter"  # enter a simulated host's netns without a private mount ns
    "util-linux:unshare"
    "util-linux:findmnt"
    "procps:ps"
    "procps:pgrep"
    "jq:jq"       # the demo parses `rnet -o json`
    "binutils:nm" # the CNI tests check which crates rnet-cni links
    "musl-tools:musl-gcc" # make cni-static: rnet-cni linked against musl (ring's C compiles with it)
    "curl:curl"                    # the metrics tests scrape rnetd
    "groff-base:groff"             # the packaging test checks the man pages
    "systemd:systemd-analyze"      # the packaging test verifies the unit
    "lintian:lintian"              # the packaging test checks the .deb (errors fail it)
    # Real runtimes for the front-door tests, and the reference plugins for the CNI benchmark.
    "podman:podman"
    "runc:runc"                     # podman's runtime here (crun fails on these machines)
    "containernetworking-plugins:-" # /usr/lib/cni: bridge, host-local, loopback (not on PATH)
    "docker.io:dockerd"             # a real Docker engine for the libnetwork driver tests and benchmark
    "busybox-static:-"              # the test images' only binary (no registry: podman/docker import)
    "vagrant:vagrant"               # the Vagrant lab test (docker provider)
    # Debian images for the Vagrant lab (docker import) and the VM lab (rnet lab up --vm).
    "mmdebstrap:mmdebstrap"
    # The VM lab's guests.
    "qemu-utils:qemu-img"
    "qemu-system-x86:qemu-system-x86_64"
    "e2fsprogs:mke2fs"
)

have_package() {
    local pkg=$1 cmd=$2
    command -v "$cmd" >/dev/null 2>&1 && return 0
    # The command may live in an sbin directory that a non-login PATH lacks.
    [[ -x /usr/sbin/$cmd || -x /sbin/$cmd ]] && return 0
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'
}

missing=()
for pair in "${REQUIRED[@]}"; do
    pkg=${pair%%:*}
    cmd=${pair#*:}
    if ! have_package "$pkg" "$cmd"; then
        # De-duplicate: several commands can come from one package.
        [[ " ${missing[*]-} " == *" $pkg "* ]] || missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "deps.sh: missing packages: ${missing[*]}" >&2
        echo "deps.sh: run as root (or: sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
    echo "deps.sh: installing: ${missing[*]}"
    # -q twice keeps apt's progress output out of CI logs; errors still reach stderr.
    # Several installers may run at once (CI jobs, parallel builds): wait for dpkg's lock
    # instead of failing on it.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Rust toolchain -------------------------------------------------------------------------
# rustup installs into ~/.cargo/bin, which a non-login shell (CI, sudo) often lacks on PATH.
if ! command -v cargo >/dev/null 2>&1 && [[ -x "${HOME:-/root}/.cargo/bin/cargo" ]]; then
    PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    cat >&2 <<'EOF'
deps.sh: no Rust toolchain found (cargo is neither on PATH nor in ~/.cargo/bin).
rnet needs Rust 1.88 or newer; Debian 12's own cargo/rustc packages (1.63) are too old.
Install it with rustup (see https://rustup.rs), for example:
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
then open a new shell (or `source ~/.cargo/env`) and re-run this command.
EOF
    exit 1
fi

# Compare against Cargo.toml's rust-version so an old toolchain fails here, with a clear message,
# rather than deep inside a dependency's build.
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
want=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$repo_root/Cargo.toml" | head -n1)
have=$(rustc --version 2>/dev/null | awk '{print $2}')
if [[ -n $want && -n $have ]]; then
    lowest=$(printf '%s\n%s\n' "$want" "${have%%-*}" | sort -V | head -n1)
    if [[ $lowest != "$want" ]]; then
        echo "deps.sh: rustc $have is older than the required $want; run: rustup update stable" >&2
        exit 1
    fi
fi
