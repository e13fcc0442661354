#!/usr/bin/env bash
# Scale-out on one PostgreSQL and one token (issue 11): kms built with the
# benchmark-only `bench-delay` feature, every token call delayed by
# BENCH_TOKEN_DELAY_MS (10 ms, standing in for a networked HSM's round trip). One
# `kms serve` instance driven by BENCH_CLIENTS closed-loop loadgen clients, then
# two instances (the same kms.toml, the same token, the same database; the second
# listens on the next port) each driven by as many clients at the same time.
# Prints the one-instance rate, the two instances' rates and total, and the ratio
# two / one. A benchmark, not a test: it exits non-zero when something fails (a
# command, a transaction), not when the ratio misses a target.
#
#   bash bench/scale-out.sh
#
# Environment: BENCH_SECONDS (10) per run, BENCH_CLIENTS (8, per instance),
# BENCH_TOKEN_DELAY_MS (10), BENCH_PORT (7643, and the next one), BENCH_PG_FSYNC
# (on), BENCH_KEEP=1 keeps the deployment and logs; CARGO_TARGET_DIR as cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

CLIENTS="${BENCH_CLIENTS:-8}"
DELAY_MS="${BENCH_TOKEN_DELAY_MS:-10}"
PORT_A="$BENCH_PORT"
PORT_B=$(( BENCH_PORT + 1 ))

bench_install
bench_workdir
bench_build "$BENCH_WORK" bench-delay
bench_pg_up

dir="$BENCH_WORK/postgres"
bench_log "deployment in $dir on PostgreSQL, token delay $DELAY_MS ms"
bench_deployment "$dir" "$BRANDKMS_TEST_DATABASE_URL"
sed -i "/^\[hsm\]$/a benchmark_token_delay_ms = $DELAY_MS" "$dir/kms.toml"

bench_log "one instance (port $PORT_A)"
bench_serve "$dir" kms-a "$PORT_A"
grep -q "every token call is delayed by $DELAY_MS ms" "$dir/kms-a.log" \
  || { cat "$dir/kms-a.log" >&2; bench_die "kms serve did not report the token delay"; }
grep -m 1 "WARNING" "$dir/kms-a.log" >&2
bench_provision "$dir" "$PORT_A"
one="$(bench_loadgen "$dir" "$PORT_A" --clients "$CLIENTS")"

bench_log "two instances (ports $PORT_A and $PORT_B), $CLIENTS clients each at the same time"
bench_serve "$dir" kms-b "$PORT_B"
bench_loadgen "$dir" "$PORT_A" --clients "$CLIENTS" > "$dir/loadgen-a.out" &
load_a=$!
bench_loadgen "$dir" "$PORT_B" --clients "$CLIENTS" > "$dir/loadgen-b.out" &
load_b=$!
wait "$load_a" || bench_die "loadgen against instance A failed"
wait "$load_b" || bench_die "loadgen against instance B failed"
two_a="$(cat "$dir/loadgen-a.out")"
two_b="$(cat "$dir/loadgen-b.out")"
bench_stop_servers

rate_one="$(lg_rate "$one")"
rate_a="$(lg_rate "$two_a")"
rate_b="$(lg_rate "$two_b")"
total="$(calc "$rate_a + $rate_b")"
errors=$(( $(lg_errors "$one") + $(lg_errors "$two_a") + $(lg_errors "$two_b") ))

echo
echo "brandkms scale-out: $(bench_context)"
echo "one PostgreSQL, one token, every token call delayed by $DELAY_MS ms; $CLIENTS closed-loop clients per instance"
echo
printf '%-22s %9s %8s %8s %7s\n' run "tx/s" "p50 ms" "p99 ms" errors
row() {
  printf '%-22s %9.1f %8.1f %8.1f %7d\n' "$1" "$(lg_rate "$2")" "$(lg_p50 "$2")" "$(lg_p99 "$2")" "$(lg_errors "$2")"
}
row "one instance" "$one"
row "two instances: A" "$two_a"
row "two instances: B" "$two_b"
printf '%-22s %9.1f\n' "two instances: total" "$total"
echo
echo "two instances / one = $(ratio "$total" "$rate_one")"

if [ "$errors" -gt 0 ]; then
  echo "bench: $errors transactions failed (see the loadgen lines above)" >&2
  exit 1
fi
