#!/usr/bin/env bash
# The README's first command: set everything up on a fresh Debian machine and run
# the demo. Installs softhsm2 and opensc when missing, builds kms, writes a
# development deployment into ./dev (SoftHSM2 token, SQLite, dev PKI; reused when
# present), initialises it, and shows the token's objects with opensc's pkcs11-tool.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV="${BRANDKMS_DEV_DIR:-$PWD/dev}"

need=()
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || need+=(opensc)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi

echo "== building kms"
cargo build --release --locked -p brandkms --bin kms
KMS="$PWD/target/release/kms"

echo "== kms init --dev $DEV"
"$KMS" init --dev "$DEV"

echo "== kms doctor: what the token can do"
"$KMS" doctor --config "$DEV/kms.toml"

echo "== kms reconcile: token and database agree"
"$KMS" reconcile --config "$DEV/kms.toml"

echo "== pkcs11-tool --list-objects on the dev token"
module="$(sed -n 's/^module = "\(.*\)"/\1/p' "$DEV/kms.toml")"
SOFTHSM2_CONF="$DEV/softhsm/softhsm2.conf" pkcs11-tool --module "$module" \
  --token-label brandkms-dev --login --pin "$(cat "$DEV/pin")" --list-objects 2>/dev/null
