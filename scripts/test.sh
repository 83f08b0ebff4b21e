#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this script).
# It makes sure PostgreSQL is reachable (starting or installing it if need
# be) and passes its URL to the tests, so no backend test is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }

pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }

ensure_postgres() {
  if [ -n "${DROVER_TEST_POSTGRES_URL:-}" ]; then
    log "using PostgreSQL from DROVER_TEST_POSTGRES_URL"
    return
  fi
  export DROVER_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:5432/postgres"
  if pg_up; then return; fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "PostgreSQL is not installed: installing it from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  # Trust local TCP connections, as this machine kind is set up.
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  fi
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 60); do
    pg_up && return
    sleep 0.5
  done
  echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2
  exit 1
}

drop_old_test_databases() {
  # Each test makes its own database; remove those of earlier runs.
  command -v psql >/dev/null || return 0
  psql "$DROVER_TEST_POSTGRES_URL" -Atqc \
    "SELECT datname FROM pg_database WHERE datname LIKE 'drover_t_%'" 2>/dev/null |
    while read -r db; do
      psql "$DROVER_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true
    done
}

ensure_postgres
drop_old_test_databases

log "checking formatting"
cargo fmt --all -- --check

log "checking that drover-agent links no server dependency"
if cargo tree -p drover-agent -e normal --prefix none | grep -E '^(drover-server|sqlx|axum|utoipa|metrics-exporter-prometheus|reqwest) '; then
  echo "drover-agent must not depend on server crates" >&2
  exit 1
fi

log "clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

log "tests (SQLite and PostgreSQL at $DROVER_TEST_POSTGRES_URL)"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
set +e
cargo test --workspace --lib --bins --tests -- --test-threads "${DROVER_TEST_THREADS:-4}" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "summary: %d passed, %d failed\n", p, f }' "$out"
exit "$status"
