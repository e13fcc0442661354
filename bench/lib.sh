# shellcheck shell=bash
# Sourced by bench/card.sh and bench/scale-out.sh (from the repository root):
# release binaries built once, fresh development deployments in a temporary
# directory (SQLite, or PostgreSQL through tests/pg.sh), `kms serve` instances,
# the participants and keys loadgen and `clearing decrypt` need (as
# clients/demo.sh provisions them), and helpers to read the figures the tools
# print. Benchmarks, not tests: a figure below a target is reported, not failed.

source tests/pg.sh

BENCH_SECONDS="${BENCH_SECONDS:-10}"
BENCH_PORT="${BENCH_PORT:-7643}"
# The benchmarks' PostgreSQL writes durably (tests/pg.sh's default is fsync=off).
export BRANDKMS_PG_FSYNC="${BENCH_PG_FSYNC:-on}"

bench_log() { echo "== $*" >&2; }
bench_die() { echo "bench: error: $*" >&2; exit 1; }

# Installs what the benchmarks run: SoftHSM2 and PostgreSQL.
bench_install() {
  local need=()
  command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  if [ ${#need[@]} -gt 0 ]; then
    bench_log "installing ${need[*]}"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
  fi
}

# bench_build WORK [FEATURE...]: builds kms (with `dev` and FEATUREs) and the
# clients once, in release, and copies them to WORK/bin, so that a later build
# cannot swap a binary under a running benchmark; their paths in KMS, KMSCTL,
# ISSUER, LOADGEN, TERMINAL and CLEARING.
# shellcheck disable=SC2034 # TERMINAL and CLEARING are the sourcing script's
# BENCH_BIN=DIR takes the six binaries from DIR instead (to compare two builds
# side by side; the caller built DIR's kms with the same features).
bench_build() {
  local work="$1"; shift
  if [ -n "${BENCH_BIN:-}" ]; then
    bench_log "using the binaries in $BENCH_BIN"
    mkdir -p "$work/bin"
    for b in kms kmsctl issuer loadgen terminal clearing; do
      cp "$BENCH_BIN/$b" "$work/bin/$b" || bench_die "BENCH_BIN: no $b in $BENCH_BIN"
    done
    KMS="$work/bin/kms" KMSCTL="$work/bin/kmsctl" ISSUER="$work/bin/issuer"
    LOADGEN="$work/bin/loadgen" TERMINAL="$work/bin/terminal" CLEARING="$work/bin/clearing"
    return
  fi
  local features="dev"
  for f in "$@"; do features="$features,$f"; done
  bench_log "building kms (features $features) and the clients, release"
  cargo build --release --locked -p brandkms --features "$features" --bin kms \
    -p brandkms-clients --bin kmsctl --bin issuer --bin loadgen --bin terminal --bin clearing >&2
  local target="${CARGO_TARGET_DIR:-$PWD/target}"
  case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
  mkdir -p "$work/bin"
  for b in kms kmsctl issuer loadgen terminal clearing; do
    cp "$target/release/$b" "$work/bin/$b"
  done
  KMS="$work/bin/kms" KMSCTL="$work/bin/kmsctl" ISSUER="$work/bin/issuer"
  LOADGEN="$work/bin/loadgen" TERMINAL="$work/bin/terminal" CLEARING="$work/bin/clearing"
}

# bench_deployment DIR [DATABASE_URL]: a fresh development deployment (SoftHSM2
# token, dev PKI, officers) in DIR; with a URL its kms.toml points there (the
# deployment is initialised on that database) instead of DIR/kms.db.
bench_deployment() {
  local dir="$1" url="${2:-}"
  [ ! -e "$dir" ] || bench_die "$dir already exists"
  if [ -n "$url" ]; then
    BRANDKMS_DATABASE_URL="$url" "$KMS" init --dev "$dir" >&2
    sed -i "s|^url = \"sqlite://kms.db\"$|url = \"$url\"|" "$dir/kms.toml"
    grep -q "^url = \"$url\"$" "$dir/kms.toml" || bench_die "$dir/kms.toml: database url not set"
  else
    "$KMS" init --dev "$dir" >&2
  fi
}

BENCH_SERVERS=()

# bench_serve DIR NAME PORT: starts `kms serve` with DIR's kms.toml on
# 127.0.0.1:PORT (log in DIR/NAME.log) and waits for its health.
bench_serve() {
  local dir="$1" name="$2" port="$3"
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    bench_die "port $port is in use (set BENCH_PORT)"
  fi
  BRANDKMS_LISTEN="127.0.0.1:$port" RUST_LOG=warn "$KMS" serve --config "$dir/kms.toml" \
    > "$dir/$name.log" 2>&1 &
  local pid=$!
  BENCH_SERVERS+=("$pid")
  local _
  for _ in $(seq 1 300); do
    KMSCTL_ENDPOINT="https://127.0.0.1:$port" as_officer "$dir" health >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$dir/$name.log" >&2; bench_die "kms serve ($name) exited"; }
    sleep 0.1
  done
  cat "$dir/$name.log" >&2
  bench_die "kms serve ($name) not healthy on port $port after 30 s"
}

# Stops the servers this script started (by their process ids).
bench_stop_servers() {
  local pid
  for pid in "${BENCH_SERVERS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  BENCH_SERVERS=()
}

# bench_workdir: a fresh working directory (binaries, deployments, logs) in
# BENCH_WORK; removed at exit after a clean run unless BENCH_KEEP=1, kept after a
# failure for its logs.
bench_workdir() {
  BENCH_WORK="$(mktemp -d /tmp/brandkms-bench.XXXXXX)"
  trap bench_cleanup EXIT
}

# The scripts' EXIT trap: the servers, the PostgreSQL cluster if one was started
# (tests/pg.sh's own trap is replaced by this one), the working directory.
bench_cleanup() {
  local rc=$?
  bench_stop_servers
  if [ -n "${BRANDKMS_PG_DIR:-}" ]; then
    brandkms_pg_down
  fi
  if [ "$rc" != 0 ] || [ "${BENCH_KEEP:-0}" = 1 ]; then
    echo "bench: deployments and logs kept in $BENCH_WORK" >&2
  else
    rm -rf "$BENCH_WORK"
  fi
}

# Starts the throwaway PostgreSQL cluster (tests/pg.sh) once; its URL in
# BRANDKMS_TEST_DATABASE_URL.
bench_pg_up() {
  if [ -z "${BRANDKMS_PG_DIR:-}" ]; then
    brandkms_pg_up
    trap bench_cleanup EXIT
  fi
}

# One line naming what was measured on: commit, cores, token, database settings.
bench_context() {
  local commit softhsm
  commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  git diff --quiet HEAD 2>/dev/null || commit="$commit+changes"
  softhsm="$(softhsm2-util --version 2>/dev/null || echo unknown)"
  echo "commit $commit, $(nproc) cores, SoftHSM2 $softhsm, release build, load generator on the same machine, $BENCH_SECONDS s per run, PostgreSQL fsync=$BRANDKMS_PG_FSYNC"
}

# The dev PKI's client certificate for entity ID.
as_entity() {
  local dir="$1" id="$2"; shift 2
  KMSCTL_CA="$dir/pki/ca.pem" KMSCTL_CERT="$dir/pki/$id.pem" KMSCTL_KEY="$dir/pki/$id-key.pem" "$@"
}
as_officer() { local dir="$1"; shift; as_entity "$dir" officer-1 "$KMSCTL" "$@"; }

# bench_provision DIR PORT: what loadgen and `clearing decrypt` need, as
# clients/demo.sh records it: card-access key key-k, issuer 2-2 supplied with it
# (approved by officer 2) personalising card DIR/cards/card-k.json from its own
# token, cybershop K holding it; settlement key `settle` (RSA-3072), held by the
# clearing house, and store S to seal with it.
bench_provision() {
  local dir="$1" port="$2"
  export KMSCTL_ENDPOINT="https://127.0.0.1:$port"
  bench_log "provisioning: key-k, issuer-2-2, cybershop-k, card-k; settle, clearing-house, store-s"
  # A subshell that stops at the first failure: not tested by || or if, where
  # bash ignores errexit (every step would run past a failure).
  local rc
  set +e
  (
    set -e
    as_officer "$dir" key create key-k --service-code 0x0A02 --purpose purchase --exportable
    as_officer "$dir" entity register issuer-2-2 --kind issuer --name "Issuer 2-2" --online
    as_officer "$dir" entity register cybershop-k --kind cybershop --name "Cybershop K"
    as_officer "$dir" tieup create issuer-2-2 --cover key-k:supply
    as_officer "$dir" tieup create cybershop-k --cover key-k:hold --limit 10000
    local id
    for id in $(as_officer "$dir" --json approvals list --state pending \
      | sed -n 's/.*"id": "\(ap-[0-9a-f]*\)".*/\1/p'); do
      as_entity "$dir" officer-2 "$KMSCTL" approve "$id"
    done
    local pdir="$dir/participants/issuer-2-2"
    mkdir -p "$pdir" "$dir/cards"
    od -An -N8 -tx1 /dev/urandom | tr -d ' \n' > "$pdir/pin"
    chmod 600 "$pdir/pin"
    (
      set -e
      eval "$(BRANDKMS_PIN="$(cat "$pdir/pin")" softhsm/mktoken.sh --dir "$pdir/token" --label issuer-2-2 2>/dev/null)"
      ISSUER_PIN="$(cat "$pdir/pin")"
      export ISSUER_PIN
      local token=(--module "$BRANDKMS_PKCS11_MODULE" --token-label issuer-2-2)
      # The key ceremony (as clients/demo.sh): the issuer's RSA public key,
      # marked trusted by the token's security officer; an exportable master
      # is delivered only under such a key.
      local out fp
      out="$(as_entity "$dir" issuer-2-2 "$ISSUER" public-key --out "$pdir/rsa-public.der" "${token[@]}")"
      fp="${out##*SHA-256 }"
      as_officer "$dir" entity trust-key issuer-2-2 --spki "$pdir/rsa-public.der" \
        --fingerprint "$fp" --so-pin-file "$dir/so-pin"
      as_entity "$dir" issuer-2-2 "$ISSUER" sync "${token[@]}"
      as_entity "$dir" issuer-2-2 "$ISSUER" personalise --alias key-k --card-id 0123456789012345 \
        --balance 5000 --out "$dir/cards/card-k.json" "${token[@]}"
    )
    as_officer "$dir" key create-settlement settle --algorithm rsa3072
    as_officer "$dir" entity register clearing-house --kind clearing_house --name "Clearing house"
    as_officer "$dir" entity register store-s --kind merchant_terminal --name "Store S"
    as_officer "$dir" tieup create clearing-house --cover settle:hold
  ) > "$dir/provision.log" 2>&1
  rc=$?
  set -e
  [ "$rc" = 0 ] || { cat "$dir/provision.log" >&2; bench_die "provisioning failed"; }
  if as_officer "$dir" --json approvals list --state pending | grep -q '"id"'; then
    bench_die "approvals still pending after provisioning"
  fi
}

# bench_raw DIR OPERATION [ARGS...]: `kms bench` for BENCH_SECONDS; prints the rate.
bench_raw() {
  local dir="$1" op="$2"; shift 2
  local out
  out="$("$KMS" bench --config "$dir/kms.toml" --operation "$op" --seconds "$BENCH_SECONDS" "$@" 2>"$dir/bench-$op.err")" \
    || { cat "$dir/bench-$op.err" >&2; bench_die "kms bench --operation $op failed"; }
  echo "kms bench --operation $op: $out" >&2
  local rate
  rate="$(sed -n 's/.*"per_second": \([0-9.]*\).*/\1/p' <<<"$out")"
  [ -n "$rate" ] || bench_die "kms bench --operation $op printed no rate"
  echo "$rate"
}

# bench_loadgen DIR PORT ARGS...: loadgen as cybershop K on card-k for
# BENCH_SECONDS; prints its summary line (also to stderr).
bench_loadgen() {
  local dir="$1" port="$2"; shift 2
  local out
  out="$(KMSCTL_ENDPOINT="https://127.0.0.1:$port" as_entity "$dir" cybershop-k "$LOADGEN" \
    --card "$dir/cards/card-k.json" --alias key-k --seconds "$BENCH_SECONDS" "$@")" \
    || { echo "$out" >&2; bench_die "loadgen $* failed"; }
  echo "$out" >&2
  grep '^loadgen: .* tx/s' <<<"$out" || bench_die "loadgen printed no summary"
}

# Fields of a loadgen summary line.
lg_rate() { sed -n 's/.*transactions, \([0-9.]*\) tx\/s.*/\1/p' <<<"$1"; }
lg_p50() { sed -n 's/.* p50 \([0-9.]*\) ms.*/\1/p' <<<"$1"; }
lg_p99() { sed -n 's/.* p99 \([0-9.]*\) ms.*/\1/p' <<<"$1"; }
lg_p999() { sed -n 's/.* p99\.9 \([0-9.]*\) ms.*/\1/p' <<<"$1"; }
lg_errors() { sed -n 's/.* \([0-9]*\) errors$/\1/p' <<<"$1"; }

# Arithmetic on decimals: calc EXPR (awk), printed with two decimals; ratio A B
# is A / B, 0 when B is 0.
calc() { awk "BEGIN { printf \"%.2f\", $1 }"; }
ratio() { awk "BEGIN { printf \"%.2f\", ($2 > 0 ? $1 / $2 : 0) }"; }
