# Sourced by tests/run.sh and .ci/run: `brandkms_pg_up` starts a throwaway
# PostgreSQL cluster in a temporary directory (as the postgres user when run as
# root), exports BRANDKMS_TEST_DATABASE_URL and stops the cluster on exit. It runs
# with fsync=off unless BRANDKMS_PG_FSYNC=on (the benchmarks in bench/ set it).
brandkms_pg_up() {
  local pg_bin
  pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -z "$pg_bin" ]; then
    echo "PostgreSQL binaries not found (install Debian's postgresql)" >&2
    return 1
  fi
  BRANDKMS_PG_DIR="$(mktemp -d /tmp/brandkms-pg.XXXXXX)"
  local port=$(( 20000 + RANDOM % 20000 ))
  BRANDKMS_PG_AS=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$BRANDKMS_PG_DIR"
    BRANDKMS_PG_AS=(runuser -u postgres --)
  fi
  BRANDKMS_PG_BIN="$pg_bin"
  trap brandkms_pg_down EXIT
  "${BRANDKMS_PG_AS[@]}" "$pg_bin/initdb" -D "$BRANDKMS_PG_DIR/data" -U brandkms -A trust >/dev/null
  "${BRANDKMS_PG_AS[@]}" "$pg_bin/pg_ctl" -D "$BRANDKMS_PG_DIR/data" -l "$BRANDKMS_PG_DIR/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $BRANDKMS_PG_DIR -c fsync=${BRANDKMS_PG_FSYNC:-off} -c max_connections=300" \
    start >/dev/null
  export BRANDKMS_TEST_DATABASE_URL="postgres://brandkms@127.0.0.1:$port/postgres"
  echo "PostgreSQL $(basename "$(dirname "$pg_bin")") on 127.0.0.1:$port" >&2
}

brandkms_pg_down() {
  "${BRANDKMS_PG_AS[@]}" "$BRANDKMS_PG_BIN/pg_ctl" -D "$BRANDKMS_PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$BRANDKMS_PG_DIR"
}
