"""
Helpers for testing code that runs behind, or in front of, manualb: small
backends that say who they are, and a quick way to build a configuration.
"""

from __future__ import annotations

from typing import Sequence

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import Site

from manualb.config import Config, parseConfig


class NamedBackend(Resource):
    """
    A backend that answers every request with its own name, and remembers
    the requests it saw (method, URI and headers) for tests to inspect.
    """

    isLeaf = True

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.requests: list = []

    def render(self, request):
        self.requests.append(
            (request.method, request.uri, request.requestHeaders.copy())
        )
        body = self.name.encode("utf-8") + b"\n"
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"X-Backend", self.name.encode("utf-8"))
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        return b"" if request.method == b"HEAD" else body


def listenBackend(
    reactor, resource: Resource, interface: str = "127.0.0.1"
) -> Deferred[IListeningPort]:
    """
    Serve C{resource} over HTTP on a free port of C{interface}.
    """
    return TCP4ServerEndpoint(reactor, 0, interface=interface).listen(Site(resource))


def serverAddress(port: IListeningPort) -> str:
    """
    The C{host:port} of a listening port, as a C{servers} line takes it.
    """
    address = port.getHost()
    return "%s:%d" % (address.host, address.port)


def balancerConfig(
    servers: Sequence[str],
    listen: Sequence[str] = ("tcp:0:interface=127.0.0.1",),
    upstream: str = "backends",
    accessLog: str = "off",
    **upstreamOptions: str,
) -> Config:
    """
    A configuration with one pool of C{servers} behind one route for C{/}.

    @param upstreamOptions: More keys of the C{[upstream]} section, such as
        C{read_timeout="2s"}.
    """
    lines = ["[manualb]", "listen ="]
    lines += ["    " + endpoint for endpoint in listen]
    lines += ["access_log = " + accessLog, "", "[upstream %s]" % (upstream,), "servers ="]
    lines += ["    " + server for server in servers]
    lines += ["%s = %s" % item for item in upstreamOptions.items()]
    lines += ["", "[route default]", "path = /", "upstream = " + upstream]
    return parseConfig("\n".join(lines) + "\n", "<test>")
