#!/usr/bin/env bash
# Agent CPU and memory with telemetry collection on, at default intervals.
#
#   bench/agent_telemetry.sh                 # 10 minutes
#   DURATION=120 bench/agent_telemetry.sh    # shorter
#
# Builds drover-agent with the `release-agent` profile, starts a local
# `drover server` (DROVER=path/to/drover picks the binary; the server's own
# speed does not matter here), enrolls two agents and runs them side by
# side for $DURATION seconds after their channels are up:
#   on:  [telemetry] defaults (system metrics every 10 s, events every 5 s,
#        StatsD listener on a free port, buffer in DATA/telemetry.redb)
#   off: [telemetry] enabled = false (the agent as before telemetry)
#   rules: as "on", plus a rule set pushed with `drover rules apply
#        --device` (five rules: a process by name, one by path, a
#        listening port, a file's sha256 and a metric over a window; events
#        only), evaluated every 2 s
# and reports each one's utime+stime over the window (from
# /proc/PID/stat, as % of one core), VmRSS and VmHWM at the end, and the
# size of the telemetry buffer file. Loopback only; every process started
# is killed on exit.
source "$(dirname "$0")/lib.sh"

DURATION="${DURATION:-600}"
PORT="${PORT:-18447}"
WORK="${WORK:-/tmp/drover-bench-agent-telemetry}"
rm -rf "$WORK"; mkdir -p "$WORK"
machine_info
echo "rustc:   $(rustc --version)"
echo "window:  ${DURATION}s"
echo

[ -x "$DROVER" ] || build_drover
log "building drover-agent --profile release-agent"
(cd "$REPO_DIR" && nice -n 10 cargo build -q --profile release-agent -p drover-agent)
AGENT="$CARGO_TARGET_DIR/release-agent/drover-agent"
printf 'agent binary: %d bytes\n' "$(stat -c %s "$AGENT")"

DATA="$WORK/server"
start_server "$DATA" "$PORT"
URL="https://127.0.0.1:$PORT"
TOKEN=$("$DROVER" --server "$URL" --token "$(cat "$DATA/admin.token")" --ca-cert "$DATA/ca.crt" --json \
  enroll-tokens create --name bench-telemetry --uses 10 | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
STATSD=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf '[telemetry]\nstatsd_port = %s\n' "$STATSD" >"$WORK/on.toml"
printf '[telemetry]\nenabled = false\n' >"$WORK/off.toml"
STATSD2=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf '[telemetry]\nstatsd_port = %s\n' "$STATSD2" >"$WORK/rules.toml"
cat >"$WORK/ruleset.toml" <<'EOF2'
version = 1

[[rules]]
name = "no-cryptominer"
condition = { kind = "process_running", name = "cryptominer" }
actions = [{ kind = "event", severity = "critical", message = "forbidden process" }]

[[rules]]
name = "kiosk-running"
condition = { kind = "process_missing", exe = "/opt/kiosk/bin/kiosk" }
actions = [{ kind = "event", severity = "warning", message = "kiosk is not running" }]

[[rules]]
name = "no-backdoor-port"
condition = { kind = "port_listening", port = 4444 }
actions = [{ kind = "event", severity = "critical", message = "port 4444 open" }]

[[rules]]
name = "passwd-changed"
condition = { kind = "file_changed", path = "/etc/passwd", checks = ["sha256"] }
actions = [{ kind = "event", severity = "warning", message = "/etc/passwd changed" }]

[[rules]]
name = "hot"
condition = { kind = "metric", metric = "cpu", above = 99.0, window_secs = 120 }
actions = [{ kind = "event", severity = "warning", message = "cpu above 99 for 2 min" }]
EOF2

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A PIDS T0
n=0
MODES="on off rules"
for mode in $MODES; do
  ad="$WORK/agent-$mode"
  "$AGENT" --data "$ad" --config "$WORK/$mode.toml" enroll --token "$TOKEN" >"$ad.enroll" 2>&1 \
    || { echo "$mode: enroll failed: $(cat "$ad.enroll")"; exit 1; }
  DROVER_LOG=info "$AGENT" --data "$ad" --config "$WORK/$mode.toml" run >"$ad.out" 2>"$ad.log" &
  PIDS[$mode]=$!; track "${PIDS[$mode]}"
  n=$((n + 1))
  wait_connected "$DATA" "$PORT" "$n" 30 >/dev/null || echo "$mode: not connected after 30 s"
done
RID=$("$AGENT" --data "$WORK/agent-rules" --config /dev/null key | head -1 | sed 's/device id: //')
"$DROVER" --server "$URL" --token "$(cat "$DATA/admin.token")" --ca-cert "$DATA/ca.crt" --json \
  rules apply "$WORK/ruleset.toml" --device "$RID" >/dev/null
sleep 5
echo "rules reported by the 'rules' agent: $("$DROVER" --server "$URL" --token "$(cat "$DATA/admin.token")" --ca-cert "$DATA/ca.crt" --json \
  devices show "$RID" | python3 -c 'import json,sys; i=json.load(sys.stdin)["inventory"]; print({k: v for k, v in i.items() if k.startswith("rules.")})')"
for mode in $MODES; do T0[$mode]=$(ticks "${PIDS[$mode]}"); done
START=$(date +%s.%N)
sleep "$DURATION"
END=$(date +%s.%N)
HZ=$(getconf CLK_TCK)
echo
echo "== after ${DURATION}s at default intervals"
for mode in $MODES; do
  p=${PIDS[$mode]}
  t1=$(ticks "$p")
  cpu=$(echo "scale=8; ($t1 - ${T0[$mode]}) * 100 / $HZ / ($END - $START)" | bc)
  printf 'telemetry %-3s cpu_ticks=%d (%s Hz)  cpu=%s%% of one core  %s' "$mode" "$((t1 - T0[$mode]))" "$HZ" "$cpu" \
    "$(awk '/^(VmRSS|VmHWM|Threads):/ {printf "%s %s  ", $1, $2}' "/proc/$p/status")"
  f="$WORK/agent-$mode/telemetry.redb"
  [ -f "$f" ] && printf 'telemetry.redb=%d bytes' "$(stat -c %s "$f")"
  echo
done
ID=$("$AGENT" --data "$WORK/agent-on" --config /dev/null key | head -1 | sed 's/device id: //')
echo "points of cpu stored for the 'on' agent: $("$DROVER" --server "$URL" --token "$(cat "$DATA/admin.token")" --ca-cert "$DATA/ca.crt" --json \
  metrics show "$ID" --name cpu --since 1h --limit 100000 | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["points"]))')"
for mode in $MODES; do kill -TERM "${PIDS[$mode]}"; wait "${PIDS[$mode]}" 2>/dev/null || true; done
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
