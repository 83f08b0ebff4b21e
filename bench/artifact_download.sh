#!/usr/bin/env bash
# Issue 4 benchmark: artifact download throughput of `drover server`, next to
# Debian's nginx serving the same file (goal: ratio drover/nginx >= 0.8).
#
#   bench/artifact_download.sh [SIZE_MIB] [RUNS] [PAR]     (defaults: 512 5 4)
#
# One `drover server` on 127.0.0.1:$PORT and one private nginx (Debian
# package, installed with apt-get when missing) on 127.0.0.1:$NGINX_PORT.
# A device is enrolled with the real `drover-agent` (`enroll --token`), and
# its key and certificate (AGENT_DATA/device.key, device.crt) are curl's
# client identity against both servers. A SIZE_MIB file of random bytes is
# uploaded with `PUT /api/v1/artifacts/{sha256}`; nginx serves the very file
# Drover stored (DATA/artifacts/sha256/xx/<sha256>) at the same URL path.
# Both use the Drover server certificate and key, TLS 1.3 only, and require a
# client certificate from the fleet CA (nginx `ssl_verify_client on`), so
# both do mutual TLS. nginx keeps Debian's defaults that matter here:
# `sendfile on`, `tcp_nopush on`, `worker_processes auto`, no kTLS.
#
# Measured with curl (OpenSSL), one whole-file GET per run, output to
# /dev/null, the file in the page cache: RUNS runs per server, alternating
# (odd rounds Drover first, even rounds nginx first); then PAR concurrent
# curls per server (3 rounds, alternating), aggregate = bytes / wall time.
# Printed per run: curl's %{speed_download} (average over the transfer),
# the server's CPU time (utime+stime from /proc; nginx: master and workers)
# and curl's CPU time. MB/s is 10^6 bytes per second. Then a Range check
# (`Range: bytes=N-` gives 206 with SIZE-N bytes, which hash like the tail
# of the file) on both servers.
# PERF=1 also records a flat `perf` profile of each server during one extra
# download and prints the top symbols.
# Loopback only; every process started is killed on exit. About 2-4 minutes
# after the build.
source "$(dirname "$0")/lib.sh"

SIZE_MIB="${1:-512}"
RUNS="${2:-5}"
PAR="${3:-4}"
PORT="${PORT:-18446}"
NGINX_PORT="${NGINX_PORT:-18447}"
WORK="${WORK:-/tmp/drover-bench-artifact}"
AGENT="${AGENT:-$CARGO_TARGET_DIR/release/drover-agent}"
NGINX="${NGINX:-/usr/sbin/nginx}"
export DROVER_CONFIG="$WORK/cli-profile.toml"

if [ ! -x "$NGINX" ]; then
  # nginx-light is enough (ssl, sendfile); plain `nginx` where it is not offered.
  pkg=nginx
  apt-cache policy nginx-light 2>/dev/null | grep -q 'Candidate: [0-9]' && pkg=nginx-light
  log "installing $pkg (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y "$pkg" >&2
fi
if [ ! -x "$DROVER" ] || [ ! -x "$AGENT" ]; then
  log "building drover and drover-agent (release, nice 10) into $CARGO_TARGET_DIR"
  (cd "$REPO_DIR" && nice -n 10 cargo build --release -q --bin drover --bin drover-agent)
fi

rm -rf "$WORK"; mkdir -p "$WORK"
machine_info
echo "cpu:     $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
[ -n "${BUILT_FROM:-}" ] && echo "built:   drover and drover-agent from $BUILT_FROM"
echo "agent:   $AGENT, built $(date -u -r "$AGENT" +%FT%TZ)"
echo "nginx:   $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(dpkg-query -W -f='${Package} ${Version}' nginx-light 2>/dev/null || dpkg-query -W -f='${Package} ${Version}' nginx 2>/dev/null || echo '?')"
echo "curl:    $(curl --version | head -1)"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min; other work on the machine skews both servers)"
echo "file:    $SIZE_MIB MiB of random bytes; $RUNS runs per server; $PAR parallel downloads"
echo

DATA="$WORK/data"
start_server "$DATA" "$PORT"
URL="https://127.0.0.1:$PORT"
ADMIN="$(cat "$DATA/admin.token")"
CA="$DATA/ca.crt"

# One device, enrolled by the real agent.
TOKEN=$("$DROVER" --server "$URL" --token "$ADMIN" --ca-cert "$CA" --json \
  enroll-tokens create --name bench-artifact --uses 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
AD="$WORK/agent"
"$AGENT" --data "$AD" --config /dev/null enroll --token "$TOKEN" >"$WORK/agent-enroll.out" 2>&1 \
  || { log "agent enroll failed:"; cat "$WORK/agent-enroll.out" >&2; exit 1; }
CERT="$AD/device.crt"; KEY="$AD/device.key"
[ -s "$CERT" ] && [ -s "$KEY" ] || { log "no device.crt/device.key in $AD"; ls -l "$AD" >&2; exit 1; }
log "device enrolled: $(openssl x509 -in "$CERT" -noout -subject 2>/dev/null)"

# The artifact.
BLOB="$WORK/blob"
head -c "$(( SIZE_MIB << 20 ))" /dev/urandom >"$BLOB"
SIZE=$(stat -c %s "$BLOB")
SHA=$(sha256sum "$BLOB" | cut -d' ' -f1)
log "uploading $SIZE bytes as $SHA"
t0=$(date +%s.%N)
curl -sS --fail-with-body --cacert "$CA" -H "Authorization: Bearer $ADMIN" \
  -T "$BLOB" "$URL/api/v1/artifacts/$SHA" >"$WORK/upload.json"
t1=$(date +%s.%N)
echo "upload: $(cat "$WORK/upload.json") in $(echo "$t1 - $t0" | bc) s"
STORED="$DATA/artifacts/sha256/${SHA:0:2}/$SHA"
[ "$(stat -c %s "$STORED")" = "$SIZE" ] || { log "stored file $STORED missing or wrong size"; exit 1; }
rm -f "$BLOB"   # from here on both servers read $STORED

# nginx: same file, same URL path, same certificate, mutual TLS 1.3.
mkdir -p "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<CONF
# Written by bench/artifact_download.sh: a private nginx next to drover server.
# The artifact directory is 0700 root: workers run as root to read it.
user root;
daemon off;
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 768; }
http {
  # Debian's /etc/nginx/nginx.conf defaults.
  sendfile on;
  tcp_nopush on;
  types_hash_max_size 2048;
  default_type application/octet-stream;
  access_log off;
  client_body_temp_path $WORK/nginx/tmp/body;
  proxy_temp_path $WORK/nginx/tmp/proxy;
  fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
  uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
  scgi_temp_path $WORK/nginx/tmp/scgi;
  server {
    listen 127.0.0.1:$NGINX_PORT ssl;
    ssl_protocols TLSv1.3;
    ssl_certificate $DATA/server.crt;
    ssl_certificate_key $DATA/server.key;
    ssl_client_certificate $CA;
    ssl_verify_client on;
    location /v1/artifacts/ {
      alias $DATA/artifacts/sha256/${SHA:0:2}/;
    }
  }
}
CONF
"$NGINX" -t -q -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx/" 2>&1 | grep -v '^$' >&2 || true
"$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx/" 2>>"$WORK/nginx/error.log" &
NGINX_PID=$!; track "$NGINX_PID"
for i in $(seq 1 50); do
  ss -ltn "sport = :$NGINX_PORT" | grep -q LISTEN && break
  sleep 0.1
done
ss -ltn "sport = :$NGINX_PORT" | grep -q LISTEN || { log "nginx did not come up:"; cat "$WORK/nginx/error.log" >&2; exit 1; }

D_URL="$URL/v1/artifacts/$SHA"
N_URL="https://127.0.0.1:$NGINX_PORT/v1/artifacts/$SHA"
CURL=(curl -sS --tlsv1.3 --cacert "$CA" --cert "$CERT" --key "$KEY")
TCK=$(getconf CLK_TCK)

# CPU seconds (user+system) used so far by the server ("drover" or "nginx").
server_cpu() {
  local pids p t=0
  if [ "$1" = drover ]; then pids="$SERVER_PID"; else pids="$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"; fi
  for p in $pids; do
    t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat") ))
  done
  echo "scale=3; $t / $TCK" | bc
}
# CPU seconds used by this shell's finished children (curl), from `times`
# (run in this shell, not in a subshell; the result goes to CHILD_CPU).
child_cpu() {
  times >"$WORK/times"
  CHILD_CPU=$(awk 'NR==2 {gsub(/[ms]/," "); printf "%.3f\n", $1*60+$2+$3*60+$4}' "$WORK/times")
}
url_of() { [ "$1" = drover ] && echo "$D_URL" || echo "$N_URL"; }

echo
echo "TLS and content check (not timed):"
for s in drover nginx; do
  "${CURL[@]}" -v -o /dev/null "$(url_of $s)" 2>&1 \
    | grep -E 'SSL connection using|ALPN: server|^< HTTP/' | sed "s/^/  $s: /"
  got=$("${CURL[@]}" "$(url_of $s)" | sha256sum | cut -d' ' -f1)
  [ "$got" = "$SHA" ] && echo "  $s: body sha256 matches" || { echo "  $s: body sha256 $got != $SHA"; exit 1; }
done

# One timed download; sets RESULT to "code bytes MB/s seconds server_cpu_s curl_cpu_s".
one() {
  local s="$1" c0 c1 k0 k1 out
  c0=$(server_cpu "$s"); child_cpu; k0=$CHILD_CPU
  out=$("${CURL[@]}" -o /dev/null -w '%{http_code} %{size_download} %{speed_download} %{time_total}' "$(url_of "$s")")
  child_cpu; k1=$CHILD_CPU; c1=$(server_cpu "$s")
  set -- $out
  [ "$1" = 200 ] && [ "$2" = "$SIZE" ] || { log "$s: HTTP $1, $2 bytes (want 200, $SIZE)"; exit 1; }
  RESULT=$(printf '%s %s %.1f %s %.2f %.2f' "$1" "$2" "$(echo "$3 / 1000000" | bc -l)" "$4" \
    "$(echo "$c1 - $c0" | bc)" "$(echo "$k1 - $k0" | bc)")
}
# PAR concurrent downloads; sets RESULT to
# "total_bytes wall_s aggregate_MB/s server_cpu_s curl_cpu_s".
parallel() {
  local s="$1" c0 c1 k0 k1 t0 t1 i total=0 b code pids=()
  c0=$(server_cpu "$s"); child_cpu; k0=$CHILD_CPU
  t0=$(date +%s.%N)
  for i in $(seq 1 "$PAR"); do
    "${CURL[@]}" -o /dev/null -w '%{http_code} %{size_download}\n' "$(url_of "$s")" >"$WORK/par.$s.$i" &
    pids+=($!)
  done
  wait "${pids[@]}" || true
  t1=$(date +%s.%N)
  child_cpu; k1=$CHILD_CPU; c1=$(server_cpu "$s")
  for i in $(seq 1 "$PAR"); do
    read -r code b <"$WORK/par.$s.$i"
    [ "$code" = 200 ] && [ "$b" = "$SIZE" ] || { log "$s parallel #$i: HTTP $code, $b bytes"; exit 1; }
    total=$(( total + b ))
  done
  RESULT=$(printf '%s %.3f %.1f %.2f %.2f' "$total" "$(echo "$t1 - $t0" | bc)" \
    "$(echo "$total / ($t1 - $t0) / 1000000" | bc -l)" "$(echo "$c1 - $c0" | bc)" "$(echo "$k1 - $k0" | bc)")
}
median() { sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

echo
echo "warm-up: one download each (not counted)"
one drover; one nginx

echo
echo "single downloads ($RUNS per server), command:"
echo "  ${CURL[*]} -o /dev/null -w '%{http_code} %{size_download} %{speed_download} %{time_total}' URL"
echo "server run  http bytes MB/s seconds server_cpu_s curl_cpu_s  load1"
: >"$WORK/single.drover"; : >"$WORK/single.nginx"
for r in $(seq 1 "$RUNS"); do
  if [ $(( r % 2 )) = 1 ]; then order="drover nginx"; else order="nginx drover"; fi
  for s in $order; do
    one "$s"
    echo "$RESULT" >>"$WORK/single.$s"
    printf '%-6s %-4s %s  %s\n' "$s" "$r" "$RESULT" "$(cut -d' ' -f1 /proc/loadavg)"
  done
done

echo
echo "parallel: $PAR concurrent downloads, 3 rounds per server"
echo "server round total_bytes wall_s aggregate_MB/s server_cpu_s curl_cpu_s  load1"
: >"$WORK/par.drover"; : >"$WORK/par.nginx"
for r in 1 2 3; do
  if [ $(( r % 2 )) = 1 ]; then order="drover nginx"; else order="nginx drover"; fi
  for s in $order; do
    parallel "$s"
    echo "$RESULT" >>"$WORK/par.$s"
    printf '%-6s %-5s %s  %s\n' "$s" "$r" "$RESULT" "$(cut -d' ' -f1 /proc/loadavg)"
  done
done

echo
echo "Range check: Range: bytes=N- (N = SIZE/2 + 12345)"
N=$(( SIZE / 2 + 12345 ))
WANT_SHA=$(tail -c +"$(( N + 1 ))" "$STORED" | sha256sum | cut -d' ' -f1)
for s in drover nginx; do
  out=$("${CURL[@]}" -H "Range: bytes=$N-" -D "$WORK/range.$s.headers" -o "$WORK/range.$s.body" \
    -w '%{http_code} %{size_download} %{speed_download}' "$(url_of "$s")")
  set -- $out
  got_sha=$(sha256sum "$WORK/range.$s.body" | cut -d' ' -f1)
  printf '  %-6s HTTP %s, %s bytes (want %s), %.1f MB/s, %s, sha256 %s\n' "$s" "$1" "$2" "$(( SIZE - N ))" \
    "$(echo "$3 / 1000000" | bc -l)" "$(grep -i '^content-range:' "$WORK/range.$s.headers" | tr -d '\r')" \
    "$([ "$got_sha" = "$WANT_SHA" ] && echo matches || echo "DIFFERS ($got_sha)")"
  rm -f "$WORK/range.$s.body"
done

if [ "${PERF:-0}" = 1 ] && command -v perf >/dev/null; then
  echo
  echo "perf: flat profile of each server during one download (perf record -F 999 -p PIDS)"
  for s in drover nginx; do
    if [ "$s" = drover ]; then pids="$SERVER_PID"; else pids="$(pgrep -P "$NGINX_PID" | paste -sd,)"; fi
    perf record -q -F 999 -p "$pids" -o "$WORK/perf.$s.data" 2>/dev/null &
    PERF_PID=$!; track "$PERF_PID"
    sleep 0.5
    one "$s"
    kill -INT "$PERF_PID"; wait "$PERF_PID" 2>/dev/null || true
    echo "--- $s"
    echo "    by object:"
    perf report -q -i "$WORK/perf.$s.data" --no-children --sort dso 2>/dev/null \
      | grep -v '^$' | head -8 | sed 's/ *$//' || true
    echo "    top symbols:"
    perf report -q -i "$WORK/perf.$s.data" --no-children --sort dso,symbol 2>/dev/null \
      | grep -v '^$' | head -15 | sed 's/[ -]*$//' || true
  done
fi

echo
echo "summary (median of each column over the runs above):"
dm=$(awk '{print $3}' "$WORK/single.drover" | median)
nm=$(awk '{print $3}' "$WORK/single.nginx" | median)
dpm=$(awk '{print $3}' "$WORK/par.drover" | median)
npm=$(awk '{print $3}' "$WORK/par.nginx" | median)
dc=$(awk '{print $5}' "$WORK/single.drover" | median)
nc=$(awk '{print $5}' "$WORK/single.nginx" | median)
printf '  single download: drover %.1f MB/s, nginx %.1f MB/s, ratio %.3f\n' "$dm" "$nm" "$(echo "$dm / $nm" | bc -l)"
printf '  %s parallel:      drover %.1f MB/s, nginx %.1f MB/s, ratio %.3f\n' "$PAR" "$dpm" "$npm" "$(echo "$dpm / $npm" | bc -l)"
printf '  server CPU per single download: drover %.2f s, nginx %.2f s (%.2f / %.2f s per GB)\n' "$dc" "$nc" \
  "$(echo "$dc * 1000000000 / $SIZE" | bc -l)" "$(echo "$nc * 1000000000 / $SIZE" | bc -l)"
echo "  goal: ratio >= 0.8"
echo "  load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "WARN/ERROR lines in the server log: $(warn_count "$DATA.log"); nginx error log lines: $(grep -c . "$WORK/nginx/error.log" || true)"
