#!/bin/sh
# Installs a built kproxy:
#
#   $PREFIX/bin/kproxy                         the daemon and CLI
#   $PREFIX/lib/kproxy/libkproxy_plugin_*.so   the dataplane plugins from plugins/ (test fixtures
#                                              such as `recorder` are never installed)
#   $SYSCONFDIR/kproxy/kproxy.toml             the documented default config (kept if present)
#   $PREFIX/lib/systemd/system/kproxy.service  the systemd unit
#
# Usage (from anywhere):
#   cargo build --release --workspace
#   sudo deploy/install.sh
#   sudo systemctl daemon-reload && sudo systemctl enable --now kproxy
#
# Variables:
#   DESTDIR     staging root for packaging (default: empty = install into /)
#   PREFIX      default /usr
#   SYSCONFDIR  default /etc
#   TARGET_DIR  cargo's target folder (default: <repo>/target, or $CARGO_TARGET_DIR)
#   PROFILE     the build profile folder to take files from (default: release)
#
# Everything is installed root-owned (when run as root), folders and programs 0755, plugins
# 0755, other files 0644: the plugin host refuses plugins or folders writable by anyone but root.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr}
SYSCONFDIR=${SYSCONFDIR:-/etc}
TARGET_DIR=${TARGET_DIR:-${CARGO_TARGET_DIR:-$repo/target}}
PROFILE=${PROFILE:-release}
build="$TARGET_DIR/$PROFILE"

die() {
    echo "install.sh: $*" >&2
    exit 1
}

owner=""
if [ "$(id -u)" = 0 ]; then
    owner="-o 0 -g 0"
fi

# install_file MODE SRC DEST
install_file() {
    # shellcheck disable=SC2086 # $owner is empty or two words on purpose
    install $owner -m "$1" "$2" "$3"
    echo "installed $3"
}

# install_dir DEST
install_dir() {
    # shellcheck disable=SC2086
    install $owner -m 0755 -d "$1"
}

[ -x "$build/kproxy" ] ||
    die "$build/kproxy not found: build first with 'cargo build --release --workspace' (or set TARGET_DIR / PROFILE)"

# The plugins are exactly the cdylib crates under plugins/: their [lib] name is
# kproxy_plugin_<name>. Fixtures under tests/ use the same prefix but are never listed here.
plugins=""
for manifest in "$repo"/plugins/*/Cargo.toml; do
    [ -f "$manifest" ] || continue
    lib=$(sed -n 's/^name *= *"\(kproxy_plugin_[a-z0-9_]*\)".*/\1/p' "$manifest" | head -n 1)
    [ -n "$lib" ] || continue
    grep -q 'cdylib' "$manifest" || continue
    so="$build/lib$lib.so"
    [ -f "$so" ] || die "$so not found: build the plugins first with 'cargo build --release --workspace'"
    plugins="$plugins $so"
done
[ -n "$plugins" ] || die "no plugins found under $repo/plugins"

bindir="$DESTDIR$PREFIX/bin"
plugindir="$DESTDIR$PREFIX/lib/kproxy"
confdir="$DESTDIR$SYSCONFDIR/kproxy"
unitdir="$DESTDIR$PREFIX/lib/systemd/system"

install_dir "$bindir"
install_dir "$plugindir"
install_dir "$confdir"
install_dir "$unitdir"

install_file 0755 "$build/kproxy" "$bindir/kproxy"
for so in $plugins; do
    install_file 0755 "$so" "$plugindir/$(basename "$so")"
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The config: never overwrite the operator's. With a non-default prefix, point plugin_dir at the
# installed plugins.
if [ -e "$confdir/kproxy.toml" ]; then
    echo "kept existing $confdir/kproxy.toml (the new default is $repo/configs/kproxy.toml)"
else
    cp "$repo/configs/kproxy.toml" "$tmp/kproxy.toml"
    if [ "$PREFIX" != /usr ]; then
        sed "s|^# plugin_dir = \"/usr/lib/kproxy\"|plugin_dir = \"$PREFIX/lib/kproxy\"|" \
            "$repo/configs/kproxy.toml" >"$tmp/kproxy.toml"
    fi
    install_file 0644 "$tmp/kproxy.toml" "$confdir/kproxy.toml"
fi

# The unit names /usr/bin/kproxy and /etc/kproxy; follow PREFIX and SYSCONFDIR.
sed -e "s|/usr/bin/kproxy|$PREFIX/bin/kproxy|g" \
    -e "s|/etc/kproxy|$SYSCONFDIR/kproxy|g" \
    "$here/systemd/kproxy.service" >"$tmp/kproxy.service"
install_file 0644 "$tmp/kproxy.service" "$unitdir/kproxy.service"

echo "done. Next: systemctl daemon-reload && systemctl enable --now kproxy"
