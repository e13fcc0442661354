#!/usr/bin/env bash
# Create a SoftHSM2 token in a directory of its own, for development and tests.
#
#   softhsm/mktoken.sh --dir DIR [--label LABEL]
#
# PINs come from the environment, never from the command line (which `ps` shows):
#   BRANDKMS_SO_PIN   security officer PIN (default: a random one, printed once to stderr)
#   BRANDKMS_PIN      user PIN that kms logs in with (required)
#
# DIR receives softhsm2.conf, tokens/ and openssl.cnf (OpenSSL's default and legacy
# providers both active, so that SoftHSM2 offers single-DES mechanisms for legacy
# card-access keys). On stdout the script prints the environment to use, as
# `export` lines for `eval`. On a fresh Debian machine it installs softhsm2 and opensc
# first when they are missing.
set -euo pipefail

dir="" label="brandkms"
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --label) label="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "mktoken: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$dir" ] || { echo "mktoken: --dir DIR is required" >&2; exit 2; }
[ -n "${BRANDKMS_PIN:-}" ] || { echo "mktoken: set BRANDKMS_PIN to the user PIN" >&2; exit 2; }

if ! command -v softhsm2-util >/dev/null 2>&1 || ! command -v pkcs11-tool >/dev/null 2>&1; then
  echo "mktoken: installing softhsm2 and opensc" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq softhsm2 opensc >&2
fi

module=""
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
         /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
  if [ -e "$m" ]; then module="$m"; break; fi
done
[ -n "$module" ] || { echo "mktoken: libsofthsm2.so not found" >&2; exit 1; }

mkdir -p "$dir/tokens"
dir="$(cd "$dir" && pwd)"
chmod 700 "$dir" "$dir/tokens"

cat > "$dir/softhsm2.conf" <<CONF
# SoftHSM2 configuration written by softhsm/mktoken.sh
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF

cat > "$dir/openssl.cnf" <<'CONF'
# OpenSSL configuration for SoftHSM2: the legacy provider provides single DES.
openssl_conf = openssl_init

[openssl_init]
providers = provider_sect

[provider_sect]
default = default_sect
legacy = legacy_sect

[default_sect]
activate = 1

[legacy_sect]
activate = 1
CONF

so_pin="${BRANDKMS_SO_PIN:-}"
if [ -z "$so_pin" ]; then
  so_pin="$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
  echo "mktoken: generated SO PIN for token '$label': $so_pin (keep it; kms never needs it)" >&2
fi

export SOFTHSM2_CONF="$dir/softhsm2.conf"
# SoftHSM2 pads labels with spaces to 32 characters.
if softhsm2-util --show-slots 2>/dev/null | grep -qE "Label:[[:space:]]+$label[[:space:]]*\$"; then
  echo "mktoken: token '$label' already exists in $dir/tokens" >&2
else
  softhsm2-util --init-token --free --label "$label" --so-pin "$so_pin" --pin "$BRANDKMS_PIN" >&2
fi

cat <<ENV
export SOFTHSM2_CONF=$dir/softhsm2.conf
export OPENSSL_CONF=$dir/openssl.cnf
export BRANDKMS_PKCS11_MODULE=$module
export BRANDKMS_TOKEN_LABEL=$label
ENV
