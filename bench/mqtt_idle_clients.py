#!/usr/bin/env python3
"""Idle TLS MQTT clients: opens N TLS connections to an MQTT broker, sends a
minimal MQTT 3.1.1 CONNECT (clean session, keepalive 300 s by default),
waits for the CONNACK, then holds every connection idle until --hold-secs
have passed (or SIGTERM/SIGINT), and exits.

Standard library only (asyncio + ssl). Connections come from many
127.0.x.y source addresses (like `drover sim`), so no single source address
runs out of ephemeral ports.

Prints one line `connected N/M in S s` when every connection has its
CONNACK (or when the connect phase gives up), then one JSON object at the
end. Needs one file descriptor per connection: raise `ulimit -n` first.
"""
import argparse
import asyncio
import json
import signal
import ssl
import struct
import sys
import time


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            b |= 0x80
        out.append(b)
        if not n:
            return bytes(out)


def connect_packet(client_id: str, keepalive: int) -> bytes:
    cid = client_id.encode()
    var = b"\x00\x04MQTT" + bytes([4, 0x02]) + struct.pack("!H", keepalive)
    payload = struct.pack("!H", len(cid)) + cid
    body = var + payload
    return b"\x10" + remaining_length(len(body)) + body


def spread_addr(i: int, base: int) -> str:
    n = (i + base) % 50_000
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--cert", help="client certificate (mutual TLS)")
    p.add_argument("--key", help="client key (mutual TLS)")
    p.add_argument("--keepalive", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=128)
    p.add_argument("--hold-secs", type=float, default=120)
    p.add_argument("--connect-timeout-secs", type=float, default=300,
                   help="give up on the connect phase after this long")
    p.add_argument("--spread-base", type=int, default=0,
                   help="offset into the 127.0.x.y source address range")
    p.add_argument("--no-spread", action="store_true")
    a = p.parse_args()
    if not a.host.startswith("127."):
        print("refusing: load must target loopback (127.0.0.0/8)", file=sys.stderr)
        return 2

    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=a.cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if a.cert:
        ctx.load_cert_chain(a.cert, a.key)

    sem = asyncio.Semaphore(a.concurrency)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    stats = {"connected": 0, "failed": 0, "closed_by_broker": 0}
    first_error = []
    all_done = asyncio.Event()
    started = time.monotonic()
    writers = []

    async def one(i: int):
        try:
            async with sem:
                local = None if a.no_spread else (spread_addr(i, a.spread_base), 0)
                r, w = await asyncio.wait_for(
                    asyncio.open_connection(a.host, a.port, ssl=ctx, local_addr=local,
                                            server_hostname=a.host),
                    30)
                w.write(connect_packet(f"bench-{a.spread_base}-{i}", a.keepalive))
                await w.drain()
                ack = await asyncio.wait_for(r.readexactly(4), 30)
                if ack[0] != 0x20 or ack[3] != 0:
                    raise RuntimeError(f"bad CONNACK {ack.hex()}")
            stats["connected"] += 1
            writers.append(w)
        except Exception as e:  # noqa: BLE001 - counted and reported
            stats["failed"] += 1
            if not first_error:
                first_error.append(f"{type(e).__name__}: {e}")
            return
        finally:
            if stats["connected"] + stats["failed"] == a.count:
                all_done.set()
        try:
            await r.read(1)  # idle: returns only when the broker closes
            stats["closed_by_broker"] += 1
        except Exception:
            stats["closed_by_broker"] += 1

    tasks = [asyncio.create_task(one(i)) for i in range(a.count)]
    try:
        await asyncio.wait_for(all_done.wait(), a.connect_timeout_secs)
    except asyncio.TimeoutError:
        pass
    connect_secs = time.monotonic() - started
    print(f"connected {stats['connected']}/{a.count} in {connect_secs:.1f} s"
          f" (failed {stats['failed']})", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), max(0.0, a.hold_secs - connect_secs))
    except asyncio.TimeoutError:
        pass
    for t in tasks:
        t.cancel()
    for w in writers:
        w.transport.abort()
    print(json.dumps({**stats, "count": a.count, "connect_secs": round(connect_secs, 2),
                      "first_error": first_error[0] if first_error else None}), flush=True)
    return 0 if stats["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
