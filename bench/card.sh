#!/usr/bin/env bash
# Card transactions and DecryptStream against the token's raw rate, on SQLite and
# then PostgreSQL, in one go on this machine (issue 11). For each database: a
# fresh development deployment in a temporary directory, `kms serve`, the
# participants and keys that clients/demo.sh provisions, then
#   1. `kms bench --operation card`: the raw token rate of a card transaction's
#      token operations (no gRPC, TLS or database);
#   2. loadgen closed loop, BENCH_CLIENTS clients: the peak rate;
#   3. loadgen open loop at BENCH_OPEN_FRACTION (70 %) of that peak: p50, p99,
#      p99.9 from each transaction's intended start, and the achieved rate;
#   4. `kms bench --operation oaep` (RSA-3072): the raw OAEP decryption rate;
#   5. `clearing decrypt` of a file of sealed blobs (about BENCH_SECONDS at the
#      raw rate) through DecryptStream.
# Then two tables with the ratios. A benchmark, not a test: it exits non-zero
# when something fails (a command, a transaction, a blob), not when a figure
# misses a target.
#
#   bash bench/card.sh
#
# Environment: BENCH_SECONDS (10) per run, BENCH_CLIENTS (8), BENCH_OPEN_FRACTION
# (0.7), BENCH_BACKENDS ("sqlite postgres"), BENCH_PORT (7643), BENCH_PG_FSYNC
# (on), BENCH_KEEP=1 keeps the deployments and logs; CARGO_TARGET_DIR as cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

CLIENTS="${BENCH_CLIENTS:-8}"
OPEN_FRACTION="${BENCH_OPEN_FRACTION:-0.7}"
BACKENDS="${BENCH_BACKENDS:-sqlite postgres}"

bench_install
bench_workdir
bench_build "$BENCH_WORK"

card_rows=()
oaep_rows=()
failures=0
for backend in $BACKENDS; do
  case "$backend" in
    sqlite) url="" ;;
    postgres) bench_pg_up; url="$BRANDKMS_TEST_DATABASE_URL" ;;
    *) bench_die "BENCH_BACKENDS: $backend is neither sqlite nor postgres" ;;
  esac
  dir="$BENCH_WORK/$backend"
  bench_log "$backend: deployment in $dir"
  bench_deployment "$dir" "$url"
  bench_serve "$dir" kms "$BENCH_PORT"
  bench_provision "$dir" "$BENCH_PORT"

  bench_log "$backend: card transactions"
  raw="$(bench_raw "$dir" card)"
  closed="$(bench_loadgen "$dir" "$BENCH_PORT" --clients "$CLIENTS")"
  peak="$(lg_rate "$closed")"
  [ "$(ratio "$peak" 1)" != 0.00 ] || bench_die "$backend: the closed loop completed no transaction"
  target="$(calc "$peak * $OPEN_FRACTION")"
  open="$(bench_loadgen "$dir" "$BENCH_PORT" --clients "$CLIENTS" --rate "$target")"
  errors=$(( $(lg_errors "$closed") + $(lg_errors "$open") ))
  failures=$(( failures + errors ))
  card_rows+=("$(printf '%-9s %9.1f %9.1f %9.2f %9.1f %9.1f %8.1f %8.1f %8.1f %7d' \
    "$backend" "$raw" "$peak" "$(ratio "$peak" "$raw")" "$target" "$(lg_rate "$open")" \
    "$(lg_p50 "$open")" "$(lg_p99 "$open")" "$(lg_p999 "$open")" "$errors")")

  bench_log "$backend: DecryptStream"
  oaep="$(bench_raw "$dir" oaep --bits 3072)"
  blobs="$(awk "BEGIN { n = int($oaep * $BENCH_SECONDS); print (n < 100 ? 100 : n) }")"
  seq 4000000000000000 $(( 4000000000000000 + blobs - 1 )) \
    | KMSCTL_ENDPOINT="https://127.0.0.1:$BENCH_PORT" as_entity "$dir" store-s "$TERMINAL" seal \
      --alias settle --out "$dir/blobs.txt" >&2
  decrypted="$(KMSCTL_ENDPOINT="https://127.0.0.1:$BENCH_PORT" as_entity "$dir" clearing-house \
    "$CLEARING" decrypt "$dir/blobs.txt" --out "$dir/blobs.results" --quiet 2>"$dir/decrypt.err")" \
    || { cat "$dir/decrypt.err" >&2; bench_die "clearing decrypt failed"; }
  echo "$decrypted" >&2
  stream="$(sed -n 's/^decrypted .* s (\([0-9]*\)\/s).*/\1/p' <<<"$decrypted")"
  failed="$(sed -n 's/^decrypted .*; \([0-9]*\) failed;.*/\1/p' <<<"$decrypted")"
  if [ -z "$stream" ] || [ -z "$failed" ]; then
    bench_die "clearing decrypt printed no rate"
  fi
  failures=$(( failures + failed ))
  oaep_rows+=("$(printf '%-9s %11.1f %11.1f %11.2f %7d %7d' \
    "$backend" "$oaep" "$stream" "$(ratio "$stream" "$oaep")" "$blobs" "$failed")")

  bench_stop_servers
done

echo
echo "brandkms benchmark: $(bench_context)"
echo
echo "Card transactions: raw = kms bench --operation card; peak = loadgen closed loop, $CLIENTS clients;"
echo "open = loadgen open loop at $OPEN_FRACTION of the peak (latency from each intended start, ms)"
printf '%-9s %9s %9s %9s %9s %9s %8s %8s %8s %7s\n' \
  backend "raw tx/s" "peak" peak/raw "open at" achieved p50 p99 p99.9 errors
printf '%s\n' "${card_rows[@]}"
echo
echo "DecryptStream (clearing decrypt, RSA-3072) against raw OAEP (kms bench --operation oaep)"
printf '%-9s %11s %11s %11s %7s %7s\n' backend "raw OAEP/s" "stream/s" stream/raw blobs failed
printf '%s\n' "${oaep_rows[@]}"

if [ "$failures" -gt 0 ]; then
  echo "bench: $failures transactions or blobs failed (see the lines above)" >&2
  exit 1
fi
