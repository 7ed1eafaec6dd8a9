#!/usr/bin/env bash
# Builds the browser package into web/pkg/ (ignored by git), an npm package:
#   luna_wgpu.js (an ES module), luna_wgpu_bg.wasm, luna_wgpu.d.ts (TypeScript
#   typings), snippets/ (src/web/load.js, which downloads models), and from
#   web/package/ its package.json (the version is Cargo.toml's) and README.md,
#   with the repository's LICENSE-MIT and LICENSE-APACHE.
# `npm pack web/pkg` makes the tarball; `npm publish web/pkg` publishes it.
#
# On a fresh machine it first adds the wasm32-unknown-unknown target and
# installs the wasm-bindgen CLI whose version equals the wasm-bindgen of
# Cargo.lock (they must match exactly). No wasm-pack: it downloads binaries
# at run time.
#
#   web/build.sh               install what is missing, then build (release)
#   web/build.sh --no-install  fail instead of installing anything
#   web/build.sh --tools-only  install what is missing, build nothing (.ci/run)
#
# CARGO_TARGET_DIR is honoured (default: target/).
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
build=1
for arg in "$@"; do
    case "$arg" in
        --no-install) install=0 ;;
        --tools-only) build=0 ;;
        *) echo "usage: web/build.sh [--no-install | --tools-only]" >&2; exit 2 ;;
    esac
done

want=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ -z "$want" ]; then
    echo "error: Cargo.lock names no wasm-bindgen version" >&2
    exit 1
fi

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    if [ "$install" = 0 ]; then
        echo "error: the wasm32-unknown-unknown target is missing (rustup target add wasm32-unknown-unknown)" >&2
        exit 1
    fi
    rustup target add wasm32-unknown-unknown
fi

have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
if [ "$have" != "$want" ]; then
    if [ "$install" = 0 ]; then
        echo "error: wasm-bindgen $want is needed (found: ${have:-none}); cargo install wasm-bindgen-cli --version $want --locked" >&2
        exit 1
    fi
    echo "installing wasm-bindgen-cli $want (compiles for a few minutes)" >&2
    # --locked first; if a version pinned by the CLI's own lock file is missing
    # from the registry, resolve its dependencies afresh instead.
    nice -n 10 cargo install wasm-bindgen-cli --version "$want" --locked \
        || nice -n 10 cargo install wasm-bindgen-cli --version "$want"
fi

if [ "$build" = 0 ]; then
    echo "wasm32-unknown-unknown and wasm-bindgen $want are installed" >&2
    exit 0
fi

target_dir=${CARGO_TARGET_DIR:-target}
cargo rustc --lib --release --target wasm32-unknown-unknown --crate-type cdylib
rm -rf web/pkg
wasm-bindgen --target web --typescript --out-dir web/pkg "$target_dir/wasm32-unknown-unknown/release/luna_wgpu.wasm"

# The npm package around it.
version=$(awk -F'"' '/^\[/ { section = $0 } section == "[package]" && /^version = / { print $2; exit }' Cargo.toml)
if [ -z "$version" ]; then
    echo "error: Cargo.toml's [package] names no version" >&2
    exit 1
fi
sed "s/@VERSION@/$version/" web/package/package.json > web/pkg/package.json
cp web/package/README.md web/pkg/README.md
for licence in LICENSE-MIT LICENSE-APACHE; do
    if [ -f "$licence" ]; then
        cp "$licence" web/pkg/
    else
        echo "warning: $licence is missing at the repository root: the package is built without it" >&2
    fi
done
echo "wrote web/pkg/ ($(du -sh web/pkg | cut -f1)), the npm package luna-wgpu $version: serve it with \`luna serve\` (or cargo run --release -- serve), or npm pack web/pkg" >&2
