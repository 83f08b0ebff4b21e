# Shared helpers for the bench/ scripts (sourced, not run).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
# Own target dir so a benchmark build never fights another cargo over ./target.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/target-bench}"
DROVER="${DROVER:-$CARGO_TARGET_DIR/release/drover}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Resident set size of PID in KiB (VmRSS).
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# Anonymous memory of PID in KiB (heap and stacks; RSS less mapped files).
anon_kib() { awk '/^Anonymous:/ {print $2}' "/proc/$1/smaps_rollup"; }
# WARN and ERROR lines in a log (tracing colours them, so match loosely).
warn_count() { grep -c -E 'WARN|ERROR' "$1" || true; }
# Open descriptors of PID.
fd_count() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }

machine_info() {
  echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc:   $(nproc)"
  echo "memory:  $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel:  $(uname -srm)"
  echo "ulimit:  $(ulimit -n) open files (hard $(ulimit -Hn))"
  echo "HEAD:    $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO_DIR" diff --quiet 2>/dev/null || echo ' (work tree has changes)')"
  # The binaries are used as found: they may be older than HEAD.
  [ -x "$DROVER" ] && echo "drover:  $DROVER, built $(date -u -r "$DROVER" +%FT%TZ) (rebuild: rm it, or cargo build --release -p drover-cli -p drover-agent)"
}

build_drover() {
  log "building drover and drover-agent (release) into $CARGO_TARGET_DIR"
  (cd "$REPO_DIR" && cargo build --release -q -p drover-cli -p drover-agent)
}

# Processes this script started; killed on exit.
BENCH_PIDS=()
track() { BENCH_PIDS+=("$1"); }
cleanup() {
  local p
  for p in "${BENCH_PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  sleep 1
  for p in "${BENCH_PIDS[@]:-}"; do
    [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT

# Starts `drover server` on DATA and PORT (extra flags after); sets SERVER_PID.
start_server() {
  local data="$1" port="$2"; shift 2
  ulimit -n "$(ulimit -Hn)"
  # SERVER_ENV: extra environment for the server only, e.g.
  # SERVER_ENV="LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2".
  echo "=== $(date -u +%FT%TZ) start ${SERVER_ENV:-}" >>"$data.log"
  env ${SERVER_ENV:-} DROVER_LOG="${DROVER_LOG:-warn}" "$DROVER" server --data "$data" --listen "127.0.0.1:$port" "$@" \
    >>"$data.out" 2>>"$data.log" &
  SERVER_PID=$!
  track "$SERVER_PID"
  local i
  for i in $(seq 1 100); do
    if curl -sf --cacert "$data/ca.crt" "https://127.0.0.1:$port/healthz" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  log "server did not come up; log:"; tail -20 "$data.log" >&2; return 1
}

# Prometheus value of METRIC (first sample, 0 when absent) from the server on PORT.
metric() {
  local data="$1" port="$2" name="$3"
  curl -sf --cacert "$data/ca.crt" "https://127.0.0.1:$port/metrics" \
    | awk -v n="$name" '$1 == n {print $2; found=1; exit} END {if (!found) print 0}'
}

# Waits until N devices are connected (or TIMEOUT s): both the gauge
# drover_devices_connected (registered channels, including ones still
# waiting for the database) and the counter drover_device_connects_total
# (connects that got as far as the welcome) must reach N. Prints the smaller.
wait_connected() {
  local data="$1" port="$2" n="$3" timeout="$4" start c g k body
  start=$(date +%s)
  while :; do
    body=$(curl -sf -m 5 --cacert "$data/ca.crt" "https://127.0.0.1:$port/metrics" 2>/dev/null || true)
    g=$(awk '$1 == "drover_devices_connected" {printf "%d", $2}' <<<"$body"); g=${g:-0}
    k=$(awk '$1 == "drover_device_connects_total" {printf "%d", $2}' <<<"$body"); k=${k:-0}
    c=$(( g < k ? g : k ))
    [ "$c" -ge "$n" ] && { echo "$c"; return 0; }
    if [ $(( $(date +%s) - start )) -ge "$timeout" ]; then echo "$c"; return 1; fi
    sleep 1
  done
}

# Self-signed CA, server cert for 127.0.0.1 and one client cert (ECDSA
# P-256, like Drover's fleet CA) in DIR, for the Mosquitto side.
make_mqtt_certs() {
  local d="$1"
  mkdir -p "$d"
  [ -f "$d/client.crt" ] && return 0
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$d/ca.key" -subj "/CN=bench mqtt CA" -days 30 -out "$d/ca.crt" 2>/dev/null
  local who
  for who in server client; do
    openssl ecparam -name prime256v1 -genkey -noout -out "$d/$who.key" 2>/dev/null
    openssl req -new -key "$d/$who.key" -subj "/CN=bench $who" -out "$d/$who.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\n' >"$d/$who.ext"
    openssl x509 -req -in "$d/$who.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
      -days 30 -extfile "$d/$who.ext" -out "$d/$who.crt" 2>/dev/null
  done
  chmod 644 "$d"/*
}

# Starts a private Mosquitto with one TLS listener on PORT; sets MQTT_PID.
# REQUIRE_CERT=true asks clients for a certificate (mutual TLS, like Drover).
start_mosquitto() {
  local d="$1" port="$2" require="${3:-true}"
  cat >"$d/mosquitto.conf" <<CONF
# Written by bench/lib.sh: a private broker for the idle-connection benchmark.
user root
per_listener_settings false
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
max_connections -1
listener $port 127.0.0.1
cafile $d/ca.crt
certfile $d/server.crt
keyfile $d/server.key
require_certificate $require
tls_version tlsv1.3
CONF
  ulimit -n "$(ulimit -Hn)"
  /usr/sbin/mosquitto -c "$d/mosquitto.conf" 2>"$d/mosquitto.log" &
  MQTT_PID=$!
  track "$MQTT_PID"
  local i
  for i in $(seq 1 50); do
    ss -ltn "sport = :$port" | grep -q LISTEN && return 0
    sleep 0.1
  done
  log "mosquitto did not come up:"; cat "$d/mosquitto.log" >&2; return 1
}
