#!/usr/bin/env bash
# The README's first command: set everything up on a fresh Debian machine and run
# the service with its demo. Installs softhsm2 and opensc when missing, builds kms
# and kmsctl, writes a development deployment into ./dev (SoftHSM2 token, SQLite,
# dev PKI; reused when present), starts `kms serve`, records the brand's seed
# example with kmsctl (a second officer approves what dual control holds), lists
# it, verifies the audit trail, distributes keys to an
# issuer's own token and (with consent) to a bank centre's, shows the token's
# objects with opensc's pkcs11-tool, and stops the server. On the way it migrates
# keys from an old HSM (tests/old_hsm.py) and authenticates a card personalised
# from one of them long ago.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV="${BRANDKMS_DEV_DIR:-$PWD/dev}"

need=()
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || need+=(opensc)
# The old HSM of the migration (tests/old_hsm.py) is Python `cryptography`.
python3 -c "import cryptography" >/dev/null 2>&1 || need+=(python3-cryptography)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi

echo "== building kms and kmsctl"
cargo build --release --locked -p brandkms --features dev --bin kms -p brandkms-clients \
  --bin kmsctl --bin issuer --bin cybershop --bin loading-portal --bin loadgen \
  --bin terminal --bin clearing
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"
KMS="$BIN/kms"
KMSCTL="$BIN/kmsctl"
ISSUER="$BIN/issuer"
SHOP="$BIN/cybershop"
PORTAL="$BIN/loading-portal"
LOADGEN="$BIN/loadgen"
TERMINAL="$BIN/terminal"
CLEARING="$BIN/clearing"

echo "== kms init --dev $DEV"
"$KMS" init --dev "$DEV"

echo "== kms doctor: what the token can do"
"$KMS" doctor --config "$DEV/kms.toml"

echo "== kms serve"
# Metrics on loopback (a deployment written before they existed gains them too).
BRANDKMS_METRICS_LISTEN=127.0.0.1:9464 RUST_LOG=warn "$KMS" serve --config "$DEV/kms.toml" > "$DEV/kms.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT

# Officer 1's connection, from the environment (a profile file works too).
export KMSCTL_ENDPOINT=https://127.0.0.1:7443 KMSCTL_CA="$DEV/pki/ca.pem"
export KMSCTL_CERT="$DEV/pki/officer-1.pem" KMSCTL_KEY="$DEV/pki/officer-1-key.pem"
for _ in $(seq 1 100); do
  "$KMSCTL" health >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$DEV/kms.log"; exit 1; }
  sleep 0.1
done
"$KMSCTL" health

step() { echo; echo "\$ kmsctl $*"; "$KMSCTL" "$@"; }
# Officer 2, the second officer of dual control.
as_officer_2() { KMSCTL_CERT="$DEV/pki/officer-2.pem" KMSCTL_KEY="$DEV/pki/officer-2-key.pem" "$KMSCTL" "$@"; }
pending_ids() { "$KMSCTL" --json approvals list --state pending | sed -n 's/.*"id": "\(ap-[0-9a-f]*\)".*/\1/p'; }
approve_pending() {
  for id in $(pending_ids); do
    echo; echo "\$ kmsctl approve $id   (as officer-2)"
    as_officer_2 approve "$id"
  done
}
# Create what the seed example needs, unless an earlier run did.
key() { "$KMSCTL" key show "$1" >/dev/null 2>&1 || step key create "$@"; }
entity() { "$KMSCTL" --json entity list | grep "\"id\": \"$1\"" >/dev/null || step entity register "$@"; }
tieup() { [ "$("$KMSCTL" --json tieup list --entity "$1")" != "[]" ] || step tieup create "$@"; }

echo; echo "== the seed example: keys A, B, C; issuers 2-3 and 2-4; a bank centre and an MMK centre"
key key-a --service-code 0x0A01 --purpose load --exportable   # loading through credit company A
key key-b --service-code 0x0B01 --purpose load --exportable   # withdrawal from bank B
key key-c --service-code 0x0C01 --purpose load --exportable   # credit card C
entity issuer-2-3 --kind issuer --name "Issuer 2-3" --online
entity issuer-2-4 --kind issuer --name "Issuer 2-4" --online
entity bank-center-b --kind bank_center --name "Bank centre B"
entity mmk-center --kind mmk_center --name "Multimedia-kiosk centre"
tieup issuer-2-3 --cover key-a:supply --cover key-b:supply
tieup issuer-2-4 --cover key-a:supply --cover key-c:supply
tieup bank-center-b --cover key-a:supply --cover key-b:supply --sponsor issuer-2-3
tieup mmk-center --cover key-a:supply --cover key-c:supply --sponsor issuer-2-4

echo; echo "== dual control: supply tie-ups and rotations wait for a second officer"
step approvals list --state pending
approve_pending

step key rotate key-c
echo; echo "\$ kmsctl approve ID   (officer-1, their own proposal: refused, rule 7)"
"$KMSCTL" approve "$(pending_ids | head -n 1)" || true
approve_pending
step approvals list
step key list --class card_access
step entity list
step tieup list
step audit list --limit 8
step audit verify

echo; echo "== a participant is not an officer: kmsctl as issuer-2-3 is refused"
KMSCTL_CERT="$DEV/pki/issuer-2-3.pem" KMSCTL_KEY="$DEV/pki/issuer-2-3-key.pem" "$KMSCTL" key list || true

# A participant's own token (a second SoftHSM2 token in a directory of its own)
# and the `issuer` command acting as that participant.
participant() {
  local id="$1"; shift
  local dir="$DEV/participants/$id"
  if [ ! -f "$dir/pin" ]; then
    mkdir -p "$dir"
    od -An -N8 -tx1 /dev/urandom | tr -d ' \n' > "$dir/pin"
    chmod 600 "$dir/pin"
  fi
  (
    eval "$(BRANDKMS_PIN="$(cat "$dir/pin")" softhsm/mktoken.sh --dir "$dir/token" --label "$id" 2>/dev/null)"
    ISSUER_PIN="$(cat "$dir/pin")" KMSCTL_CERT="$DEV/pki/$id.pem" KMSCTL_KEY="$DEV/pki/$id-key.pem" \
      "$ISSUER" "$@" --module "$BRANDKMS_PKCS11_MODULE" --token-label "$id"
  )
}
as_issuer() {
  local id="$1"; shift
  KMSCTL_CERT="$DEV/pki/$id.pem" KMSCTL_KEY="$DEV/pki/$id-key.pem" "$ISSUER" "$@"
}

# The key ceremony: the participant writes its RSA public key and reads its
# fingerprint to the officers (out of band); officer 1 has the token's security
# officer mark it trusted, with the SO PIN (here the dev deployment's so-pin
# file; in production typed by its custodian). Exportable masters are wrapped
# only under such a key.
trust_key() {
  local id="$1" der="$DEV/participants/$1/rsa-public.der" out fp
  echo "\$ issuer public-key --out $der   (as $id)"
  out="$(participant "$id" public-key --out "$der")"
  echo "$out"
  fp="${out##*SHA-256 }"
  step entity trust-key "$id" --spki "$der" --fingerprint "$fp" --so-pin-file "$DEV/so-pin"
}

echo; echo "== distribution: issuer 2-3 receives its keys into a token of its own"
echo "\$ issuer sync   (as issuer-2-3, with a transport key only: exportable masters are refused)"
participant issuer-2-3 sync || true
trust_key issuer-2-3
echo "\$ issuer sync   (as issuer-2-3)"
participant issuer-2-3 sync

echo; echo "== bank centre B, brought in by issuer 2-3, is refused until issuer 2-3 consents (rule 4)"
trust_key bank-center-b
echo "\$ issuer sync   (as bank-center-b)"
participant bank-center-b sync || true
for k in key-a key-b; do
  echo "\$ issuer consent grant --third-party bank-center-b --alias $k   (as issuer-2-3)"
  as_issuer issuer-2-3 consent grant --third-party bank-center-b --alias "$k"
done
echo "\$ issuer sync   (as bank-center-b)"
participant bank-center-b sync
step distribution list
echo "\$ issuer consent revoke --third-party bank-center-b --alias key-a   (as issuer-2-3)"
as_issuer issuer-2-3 consent revoke --third-party bank-center-b --alias key-a
as_issuer issuer-2-3 consent revoke --third-party bank-center-b --alias key-b
echo "\$ issuer sync   (as bank-center-b, after the revocation)"
participant bank-center-b sync || true

echo; echo "== cards: issuer 2-2 personalises two simulated cards from masters in its own token"
key key-k --service-code 0x0A02 --purpose purchase --exportable   # cybershop K's purchases
key key-e --service-code 0x0E01 --purpose load --exportable       # loads for offline issuer 2-1
entity issuer-2-2 --kind issuer --name "Issuer 2-2" --online
entity issuer-2-1 --kind issuer --name "Issuer 2-1 (offline)"
entity cybershop-k --kind cybershop --name "Cybershop K"
entity loading-portal --kind loading_portal --name "Loading portal"
tieup issuer-2-2 --cover key-k:supply --cover key-e:supply
tieup cybershop-k --cover key-k:hold --limit 10000
tieup issuer-2-1 --cover key-e:proxy_load
tieup loading-portal --cover key-e:proxy_load
approve_pending
trust_key issuer-2-2
echo "\$ issuer sync   (as issuer-2-2)"
participant issuer-2-2 sync
mkdir -p "$DEV/cards"
for spec in "key-k 0123456789012345 card-k" "key-e 1122334455667788 card-e"; do
  set -- $spec
  echo "\$ issuer personalise --alias $1 --card-id $2 --balance 5000 --out $DEV/cards/$3.json   (as issuer-2-2)"
  participant issuer-2-2 personalise --alias "$1" --card-id "$2" --balance 5000 --out "$DEV/cards/$3.json"
done
as_shop() { KMSCTL_CERT="$DEV/pki/cybershop-k.pem" KMSCTL_KEY="$DEV/pki/cybershop-k-key.pem" "$SHOP" "$@"; }
echo; echo "== a cybershop purchase: brandkms authenticates the card and seals the DEBIT"
echo "\$ cybershop purchase --card $DEV/cards/card-k.json --alias key-k --amount 2000"
as_shop purchase --card "$DEV/cards/card-k.json" --alias key-k --amount 2000
echo "\$ cybershop purchase --card $DEV/cards/card-k.json --alias key-k --amount 20000   (above the tie-up's limit)"
as_shop purchase --card "$DEV/cards/card-k.json" --alias key-k --amount 20000 || true
echo; echo "== a proxy load for offline issuer 2-1, by the loading portal"
echo "\$ loading-portal load --card $DEV/cards/card-e.json --alias key-e --amount 3000"
KMSCTL_CERT="$DEV/pki/loading-portal.pem" KMSCTL_KEY="$DEV/pki/loading-portal-key.pem" \
  "$PORTAL" load --card "$DEV/cards/card-e.json" --alias key-e --amount 3000
step proxy-loads report
echo "\$ kmsctl proxy-loads list   (as issuer-2-1: its own only)"
KMSCTL_CERT="$DEV/pki/issuer-2-1.pem" KMSCTL_KEY="$DEV/pki/issuer-2-1-key.pem" "$KMSCTL" proxy-loads list

echo; echo "== migration: keys from the brand's old HSM (tests/old_hsm.py), a card personalised long ago"
OLD_HSM="python3 tests/old_hsm.py"
MIG="$DEV/migration"
mkdir -p "$MIG"
json_field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
active_version() { python3 -c 'import json, sys; print([v["version"] for v in json.load(sys.stdin)["versions"] if v["state"] == "active"][0])'; }
hex_of() { python3 -c 'import sys; print(open(sys.argv[1], "rb").read().hex())' "$1"; }
unhex_to() { python3 -c 'import sys; open(sys.argv[2], "wb").write(bytes.fromhex(sys.argv[1]))' "$1" "$2"; }
if ! "$KMSCTL" key show legacy-m >/dev/null 2>&1; then
  step key create-import-key
  step key import-parameters --out "$MIG/import.der"
  params=$("$KMSCTL" --json key import-parameters)
  fingerprint=$(echo "$params" | json_field fingerprint_sha256)
  import_version=$(echo "$params" | json_field version)
  # The old HSM checks the fingerprint (read to it out of band), wraps its
  # AES-256 KEK under the import key, and the brand's masters under the KEK.
  kek=$(python3 -c "import secrets; print(secrets.token_hex(32))")
  echo "\$ python3 tests/old_hsm.py SPKI FINGERPRINT KEK   (the old HSM wraps its KEK under the import key)"
  read -r wrapped kcv < <($OLD_HSM "$(hex_of "$MIG/import.der")" "$fingerprint" "$kek")
  unhex_to "$wrapped" "$MIG/kek.wrapped"
  step key import kek.old-hsm --class import_kek --wrapped "$MIG/kek.wrapped" --kcv "$kcv" \
    --import-key-version "$import_version"
  approve_pending
  # legacy-m is docs/protocol.md's K_M: the master of cards in the field.
  printf '%s\n' "legacy-m 0123456789ABCDEFFEDCBA9876543210 0x0A03 purchase" \
    "legacy-x $(python3 -c 'import secrets; print(secrets.token_hex(16))') 0x0A04 purchase" > "$MIG/keys.txt"
  echo "\$ python3 tests/old_hsm.py batch KEK kek.old-hsm < keys.txt > batch.toml   (RFC 5649 under the KEK)"
  $OLD_HSM batch "$kek" kek.old-hsm < "$MIG/keys.txt" > "$MIG/batch.toml"
  step key import-batch "$MIG/batch.toml"
  approve_pending
  echo "\$ python3 tests/old_hsm.py card K_M 8877665544332211 0x0A03 5000 old-card.json   (personalised long ago)"
  $OLD_HSM card 0123456789ABCDEFFEDCBA9876543210 8877665544332211 0x0A03 5000 "$DEV/cards/old-card.json"
  step tieup create cybershop-k --cover legacy-m:hold --limit 10000
fi
echo "\$ cybershop purchase --card $DEV/cards/old-card.json --alias legacy-m --amount 1000"
as_shop purchase --card "$DEV/cards/old-card.json" --alias legacy-m --amount 1000
step key cryptoperiod legacy-m --not-after "$(date -u -d '+20 days' +%Y-%m-%dT%H:%M:%SZ)"
approve_pending   # a later not-after than before (a run before this one) is a widening
step key list --expiring 30d
legacy_x=$("$KMSCTL" --json key show legacy-x | active_version)
step key compromise legacy-x "$legacy_x" --reason "old HSM backup tape lost" --rotate
approve_pending
step key show legacy-x

echo; echo "== load: 8 clients for 5 s of whole card transactions, then the token's raw rate"
echo "\$ loadgen --card $DEV/cards/card-k.json --alias key-k --clients 8 --seconds 5 --kms-config $DEV/kms.toml"
scrape() {
  python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9464/metrics").read().decode())' |
    grep -E '^brandkms_grpc_requests_total\{service="CardAuthentication",method="SealCommand"|^brandkms_grpc_request_duration_seconds_(count|sum)\{service="CardAuthentication",method="SealCommand"|^brandkms_grpc_request_duration_seconds_bucket\{service="CardAuthentication",method="SealCommand",le="0.0(05|1)"|^brandkms_hsm_sessions|^brandkms_audit_batch_requests_(count|sum) '
}
echo "\$ curl -s http://127.0.0.1:9464/metrics | grep ...   (before)"
scrape
KMSCTL_CERT="$DEV/pki/cybershop-k.pem" KMSCTL_KEY="$DEV/pki/cybershop-k-key.pem" \
  "$LOADGEN" --card "$DEV/cards/card-k.json" --alias key-k --clients 8 --seconds 5 --kms-config "$DEV/kms.toml"
echo "\$ curl -s http://127.0.0.1:9464/metrics | grep ...   (after the load)"
scrape

echo; echo "== settlement: a store seals card numbers, the clearing house decrypts, signs, the store verifies"
"$KMSCTL" key show settle >/dev/null 2>&1 || step key create-settlement settle --algorithm rsa3072
entity clearing-house --kind clearing_house --name "Clearing house"
entity store-s --kind merchant_terminal --name "Store S"
tieup clearing-house --cover settle:hold
as_store() { KMSCTL_CERT="$DEV/pki/store-s.pem" KMSCTL_KEY="$DEV/pki/store-s-key.pem" "$@"; }
as_clearing() { KMSCTL_CERT="$DEV/pki/clearing-house.pem" KMSCTL_KEY="$DEV/pki/clearing-house-key.pem" "$@"; }
mkdir -p "$DEV/settlement"
rm -f "$DEV/settlement/day.txt"
echo "\$ terminal seal --alias settle --out $DEV/settlement/day.txt 4111111111111111 5500000000000004 4000000000000002   (as store-s)"
as_store "$TERMINAL" seal --alias settle --out "$DEV/settlement/day.txt" 4111111111111111 5500000000000004 4000000000000002
echo "not a blob" >> "$DEV/settlement/day.txt"
echo "\$ clearing decrypt $DEV/settlement/day.txt --out $DEV/settlement/day.results   (as clearing-house; line 4 is bad)"
as_clearing "$CLEARING" decrypt "$DEV/settlement/day.txt" --out "$DEV/settlement/day.results" --quiet
echo "\$ clearing decrypt ...   (as store-s: refused line by line)"
as_store "$CLEARING" decrypt "$DEV/settlement/day.txt" --out "$DEV/settlement/store.results" --quiet
echo "\$ clearing sign --alias settle $DEV/settlement/day.results --signature $DEV/settlement/day.sig   (as clearing-house)"
as_clearing "$CLEARING" sign --alias settle "$DEV/settlement/day.results" --signature "$DEV/settlement/day.sig"
version="$("$KMSCTL" --json key show settle | sed -n 's/.*"version": \([0-9]*\).*/\1/p' | tail -n 1)"
echo "\$ clearing verify --alias settle --version $version $DEV/settlement/day.results --signature $DEV/settlement/day.sig   (as store-s)"
as_store "$CLEARING" verify --alias settle --version "$version" "$DEV/settlement/day.results" --signature "$DEV/settlement/day.sig"

echo; echo "== benchmark: 10,000 sealed blobs through DecryptStream, then the token's raw OAEP rate"
seq 4000000000000000 4000000000009999 | as_store "$TERMINAL" seal --alias settle --out "$DEV/settlement/big.txt.new"
mv "$DEV/settlement/big.txt.new" "$DEV/settlement/big.txt"
echo "\$ clearing decrypt $DEV/settlement/big.txt --out $DEV/settlement/big.results --kms-config $DEV/kms.toml"
as_clearing "$CLEARING" decrypt "$DEV/settlement/big.txt" --out "$DEV/settlement/big.results" --quiet --kms-config "$DEV/kms.toml"
echo "kms serve peak memory after the 10,000-blob stream: $(sed -n 's/^VmHWM:[[:space:]]*//p' "/proc/$server/status" 2>/dev/null || echo unknown)"

echo; echo "== kms reconcile: token and database agree"
"$KMS" reconcile --config "$DEV/kms.toml"

echo; echo "== pkcs11-tool --list-objects on the dev token (labels and protection flags)"
module="$(sed -n 's/^module = "\(.*\)"/\1/p' "$DEV/kms.toml")"
# The token directory is relative to the deployment (where kms runs): run there.
(cd "$DEV" && SOFTHSM2_CONF=softhsm/softhsm2.conf pkcs11-tool --module "$module" \
  --token-label brandkms-dev --login --pin "$(cat pin)" --list-objects 2>/dev/null) \
  | grep -E "^Secret Key|label:|Access:"

echo; echo "== done. Run the service yourself with: $KMS serve --config $DEV/kms.toml"
