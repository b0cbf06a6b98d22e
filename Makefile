# rnet — build, test and demo entry points. `make test` is what CI runs (.ci/run).
#
# Everything that touches the kernel (network namespaces, veth, VXLAN) needs root, so test, demo
# and bench refuse to start without it instead of failing halfway with EPERM.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

# rustup puts cargo in ~/.cargo/bin, which non-login shells (CI, sudo) often lack.
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: all build test demo bench lint clean deps require-root install install-files

all: build

build:
	$(CARGO) build --release --bins

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
	./scripts/bench.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --features root-tests -- -D warnings

# Installation layout; DESTDIR stages it (packaging). BUILT: where the binaries are taken from.
PREFIX ?= /usr/local
DESTDIR ?=
BUILT ?= target/release
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
	$(MAKE) install-files

# Installs what $(BUILT) holds, without building (so `sudo make install-files` after a
# user's `make build` needs no toolchain as root).
install-files:
	@for b in rnetd rnet rnet-cni; do \
		[[ -x "$(BUILT)/$$b" ]] || { echo "error: $(BUILT)/$$b is missing: run 'make build' first" >&2; exit 1; }; \
	done
	install -D -m 0755 $(BUILT)/rnetd $(DESTDIR)$(BINDIR)/rnetd
	install -D -m 0755 $(BUILT)/rnet $(DESTDIR)$(BINDIR)/rnet
	install -D -m 0755 $(BUILT)/rnet-cni $(DESTDIR)$(BINDIR)/rnet-cni
	install -D -m 0755 $(BUILT)/rnet-cni $(DESTDIR)$(CNI_BIN_DIR)/rnet-cni
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed 's|/usr/local/bin/rnetd|$(BINDIR)/rnetd|' packaging/rnetd.service > $(DESTDIR)$(UNITDIR)/rnetd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/rnetd.service
	install -d -m 0755 $(DESTDIR)$(BASH_COMPLETIONS) $(DESTDIR)$(ZSH_COMPLETIONS) $(DESTDIR)$(FISH_COMPLETIONS)
	$(BUILT)/rnet completions bash > $(DESTDIR)$(BASH_COMPLETIONS)/rnet
	$(BUILT)/rnet completions zsh > $(DESTDIR)$(ZSH_COMPLETIONS)/_rnet
	$(BUILT)/rnet completions fish > $(DESTDIR)$(FISH_COMPLETIONS)/rnet.fish
	$(BUILT)/rnet man $(DESTDIR)$(MANDIR)
	$(BUILT)/rnetd --man $(DESTDIR)$(MANDIR)

clean:
	$(CARGO) clean
