#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, HSM (a fresh SoftHSM2 token per
# test process), store (SQLite and PostgreSQL) and end-to-end tests.
#
# PostgreSQL: BRANDKMS_TEST_DATABASE_URL names a server where the user may create
# databases (.ci/run sets it). When it is unset, this script starts a throwaway
# PostgreSQL cluster of its own and stops it afterwards. Missing Debian packages
# (softhsm2, opensc, postgresql, python3-cryptography for the interoperability
# test, python3-pykcs11 for the foreign PKCS#11 client test) are installed first.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/pg.sh

need=()
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || need+=(opensc)
python3 -c "import cryptography" >/dev/null 2>&1 || need+=(python3-cryptography)
# The foreign PKCS#11 client test runs Debian's python3 with PyKCS11.
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c "import PyKCS11" >/dev/null 2>&1 || need+=(python3-pykcs11)
# The Python client (clients/python) builds a virtualenv of its own.
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || need+=(python3-venv)
if [ -z "${BRANDKMS_TEST_DATABASE_URL:-}" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${need[*]}" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >&2
fi

if [ -z "${BRANDKMS_TEST_DATABASE_URL:-}" ]; then
  brandkms_pg_up
fi

cargo test --workspace --all-targets --locked "$@"
