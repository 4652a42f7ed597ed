#!/usr/bin/env bash
# Build the static binary: target/x86_64-unknown-linux-musl/release/compute-worker
# (musl, release profile, with the default `seccomp` feature).
#
# libseccomp is linked statically, built for musl with musl-gcc from the
# Debian source package of the host's libseccomp: `apt-get source` through a
# private deb-src list made from the host's own apt sources (the host's apt
# configuration is not changed). It is built once, into target/musl-deps.
# Needs: the Rust target x86_64-unknown-linux-musl, musl-tools, gperf, make,
# dpkg-dev, linux-libc-dev (scripts/dev-setup.sh installs them all).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
TARGET=x86_64-unknown-linux-musl
DEPS="$PWD/target/musl-deps"
LIB="$DEPS/lib/libseccomp.a"
BIN="target/$TARGET/release/compute-worker"

die() {
    echo "build-static: $*" >&2
    exit 1
}

rustup target list --installed 2>/dev/null | grep -qx "$TARGET" ||
    die "the Rust target $TARGET is not installed: run 'rustup target add $TARGET' (scripts/dev-setup.sh does it)"
for tool in musl-gcc gperf make dpkg-source apt-get file; do
    command -v "$tool" >/dev/null ||
        die "$tool not found: run scripts/dev-setup.sh (Debian packages musl-tools gperf make dpkg-dev file)"
done
[ -d /usr/include/linux ] || die "no Linux kernel headers in /usr/include/linux: apt-get install linux-libc-dev"

# A private apt state whose only sources are deb-src twins of the host's
# enabled deb sources.
apt_private() {
    local apt="$DEPS/apt"
    mkdir -p "$apt/lists/partial" "$apt/sources.list.d"
    : >"$apt/sources.list"
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] && sed -nE 's/^deb[[:space:]]+/deb-src /p' "$f" >>"$apt/sources.list"
    done
    rm -f "$apt/sources.list.d/"*.sources
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && sed -E 's/^Types:.*/Types: deb-src/' "$f" >"$apt/sources.list.d/$(basename "$f")"
    done
    APT_OPTS=(
        -o "Dir::Etc::SourceList=$apt/sources.list"
        -o "Dir::Etc::SourceParts=$apt/sources.list.d"
        -o "Dir::State::Lists=$apt/lists"
        -o "Dir::Cache::pkgcache="
        -o "Dir::Cache::srcpkgcache="
        -o "APT::Sandbox::User=root"
        -q
    )
}

build_libseccomp() {
    apt_private
    local src="$DEPS/src"
    rm -rf "$src"
    mkdir -p "$src"
    echo "build-static: fetching libseccomp's Debian source package" >&2
    apt-get "${APT_OPTS[@]}" update >"$DEPS/apt-update.log" 2>&1 || true
    (cd "$src" && apt-get "${APT_OPTS[@]}" source --download-only libseccomp >"$DEPS/apt-source.log" 2>&1) ||
        die "could not fetch libseccomp's source ('apt-get source libseccomp' with deb-src twins of /etc/apt's sources; see $DEPS/apt-update.log and $DEPS/apt-source.log). Without access to the Debian archive, put a libseccomp.a built for musl at $LIB"
    # dpkg-source checks the files against the .dsc, whose hashes apt checked
    # against the archive's signed index (its note that it cannot check the
    # uploader's own signature, without debian-keyring, goes to the log).
    (cd "$src" && dpkg-source -x ./libseccomp_*.dsc libseccomp >"$DEPS/dpkg-source.log" 2>&1) ||
        die "unpacking libseccomp's source failed: see $DEPS/dpkg-source.log"
    # musl-gcc sees only musl's headers; libseccomp also needs the kernel's.
    local kh="$DEPS/kernel-headers"
    mkdir -p "$kh"
    ln -sfn /usr/include/linux "$kh/linux"
    ln -sfn "/usr/include/$(gcc -print-multiarch)/asm" "$kh/asm"
    ln -sfn /usr/include/asm-generic "$kh/asm-generic"
    echo "build-static: building libseccomp for musl" >&2
    (
        cd "$src/libseccomp"
        CC=musl-gcc CFLAGS="-O2 -isystem $kh" ./configure --prefix="$DEPS" \
            --enable-static --disable-shared --disable-python >"$DEPS/libseccomp-build.log" 2>&1
        make -C src -j"$(nproc)" >>"$DEPS/libseccomp-build.log" 2>&1
        make -C src install-libLTLIBRARIES >>"$DEPS/libseccomp-build.log" 2>&1
    ) || die "building libseccomp for musl failed: see $DEPS/libseccomp-build.log"
}

[ -f "$LIB" ] || build_libseccomp

LIBSECCOMP_LIB_PATH="$DEPS/lib" LIBSECCOMP_LINK_TYPE=static \
    cargo build --release --target "$TARGET" --bin compute-worker

kind="$(file -b "$BIN")"
case "$kind" in
*"statically linked"* | *"static-pie linked"*) ;;
*) die "$BIN is not statically linked: $kind" ;;
esac
echo "build-static: $BIN ($(du -h "$BIN" | cut -f1)): $kind" >&2
