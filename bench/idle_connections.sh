#!/usr/bin/env bash
# Benchmark 1 + 2: memory per idle device connection of one `drover server`
# process, next to Mosquitto holding the same number of idle TLS MQTT
# connections.
#
#   bench/idle_connections.sh [N] [SIM_PROCESSES]      (defaults: 15000 3)
#
# Drover: a fresh server (SQLite, data dir under $WORK) with heartbeats every
# 300 s (so connections are idle) and a high per-address connect rate; then
# SIM_PROCESSES `drover sim` processes, started one after the other, enroll
# and connect N devices in total
# over mTLS WebSockets from 127.0.x.y. RSS (VmRSS) is read before the sims
# start and once all N are connected and have settled; KiB per connection
# = delta / N. Then the server is restarted (SIGTERM, same data dir and
# port), the same devices reconnect, and the RSS of the fresh process is
# read again: that figure holds no enrollment leftovers. Its baseline is the
# RSS of a fresh process on the same (populated) data dir with no device.
#
# Mosquitto: a private broker (/usr/sbin/mosquitto) with one TLS 1.3
# listener that asks for a client certificate (mutual TLS, like Drover),
# then bench/mqtt_idle_clients.py opens N idle MQTT connections (CONNECT
# with keepalive 300). Same before/after RSS reading.
#
# Everything listens on and connects to loopback only; every process this
# script starts is killed when it exits. Takes about 5-8 minutes.
source "$(dirname "$0")/lib.sh"

N="${1:-15000}"
SIMS="${2:-3}"
SETTLE="${SETTLE:-20}"          # seconds to wait after all are connected
BACKOFF="${BACKOFF:-60}"        # sim --reconnect-max-secs (the agent's default is 60)
SIM_TIMEOUT="${SIM_TIMEOUT:-300}" # seconds for one sim's devices to enroll and connect
# STAGGER=0: start all sims at once instead (reproduces the connect herd).
PORT="${PORT:-18443}"
MQTT_PORT="${MQTT_PORT:-18883}"
WORK="${WORK:-/tmp/drover-bench-idle}"
export DROVER_CONFIG="$WORK/cli-profile.toml"   # never touch ~/.config

rm -rf "$WORK"; mkdir -p "$WORK"
[ -x "$DROVER" ] || build_drover
machine_info
echo "N=$N devices over $SIMS sim processes (--reconnect-max-secs $BACKOFF); settle ${SETTLE}s"
echo

# Takes 3 RSS samples 2 s apart; prints the last one.
settled_rss() { local p="$1" r; for _ in 1 2 3; do r=$(rss_kib "$p"); sleep 2; done; echo "$r"; }

WHICH="${WHICH:-both}"          # both | drover | mosquitto
if [ "$WHICH" != mosquitto ]; then
########## Drover
DATA="$WORK/data"
SERVER_FLAGS=(--connects-per-ip-per-sec 100000 --heartbeat-interval-secs 300)
start_server "$DATA" "$PORT" "${SERVER_FLAGS[@]}"
URL="https://127.0.0.1:$PORT"
TOKEN="$(cat "$DATA/admin.token")"
sleep 3
D_BASE=$(rss_kib "$SERVER_PID")
log "drover server pid $SERVER_PID, RSS before devices: $D_BASE KiB"

per=$(( N / SIMS ))
SIM_PIDS=()
t0=$(date +%s.%N)
# The sims start one after the other, each once the devices of the previous
# one are all connected: a sim starts all its devices at the same instant
# after enrolling them, and a herd of 7,500+ fresh devices at once makes the
# server refuse nearly every connect (see docs/benchmarks.md).
total=0
for s in $(seq 1 "$SIMS"); do
  n=$per; [ "$s" -eq "$SIMS" ] && n=$(( N - per * (SIMS - 1) ))
  total=$(( total + n ))
  ( ulimit -n "$(ulimit -Hn)"
    exec "$DROVER" --server "$URL" --token "$TOKEN" --ca-cert "$DATA/ca.crt" --json \
      sim --devices "$n" --duration-secs 1500 --concurrency 64 --reconnect-max-secs "$BACKOFF" ) \
    >"$WORK/sim$s.json" 2>"$WORK/sim$s.err" &
  SIM_PIDS+=($!); track $!
  # STAGGER=0 starts every sim at once (one herd of N fresh devices).
  [ "${STAGGER:-1}" = 0 ] && [ "$s" -lt "$SIMS" ] && continue
  if ! c=$(wait_connected "$DATA" "$PORT" "$total" "$SIM_TIMEOUT"); then
    log "only $c of $total devices connected within $SIM_TIMEOUT s of starting sim $s"
  else
    log "sim $s: $c devices connected after $(printf '%.0f' "$(echo "$(date +%s.%N) - $t0" | bc)") s"
  fi
done
t1=$(date +%s.%N)
D_CONNECTED=$(metric "$DATA" "$PORT" drover_devices_connected)
log "$D_CONNECTED devices connected after $(printf '%.0f' "$(echo "$t1 - $t0" | bc)") s (enroll + connect); settling"
sleep "$SETTLE"
D_FULL=$(settled_rss "$SERVER_PID")
D_ANON=$(anon_kib "$SERVER_PID")
D_HWM=$(awk '/^VmHWM:/ {print $2}' "/proc/$SERVER_PID/status")
D_FDS=$(fd_count "$SERVER_PID")
D_CONNECTED=$(metric "$DATA" "$PORT" drover_devices_connected)
SIM_RSS=0; for p in "${SIM_PIDS[@]}"; do SIM_RSS=$(( SIM_RSS + $(rss_kib "$p") )); done

# Restart: the fresh process holds the same connections and nothing else.
log "restarting the server (SIGTERM)"
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
start_server "$DATA" "$PORT" "${SERVER_FLAGS[@]}"
if ! c=$(wait_connected "$DATA" "$PORT" "$N" 300); then
  log "only $c of $N devices reconnected within 300 s"
fi
sleep "$SETTLE"
R_FULL=$(settled_rss "$SERVER_PID")
R_ANON=$(anon_kib "$SERVER_PID")
R_CONNECTED=$(metric "$DATA" "$PORT" drover_devices_connected)
for p in "${SIM_PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
for p in "${SIM_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
# Baseline of a fresh process on the populated data dir, no device.
start_server "$DATA" "$PORT" "${SERVER_FLAGS[@]}"
sleep 5
R_BASE=$(rss_kib "$SERVER_PID")
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
ERRORS=$(warn_count "$DATA.log")

fi

if [ "$WHICH" != drover ]; then
########## Mosquitto
MQ="$WORK/mqtt"
make_mqtt_certs "$MQ"
start_mosquitto "$MQ" "$MQTT_PORT" "${MQTT_REQUIRE_CERT:-true}"
sleep 2
M_BASE=$(rss_kib "$MQTT_PID")
log "mosquitto pid $MQTT_PID, RSS before clients: $M_BASE KiB"
( ulimit -n "$(ulimit -Hn)"
  exec python3 "$BENCH_DIR/mqtt_idle_clients.py" --port "$MQTT_PORT" --count "$N" \
    --cafile "$MQ/ca.crt" $([ "${MQTT_REQUIRE_CERT:-true}" = true ] && echo --cert "$MQ/client.crt" --key "$MQ/client.key") \
    --keepalive 300 --hold-secs 900 ) >"$WORK/mqtt-clients.out" 2>&1 &
MQC=$!; track $MQC
for _ in $(seq 1 600); do grep -q '^connected' "$WORK/mqtt-clients.out" && break; sleep 1; done
log "$(head -1 "$WORK/mqtt-clients.out"); settling"
sleep "$SETTLE"
M_FULL=$(settled_rss "$MQTT_PID")
M_ANON=$(anon_kib "$MQTT_PID")
M_FDS=$(fd_count "$MQTT_PID")
M_CONNECTED=$(awk '/^connected/ {split($2, a, "/"); print a[1]}' "$WORK/mqtt-clients.out")
kill -TERM "$MQC"; wait "$MQC" 2>/dev/null || true
kill -TERM "$MQTT_PID"; wait "$MQTT_PID" 2>/dev/null || true
fi

########## Report
per_conn() { echo "scale=2; ($2 - $1) / $3" | bc; }
echo
if [ "$WHICH" != mosquitto ]; then
  D_PER=$(per_conn "$D_BASE" "$D_FULL" "${D_CONNECTED%.*}")
  R_PER=$(per_conn "$R_BASE" "$R_FULL" "${R_CONNECTED%.*}")
  echo "drover first run : connected ${D_CONNECTED%.*}/$N  RSS before ${D_BASE} KiB  after ${D_FULL} KiB (anonymous ${D_ANON})  peak (VmHWM) ${D_HWM} KiB  fds ${D_FDS}  => ${D_PER} KiB/connection (includes enrollment of the devices)"
  echo "drover restarted : connected ${R_CONNECTED%.*}/$N  RSS fresh-process baseline ${R_BASE} KiB  after ${R_FULL} KiB (anonymous ${R_ANON})  => ${R_PER} KiB/connection"
  echo "drover sims      : ${SIM_RSS} KiB RSS in total (client side, not counted); WARN/ERROR lines in server logs: ${ERRORS}${SERVER_ENV:+; server env: $SERVER_ENV}"
fi
if [ "$WHICH" != drover ]; then
  M_PER=$(per_conn "$M_BASE" "$M_FULL" "$M_CONNECTED")
  echo "mosquitto        : connected ${M_CONNECTED}/$N  RSS before ${M_BASE} KiB  after ${M_FULL} KiB (anonymous ${M_ANON})  fds ${M_FDS}  => ${M_PER} KiB/connection (client certificate required: ${MQTT_REQUIRE_CERT:-true})"
fi
if [ "$WHICH" = both ]; then
  echo "ratio drover/mosquitto: first run $(echo "scale=3; $D_PER / $M_PER" | bc), restarted $(echo "scale=3; $R_PER / $M_PER" | bc)  (goal <= 0.7)"
fi
if [ "$WHICH" != mosquitto ]; then echo "sim reports:"; cat "$WORK"/sim*.json; fi
if [ "$WHICH" != drover ]; then echo "mqtt client report:"; tail -1 "$WORK/mqtt-clients.out"; fi
