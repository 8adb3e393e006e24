"""
Stage 6, the handoff: the request goes on to the chosen server over a pooled,
kept-alive HTTP/1.1 connection, and the response comes back as a stream.

L{ConnectionPool} keeps the idle connections to one server.  Each
L{UpstreamConnection} carries one exchange at a time: it writes the request
head and body and hands the parsed response, piece by piece, to an
L{IResponseReceiver}.  Nothing here buffers a whole body: data is passed on as
it arrives, and each direction can be paused by the other.

A request sent with C{upgrade=True} may be answered with C{101 Switching
Protocols}: the connection then becomes a tunnel, everything the backend
sends after the head goes to the receiver as it is, and the connection is
never reused.
"""

from __future__ import annotations

import enum
import errno
import ipaddress
import os

from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, succeed
from OpenSSL import SSL
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    wrapClientTLS,
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IDelayedCall,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from manualb.config import ServerAddress, UpstreamConfig
from manualb.syntax import formatDuration
from manualb.interfaces import IResponseReceiver  # also imported from here
from manualb.responseparser import IResponseEvents, ResponseParseError, ResponseParser
from manualb.transports import Deadline, cancelCall, releaseConnector, sendNow, setNoDelay


class UpstreamError(Exception):
    """
    The backend could not give a complete response.

    @ivar status: The status the client gets when nothing of the response
        has reached it yet.
    """

    status = 502


class UpstreamConnectFailed(UpstreamError):
    """
    No connection to the backend could be made.
    """


class UpstreamLocalError(UpstreamError):
    """
    The proxy itself could not make a connection to the backend: it ran out
    of file descriptors, socket buffers, memory or local ports.  This is not
    the server's failure: it does not count against the server's health, and
    the request does not go to another server, which would fail the same
    way; the client gets a 503.
    """

    status = 503


class UpstreamTimeout(UpstreamError):
    """
    The backend took longer than a configured timeout.
    """

    status = 504


class UpstreamBadResponse(UpstreamError):
    """
    The backend sent something that is not a valid HTTP/1.1 response.
    """


class UpstreamClosed(UpstreamError):
    """
    The backend closed the connection before its response was complete.

    @ivar beforeResponse: C{True} when not one byte of a response had come.
    """

    def __init__(self, message: str, beforeResponse: bool):
        super().__init__(message)
        self.beforeResponse = beforeResponse


def endpointForServer(
    reactor: IReactorTCP, address: ServerAddress
) -> IStreamClientEndpoint:
    """
    A client endpoint for a configured server: a plain TCP endpoint for an IP
    address, a L{HostnameEndpoint} (resolving on every new connection) for a
    name.
    """
    try:
        ip = ipaddress.ip_address(address.host)
    except ValueError:
        return HostnameEndpoint(reactor, address.host.encode("idna"), address.port)
    if ip.version == 6:
        return TCP6ClientEndpoint(reactor, address.host, address.port)
    return TCP4ClientEndpoint(reactor, address.host, address.port)


def backendEndpoint(
    reactor: IReactorTCP, address: ServerAddress, config: UpstreamConfig
) -> IStreamClientEndpoint:
    """
    The endpoint HTTP exchanges with a server go over: TCP, wrapped in TLS
    for an C{https://} server.
    """
    endpoint = endpointForServer(reactor, address)
    if address.scheme == "https":
        endpoint = wrapClientTLS(clientTLSOptions(address, config), endpoint)
    return endpoint


def clientTLSOptions(
    address: ServerAddress, config: UpstreamConfig
) -> IOpenSSLClientConnectionCreator:
    """
    TLS towards an C{https://} server: SNI with C{tls_name} (the server's
    host by default), and, unless C{tls_verify = off}, its certificate
    verified for that name (by service_identity) against C{tls_ca} or the
    system's certificate authorities.
    """
    name = config.tls_name or address.host
    if not config.tls_verify:
        return _UnverifiedClientTLS(name)
    if config.tls_ca is None:
        trustRoot = platformTrust()
    else:
        with open(config.tls_ca, "rb") as caFile:
            pem = caFile.read()
        trustRoot = trustRootFromCertificates(
            [Certificate.loadPEM(block) for block in _pemCertificates(pem)]
        )
    return optionsForClientTLS(name, trustRoot=trustRoot)


def _pemCertificates(pem: bytes) -> list[bytes]:
    """
    The PEM blocks of the certificates in a bundle.
    """
    end = b"-----END CERTIFICATE-----"
    return [block + end for block in pem.split(end) if b"-----BEGIN CERTIFICATE-----" in block]


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientTLS:
    """
    TLS that sends SNI but trusts any certificate: C{tls_verify = off}.
    """

    def __init__(self, name: str):
        self._name = name.encode("idna")
        self._context = CertificateOptions(
            raiseMinimumTo=TLSVersion.TLSv1_2
        ).getContext()

    def clientConnectionForTLS(self, tlsProtocol):
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if not isIPAddress(self._name.decode("ascii")) and not isIPv6Address(
            self._name.decode("ascii")
        ):
            connection.set_tlsext_host_name(self._name)
        return connection


@implementer(IPushProducer)
class _BodyThrottle:
    """
    Registered with the backend transport while a request body is written to
    it: passes the transport's pause and resume on to the body's source, and
    fails the exchange when the backend takes none of the body for
    C{send_timeout}, as nginx's C{proxy_send_timeout} does.
    """

    def __init__(self, connection: "UpstreamConnection", source: IPushProducer):
        self._connection = connection
        self._source = source
        self._timer: IDelayedCall | None = None

    def pauseProducing(self) -> None:
        self._source.pauseProducing()
        connection = self._connection
        if self._timer is None:
            self._timer = connection.reactor.callLater(
                connection.config.send_timeout, self._timedOut
            )

    def resumeProducing(self) -> None:
        self.cancelTimer()
        self._source.resumeProducing()

    def stopProducing(self) -> None:
        self.cancelTimer()
        self._source.stopProducing()

    def cancelTimer(self) -> None:
        """
        Stop counting C{send_timeout}: the body is done, or the exchange.
        """
        self._timer = cancelCall(self._timer)

    def _timedOut(self) -> None:
        self._timer = None
        self._connection.fail(
            UpstreamTimeout(
                "backend took no request data for "
                + formatDuration(self._connection.config.send_timeout)
            )
        )


class ConnectionState(enum.Enum):
    """
    Where an L{UpstreamConnection} is in its life; L{TRANSITIONS} lists the
    moves it can make.
    """

    # Compared often: by identity, not by name as Enum does by default.
    __hash__ = object.__hash__

    #: Connected, no exchange: new, or waiting in the pool.
    IDLE = "idle"
    #: The request head is written and its body is going out; nothing of
    #: the response yet.
    SENDING = "sending"
    #: The request is written whole; the response head has not come.
    AWAITING = "awaiting response"
    #: The response head came while the request body was still going out
    #: (a backend that refuses a body answers early); the body goes on, but
    #: when the response ends first the connection is spent.
    ANSWERED_EARLY = "answered early"
    #: The request is written whole and the response body is coming.
    RECEIVING = "receiving"
    #: The backend switched protocols (C{101}): raw bytes both ways until
    #: the connection closes.
    TUNNEL = "tunnel"
    #: The exchange ended and the connection may not carry another: it is
    #: closed gracefully (L{UpstreamConnection.abort} may still cut it).
    CLOSING = "closing"
    #: Aborted or lost: it never carries anything again.
    CLOSED = "closed"


_IDLE = ConnectionState.IDLE
_SENDING = ConnectionState.SENDING
_AWAITING = ConnectionState.AWAITING
_EARLY = ConnectionState.ANSWERED_EARLY
_RECEIVING = ConnectionState.RECEIVING
_TUNNEL = ConnectionState.TUNNEL
_CLOSING = ConnectionState.CLOSING
_CLOSED = ConnectionState.CLOSED

#: The moves an L{UpstreamConnection} makes, and what makes each one:
#:  - idle -> sending: L{UpstreamConnection.sendRequest};
#:  - sending -> awaiting: L{UpstreamConnection.finishBody};
#:  - sending, awaiting -> tunnel: a C{101} to an upgrade request;
#:  - sending -> answered early, awaiting -> receiving: the response head;
#:  - answered early -> receiving: L{UpstreamConnection.finishBody};
#:  - receiving -> idle: the response ended and the connection may be
#:    reused: it goes back to its pool;
#:  - receiving -> closing: the response ended and the connection may not be
#:    reused (C{Connection: close}, C{keepalive_requests} reached, bytes
#:    past the response...);
#:  - any -> closed: L{UpstreamConnection.abort} (a failure, a timeout, the
#:    client gone, a response that ended before its request), or the
#:    connection lost.
#: The code moves by plain assignment, on the request path; the tests check
#: every move it makes against this table.
TRANSITIONS: dict[ConnectionState, frozenset[ConnectionState]] = {
    _IDLE: frozenset([_SENDING, _CLOSED]),
    _SENDING: frozenset([_AWAITING, _EARLY, _TUNNEL, _CLOSED]),
    _AWAITING: frozenset([_RECEIVING, _TUNNEL, _CLOSED]),
    _EARLY: frozenset([_RECEIVING, _CLOSED]),
    _RECEIVING: frozenset([_IDLE, _CLOSING, _CLOSED]),
    _TUNNEL: frozenset([_CLOSED]),
    _CLOSING: frozenset([_CLOSED]),
    _CLOSED: frozenset(),
}

#: The states in which an exchange is under way and the backend's silence
#: counts against C{read_timeout}.
_EXCHANGING = frozenset([_SENDING, _AWAITING, _EARLY, _RECEIVING])


@implementer(IPushProducer, IResponseEvents)
class UpstreamConnection(Protocol):
    """
    One persistent HTTP/1.1 connection to a backend server: it writes the
    request, leaves the response's bytes to a L{ResponseParser}, passes what
    that finds to the exchange's L{IResponseReceiver}, keeps the timers and
    the flow control, and goes back to its pool when it may be reused.  Its
    L{state} follows L{TRANSITIONS}.

    It is also the producer of the response body: pausing it stops reading
    from the backend, which is how a slow client slows the backend down.

    @ivar reused: C{True} once the connection has carried an exchange, so that
        a failure before any response byte may be the backend closing an
        idle connection rather than a real error.
    """

    _state: ConnectionState = _IDLE
    _receiver: IResponseReceiver | None = None
    _throttle: _BodyThrottle | None = None
    _paused = False
    _chunkedBody = False
    _closeAfter = False
    #: Who may take the rest of the response body when its length is known,
    #: to move it from socket to socket (L{manualb.web.splicing}): set by the
    #: receiver for one response, called with the connection and the bytes
    #: left after each read; it returns C{True} once it took them, or never
    #: will.  What it took ends with L{bodyPassed}.
    bodyTaker = None
    #: The splice moving the body now, cancelled if the connection ends.
    splice = None

    def __init__(self, pool: "ConnectionPool"):
        self.pool = pool
        self.reactor = pool.reactor
        self.config = pool.config
        self.reused = False
        self.exchanges = 0
        self.idleTimeout = Deadline(self.reactor, self._idleTimedOut)
        self._readTimeout = Deadline(self.reactor, self._readTimedOut)
        self._parser = ResponseParser(self)

    @property
    def state(self) -> ConnectionState:
        """
        Where the connection is in its life.
        """
        return self._state

    def connectionMade(self) -> None:
        setNoDelay(self.transport)

    # Sending.

    def sendRequest(
        self,
        head: bytes,
        method: bytes,
        receiver: IResponseReceiver,
        chunked: bool,
        reuse: bool = True,
        upgrade: bool = False,
        config: UpstreamConfig | None = None,
    ) -> None:
        """
        Start an exchange: write the request line and headers.  The body, if
        any, follows through L{writeBody} and L{finishBody}.

        @param chunked: The body will be sent with chunked framing.
        @param reuse: Whether the connection may carry another exchange
            after this one.
        @param upgrade: The request asks for a protocol upgrade: a C{101}
            answer turns the connection into a tunnel (see L{tunnelling}).
            Whatever the answer, the connection is not reused.
        @param config: The settings of this exchange (a route's timeouts in
            place of the upstream's); the pool's when L{None}.
        """
        if config is not None:
            self.config = config
        elif self.pool is not None:
            self.config = self.pool.config
        if self._state is not _CLOSED:
            self._state = _SENDING
        # (A connection aborted while idle, whose loss is yet to come, fails
        # the exchange with it, as a kept-alive connection the backend
        # closed.)
        self.exchanges += 1
        self._receiver = receiver
        self._chunkedBody = chunked
        self._closeAfter = (
            upgrade or not reuse or self.exchanges >= self.config.keepalive_requests
        )
        self._parser.expect(method, upgrade)
        sendNow(self.transport, head)

    def attachBody(self, source: IPushProducer) -> None:
        """
        Let the backend's flow control pause and resume the body's source.
        """
        self._throttle = _BodyThrottle(self, source)
        self.transport.registerProducer(self._throttle, True)

    def writeBody(self, data: bytes) -> None:
        """
        Send a piece of the request body.
        """
        if not data or (self._state is not _SENDING and self._state is not _EARLY):
            return
        if self._chunkedBody:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        sendNow(self.transport, data)

    def finishBody(self) -> None:
        """
        The request body is complete; from now on the backend's silence counts
        against C{read_timeout}.
        """
        state = self._state
        if state is _SENDING:
            self._state = _AWAITING
        elif state is _EARLY:
            self._state = _RECEIVING
        else:
            return
        self._detachBody()
        if self._chunkedBody:
            sendNow(self.transport, b"0\r\n\r\n")
        self._armReadTimer()

    @property
    def tunnelling(self) -> bool:
        """
        Whether the backend switched protocols: the connection is now a raw
        byte tunnel, whose bytes from the backend go to the receiver's
        C{responseData} and whose close to C{responseDone} (or
        C{responseFailed}); what is written to its transport goes to the
        backend as it is (L{writeBody} no longer does).
        """
        return self._state is _TUNNEL

    def _detachBody(self) -> None:
        if self._throttle is not None:
            self._throttle.cancelTimer()
            self._throttle = None
            if self._state is not _CLOSED:
                self.transport.unregisterProducer()

    # Flow control of the response.

    def pauseProducing(self) -> None:
        self._paused = True
        self._cancelReadTimer()
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._state in _EXCHANGING:
            self._armReadTimer()
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.abort()

    # Timers.

    def _armReadTimer(self) -> None:
        if not self._paused:
            self._readTimeout.set(self.config.read_timeout)

    def _cancelReadTimer(self) -> None:
        self._readTimeout.clear()

    def _stopTimers(self) -> None:
        self._readTimeout.stop()
        self.idleTimeout.stop()

    def _idleTimedOut(self) -> None:
        # Idle in the pool for keepalive_timeout.
        self.transport.loseConnection()

    def _readTimedOut(self) -> None:
        self.fail(
            UpstreamTimeout(
                "backend sent nothing for " + formatDuration(self.config.read_timeout)
            )
        )

    # Receiving: the parser's events.

    def dataReceived(self, data: bytes) -> None:
        state = self._state
        if state is _TUNNEL:
            if self._receiver is not None:
                self._receiver.responseData(data)
            return
        if state not in _EXCHANGING:
            # A backend may not speak unasked; whatever it is, the
            # connection can no longer be trusted.
            if data:
                self.abort()
            return
        try:
            self._parser.feed(data)
        except ResponseParseError as e:
            self.fail(UpstreamBadResponse(str(e)))
            return
        if self._state in _EXCHANGING:
            # More is awaited (a small response usually ends in one read).
            self._armReadTimer()
        taker = self.bodyTaker
        if taker is not None and self._state is _RECEIVING:
            left = self._parser.lengthLeft
            if not left or taker(self, left):
                self.bodyTaker = None
        if self._state is _TUNNEL and self._parser.trailing:
            # The first bytes of the protocol the backend switched to.
            rest, self._parser.trailing = self._parser.trailing, b""
            self.dataReceived(rest)

    def headReceived(
        self, code: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        if code == 101:
            # From here on the backend speaks the protocol it switched to:
            # its bytes go on as they are, for as long as the connection
            # lasts, with the tunnel's own idle timeout instead of ours.
            self._state = _TUNNEL
            self._cancelReadTimer()
            self._detachBody()
        elif self._state is _AWAITING:
            self._state = _RECEIVING
        else:
            self._state = _EARLY
        self._receiver.responseStarted(code, reason, headers)

    def bodyReceived(self, data: bytes) -> None:
        self._receiver.responseData(data)

    def bodyPassed(self, size: int) -> None:
        """
        The last C{size} bytes of the body went to the client without
        passing through here (see L{bodyTaker}): the response is complete.
        """
        self._parser.bodyPassed(size)

    def messageEnded(self, reusable: bool) -> None:
        receiver = self._receiver
        self._receiver = None
        self.bodyTaker = None
        self._cancelReadTimer()
        # Only pauseProducing pauses the transport's reading.
        paused, self._paused = self._paused, False
        self.reused = True
        state = self._state
        if state is _RECEIVING:
            if reusable and not self._closeAfter and self.pool is not None:
                self._state = _IDLE
                if paused:
                    self.transport.resumeProducing()
                self.pool.release(self)
            else:
                self._state = _CLOSING
                self.transport.loseConnection()
        elif state is _EARLY:
            # The backend answered before it had the whole request body; the
            # rest of the body will not follow, so the connection is spent.
            self.abort()
        # (Closed: the close of the connection ended the body.)
        receiver.responseDone()

    # Ending.

    def fail(self, reason: UpstreamError) -> None:
        """
        Give up the current exchange: tell the receiver and drop the
        connection, which cannot be reused mid-exchange.
        """
        receiver = self._receiver
        self._receiver = None
        self.abort()
        if receiver is not None:
            receiver.responseFailed(reason)

    def abort(self) -> None:
        """
        Drop the connection at once, with whatever was in flight.  A tunnel's
        receiver still hears of the close (L{ConnectionPool.closeAll} at
        shutdown must end the tunnel's client side too).
        """
        if self.splice is not None:
            self.splice.cancel()
        if self._state is not _TUNNEL:
            self._receiver = None
        self._stopTimers()
        self._parser.stop()
        if self._state is not _CLOSED:
            # The body's producer goes first: the transport would otherwise
            # stop it while closing, from inside the reactor.
            self._detachBody()
            self._state = _CLOSED
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:
        try:
            self._lost(reason)
        finally:
            # The parser calls methods of this connection: parted, neither
            # waits for the cycle collector.
            self._parser.detach()
            releaseConnector(self.transport)

    def _lost(self, reason: Failure | None) -> None:
        if self.splice is not None:
            self.splice.cancel()
        state = self._state
        if state is not _CLOSED:
            self._state = _CLOSED
        self._stopTimers()
        self._detachBody()
        if self.pool is not None:
            self.pool.forget(self)
        receiver = self._receiver
        if receiver is None:
            return
        clean = reason is None or reason.check(error.ConnectionDone) is not None
        if state is _TUNNEL:
            self._receiver = None
            if clean:
                receiver.responseDone()
            else:
                receiver.responseFailed(
                    UpstreamClosed(
                        "backend connection lost: " + describeFailure(reason), False
                    )
                )
            return
        if clean and self._parser.feedEOF():
            return
        self._receiver = None
        beforeResponse = not self._parser.started
        self._parser.stop()
        receiver.responseFailed(
            UpstreamClosed(
                "backend closed the connection "
                + ("before sending a response" if beforeResponse else "mid-response"),
                beforeResponse,
            )
        )


class OneConnection(Factory):
    """
    Hands an endpoint the protocol of one new connection, quietly: a busy
    balancer makes many.
    """

    noisy = False

    def __init__(self, protocol: Protocol):
        self.protocol = protocol

    def buildProtocol(self, addr):
        # Handed over, not kept: the connection's transport leads back
        # here, and would otherwise keep its protocol in a cycle.
        protocol, self.protocol = self.protocol, None
        return protocol


class ConnectionPool:
    """
    The connections to one backend server: idle ones are kept for reuse, up
    to the upstream's C{keepalive} count, each for C{keepalive_timeout}.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        address: ServerAddress,
        config: UpstreamConfig,
        endpoint: IStreamClientEndpoint | None = None,
    ):
        self.reactor = reactor
        self.address = address
        self.config = config
        self.endpoint = endpoint if endpoint is not None else backendEndpoint(
            reactor, address, config
        )
        self._idle: list[UpstreamConnection] = []
        self._open: set[UpstreamConnection] = set()
        # The connects in flight, which closeAll cancels and waits for.
        self._connecting: set[Deferred[UpstreamConnection]] = set()
        self._closing: list[Deferred[None]] = []
        # Who waits for drain; once set, no connection is kept idle.
        self._draining: list[Deferred[None]] | None = None
        self._closeWaiters: dict[UpstreamConnection, list[Deferred[None]]] = {}
        self._keepIdle = True

    @property
    def idleCount(self) -> int:
        """
        How many connections wait in the pool for their next exchange.
        """
        return len(self._idle)

    def acquire(self, config: UpstreamConfig | None = None) -> Deferred[UpstreamConnection]:
        """
        A connection ready for an exchange: the most recently used idle one,
        or a new one.  Fails with L{UpstreamConnectFailed} or
        L{UpstreamTimeout}.

        @param config: Whose C{connect_timeout} bounds a new connection (a
            route's); the pool's when L{None}.
        """
        connection = self.takeIdle()
        if connection is not None:
            return succeed(connection)
        return self.connect(config)

    def takeIdle(self) -> UpstreamConnection | None:
        """
        The most recently used idle connection, taken out of the idle ones,
        or L{None} when there is none: for a caller that goes on at once
        with it, without the L{Deferred} of L{acquire}.
        """
        if self._idle:
            connection = self._idle.pop()
            connection.idleTimeout.clear()
            return connection
        return None

    def connect(self, config: UpstreamConfig | None = None) -> Deferred[UpstreamConnection]:
        """
        A new connection, bounded by C{connect_timeout} of C{config}, or of
        the pool's settings when L{None}.
        """
        d = connectWithTimeout(
            self.reactor,
            self.endpoint,
            OneConnection(UpstreamConnection(self)),
            (self.config if config is None else config).connect_timeout,
            "connect to backend",
        )
        self._connecting.add(d)
        d.addBoth(self._connectEnded, d)
        d.addCallback(self._opened)
        return d

    def _connectEnded(self, result, connecting: Deferred) -> object:
        self._connecting.discard(connecting)
        if isinstance(result, Failure):
            self._checkClosed()
        return result

    def _opened(self, connection: UpstreamConnection) -> UpstreamConnection:
        self._open.add(connection)
        if self._closing:
            # Made while the pool closes (a connect that began after
            # closeAll): it goes the way of the others.
            connection.abort()
            raise CancelledError()
        return connection

    def keepIdle(self, keep: bool) -> None:
        """
        Keep idle connections for reuse (C{True}, as a new pool does), or
        not: the idle ones close now, and busy ones once their exchange is
        done, for a server that an operator set down or draining, which no
        new request reaches.
        """
        self._keepIdle = keep
        if not keep:
            for connection in list(self._idle):
                connection.transport.loseConnection()

    def release(self, connection: UpstreamConnection) -> None:
        """
        Take back a connection whose exchange is complete.
        """
        if (
            self._draining is not None
            or not self._keepIdle
            or len(self._idle) >= self.config.keepalive
        ):
            connection.transport.loseConnection()
            return
        connection.idleTimeout.set(self.config.keepalive_timeout)
        self._idle.append(connection)

    def forget(self, connection: UpstreamConnection) -> None:
        """
        A connection has closed: it is no longer in the pool.
        """
        self._open.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)
        connection.idleTimeout.stop()
        if self._closeWaiters:
            for d in self._closeWaiters.pop(connection, ()):
                d.callback(None)
        self._checkClosed()

    def _checkClosed(self) -> None:
        """
        Fire the waiters of L{closeAll} once nothing is open or connecting.
        """
        if self._open or self._connecting:
            return
        if self._closing:
            closing, self._closing = self._closing, []
            for d in closing:
                d.callback(None)
        if self._draining:
            draining, self._draining = self._draining, []
            for d in draining:
                d.callback(None)

    def drain(self) -> Deferred[None]:
        """
        Let the server go gently, as a reload that removes it does: the idle
        connections close now, busy ones once their exchange is done, and
        none is kept for reuse from now on.

        @return: Fires once no connection is open or connecting.
        """
        if self._draining is None:
            self._draining = []
        d: Deferred[None] = Deferred()
        self._draining.append(d)
        for connection in list(self._idle):
            connection.transport.loseConnection()
        self._checkClosed()
        return d

    def whenClosed(self, connection: UpstreamConnection) -> Deferred[None]:
        """
        Fires once C{connection}, one of this pool's, has closed; at once
        when it is not open.
        """
        if connection not in self._open:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closeWaiters.setdefault(connection, []).append(d)
        return d

    def closeAll(self) -> Deferred[None]:
        """
        Close every connection, idle or busy, and cancel the connects in
        flight: the pool is shutting down.  A connect that still completes
        before the pool has closed is closed at once, and fails with
        L{CancelledError}.

        @return: Fires once every connection is closed and no connect is in
            flight.
        """
        for connecting in list(self._connecting):
            connecting.cancel()
        if not self._open and not self._connecting:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closing.append(d)
        for connection in list(self._open):
            connection.abort()
        return d


def connectWithTimeout(
    reactor: IReactorTime,
    endpoint: IStreamClientEndpoint,
    factory: Factory,
    timeout: float,
    what: str = "connect",
) -> Deferred:
    """
    Connect C{endpoint} with C{factory}, giving up after C{timeout} seconds
    (0: no limit but the endpoint's own), and say why it failed in words
    that begin with C{what} (C{connect to backend}, say).

    @return: Fires with the connected protocol, or fails with
        L{UpstreamTimeout} (C{"WHAT timed out after 5s"}),
        L{UpstreamLocalError} (C{"cannot WHAT: SHORTAGE"}, the proxy's own
        shortage, see L{localConnectProblem}), L{UpstreamConnectFailed}
        (C{"WHAT failed: connection refused"}), or L{CancelledError} when
        cancelled.
    """
    d = endpoint.connect(factory)
    if timeout:
        d.addTimeout(timeout, reactor, onTimeoutCancel=_TimedOut(timeout))
    d.addErrback(_connectFailed, what)
    return d


class _TimedOut:
    """
    Turns the cancellation of a connect by its timeout into the timeout's
    failure, which L{_connectFailed} words.
    """

    __slots__ = ("timeout",)

    def __init__(self, timeout: float):
        self.timeout = timeout

    def __call__(self, result, timeout):
        return Failure(_ConnectTimedOut(self.timeout))


class _ConnectTimedOut(Exception):
    pass


def _connectFailed(reason: Failure, what: str):
    if reason.check(_ConnectTimedOut):
        raise UpstreamTimeout(
            "%s timed out after %s" % (what, formatDuration(reason.value.args[0]))
        )
    if reason.check(CancelledError, error.ConnectingCancelledError):
        raise CancelledError()
    if reason.check(error.TimeoutError):
        raise UpstreamTimeout(what + " timed out")
    shortage = localConnectProblem(reason)
    if shortage is not None:
        raise UpstreamLocalError("cannot %s: %s" % (what, shortage))
    raise UpstreamConnectFailed("%s failed: %s" % (what, describeFailure(reason)))


#: The errors of a connect that tell of the proxy's own shortage, not of the
#: server: Twisted reports those of C{socket()} as a
#: L{error.ConnectBindError}, those of C{connect()} as a L{error.ConnectError},
#: both with the C{errno} in C{osError}.
_LOCAL_CONNECT_ERRORS = {
    errno.EMFILE: "the proxy process is out of file descriptors",
    errno.ENFILE: "the system is out of file descriptors",
    errno.ENOBUFS: "the system is out of socket buffers",
    errno.ENOMEM: "the system is out of memory",
    errno.EADDRNOTAVAIL: "no local port is free to connect from",
}


def localConnectProblem(reason: Failure) -> str | None:
    """
    What the proxy lacked, in words, when C{reason} is a connect failure of
    its own making (see L{UpstreamLocalError}); L{None} for any other.
    """
    value = reason.value
    number = getattr(value, "osError", None)
    if isinstance(number, OSError):
        number = number.errno
    if number is None and isinstance(value, OSError):
        number = value.errno
    if not isinstance(number, int) or number not in _LOCAL_CONNECT_ERRORS:
        return None
    return "%s (%s: %s)" % (
        _LOCAL_CONNECT_ERRORS[number],
        errno.errorcode.get(number, number),
        os.strerror(number),
    )


def describeFailure(reason: Failure) -> str:
    """
    A short text for a connection failure, fit for a log line.
    """
    if reason.check(error.ConnectionRefusedError):
        return "connection refused"
    value = reason.value
    text = str(value).strip().rstrip(".")
    return text or type(value).__name__

