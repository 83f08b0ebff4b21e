#!/usr/bin/env bash
# Time from `drover deploy` to every device committed, for N simulated
# devices (issue 4). One `drover server` on the embedded default (SQLite,
# local artifacts); one `drover sim --updates-dir` process whose devices
# each run the real agent update engine with the `app` installer: they
# download the payload over mutual TLS, verify the signature with the root
# key from their enrollment token, the size and SHA-256, install into their
# own folder, switch, and report. Deploy-to-committed is measured on the
# server: newest device `updated_at` minus the deployment's `created_at`.
#
# Usage: bench/deploy_commit.sh [N] [PAYLOAD_KIB]   (defaults 1000, 256)
source "$(dirname "$0")/lib.sh"

N="${1:-1000}"
KIB="${2:-256}"
PORT="${PORT:-18443}"
WORK="${WORK:-$(mktemp -d /tmp/drover-deploy-XXXX)}"
mkdir -p "$WORK"
[ -x "$DROVER" ] || build_drover

machine_info
echo "N=$N simulated devices, app payload $KIB KiB"
echo

DATA="$WORK/data"
start_server "$DATA" "$PORT" --connects-per-ip-per-sec 100000
export DROVER_SERVER="https://127.0.0.1:$PORT" DROVER_TOKEN="$(cat "$DATA/admin.token")" DROVER_CA_CERT="$DATA/ca.crt"

"$DROVER" release keygen --root -o "$WORK/root.key" --json >/dev/null
TOKEN=$("$DROVER" enroll-tokens create --tag bench=deploy --release-root "$WORK/root.key.pub" --json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
"$DROVER" groups create fleet --query 'tag.bench = "deploy"' --json >/dev/null

log "enrolling and connecting $N simulated devices with update engines"
( ulimit -n "$(ulimit -Hn)"
  exec "$DROVER" --json sim --enroll-token "$TOKEN" --devices "$N" --concurrency 64 \
    --duration-secs 1800 --updates-dir "$WORK/devices" --device-type bench-box ) \
  >"$WORK/sim.json" 2>"$WORK/sim.err" &
track $!
c=$(wait_connected "$DATA" "$PORT" "$N" 600) || { log "only $c/$N connected"; tail "$WORK/sim.err"; exit 1; }
log "$c devices connected"

head -c $(( KIB * 1024 )) /dev/urandom >"$WORK/app.bin"
"$DROVER" release build --name bench-app --version 1.0.0 --device-type bench-box \
  --payload "app:$WORK/app.bin" --key "$WORK/root.key" -o "$WORK/r1.drover" --json >/dev/null
"$DROVER" release publish "$WORK/r1.drover" --json >/dev/null

log "deploying bench-app@1.0.0 to $N devices"
t0=$(date +%s.%N)
"$DROVER" deploy bench-app@1.0.0 --group fleet --wait 900 --json >"$WORK/deploy.json" || true
t1=$(date +%s.%N)
python3 - "$WORK/deploy.json" "$t0" "$t1" <<'PY'
import json, sys
from datetime import datetime
d = json.load(open(sys.argv[1]))
t0, t1 = float(sys.argv[2]), float(sys.argv[3])
def ts(s): return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
created = ts(d["created_at"])
done = sorted(ts(x["updated_at"]) - created for x in d["devices"] if x["state"] == "committed")
print(f"devices: {len(d['devices'])}, states: {d['counts']}")
if done:
    q = lambda p: done[min(len(done) - 1, int(p * len(done)))]
    print(f"deploy to committed (server clock): p50 {q(0.5):.1f} s, p95 {q(0.95):.1f} s, all {done[-1]:.1f} s")
print(f"drover deploy --wait wall time (includes 0.5 s polling): {t1 - t0:.1f} s")
PY
echo "server RSS at the end: $(rss_kib "$SERVER_PID") KiB"
