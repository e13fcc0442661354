#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on stable
# Rust (the flags cargo-fuzz passes, without a sanitizer, which needs nightly)
# and runs each for SECONDS (default 60) from the seeds in fuzz/seeds/TARGET
# (committed) and the corpus in fuzz/corpus/TARGET (not committed), which grows
# as the fuzzer finds new paths. A crash leaves its input in
# fuzz/artifacts/TARGET/ and fails the run.
#   bash fuzz/run.sh [SECONDS] [TARGET...]
# With nightly and cargo-fuzz installed, `cargo fuzz run TARGET` also works
# (with AddressSanitizer) from fuzz/.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(sealed_blob wire_requests card_payloads certificate_identity)
triple="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# Its own target directory: the instrumented build must not mix with the
# workspace's. --target keeps the flags off build scripts and procedural macros.
export CARGO_TARGET_DIR="$PWD/target"
# The workspace's lock file, so that every crate the targets share with the
# service is the version the service is tested with; cargo adds libFuzzer's.
cp ../Cargo.lock Cargo.lock
cargo build --release --target "$triple" --bins >&2
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t"
  echo "fuzz/run.sh: $t for ${seconds}s" >&2
  "target/$triple/release/$t" -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" "corpus/$t" "seeds/$t" 2>&1 | tail -n 12
done
