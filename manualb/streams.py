"""
Byte tunnels: two connections joined byte for byte, and the layer-4 (TCP)
proxy, C{[stream NAME]}, built on them.

A L{Tunnel} carries what one side sends to the other, with back-pressure
both ways: when one side's transport cannot take more, reading from the
other side pauses until it can.  Either side closing closes the other, and
so does a silence of C{idleTimeout} either way.  The HTTP proxy uses it for a
WebSocket (or any upgraded) connection after the backend's C{101}; the
L{StreamProxyFactory} for every connection it accepts.

A L{StreamProxyFactory} is a Twisted server factory: listen with it on any
stream endpoint.  Each client connection goes to a server of an upstream
pool, chosen by the pool's balancer (those that key on the client address
work as for HTTP; those that key on headers, cookies or the URI see none),
with failover to the next server when a connection cannot be made, and
optionally a PROXY protocol header first so that the server knows the
client.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import implementer

from manualb.config import StreamConfig
from manualb.syntax import formatDuration
from manualb.handoff import (
    OneConnection,
    describeFailure,
    endpointForServer,
    localConnectProblem,
)
from manualb.proxyprotocol import HEADERS
from manualb.selection import Pool, Server
from manualb.transports import cancelCall, setNoDelay

__all__ = ["Tunnel", "ConnectionRequest", "StreamProxyFactory", "CLOSE_GRACE"]

log = Logger()

#: Seconds the side still open has, once the other closed, to take what was
#: sent to it before it is dropped (at most the tunnel's idle timeout).
CLOSE_GRACE = 30.0


@implementer(IPushProducer)
class _Reading:
    """
    Registered with one side's transport as its producer: when that
    transport cannot take more, reading from the other side pauses.
    """

    def __init__(self, tunnel: "Tunnel", source: ITransport):
        self._tunnel = tunnel
        self._source = source

    def pauseProducing(self) -> None:
        if self._tunnel.open:
            self._source.pauseProducing()

    def resumeProducing(self) -> None:
        if self._tunnel.open:
            self._source.resumeProducing()

    def stopProducing(self) -> None:
        # The transport that had us is gone; its protocol tells the tunnel.
        pass


class Tunnel:
    """
    Two connections, a client and a server, joined byte for byte.

    The protocols of the two connections feed it: L{fromClient} and
    L{fromServer} with what they receive, L{clientLost} and L{serverLost}
    when their connection closes.

    @ivar toServer: Bytes carried from the client to the server.
    @ivar toClient: Bytes carried from the server to the client.
    @ivar open: Whether the tunnel carries data: joined and not yet closing.
    @ivar closeReason: Why the tunnel closed, in words, once it has.
    @ivar closed: Fires with the tunnel once both connections are gone.
    """

    client: ITransport | None = None
    server: ITransport | None = None
    closeReason: str | None = None

    def __init__(
        self,
        reactor: IReactorTime,
        idleTimeout: float,
        onClosed: Callable[["Tunnel"], None] | None = None,
    ):
        """
        @param idleTimeout: Seconds without a byte either way after which
            both connections are closed; 0 for no limit.
        @param onClosed: Called with the tunnel once both connections are
            gone.
        """
        self.reactor = reactor
        self.idleTimeout = idleTimeout
        self.onClosed = onClosed
        self.closed: Deferred[Tunnel] = Deferred()
        self.toServer = 0
        self.toClient = 0
        self.open = False
        self._clientGone = False
        self._serverGone = False
        self._ended = False
        self._last = 0.0
        self._idleTimer: IDelayedCall | None = None
        self._graceTimer: IDelayedCall | None = None

    def join(self, client: ITransport, server: ITransport) -> None:
        """
        Start carrying bytes between C{client} and C{server}.  Neither
        transport may have a producer registered; reading from them is
        left as it is (resume a paused one once joined).
        """
        self.client = client
        self.server = server
        self.open = True
        self._last = self.reactor.seconds()
        client.registerProducer(_Reading(self, server), True)
        server.registerProducer(_Reading(self, client), True)
        if self.idleTimeout:
            self._idleTimer = self.reactor.callLater(self.idleTimeout, self._checkIdle)

    # What the two sides send.

    def fromClient(self, data: bytes) -> None:
        """
        The client sent C{data}: on to the server.
        """
        if self.open and data:
            self.toServer += len(data)
            self._last = self.reactor.seconds()
            self.server.write(data)

    def fromServer(self, data: bytes) -> None:
        """
        The server sent C{data}: on to the client.
        """
        if self.open and data:
            self.toClient += len(data)
            self._last = self.reactor.seconds()
            self.client.write(data)

    # Closing.

    def clientLost(self, reason: Failure | None = None) -> None:
        """
        The client's connection is gone: close the server's.
        """
        self._clientGone = True
        self._shut("client closed the connection")

    def serverLost(self, reason: Failure | None = None) -> None:
        """
        The server's connection is gone: close the client's.
        """
        self._serverGone = True
        self._shut("server closed the connection")

    def close(self, why: str = "closed by the proxy") -> None:
        """
        Close both connections.
        """
        self._shut(why)

    def _shut(self, why: str) -> None:
        if self.open:
            self.open = False
            self.closeReason = why
            self._idleTimer = cancelCall(self._idleTimer)
            # A transport with a producer does not close until the producer
            # is gone, and the other side will not produce again.
            if not self._clientGone:
                self.client.unregisterProducer()
            if not self._serverGone:
                self.server.unregisterProducer()
            if not (self._clientGone and self._serverGone):
                grace = CLOSE_GRACE
                if self.idleTimeout:
                    grace = min(grace, self.idleTimeout)
                self._graceTimer = self.reactor.callLater(grace, self._abort)
            # Either close may call back into this tunnel (serverLost...).
            if not self._clientGone:
                self.client.loseConnection()
            if not self._serverGone:
                self.server.loseConnection()
        if self._clientGone and self._serverGone and not self._ended:
            self._ended = True
            self._graceTimer = cancelCall(self._graceTimer)
            if self.onClosed is not None:
                self.onClosed(self)
            self.closed.callback(self)

    def _abort(self) -> None:
        self._graceTimer = None
        if not self._clientGone:
            self.client.abortConnection()
        if not self._serverGone:
            self.server.abortConnection()

    def _checkIdle(self) -> None:
        self._idleTimer = None
        idle = self.reactor.seconds() - self._last
        if idle < self.idleTimeout:
            self._idleTimer = self.reactor.callLater(
                self.idleTimeout - idle, self._checkIdle
            )
            return
        self._shut("nothing either way for " + formatDuration(self.idleTimeout))


class ConnectionRequest:
    """
    What a balancer sees of a TCP connection in place of an HTTP request:
    the client's address, and no headers, cookies or URI.
    """

    method = b""
    uri = b""
    path = b""
    clientproto = b""

    def __init__(self, clientAddress: IAddress, secure: bool = False):
        self._clientAddress = clientAddress
        self._secure = secure
        self.requestHeaders = Headers()
        # A balancer may set a cookie; nobody will see it.
        self.responseHeaders = Headers()
        self.received_cookies: dict[bytes, bytes] = {}
        self.args: dict[bytes, list[bytes]] = {}

    def getClientAddress(self) -> IAddress:
        return self._clientAddress

    def getHeader(self, name: bytes) -> None:
        return None

    def getCookie(self, name: bytes) -> None:
        return None

    def isSecure(self) -> bool:
        return self._secure


class _ServerSide(Protocol):
    """
    The connection to the chosen server.
    """

    tunnel: Tunnel | None = None

    def connectionMade(self) -> None:
        setNoDelay(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.fromServer(data)

    def connectionLost(self, reason: Failure = None) -> None:
        if self.tunnel is not None:
            self.tunnel.serverLost(reason)


class _Session:
    """
    One client connection of a stream: choosing its server, connecting (and
    trying the next server when that fails), then the tunnel.
    """

    server: Server | None = None
    tunnel: Tunnel | None = None
    _connecting: Deferred | None = None
    _holding = False
    _done = False

    def __init__(self, factory: "StreamProxyFactory", client: "_ClientSide"):
        self.factory = factory
        self.client = client
        self.tried: list[Server] = []
        self._early: list[bytes] = []
        transport = client.transport
        self.request = ConnectionRequest(
            transport.getPeer(), getattr(transport, "TLS", False)
        )

    def _describeClient(self) -> str:
        address = self.client.transport.getPeer()
        host = getattr(address, "host", None)
        if host is None:
            return str(address)
        return "%s:%s" % (host, getattr(address, "port", "-"))

    def start(self) -> None:
        self._attempt()

    def _attempt(self) -> None:
        pool = self.factory.pool
        config = pool.config
        if config.tries and len(self.tried) >= config.tries:
            server = None
        else:
            server = pool.pick(self.request, exclude=self.tried)
        if server is None:
            log.warn(
                "stream {stream}: no server of upstream {pool} available for "
                "{client}{tried}; closing the connection",
                stream=self.factory.config.name,
                pool=pool.name,
                client=self._describeClient(),
                tried=(
                    " (tried " + ", ".join(s.name for s in self.tried) + ")"
                    if self.tried
                    else ""
                ),
            )
            self._done = True
            self.factory._sessionEnded(self)
            self.client.transport.loseConnection()
            return
        self.server = server
        self.tried.append(server)
        server.active += 1
        self._holding = True
        server.health.requestStarted()
        reactor = self.factory.reactor
        timeout = config.connect_timeout
        timedOut: list[bool] = []

        def onTimeout(result, timeout):
            timedOut.append(True)
            return result

        def failed(reason: Failure) -> None:
            if timedOut:
                self._connectFailed(server, "connect timed out after " + formatDuration(timeout))
            elif not self._done:
                shortage = localConnectProblem(reason)
                if shortage is not None:
                    self._localFailure(server, shortage)
                else:
                    self._connectFailed(server, "connect failed: " + describeFailure(reason))

        protocol = _ServerSide()
        connecting = endpointForServer(reactor, server.address).connect(
            OneConnection(protocol)
        )
        self._connecting = connecting
        connecting.addTimeout(timeout, reactor, onTimeoutCancel=onTimeout)
        connecting.addCallbacks(self._connected, failed)

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self.server.active -= 1

    def _connectFailed(self, server: Server, why: str) -> None:
        self._connecting = None
        self._release()
        server.health.requestFailed(why)
        log.warn(
            "stream {stream}: server {server} (upstream {pool}) failed: {why}; "
            "trying another server",
            stream=self.factory.config.name,
            server=server.name,
            pool=self.factory.pool.name,
            why=why,
        )
        self._attempt()

    def _localFailure(self, server: Server, shortage: str) -> None:
        """
        The proxy could not connect for want of its own resources: the
        server is not to blame and the next one would fail the same way, so
        the client's connection is closed.
        """
        self._connecting = None
        self._done = True
        self._release()
        server.health.requestAbandoned()
        log.error(
            "stream {stream}: cannot connect to server {server} (upstream {pool}) "
            "for {client}: {shortage}; closing the connection (the server is "
            "not marked as failed)",
            stream=self.factory.config.name,
            server=server.name,
            pool=self.factory.pool.name,
            client=self._describeClient(),
            shortage=shortage,
        )
        self.factory._sessionEnded(self)
        self.client.transport.loseConnection()

    def _connected(self, protocol: _ServerSide) -> None:
        self._connecting = None
        if self._done:
            protocol.transport.loseConnection()
            return
        self.server.health.requestSucceeded()
        client = self.client.transport
        server = protocol.transport
        makeHeader = HEADERS.get(self.factory.config.proxy_protocol or "")
        if makeHeader is not None:
            server.write(makeHeader(client.getPeer(), client.getHost()))
        tunnel = Tunnel(self.factory.reactor, self.factory.config.idle_timeout, self._closed)
        self.tunnel = protocol.tunnel = tunnel
        tunnel.join(client, server)
        early, self._early = self._early, []
        for data in early:
            tunnel.fromClient(data)
        if tunnel.open:
            client.resumeProducing()

    def fromClient(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.fromClient(data)
        elif not self._done:
            # Reading is paused while connecting; a transport may still
            # deliver what it had already read.
            self._early.append(data)

    def clientLost(self, reason: Failure) -> None:
        if self.tunnel is not None:
            self.tunnel.clientLost(reason)
            return
        if self._done:
            return
        self._done = True
        self._early = []
        if self._holding:
            self.server.health.requestAbandoned()
            self._release()
        self.factory._sessionEnded(self)
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()

    def _closed(self, tunnel: Tunnel) -> None:
        self._done = True
        self._release()
        self.factory._sessionEnded(self)
        log.debug(
            "stream {stream}: {client} <-> {server} closed ({why}); "
            "{up} bytes up, {down} bytes down",
            stream=self.factory.config.name,
            client=self._describeClient(),
            server=self.server.name,
            why=tunnel.closeReason,
            up=tunnel.toServer,
            down=tunnel.toClient,
        )

    def close(self) -> None:
        """
        Close the client's connection, and the server's if there is one.
        """
        if self.tunnel is not None:
            self.tunnel.close("the proxy is shutting down")
        else:
            self.client.transport.loseConnection()


class _ClientSide(Protocol):
    """
    A client's connection to the stream: not read from until the server is
    connected.
    """

    factory: "StreamProxyFactory"
    session: _Session | None = None

    def connectionMade(self) -> None:
        setNoDelay(self.transport)
        self.transport.pauseProducing()
        self.session = _Session(self.factory, self)
        self.factory._sessions.add(self.session)
        self.session.start()

    def dataReceived(self, data: bytes) -> None:
        if self.session is not None:
            self.session.fromClient(data)

    def connectionLost(self, reason: Failure = None) -> None:
        if self.session is not None:
            self.session.clientLost(reason)


class StreamProxyFactory(ServerFactory):
    """
    The layer-4 proxy of one C{[stream NAME]}: each connection accepted is
    joined to a server of C{pool}.

    @param config: The stream's section: its C{proxy_protocol} and
        C{idle_timeout}.
    @param pool: The upstream pool whose servers take the connections; its
        C{connect_timeout} and C{tries} apply, and connection failures count
        against its servers' health.
    @param reactor: Connects to the servers and keeps the time.
    """

    protocol = _ClientSide
    noisy = False

    def __init__(self, config: StreamConfig, pool: Pool, reactor: IReactorTCP):
        self.config = config
        self.pool = pool
        self.reactor = reactor
        if config.proxy_protocol not in (None, *HEADERS):
            raise ValueError("unknown proxy_protocol %r" % (config.proxy_protocol,))
        self._sessions: set[_Session] = set()
        self._closing: list[Deferred[None]] = []

    @property
    def connections(self) -> int:
        """
        How many client connections the stream has open now.
        """
        return len(self._sessions)

    def _sessionEnded(self, session: _Session) -> None:
        self._sessions.discard(session)
        if not self._sessions:
            closing, self._closing = self._closing, []
            for d in closing:
                d.callback(None)

    def closeAll(self) -> Deferred[None]:
        """
        Close every connection of the stream: it is shutting down.

        @return: Fires once every client and server connection is closed.
        """
        if not self._sessions:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closing.append(d)
        for session in list(self._sessions):
            session.close()
        return d
