# rnet — build, test and demo entry points. `make test` is what CI runs (.ci/run).
#
# Everything that touches the kernel (network namespaces, veth, VXLAN) needs root, so test, demo
# and bench refuse to start without it instead of failing halfway with EPERM.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

# rustup puts cargo in ~/.cargo/bin, which non-login shells (CI, sudo) often lack.
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: all build test demo bench lint clean deps require-root

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

clean:
	$(CARGO) clean
