"""
The layer-4 (TCP) proxy, C{[stream NAME]}: each connection it accepts is
joined to a server's by a L{Tunnel} (L{manualb.tunnel}).

A L{StreamProxyFactory} is a Twisted server factory: listen with it on any
stream endpoint.  Each client connection goes to a server of an upstream
pool, chosen by the pool's balancer from a L{RequestView} of the connection
(those that key on the client address work as for HTTP; those that key on
headers, cookies or the URI see none), with failover to the next server
when a connection cannot be made (within the pool's C{tries} and
C{retry_timeout}, the same leases as the HTTP exchange's), and optionally a
PROXY protocol header first so that the server knows the client.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTCP
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from manualb.config import StreamConfig
from manualb.handoff import (
    OneConnection,
    UpstreamError,
    UpstreamLocalError,
    connectWithTimeout,
    endpointForServer,
)
from manualb.proxyprotocol import HEADERS
from manualb.selection import Attempts, Lease, Pool
from manualb.transports import releaseConnector, setNoDelay
from manualb.tunnel import CLOSE_GRACE, Tunnel
from manualb.view import RequestView, clientHost

__all__ = ["Tunnel", "StreamProxyFactory", "CLOSE_GRACE"]

log = Logger()

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
        releaseConnector(self.transport)
        if self.tunnel is not None:
            self.tunnel.serverLost(reason)


class _Session:
    """
    One client connection of a stream: choosing its server, connecting (and
    trying the next server when that fails), then the tunnel.

    @ivar attempts: The connection's attempts on the pool.
    @ivar lease: The lease of the current attempt, or L{None} before the
        first.
    """

    lease: Lease | None = None
    tunnel: Tunnel | None = None
    _connecting: Deferred | None = None
    _done = False

    def __init__(self, factory: "StreamProxyFactory", client: "_ClientSide"):
        self.factory = factory
        self.client = client
        self._early: list[bytes] = []
        transport = client.transport
        self.attempts: Attempts = factory.pool.select(
            RequestView(clientHost(transport.getPeer()), secure=bool(getattr(transport, "TLS", False)))
        )

    @property
    def server(self):
        """
        The server of the current attempt, or L{None}.
        """
        return self.lease.server if self.lease is not None else None

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
        lease = self.attempts.next()
        if lease is None:
            tried = self.attempts.serverNames()
            log.warn(
                "stream {stream}: no server of upstream {pool} available for "
                "{client}{tried}; closing the connection",
                stream=self.factory.config.name,
                pool=pool.name,
                client=self._describeClient(),
                tried=(" (tried " + ", ".join(tried) + ")" if tried else ""),
            )
            self._closeClient()
            return
        self.lease = lease
        reactor = self.factory.reactor
        protocol = _ServerSide()
        connecting = connectWithTimeout(
            reactor,
            endpointForServer(reactor, lease.server.address),
            OneConnection(protocol),
            pool.config.connect_timeout,
        )
        self._connecting = connecting
        connecting.addCallbacks(self._connected, self._failed)

    def _failed(self, reason: Failure) -> None:
        self._connecting = None
        if self._done or reason.check(CancelledError):
            return
        if reason.check(UpstreamLocalError):
            self._localFailure(reason.value)
        elif reason.check(UpstreamError):
            self._connectFailed(str(reason.value))
        else:
            self._connectFailed("connect failed: " + reason.getErrorMessage())

    def _connectFailed(self, why: str) -> None:
        lease = self.lease
        lease.failed(why)
        lease.release()
        log.warn(
            "stream {stream}: server {server} (upstream {pool}) failed: {why}; "
            "trying another server",
            stream=self.factory.config.name,
            server=lease.server.name,
            pool=self.factory.pool.name,
            why=why,
        )
        self._attempt()

    def _localFailure(self, reason: UpstreamLocalError) -> None:
        """
        The proxy could not connect for want of its own resources: the
        server is not to blame and the next one would fail the same way, so
        the client's connection is closed.
        """
        self._done = True
        lease = self.lease
        lease.abandoned()
        lease.release()
        log.error(
            "stream {stream}: {reason} (server {server}, upstream {pool}) "
            "for {client}; closing the connection (the server is not marked "
            "as failed)",
            stream=self.factory.config.name,
            server=lease.server.name,
            pool=self.factory.pool.name,
            client=self._describeClient(),
            reason=str(reason),
        )
        self._closeClient()

    def _closeClient(self) -> None:
        """
        End the session without a tunnel: close the client's connection.
        The session counts until that connection has closed (L{clientLost}).
        """
        self._done = True
        self._early = []
        self.client.transport.loseConnection()

    def _connected(self, protocol: _ServerSide) -> None:
        self._connecting = None
        if self._done:
            protocol.transport.loseConnection()
            return
        self.lease.succeeded()
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
            # Closed for want of a server (L{_closeClient}); now it is.
            self.factory._sessionEnded(self)
            return
        self._done = True
        self._early = []
        if self.lease is not None:
            self.lease.release()
        self.factory._sessionEnded(self)
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()

    def _closed(self, tunnel: Tunnel) -> None:
        self._done = True
        self.lease.release()
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
        against its servers' health; its C{retry_timeout} bounds the
        failover as C{tries} does.
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
        d = self.whenClosed()
        for session in list(self._sessions):
            session.close()
        return d

    def whenClosed(self) -> Deferred[None]:
        """
        @return: Fires once the stream has no connection open: each one
            ends when its client or its server closes it (a graceful stop
            waits for that).
        """
        if not self._sessions:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closing.append(d)
        return d
