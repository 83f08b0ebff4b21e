#!/usr/bin/env bash
# Benchmark 3: how fast a restarted `drover server` gets its fleet back.
#
#   bench/reconnect_rate.sh [N] [RECONNECT_MAX_SECS]     (defaults: 10000 30)
#
# One `drover sim` process enrolls and connects N devices (mTLS WebSocket,
# from 127.0.x.y). Once all are connected, the server gets SIGTERM (it closes
# every control channel, the agents start their reconnect backoff), and is
# started again on the same data dir and port at once. From the moment the
# new process is launched, /metrics is sampled every 0.5 s:
# drover_devices_connected (gauge) and drover_device_connects_total
# (counter, starts at 0 in the new process). Reported: seconds from launch
# until the server answers, until 50/90/99/100 % are connected, and the peak
# connects per second (largest counter delta over one 0.5 s sample, x2).
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
( ulimit -n "$(ulimit -Hn)"
  exec "$DROVER" --server "$URL" --token "$(cat "$DATA/admin.token")" --ca-cert "$DATA/ca.crt" --json \
    sim --devices "$N" --duration-secs 1200 --concurrency 64 --reconnect-max-secs "$MAXB" ) \
  >"$WORK/sim.json" 2>"$WORK/sim.err" &
SIM=$!; track $SIM
c=$(wait_connected "$DATA" "$PORT" "$N" 600) || { log "only $c/$N connected; giving up"; exit 1; }
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
    [ "${g%.*}" -ge "$N" ] && break
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
RSS=$(rss_kib "$SERVER_PID"); HWM=$(awk '/^VmHWM:/ {print $2}' "/proc/$SERVER_PID/status")
kill -INT "$SIM" 2>/dev/null || true; wait "$SIM" 2>/dev/null || true
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true

echo
echo "shutdown (SIGTERM to exit): ${down} s"
echo "server answering /metrics: ${up_at} s after launch"
awk -v n="$N" -F'\t' 'NR > 1 {
    if (!p50 && $2 >= n*0.5) p50=$1; if (!p90 && $2 >= n*0.9) p90=$1
    if (!p99 && $2 >= n*0.99) p99=$1; if (!p100 && $2 >= n) p100=$1
    if (prev != "") { r = ($3 - prevk) / ($1 - prev); if (r > peak) { peak = r; peakt = $1 } }
    prev = $1; prevk = $3; last = $3 }
  END { printf "connected 50%% at %s s, 90%% at %s s, 99%% at %s s, 100%% at %s s after launch\n", p50, p90, p99, (p100 ? p100 : "never")
        printf "peak connect rate %.0f/s (sample ending at %s s); connects in the new process: %d (N=%d)\n", peak, peakt, last, n }' "$SAMPLES"
echo "server RSS with all reconnected ${RSS} KiB, peak (VmHWM) ${HWM} KiB"
echo "WARN/ERROR lines in the restarted server's log: $(grep -c -E ' (ERROR|WARN) ' "$DATA.log2" || true)"
echo "samples ($SAMPLES):"; cat "$SAMPLES"
echo "sim report:"; cat "$WORK/sim.json"
