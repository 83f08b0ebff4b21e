#!/usr/bin/env bash
# Benchmark 4: footprint of the shipped agent, next to Debian's mender-client.
#
#   bench/agent_footprint.sh
#
# Builds drover-agent with the `release-agent` profile (opt-level z, fat LTO,
# codegen-units 1, panic abort, strip) for glibc and, when the rustup target
# x86_64-unknown-linux-musl and musl-gcc (Debian musl-tools) are present, as
# a static musl binary. Prints each binary's size, then enrolls each build
# with a local `drover server` (loopback) and reads the agent's RSS once its
# control channel is up and it has been idle for $SETTLE seconds.
#
# Peer: /usr/bin/mender (Debian mender-client 3.4) run as `mender daemon`
# against https://127.0.0.1:9, where nothing listens, so it never gets
# authorized; its RSS is read after $SETTLE seconds. It needs an artifact name
# and an identity script; when missing, this script installs
# /etc/mender/artifact_info and the package's example identity script (a
# normal part of setting up a Mender device).
# Loopback only; every process started is killed on exit. A few minutes
# (the fat-LTO builds take the longest).
source "$(dirname "$0")/lib.sh"

SETTLE="${SETTLE:-30}"
PORT="${PORT:-18445}"
WORK="${WORK:-/tmp/drover-bench-agent}"
MUSL=x86_64-unknown-linux-musl
export DROVER_CONFIG="$WORK/cli-profile.toml"
rm -rf "$WORK"; mkdir -p "$WORK"
machine_info
echo "rustc:   $(rustc --version)"
echo

[ -x "$DROVER" ] || build_drover
log "building drover-agent --profile release-agent (glibc)"
(cd "$REPO_DIR" && cargo build -q --profile release-agent -p drover-agent)
AGENTS=("glibc:$CARGO_TARGET_DIR/release-agent/drover-agent")
if rustup target list --installed 2>/dev/null | grep -qx "$MUSL" && command -v musl-gcc >/dev/null; then
  log "building drover-agent --profile release-agent --target $MUSL"
  if (cd "$REPO_DIR" && CC_x86_64_unknown_linux_musl=musl-gcc \
        cargo build -q --profile release-agent -p drover-agent --target "$MUSL"); then
    AGENTS+=("musl-static:$CARGO_TARGET_DIR/$MUSL/release-agent/drover-agent")
  else
    echo "musl build FAILED (see above)"
  fi
else
  echo "musl build skipped: needs 'rustup target add $MUSL' and 'apt-get install musl-tools'"
fi

echo
echo "== binary sizes"
for a in "${AGENTS[@]}"; do
  name=${a%%:*}; bin=${a#*:}
  printf '%-12s %9d bytes  %6.2f MiB  %s\n' "drover-agent/$name" "$(stat -c %s "$bin")" \
    "$(echo "scale=4; $(stat -c %s "$bin") / 1048576" | bc)" "$(file -b "$bin" | cut -d, -f1-2,5-6 | tr -s ' ')"
done
if [ -x /usr/bin/mender ]; then
  printf '%-12s %9d bytes  %6.2f MiB  %s\n' "mender 3.4" "$(stat -c %s /usr/bin/mender)" \
    "$(echo "scale=4; $(stat -c %s /usr/bin/mender) / 1048576" | bc)" "$(file -b /usr/bin/mender | cut -d, -f1-2,5-6 | tr -s ' ')"
fi
[ -x "$CARGO_TARGET_DIR/release/drover-agent" ] && printf '%-12s %9d bytes (default release profile, for reference)\n' \
  "drover-agent/release" "$(stat -c %s "$CARGO_TARGET_DIR/release/drover-agent")"

echo
echo "== idle RSS (after ${SETTLE}s idle)"
DATA="$WORK/server"
start_server "$DATA" "$PORT"
URL="https://127.0.0.1:$PORT"
TOKEN=$("$DROVER" --server "$URL" --token "$(cat "$DATA/admin.token")" --ca-cert "$DATA/ca.crt" --json \
  enroll-tokens create --name bench-agent --uses 10 | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
status_line() {
  awk '/^(VmRSS|VmHWM|RssAnon|RssFile|Threads):/ {printf "%s %s%s  ", $1, $2, ($1 == "Threads:" ? "" : " KiB")}' "/proc/$1/status"
}
expected=0
for a in "${AGENTS[@]}"; do
  name=${a%%:*}; bin=${a#*:}; ad="$WORK/agent-$name"
  "$bin" --data "$ad" --config /dev/null enroll --token "$TOKEN" >"$ad.enroll" 2>&1 \
    || { echo "$name: enroll failed: $(cat "$ad.enroll")"; continue; }
  DROVER_LOG=info "$bin" --data "$ad" --config /dev/null run >"$ad.out" 2>"$ad.log" &
  AP=$!; track $AP
  expected=$(( expected + 1 ))
  wait_connected "$DATA" "$PORT" "$expected" 30 >/dev/null || echo "$name: not connected after 30 s"
  sleep "$SETTLE"
  printf '%-12s connected=%s  %s\n' "drover-agent/$name" \
    "$(grep -c 'control channel up' "$ad.log")" "$(status_line "$AP")"
  kill -TERM "$AP"; wait "$AP" 2>/dev/null || true
  expected=$(( expected - 1 ))
done
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true

if [ -x /usr/bin/mender ]; then
  MD="$WORK/mender"; mkdir -p "$MD/data"
  [ -f /etc/mender/artifact_info ] || { mkdir -p /etc/mender; echo "artifact_name=bench-1" >/etc/mender/artifact_info; echo "(installed /etc/mender/artifact_info)"; }
  if [ ! -x /usr/share/mender/identity/mender-device-identity ]; then
    install -m 755 /usr/share/doc/mender-client/examples/mender-device-identity /usr/share/mender/identity/mender-device-identity
    echo "(installed the example identity script)"
  fi
  echo "device_type=bench-x86_64" >"$MD/data/device_type"
  cat >"$MD/mender.conf" <<CONF
{
  "ServerURL": "https://127.0.0.1:9",
  "DeviceTypeFile": "$MD/data/device_type",
  "InventoryPollIntervalSeconds": 28800,
  "UpdatePollIntervalSeconds": 1800,
  "RetryPollIntervalSeconds": 300
}
CONF
  /usr/bin/mender --no-syslog --config "$MD/mender.conf" --data "$MD/data" daemon >"$MD/out.log" 2>&1 &
  MP=$!; track $MP
  sleep "$SETTLE"
  printf '%-12s authorized=no (server unreachable, as intended)  %s\n' "mender 3.4" "$(status_line "$MP")"
  sleep 30
  printf '%-12s after %ss more: %s\n' "mender 3.4" 30 "$(status_line "$MP")"
  echo "mender log (last lines):"; tail -3 "$MD/out.log" | cut -c1-200
  kill -TERM "$MP"; wait "$MP" 2>/dev/null || true
fi
