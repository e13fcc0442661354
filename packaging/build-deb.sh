#!/usr/bin/env bash
# Builds the Debian package of brandkms into target/debian/: the production
# binaries (profile `deb`, release settings in target/deb; kms without the
# `dev` feature), man pages and shell
# completions (xtask assets), then cargo-deb (installed into ~/.cargo when
# missing). Prints the package's path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"

command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --version '^3'
command -v dpkg-deb >/dev/null 2>&1 || { echo "build-deb.sh: dpkg-deb missing" >&2; exit 1; }

echo "build-deb.sh: cargo build --profile deb (kms without the dev feature, kmsctl, participant commands)" >&2
cargo build --profile deb --locked -p brandkms --bin kms -p brandkms-clients \
  --bin kmsctl --bin issuer --bin cybershop --bin loading-portal --bin loadgen \
  --bin terminal --bin clearing
rm -rf "$TARGET/deb/brandkms-assets"
cargo run --profile deb --locked -q -p xtask -- assets "$TARGET/deb/brandkms-assets" >&2
gzip -9n "$TARGET"/deb/brandkms-assets/man/man1/*.1
cargo deb --no-build --locked --profile deb -p brandkms
