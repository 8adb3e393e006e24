"""
A minimal reverse proxy on aiohttp and uvloop, the kind written in an
afternoon, as a peer in the benchmark: one client session with a
keep-alive connector, round robin over the backends, bodies streamed both
ways.

Usage::

    python aiohttp_proxy.py PORT HOST:PORT HOST:PORT [CERTFILE KEYFILE]
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import sys

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
              "transfer-encoding", "upgrade", "host"}


def endToEnd(headers) -> CIMultiDict:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


async def serve(port: int, backends: list[str], tls: ssl.SSLContext | None) -> None:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=60),
        auto_decompress=False,
    )
    upstreams = itertools.cycle(f"http://{b}" for b in backends)

    async def proxy(request: web.Request) -> web.StreamResponse:
        body = request.content if request.body_exists else None
        async with session.request(
            request.method, next(upstreams) + request.rel_url.raw_path_qs,
            headers=endToEnd(request.headers), data=body, allow_redirects=False,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, headers=endToEnd(upstream.headers))
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(256 * 1024):
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls, backlog=1024).start()
    await asyncio.Event().wait()


def main(argv: list[str]) -> None:
    tls = None
    if len(argv) == 5:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(argv[3], argv[4])
    uvloop.run(serve(int(argv[0]), argv[1:3], tls))


if __name__ == "__main__":
    main(sys.argv[1:])
