"""A TLS-terminating reverse proxy in its own process, for the console's proxy tests.

    python tests/console/revproxy.py --upstream http://127.0.0.1:8080 --cert C --key K

Serves HTTPS on a free loopback port (printed as ``READY <port>`` on stdout) and passes
each request to ``--upstream`` over plain HTTP as nginx's usual set-up does:
``X-Forwarded-For`` gets the connecting client's address appended
(``$proxy_add_x_forwarded_for``), ``X-Forwarded-Proto: https`` replaces whatever the
client sent (``proxy_set_header X-Forwarded-Proto $scheme``), the Host is kept; the
upstream's status, headers (Set-Cookie, Strict-Transport-Security...) and body come back
unchanged. Stops on SIGTERM or when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys

import aiohttp
from aiohttp import web

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "content-length", "content-encoding"}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    args = ap.parse_args()
    session = aiohttp.ClientSession(auto_decompress=False)

    async def proxy(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        seen = request.headers.get("X-Forwarded-For")
        client = request.transport.get_extra_info("peername")[0] if request.transport else ""
        headers["X-Forwarded-For"] = f"{seen}, {client}" if seen else client
        headers["X-Forwarded-Proto"] = "https"
        body = await request.read()
        async with session.request(request.method, args.upstream + request.path_qs,
                                   headers=headers, data=body, allow_redirects=False) as up:
            out = web.Response(status=up.status, body=await up.read())
            for k, v in up.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    out.headers.add(k, v)
            return out

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.cert, args.key)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"READY {port}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    done = asyncio.ensure_future(reader.read())
    await asyncio.wait([done, asyncio.ensure_future(stop.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    await runner.cleanup()
    await session.close()


if __name__ == "__main__":
    asyncio.run(main())
