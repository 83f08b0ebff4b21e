#!/usr/bin/env bash
# Benchmark 5 (issue 4): size of a zstd patch-from delta for a small change
# to a 50 MiB `app` payload, next to the full payload and the full payload
# compressed with zstd.
#
#   bench/delta_size.sh [SIZE_MIB]
#
# Makes a deterministic payload of SIZE_MIB (default 50) MiB from a fixed
# seed: 64 KiB blocks, alternately pseudo-random bytes (like compiled code
# and already-compressed assets, which do not compress) and generated text
# (like configuration, scripts and JSON, which do). The "small change" copy
# overwrites 4 KiB at 10 %, 50 % and 90 % of the file and inserts 100 bytes
# at 30 %, which shifts everything after it.
#
# Then, with the real CLI (release profile): builds release 1.0.0 from the
# payload, release 1.1.0 from the changed copy with --delta-from 1.0.0, and
# `drover release verify-delta` applies the patch to the 1.0.0 payload the
# way the agent does (drover_release::delta::apply, hash checked). Prints
# the sizes, the ratios, the time to make and to apply the patch (each
# measured inside drover, without hashing and bundling), and the peak RSS
# of both commands. For reference it also times the zstd command line tool's
# own `--patch-from` at levels 9 and 19 (window log 27) when it is installed.
# Everything stays in $WORK; nothing listens on the network. About 2 min on
# 2 cores, plus the release build when $DROVER is missing.
source "$(dirname "$0")/lib.sh"

SIZE_MIB="${1:-50}"
WORK="${WORK:-/tmp/drover-bench-delta}"
rm -rf "$WORK"; mkdir -p "$WORK"
machine_info
echo "zstd:    $(zstd --version 2>/dev/null || echo 'not installed')"
echo

if [ ! -x "$DROVER" ]; then
  log "building drover (release) into $CARGO_TARGET_DIR"
  (cd "$REPO_DIR" && cargo build --release -q --bin drover)
fi

log "making a ${SIZE_MIB} MiB payload and a slightly changed copy"
python3 - "$WORK" "$SIZE_MIB" <<'PY'
import random, sys
work, size = sys.argv[1], int(sys.argv[2]) << 20
rng = random.Random(20261127)
words = ("device fleet update kiosk health check rollback version config "
         "service restart timeout payload manifest signature network port "
         "enabled disabled true false level info warn error").split()
block = 64 << 10
out = bytearray()
i = 0
while len(out) < size:
    if i % 2 == 0:
        out += rng.randbytes(block)
    else:
        text = bytearray()
        while len(text) < block:
            n = rng.randint(3, 12)
            text += (" ".join(rng.choice(words) for _ in range(n))
                     + f" = {rng.randint(0, 99999)}\n").encode()
        out += text[:block]
    i += 1
del out[size:]
open(f"{work}/app-1.0.bin", "wb").write(out)
new = bytearray(out)
for frac in (0.10, 0.50, 0.90):
    at = int(size * frac)
    new[at:at + 4096] = rng.randbytes(4096)
at = int(size * 0.30)
new[at:at] = rng.randbytes(100)
open(f"{work}/app-1.1.bin", "wb").write(new)
PY

cd "$WORK"
"$DROVER" release keygen --root -o root.key >/dev/null
build() { # VERSION PAYLOAD OUT [extra...]
  local v="$1" p="$2" o="$3"; shift 3
  /usr/bin/time -f '%M' -o "$o.rss" "$DROVER" --json release build --name bench-app --version "$v" \
    --device-type bench --payload "app:$p" --key root.key -o "$o" "$@" >"$o.json"
}
log "building the full release 1.0.0"
build 1.0.0 app-1.0.bin v1.0.drover
log "building release 1.1.0 with --delta-from 1.0.0"
build 1.1.0 app-1.1.bin v1.1.drover --delta-from v1.0.drover
log "applying the patch (drover release verify-delta)"
/usr/bin/time -f '%M' -o apply.rss "$DROVER" --json release verify-delta --base v1.0.drover v1.1.drover >apply.json

full=$(stat -c %s app-1.1.bin)
patch=$(python3 -c 'import json,sys; print(json.load(open("v1.1.drover.json"))["manifest"]["payloads"][0]["delta"]["size"])')
make_s=$(python3 -c 'import json; print("%.2f" % json.load(open("v1.1.drover.json"))["delta_secs"])')
apply_s=$(python3 -c 'import json; print("%.2f" % json.load(open("apply.json"))["apply_secs"])')
log "compressing the full payload with zstd -19 for comparison"
if command -v zstd >/dev/null; then
  zfull=$(zstd -q -19 -T1 -c app-1.1.bin | wc -c)
else
  zfull=""
fi

echo
echo "== delta size (payload ${SIZE_MIB} MiB; 3 x 4 KiB overwritten, 100 bytes inserted)"
printf '%-34s %12d bytes\n' "full payload" "$full"
[ -n "$zfull" ] && printf '%-34s %12d bytes  (%.2f%% of the payload)\n' "full payload, zstd -19" "$zfull" \
  "$(echo "scale=6; 100 * $zfull / $full" | bc)"
printf '%-34s %12d bytes  (%.4f%% of the payload' "delta patch (drover, zstd level 9)" "$patch" \
  "$(echo "scale=8; 100 * $patch / $full" | bc)"
[ -n "$zfull" ] && printf ', %.3f%% of zstd -19' "$(echo "scale=8; 100 * $patch / $zfull" | bc)"
echo ")"
printf '%-34s %12s\n' "payload / patch" "$(echo "scale=0; $full / $patch" | bc)x"
echo
echo "== time and memory"
printf '%-34s %8s s   build peak RSS %d MiB (whole command)\n' "make patch (inside build)" "$make_s" "$(( $(cat v1.1.drover.rss) / 1024 ))"
printf '%-34s %8s s   peak RSS %d MiB (whole command)\n' "apply + verify (verify-delta)" "$apply_s" "$(( $(cat apply.rss) / 1024 ))"
printf '%-34s %8s     peak RSS %d MiB\n' "build without --delta-from" "" "$(( $(cat v1.0.drover.rss) / 1024 ))"

if command -v zstd >/dev/null; then
  echo
  echo "== reference: zstd command line tool, --long=27 --patch-from"
  for lvl in 9 19; do
    t0=$(date +%s.%N)
    zstd -q -q -f "-$lvl" -T1 --long=27 --patch-from=app-1.0.bin app-1.1.bin -o zstd.patch
    t1=$(date +%s.%N)
    zstd -q -q -f -d --long=31 --patch-from=app-1.0.bin zstd.patch -o zstd.out
    t2=$(date +%s.%N)
    cmp -s zstd.out app-1.1.bin || { echo "zstd round trip FAILED"; exit 1; }
    printf '%-34s %12d bytes  make %.2f s, apply %.2f s\n' "zstd -$lvl --patch-from" "$(stat -c %s zstd.patch)" \
      "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)"
  done
fi
