"""A real WebSocket peer on both ends of the gateway (tests/gateway.rs), with the
`websockets` library: an echo server as the upstream, and a client that talks to it
through the gateway.

Prints the server's port, reads the gateway's address from stdin, runs the client, and
prints one JSON line of what it saw. Exits non-zero on any failure.
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

SEEN = ("x-forwarded-for", "forwarded", "traceparent", "x-request-id", "host")


async def echo(ws):
    # first, what the upstream saw of the handshake
    h = ws.request.headers
    await ws.send(json.dumps({k: h.get(k) for k in SEEN}))
    async for message in ws:
        await ws.send(message)


async def main():
    async with serve(echo, "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        gateway = (await asyncio.to_thread(sys.stdin.readline)).strip()
        out = {}
        async with connect(f"ws://{gateway}/ws/chat", max_size=None) as ws:
            out["response_headers"] = {
                k: ws.response.headers.get(k)
                for k in ("x-request-id", "x-ratelimit-remaining", "upgrade")
            }
            out["upstream_saw"] = json.loads(await ws.recv())
            await ws.send("hello through the gateway")
            out["text"] = await ws.recv()
            big = bytes(range(256)) * 4096  # 1 MiB, many frames' worth of TCP segments
            await ws.send(big)
            out["binary_echoed"] = (await ws.recv()) == big
            latency = await (await ws.ping())
            out["pong"] = latency >= 0
            await ws.close(code=1000, reason="done")
            out["close_code"] = ws.close_code
        print(json.dumps(out), flush=True)


asyncio.run(asyncio.wait_for(main(), timeout=30))
