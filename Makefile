# The commands people run. Everything here is plain cargo underneath; see README.md.
.PHONY: deps build demo test lint install

# System packages the demo and the tests need (Debian; installs only what is missing).
deps:
	scripts/install-deps

build:
	cargo build --workspace --all-targets

# kproxy load-balancing real traffic in a sandbox of network namespaces (needs root).
demo: deps build
	target/debug/kproxy demo

# The whole test suite, as CI runs it (needs root: the lab builds network namespaces).
test: deps build
	cargo test --workspace --no-fail-fast

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# Lays out /usr/bin/kproxy, /usr/lib/kproxy/*.so, /etc/kproxy/kproxy.toml and the systemd unit
# under $(DESTDIR).
install:
	cargo build --release --workspace
	deploy/install.sh
