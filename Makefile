# rnet — build, test and demo entry points. `make test` is what CI runs (.ci/run).
#
# Everything that touches the kernel (network namespaces, veth, VXLAN) needs root, so test, demo
# and bench refuse to start without it instead of failing halfway with EPERM.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

# rustup puts cargo in ~/.cargo/bin, which non-login shells (CI, sudo) often lack.
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: all build cni-static test demo bench lint clean deps require-root install install-files \
	install-data deb deb-files cargo-deb

all: build

build:
	$(CARGO) build --release --bins

# rnet-cni, linked statically against musl: a runtime execs it for every ADD and DEL. With
# no dynamic loader, and without glibc's start-up probing of the CPU and its caches (dozens
# of CPUID instructions, each a trap to the hypervisor in a VM), a call ends about 0.5 ms
# sooner than the dynamically linked glibc build's (docs/benchmarks.md). What is installed
# and packaged, and what the CNI bench measures. Its own cargo run for the musl target (added
# with rustup when missing): ring, a dependency of the library the plugin does not link,
# compiles its C with musl-gcc (Debian musl-tools); nothing of libnftnl and libmnl is linked
# into the plugin either, so their link flags are dropped (a use would fail the link).
# (PATH given to the shell: make before 4.4 does not export it to $(shell).)
HOST_TRIPLE := $(shell PATH="$(PATH)" rustc -vV 2>/dev/null | sed -n 's/^host: //p')
CNI_TRIPLE := $(subst -gnu,-musl,$(HOST_TRIPLE))
CNI_STATIC := target/static/$(CNI_TRIPLE)/release/rnet-cni
cni-static:
	@command -v musl-gcc >/dev/null || \
		{ echo "error: musl-gcc is missing: run ./scripts/deps.sh (or apt-get install musl-tools)" >&2; exit 1; }
	@ls "$$(rustc --print target-libdir --target $(CNI_TRIPLE))"/libstd-* >/dev/null 2>&1 || \
		rustup target add $(CNI_TRIPLE)
	$(CARGO) build --release --bin rnet-cni --target $(CNI_TRIPLE) --target-dir target/static \
		--config 'env.CC_$(subst -,_,$(CNI_TRIPLE))="musl-gcc"' \
		--config 'target.$(CNI_TRIPLE).mnl.rustc-link-lib=[]' \
		--config 'target.$(CNI_TRIPLE).nftnl.rustc-link-lib=[]'

deps:
	./scripts/deps.sh

require-root:
	@if [[ $$(id -u) -ne 0 ]]; then \
		echo "error: '$(MAKECMDGOALS)' needs root: the tests and demo create network namespaces," >&2; \
		echo "       veth pairs and VXLAN devices. Run it as root (e.g. sudo make $(MAKECMDGOALS))." >&2; \
		exit 1; \
	fi

# Root tests are behind the `root-tests` feature so a plain `cargo test` as a normal user still
# works; here we always enable it, because a gated test that nothing runs proves nothing.
# Two test threads: the machines have two cores, and every test builds real kernel objects.
test: require-root deps
	$(CARGO) build --features root-tests --all-targets
	$(CARGO) test --features root-tests -- --test-threads=2

demo: require-root deps build
	./scripts/demo.sh

bench: require-root deps build
	$(MAKE) --no-print-directory cni-static
	RNET_CNI_PLUGIN=$(CNI_STATIC) ./scripts/bench.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --features root-tests -- -D warnings

# Installation layout; DESTDIR stages it (packaging). BUILT: where the binaries are taken from;
# CNI_PLUGIN: the rnet-cni to install (`install` and `deb` give the static one).
PREFIX ?= /usr/local
DESTDIR ?=
BUILT ?= target/release
CNI_PLUGIN ?= $(BUILT)/rnet-cni
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man/man1
# Where container runtimes look for CNI plugins, whatever the PREFIX.
CNI_BIN_DIR ?= /opt/cni/bin
# systemd reads units from $(PREFIX)/lib/systemd/system for /usr and /usr/local.
UNITDIR ?= $(PREFIX)/lib/systemd/system
BASH_COMPLETIONS ?= $(PREFIX)/share/bash-completion/completions
ZSH_COMPLETIONS ?= $(PREFIX)/share/zsh/site-functions
FISH_COMPLETIONS ?= $(PREFIX)/share/fish/vendor_completions.d

# Sequential, not two prerequisites: under -j install-files would race the build.
install: build
	$(MAKE) --no-print-directory cni-static
	$(MAKE) install-files CNI_PLUGIN=$(CNI_STATIC)

# Installs what $(BUILT) holds, without building (so `sudo make install-files` after a
# user's `make build` needs no toolchain as root).
install-files:
	@for b in $(BUILT)/rnetd $(BUILT)/rnet $(CNI_PLUGIN); do \
		[[ -x "$$b" ]] || { echo "error: $$b is missing: run 'make build' first" >&2; exit 1; }; \
	done
	install -D -m 0755 $(BUILT)/rnetd $(DESTDIR)$(BINDIR)/rnetd
	install -D -m 0755 $(BUILT)/rnet $(DESTDIR)$(BINDIR)/rnet
	install -D -m 0755 $(CNI_PLUGIN) $(DESTDIR)$(BINDIR)/rnet-cni
	install -D -m 0755 $(CNI_PLUGIN) $(DESTDIR)$(CNI_BIN_DIR)/rnet-cni
	$(MAKE) --no-print-directory install-data

# Everything but the binaries: the unit, and the completions and man pages that $(BUILT)'s
# binaries generate. The Debian package stages these (the binaries it takes from the build).
install-data:
	@for b in rnetd rnet; do \
		[[ -x "$(BUILT)/$$b" ]] || { echo "error: $(BUILT)/$$b is missing: run 'make build' first" >&2; exit 1; }; \
	done
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed 's|/usr/local/bin/rnetd|$(BINDIR)/rnetd|' packaging/rnetd.service > $(DESTDIR)$(UNITDIR)/rnetd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/rnetd.service
	install -d -m 0755 $(DESTDIR)$(BASH_COMPLETIONS) $(DESTDIR)$(ZSH_COMPLETIONS) $(DESTDIR)$(FISH_COMPLETIONS)
	$(BUILT)/rnet completions bash > $(DESTDIR)$(BASH_COMPLETIONS)/rnet
	$(BUILT)/rnet completions zsh > $(DESTDIR)$(ZSH_COMPLETIONS)/_rnet
	$(BUILT)/rnet completions fish > $(DESTDIR)$(FISH_COMPLETIONS)/rnet.fish
	$(BUILT)/rnet man $(DESTDIR)$(MANDIR)
	$(BUILT)/rnetd --man $(DESTDIR)$(MANDIR)

# Debian package (cargo-deb, [package.metadata.deb] in Cargo.toml) in $(DEB_OUT).
# DEB_TARGET_DIR: the cargo target directory whose release/ binaries are packaged (the test
# points it at a scratch one holding the binaries its run has built); DEB_FLAGS adds
# cargo-deb flags (e.g. --fast).
CARGO_DEB_VERSION := 3.8.0
DEB_TARGET_DIR ?= target
DEB_OUT ?= $(DEB_TARGET_DIR)/debian
DEB_FLAGS ?=
# The rnet-cni to package (`deb` gives the static one).
DEB_CNI_PLUGIN ?= $(DEB_TARGET_DIR)/release/rnet-cni

deb: build
	$(MAKE) --no-print-directory cni-static
	$(MAKE) --no-print-directory deb-files DEB_CNI_PLUGIN=$(CNI_STATIC)

# Packages what $(DEB_TARGET_DIR)/release holds, without building. The generated files and
# the CNI plugin are staged in release/deb-stage, where Cargo.toml's assets find them (man
# pages gzipped, as Debian ships them). cargo-deb is installed after the binaries are found:
# a refusal costs no install. --strip: the release profile keeps line tables (debug = 1), which cargo-deb would ship.
deb-files:
	rm -rf $(DEB_TARGET_DIR)/release/deb-stage
	$(MAKE) --no-print-directory install-data PREFIX=/usr BUILT=$(DEB_TARGET_DIR)/release \
		DESTDIR=$(DEB_TARGET_DIR)/release/deb-stage
	gzip -9n $(DEB_TARGET_DIR)/release/deb-stage/usr/share/man/man1/*.1
	install -m 0755 $(DEB_CNI_PLUGIN) $(DEB_TARGET_DIR)/release/deb-stage/rnet-cni
	$(MAKE) --no-print-directory cargo-deb
	CARGO_TARGET_DIR=$(DEB_TARGET_DIR) $(CARGO) deb --no-build --strip --output $(DEB_OUT) $(DEB_FLAGS)

# cargo-deb, installed (pinned) only when missing.
cargo-deb:
	@command -v cargo-deb >/dev/null || $(CARGO) install cargo-deb --version $(CARGO_DEB_VERSION) --locked

clean:
	$(CARGO) clean
