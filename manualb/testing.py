"""
Helpers for testing code that runs behind, or in front of, manualb: small
backends that say who they are, and a quick way to build a configuration.
"""

from __future__ import annotations

import os
import sys
from io import BytesIO
from typing import Mapping, Sequence

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.stdio import StandardIO
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from manualb.accesslog import AccessLog
from manualb.config import Config
from manualb.configfile import parseConfig
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


def runBackend(
    name: str, port: int = 0, interface: str = "127.0.0.1", exitOnEOF: bool = False
) -> None:
    """
    Run a L{NamedBackend} in this process until it is killed, after
    printing C{listening on HOST:PORT} (handy with C{port=0}).  This is what
    C{python -m manualb backend NAME} runs: a backend process to stop and
    start under a balancer.

    @param exitOnEOF: Also stop when standard input closes: a parent that
        runs the backend (L{BackendProcess}) takes it along when it goes, even
        when it was killed too hard to stop its children.
    """
    from twisted.internet import reactor

    def listening(port: IListeningPort) -> None:
        sys.stdout.write("listening on %s\n" % (serverAddress(port),))
        sys.stdout.flush()

    def failed(reason) -> None:
        sys.stderr.write("backend %s: %s\n" % (name, reason.getErrorMessage()))
        reactor.stop()

    endpoint = TCP4ServerEndpoint(reactor, port, interface=interface)
    endpoint.listen(Site(NamedBackend(name))).addCallbacks(listening, failed)
    if exitOnEOF:
        StandardIO(_ExitOnEOF(reactor), stdout=os.open(os.devnull, os.O_WRONLY))
    reactor.run()


class _ExitOnEOF(Protocol):
    """
    Stops the reactor when standard input closes.
    """

    def __init__(self, reactor):
        self.reactor = reactor

    def connectionLost(self, reason=None):
        if self.reactor.running:
            self.reactor.stop()


class BackendProcess(ProcessProtocol):
    """
    A L{NamedBackend} in a child process (C{python -m manualb backend}),
    for tests and demos that kill a backend for real and start it again.

    @ivar address: C{host:port} once started.
    """

    def __init__(self, reactor, name: str, port: int = 0):
        self.reactor = reactor
        self.name = name
        self.port = port
        self.address: str | None = None
        self._started: Deferred[str] | None = None
        self._ended: Deferred[None] | None = None
        self._output = b""

    def start(self) -> Deferred[str]:
        """
        Start the process; fires with its address once it listens.  Started
        again after L{kill}, it listens on the same port.
        """
        import manualb

        self._started = Deferred()
        self._ended = Deferred()
        self._output = b""
        if self.address is not None:
            self.port = int(self.address.rsplit(":", 1)[1])
        source = os.path.dirname(os.path.dirname(os.path.abspath(manualb.__file__)))
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [source, environment.get("PYTHONPATH")])
        )
        self.reactor.spawnProcess(
            self,
            sys.executable,
            [
                sys.executable, "-m", "manualb", "backend", self.name,
                "--port", str(self.port), "--exit-on-eof",
            ],
            env=environment,
        )
        return self._started

    def kill(self) -> Deferred[None]:
        """
        Kill the process with SIGKILL, as a crash would; fires once it is gone.
        """
        ended = self._ended
        if self.transport is not None and self.transport.pid is not None:
            self.transport.signalProcess("KILL")
        return ended

    def outReceived(self, data: bytes) -> None:
        self._output += data
        if self._started is not None and b"\n" in self._output:
            line = self._output.split(b"\n", 1)[0].decode("utf-8", "replace")
            started, self._started = self._started, None
            if line.startswith("listening on "):
                self.address = line[len("listening on ") :]
                started.callback(self.address)
            else:
                started.errback(RuntimeError(line))

    def errReceived(self, data: bytes) -> None:
        self._output += data

    def processEnded(self, reason) -> None:
        if self._started is not None:
            started, self._started = self._started, None
            started.errback(RuntimeError(self._output.decode("utf-8", "replace")))
        ended, self._ended = self._ended, None
        if ended is not None:
            ended.callback(None)


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
    gatekeeper: Mapping[str, str] | None = None,
    **upstreamOptions: str,
) -> Config:
    """
    A configuration with one pool of C{servers} behind one route for C{/}.

    @param gatekeeper: Keys of a C{[gatekeeper]} section, such as
        C{{"send_timeout": "5s"}}.
    @param upstreamOptions: More keys of the C{[upstream]} section, such as
        C{read_timeout="2s"}.
    """
    lines = ["[manualb]", "listen ="]
    lines += ["    " + endpoint for endpoint in listen]
    lines += ["access_log = " + accessLog, ""]
    if gatekeeper:
        lines += ["[gatekeeper]"] + ["%s = %s" % item for item in gatekeeper.items()]
        lines += [""]
    lines += ["[upstream %s]" % (upstream,), "servers ="]
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
        self.balancer.start()

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

    def _attempts(self) -> list[int]:
        """
        The indexes in the reactor's log of the connection attempts still
        pending: not accepted, refused or given up.
        """
        return [
            index
            for index, connector in enumerate(self.reactor.connectors)
            if not connector.stoppedConnecting
        ]

    def pendingConnections(self) -> list[tuple[str, int]]:
        """
        The backend addresses the balancer is connecting to, oldest first.
        """
        return [self.reactor.tcpClients[index][:2] for index in self._attempts()]

    def _takeAttempt(self, index: int):
        position = self._attempts()[index]
        self.reactor.connectors[position].stoppedConnecting = True
        return self.reactor.tcpClients[position]

    def acceptConnection(self, index: int = 0) -> MemoryPeer:
        """
        Let a pending backend connection succeed; the returned peer plays
        the backend.
        """
        host, port, factory, timeout, bindAddress = self._takeAttempt(index)
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
        host, port, factory, timeout, bindAddress = self._takeAttempt(index)
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
