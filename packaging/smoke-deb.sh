#!/usr/bin/env bash
# Runs the installed package as an operator would on a fresh host, without
# systemd (CI machines have no systemd as PID 1, so the unit's sandbox itself is
# not exercised here; systemd-analyze verify checks the unit): a SoftHSM2 token
# made by /usr/share/brandkms/mktoken.sh as the brandkms user in
# /var/lib/brandkms/softhsm, the PIN in /etc/brandkms/pin read through the
# credential directory the unit's LoadCredential would give, TLS files made
# with openssl in /etc/brandkms/pki, the packaged /etc/brandkms/kms.toml
# unchanged. Then kms doctor, kms init, kms serve as brandkms, and the packaged
# kmsctl: health, a key created, the audit trail verified; SIGTERM stops the
# service cleanly.
#
# Only on a host where the package was just installed (an empty
# /var/lib/brandkms and no /etc/brandkms/pin): it never touches a deployment,
# and removes what it made (the PIN, the token, the database, the TLS files)
# when it ends, so that it runs again on the same host.
set -euo pipefail
umask 077
fail() { echo "smoke-deb.sh: FAILED: $*" >&2; exit 1; }
if [ -e /etc/brandkms/pin ] || [ -n "$(ls -A /var/lib/brandkms 2>/dev/null)" ]; then
  echo "smoke-deb.sh: /var/lib/brandkms or /etc/brandkms/pin exists: not a fresh install; skipped"
  exit 0
fi
[ "$(id -u)" = 0 ] || fail "run as root (it writes /etc/brandkms and runs commands as brandkms)"
command -v softhsm2-util >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1 || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 opensc openssl
}
work="$(mktemp -d /tmp/brandkms-smoke.XXXXXX)"
# brandkms passes through to its credential directory, nothing more.
chmod 0711 "$work"
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  rm -rf "$work" /etc/brandkms/pki
  rm -f /etc/brandkms/pin
  find /var/lib/brandkms -mindepth 1 -delete 2>/dev/null || true
}
trap cleanup EXIT
as_kms() { runuser -u brandkms -- env CREDENTIALS_DIRECTORY="$work/credentials" "$@"; }

# The PIN, and the credential directory systemd would make (readable by the
# service alone).
od -An -N8 -tx1 /dev/urandom | tr -d ' \n' > /etc/brandkms/pin
chmod 600 /etc/brandkms/pin
install -d -o brandkms -g brandkms -m 0700 "$work/credentials"
install -o brandkms -g brandkms -m 0400 /etc/brandkms/pin "$work/credentials/kms-pin"

# The token, as the service account (the PINs in its environment, not on a
# command line).
BRANDKMS_PIN="$(cat /etc/brandkms/pin)" \
  BRANDKMS_SO_PIN="$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" \
  runuser -u brandkms -- /usr/share/brandkms/mktoken.sh \
  --dir /var/lib/brandkms/softhsm --label brandkms >/dev/null

# TLS: a CA, the server's certificate, an officer's (SAN URI names the entity).
pki=/etc/brandkms/pki
install -d -o root -g brandkms -m 0750 "$pki"
cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=brandkms smoke CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
install -o root -g brandkms -m 0640 ca.pem "$pki/ca.pem"
issue() { # name subject san
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
    -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=%s\n' "$3" "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
    -days 2 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
}
issue server localhost "DNS:localhost,IP:127.0.0.1" serverAuth
issue officer-1 officer-1 "URI:urn:brandkms:entity:officer-1" clientAuth
install -o root -g brandkms -m 0640 server.pem "$pki/server.pem"
install -o root -g brandkms -m 0640 server-key.pem "$pki/server-key.pem"

config=/etc/brandkms/kms.toml
out="$(as_kms kms doctor --config "$config")" || fail "kms doctor: $out"
grep -q "ok           token directory inside the deployment" <<<"$out" || fail "kms doctor: $out"
as_kms kms init --config "$config" --officer officer-1 | grep -q "registered officer officer-1" \
  || fail "kms init"

port=17443
# setpriv and env exec (runuser would fork): $! is kms itself, for SIGTERM.
setpriv --reuid brandkms --regid brandkms --init-groups \
  env CREDENTIALS_DIRECTORY="$work/credentials" BRANDKMS_LISTEN="127.0.0.1:$port" \
  BRANDKMS_METRICS_LISTEN=off kms serve --config "$config" --log-format json \
  > "$work/serve.log" 2>&1 &
server=$!
export KMSCTL_ENDPOINT="https://127.0.0.1:$port" KMSCTL_CA="$pki/ca.pem"
export KMSCTL_CERT="$work/officer-1.pem" KMSCTL_KEY="$work/officer-1-key.pem"
for _ in $(seq 1 100); do
  kmsctl health >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$work/serve.log"; fail "kms serve exited"; }
  sleep 0.1
done
kmsctl health || { cat "$work/serve.log"; fail "kmsctl health"; }
kmsctl key create smoke-key --service-code 0x0A01 --purpose load
kmsctl audit verify
head -1 "$work/serve.log" | grep -q '^{' || fail "the log is not JSON: $(head -1 "$work/serve.log")"
kill -TERM "$server"
wait "$server" || fail "kms serve did not stop cleanly on SIGTERM: $(tail -5 "$work/serve.log")"
server=""
echo "smoke-deb.sh: the installed kms served with the packaged configuration as brandkms"
