#!/usr/bin/env bash
# What the Prometheus metrics cost a card transaction (issue 14): one fresh
# development deployment on SQLite, `kms serve` started again and again, with
# its metrics listener on (scraped every BENCH_SCRAPE seconds, as Prometheus
# would) and off (BRANDKMS_METRICS_LISTEN=off: no recorder is installed, every
# metrics call is a no-op), alternating which goes first in each of
# BENCH_ROUNDS rounds, loadgen closed loop with BENCH_CLIENTS clients for
# BENCH_SECONDS each. Prints each run and the median on/off ratios of rate and
# p99. A benchmark, not a test: it fails only when a run fails.
#
#   bash bench/metrics-cost.sh
#
# Environment: BENCH_SECONDS (10), BENCH_ROUNDS (3), BENCH_CLIENTS (8),
# BENCH_SCRAPE (5), BENCH_PORT (7643; the metrics listener takes the next
# port), BENCH_BIN (use built binaries), BENCH_KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

CLIENTS="${BENCH_CLIENTS:-8}"
ROUNDS="${BENCH_ROUNDS:-3}"
SCRAPE="${BENCH_SCRAPE:-5}"
METRICS_PORT=$(( BENCH_PORT + 1 ))

bench_install
bench_workdir
bench_build "$BENCH_WORK"
dir="$BENCH_WORK/sqlite"
bench_deployment "$dir"
BRANDKMS_METRICS_LISTEN=off bench_serve "$dir" provision "$BENCH_PORT"
bench_provision "$dir" "$BENCH_PORT"
bench_stop_servers

# run MODE: one server run with the metrics MODE (on, off); prints "rate p99".
run() {
  local mode="$1" listen=off scraper=""
  [ "$mode" = on ] && listen="127.0.0.1:$METRICS_PORT"
  BRANDKMS_METRICS_LISTEN="$listen" bench_serve "$dir" "metrics-$mode" "$BENCH_PORT"
  if [ "$mode" = on ]; then
    ( while sleep "$SCRAPE"; do
        curl -sf "http://$listen/metrics" > "$dir/scrape.txt" || exit 1
      done ) &
    scraper=$!
  fi
  local out
  out="$(bench_loadgen "$dir" "$BENCH_PORT" --clients "$CLIENTS")"
  [ -n "$scraper" ] && { kill "$scraper" 2>/dev/null || true; wait "$scraper" 2>/dev/null || true; }
  bench_stop_servers
  [ "$(lg_errors "$out")" = 0 ] || bench_die "$mode: loadgen reported errors: $out"
  echo "$(lg_rate "$out") $(lg_p99 "$out")"
}

rows=()
rate_ratios=()
p99_ratios=()
for round in $(seq 1 "$ROUNDS"); do
  if [ $(( round % 2 )) = 1 ]; then order="on off"; else order="off on"; fi
  declare -A got=()
  for mode in $order; do
    bench_log "round $round: metrics $mode"
    got[$mode]="$(run "$mode")"
  done
  read -r on_rate on_p99 <<<"${got[on]}"
  read -r off_rate off_p99 <<<"${got[off]}"
  rate_ratios+=("$(ratio "$on_rate" "$off_rate")")
  p99_ratios+=("$(ratio "$on_p99" "$off_p99")")
  rows+=("$(printf '%5d  %-7s %10.1f %10.1f %9.2f %10.2f %10.2f %9.2f' "$round" "$order" \
    "$on_rate" "$off_rate" "$(ratio "$on_rate" "$off_rate")" "$on_p99" "$off_p99" \
    "$(ratio "$on_p99" "$off_p99")")")
  unset got
done
grep -q '^brandkms_grpc_requests_total' "$dir/scrape.txt" || bench_die "the scrape held no request counter"

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "Metrics on (scraped every ${SCRAPE} s) against off, loadgen closed loop, $CLIENTS clients, ${BENCH_SECONDS} s per run"
printf '%5s  %-7s %10s %10s %9s %10s %10s %9s\n' round order "on tx/s" "off tx/s" ratio \
  "on p99 ms" "off p99" ratio
printf '%s\n' "${rows[@]}"
echo "median on/off: rate $(median "${rate_ratios[@]}"), p99 $(median "${p99_ratios[@]}")"
