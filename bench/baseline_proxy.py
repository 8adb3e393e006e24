"""
Baseline for the manualb benchmark: C{twisted.web.proxy} in front of two
backends.

A L{twisted.web.server.Site} whose root resource hands each request, in turn,
to one of two L{twisted.web.proxy.ReverseProxyResource}s (one per backend),
so that, like manualb, it balances round robin over the same two servers.
ReverseProxyResource opens a new HTTP/1.0 connection to the backend for every
request; that is what twisted.web.proxy does, and part of what is compared.

Usage::

    python bench/baseline_proxy.py PORT HOST:PORT HOST:PORT
"""

from __future__ import annotations

import itertools
import sys

from twisted.internet import reactor
from twisted.web.proxy import ReverseProxyResource
from twisted.web.resource import Resource
from twisted.web.server import Site


class Alternating(Resource):
    """
    Root resource that passes each request to the next of its proxies.
    """

    def __init__(self, proxies: list[ReverseProxyResource]) -> None:
        super().__init__()
        self._next = itertools.cycle(proxies)

    def getChild(self, path: bytes, request):
        """
        Resolve C{path} under the next proxy (it builds a proxy for the
        request's path, "/" for the root).
        """
        return next(self._next).getChild(path, request)


def parseAddress(text: str) -> tuple[str, int]:
    """
    Split C{"host:port"}.
    """
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str]) -> None:
    """
    Listen on 127.0.0.1:C{argv[0]} and proxy to the backends C{argv[1:]}.
    """
    if len(argv) < 2:
        raise SystemExit("usage: baseline_proxy.py PORT HOST:PORT [HOST:PORT ...]")
    port = int(argv[0])
    proxies = [ReverseProxyResource(*parseAddress(a), b"") for a in argv[1:]]
    site = Site(Alternating(proxies))
    site.log = lambda request: None  # no access log, like the others
    reactor.listenTCP(port, site, interface="127.0.0.1", backlog=1024)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
