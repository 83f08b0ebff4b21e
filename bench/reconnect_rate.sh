#!/usr/bin/env bash
# Benchmark 3: how fast a restarted `drover server` gets its fleet back.
#
#   bench/reconnect_rate.sh [N] [RECONNECT_MAX_SECS]     (defaults: 10000 30)
#
# Two `drover sim` processes enroll and connect N devices (mTLS WebSocket,
# from 127.0.x.y). Once all are connected, the server gets SIGTERM (it closes
# every control channel, the agents start their reconnect backoff), and is
# started again on the same data dir and port at once. From the moment the
# new process is launched, /metrics is sampled every 0.5 s:
# drover_devices_connected (gauge) and drover_device_connects_total
# (counter, starts at 0 in the new process). Reported: seconds from launch
# until the server answers, until 50/90/99/100 % are connected (by the
# counter), and the peak connects per second (largest counter delta between
# two samples, divided by their distance; bench/reconnect_summary.awk).
#
# The agents' backoff: exponential from 0.5 s with full jitter, capped at
# RECONNECT_MAX_SECS (`drover sim --reconnect-max-secs`); a device whose
# connection had been up > 30 s starts again from 0.5 s.
# Loopback only; every process started is killed on exit. About 3-5 minutes.
source "$(dirname "$0")/lib.sh"

N="${1:-10000}"
MAXB="${2:-30}"
PORT="${PORT:-18444}"
WORK="${WORK:-/tmp/drover-bench-reconnect}"
export DROVER_CONFIG="$WORK/cli-profile.toml"
rm -rf "$WORK"; mkdir -p "$WORK"
[ -x "$DROVER" ] || build_drover
machine_info
echo "N=$N devices, sim --reconnect-max-secs $MAXB"
echo

DATA="$WORK/data"
SERVER_FLAGS=(--connects-per-ip-per-sec 100000 --heartbeat-interval-secs 300)
start_server "$DATA" "$PORT" "${SERVER_FLAGS[@]}"
URL="https://127.0.0.1:$PORT"
# Two sims of N/2, the second started once the first is connected: a
# single herd of more than ~7,500 fresh devices at once mostly gets refused
# (see docs/benchmarks.md); how the fleet first connects does not matter here.
SIMS=()
half=$(( N / 2 ))
for s in 1 2; do
  n=$half; [ "$s" -eq 2 ] && n=$(( N - half ))
  ( ulimit -n "$(ulimit -Hn)"
    exec "$DROVER" --server "$URL" --token "$(cat "$DATA/admin.token")" --ca-cert "$DATA/ca.crt" --json \
      sim --devices "$n" --duration-secs 1200 --concurrency 64 --reconnect-max-secs "$MAXB" ) \
    >"$WORK/sim$s.json" 2>"$WORK/sim$s.err" &
  SIMS+=($!); track $!
  want=$(( s == 1 ? half : N ))
  c=$(wait_connected "$DATA" "$PORT" "$want" 300) || { log "only $c/$want connected; giving up"; exit 1; }
done
log "all $N connected; waiting 35 s so every connection counts as established (> 30 s up)"
sleep 35

log "SIGTERM to the server"
ts=$(date +%s.%N)
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
te=$(date +%s.%N)
down=$(echo "$te - $ts" | bc)
# Start again at once, and sample.
ulimit -n "$(ulimit -Hn)"
launch=$(date +%s.%N)
DROVER_LOG=warn "$DROVER" server --data "$DATA" --listen "127.0.0.1:$PORT" "${SERVER_FLAGS[@]}" \
  >"$DATA.out2" 2>"$DATA.log2" &
SERVER_PID=$!; track $SERVER_PID
SAMPLES="$WORK/samples.tsv"
echo -e "t_secs\tconnected\tconnects_total" >"$SAMPLES"
next=$launch
up_at=""
while :; do
  next=$(echo "$next + 0.5" | bc)
  now=$(date +%s.%N)
  d=$(echo "$next - $now" | bc); [ "${d:0:1}" != "-" ] && sleep "$d"
  t=$(echo "$(date +%s.%N) - $launch" | bc)
  body=$(curl -sf -m 2 --cacert "$DATA/ca.crt" "$URL/metrics" 2>/dev/null || true)
  if [ -n "$body" ]; then
    [ -z "$up_at" ] && up_at=$t
    g=$(awk '$1 == "drover_devices_connected" {print $2; f=1} END {if (!f) print 0}' <<<"$body")
    k=$(awk '$1 == "drover_device_connects_total" {print $2; f=1} END {if (!f) print 0}' <<<"$body")
    printf '%.2f\t%s\t%s\n' "$t" "${g%.*}" "${k%.*}" >>"$SAMPLES"
    [ "${g%.*}" -ge "$N" ] && [ "${k%.*}" -ge "$N" ] && break
  fi
  if [ "$(echo "$t > 300" | bc)" = 1 ]; then log "not all back within 300 s"; break; fi
done
# A few more samples, to see nothing bounces.
for _ in 1 2 3 4; do sleep 0.5
  body=$(curl -sf -m 2 --cacert "$DATA/ca.crt" "$URL/metrics")
  printf '%.2f\t%s\t%s\n' "$(echo "$(date +%s.%N) - $launch" | bc)" \
    "$(awk '$1 == "drover_devices_connected" {printf "%d", $2}' <<<"$body")" \
    "$(awk '$1 == "drover_device_connects_total" {printf "%d", $2}' <<<"$body")" >>"$SAMPLES"
done
curl -sf --cacert "$DATA/ca.crt" "$URL/metrics" >"$WORK/final-metrics.txt" || true
RSS=$(rss_kib "$SERVER_PID"); HWM=$(awk '/^VmHWM:/ {print $2}' "/proc/$SERVER_PID/status")
for p in "${SIMS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
for p in "${SIMS[@]}"; do wait "$p" 2>/dev/null || true; done
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true

echo
echo "shutdown (SIGTERM to exit): ${down} s"
echo "server answering /metrics: ${up_at} s after launch"
awk -v n="$N" -F'\t' -f "$BENCH_DIR/reconnect_summary.awk" "$SAMPLES"
echo "server RSS with all reconnected ${RSS} KiB, peak (VmHWM) ${HWM} KiB"
echo "WARN/ERROR lines: $(warn_count "$DATA.log") in the first server's log, $(warn_count "$DATA.log2") in the restarted one's"
echo "connect attempts refused by the restarted server (HTTP status of /v1/device/connect):"
grep -E 'route="/v1/device/connect"' "$WORK/final-metrics.txt" || true
echo "samples ($SAMPLES):"; cat "$SAMPLES"
echo "sim reports:"; cat "$WORK"/sim?.json
