#!/usr/bin/env bash
# Benchmark 6: telemetry ingestion and aggregate queries (issue 5).
#
#   bench/ingest.sh [ingest|query|all] [sqlite|postgres|both]
#
# Runs crates/drover-server/examples/ingest_bench.rs (release build):
#
# - ingest: DEVICES (1000) simulated devices, one task each, send
#   BATCHES_PER_DEVICE (2) batches of 500 points (10 metrics x 50 timestamps)
#   through Devices::ingest_telemetry (checks, bounded queue, the writer's
#   shared transactions, dedup, 1m/1h rollups) into a fresh database; then
#   the same points through a raw batched-insert baseline into the same
#   database (one 500-row INSERT ... ON CONFLICT DO NOTHING per batch, 64
#   batches per transaction, a table with only the dedup key). Prints
#   points/s of both and the ratio.
# - query: fills a fresh store with QUERY_DEVICES (1000) devices x
#   QUERY_HOURS (24) h of one metric at 10 s (8.64 M points) through the
#   store's write path, then times typical /api/v1/metrics queries through
#   the HTTP router, RUNS (15) times each, and prints p50/p95.
#
# PostgreSQL: DROVER_TEST_POSTGRES_URL or postgres://postgres@127.0.0.1:5432/postgres
# (a fresh database is created per run). SQLite lives in a temp directory.
# Builds with `nice -n 10` (other work shares the cores). Loopback only.
source "$(dirname "$0")/lib.sh"

PART="${1:-all}"
WHICH="${2:-both}"
machine_info || true  # (its last test fails when no drover binary is built)
echo "rustc:   $(rustc --version)"
echo "sqlite:  bundled with sqlx (libsqlite3-sys); postgres: $(psql -V 2>/dev/null || echo '?')"
echo "command: bench/ingest.sh $PART $WHICH (DEVICES=${DEVICES:-1000} BATCHES_PER_DEVICE=${BATCHES_PER_DEVICE:-2} QUERY_DEVICES=${QUERY_DEVICES:-1000} QUERY_HOURS=${QUERY_HOURS:-24} RUNS=${RUNS:-15})"
echo

log "building the benchmark (release) into $CARGO_TARGET_DIR"
(cd "$REPO_DIR" && nice -n 10 cargo build --release -q -p drover-server --example ingest_bench)
BIN="$CARGO_TARGET_DIR/release/examples/ingest_bench"
log "running $BIN $PART $WHICH"
/usr/bin/time -v "$BIN" "$PART" "$WHICH" 2> >(grep -E 'Maximum resident|Elapsed|Percent of CPU' >&2)
