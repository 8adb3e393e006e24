"""
Helpers for testing code that runs behind, or in front of, manualb: small
backends that say who they are, and a quick way to build a configuration.
"""

from __future__ import annotations

from io import BytesIO
from typing import Sequence

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from manualb.accesslog import AccessLog
from manualb.config import Config, parseConfig
from manualb.service import LoadBalancer


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


class MemoryPeer:
    """
    One end of an in-memory connection to the balancer: a client, or a
    backend the balancer connected to.

    @ivar transport: What the balancer writes to this peer lands here.
    @ivar protocol: The balancer's protocol for this connection.
    """

    def __init__(self, protocol, transport: StringTransportWithDisconnection):
        self.protocol = protocol
        self.transport = transport

    def send(self, data: bytes) -> None:
        """
        Send C{data} to the balancer.
        """
        self.protocol.dataReceived(data)

    def received(self) -> bytes:
        """
        Everything the balancer sent since the last call.
        """
        data = self.transport.value()
        self.transport.clear()
        return data

    @property
    def connected(self) -> bool:
        """
        Whether the balancer keeps this connection open.
        """
        return self.transport.connected and not self.transport.disconnecting

    def close(self) -> None:
        """
        Close the connection cleanly from this side.
        """
        self.transport.loseConnection()

    def reset(self) -> None:
        """
        Drop the connection abruptly from this side.
        """
        if self.transport.connected:
            self.transport.connected = False
            self.protocol.connectionLost(Failure(ConnectionLost("reset by peer")))


class MemoryBalancer:
    """
    A load balancer driven entirely in memory, for unit tests: clients and
    backends are L{MemoryPeer}s, time moves only when C{reactor.advance} is
    called, and the access log is kept in C{accessLog}.
    """

    def __init__(self, config: Config):
        self.reactor = MemoryReactorClock()
        self.accessLog = BytesIO()
        self.balancer = LoadBalancer(
            config, self.reactor, AccessLog(self.accessLog, clock=self.reactor.seconds)
        )

    def client(self, host: str = "127.0.0.1", port: int = 50000) -> MemoryPeer:
        """
        Connect a new client to the balancer.
        """
        address = IPv4Address("TCP", host, port)
        protocol = self.balancer.site.buildProtocol(address)
        transport = StringTransportWithDisconnection(peerAddress=address)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return MemoryPeer(protocol, transport)

    def pendingConnections(self) -> list[tuple[str, int]]:
        """
        The backend addresses the balancer is connecting to, oldest first.
        """
        return [(host, port) for host, port, *rest in self.reactor.tcpClients]

    def acceptConnection(self, index: int = 0) -> MemoryPeer:
        """
        Let a pending backend connection succeed; the returned peer plays
        the backend.
        """
        host, port, factory, timeout, bindAddress = self.reactor.tcpClients.pop(index)
        address = IPv4Address("TCP", host, port)
        protocol = factory.buildProtocol(address)
        transport = StringTransportWithDisconnection(peerAddress=address)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return MemoryPeer(protocol, transport)

    def refuseConnection(self, index: int = 0) -> None:
        """
        Let a pending backend connection fail as refused.
        """
        host, port, factory, timeout, bindAddress = self.reactor.tcpClients.pop(index)
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
