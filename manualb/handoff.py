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

import errno
import ipaddress
import os
import re

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
from zope.interface import Interface, implementer

from manualb.config import ServerAddress, UpstreamConfig
from manualb.syntax import formatDuration
from manualb.forwarding import connectionTokens
from manualb.transports import cancelCall, setNoDelay

MAX_HEAD_SIZE = 64 * 1024
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_FORBIDDEN_IN_VALUE = re.compile(rb"[\0\r\n]")
MAX_CHUNK_LINE = 4096


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


class IResponseReceiver(Interface):
    """
    Takes a backend's response as it is parsed.
    """

    def responseStarted(
        code: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """
        The status line and headers have arrived.  C{headers} keeps every
        value of a repeated header, in order.
        """

    def responseData(data: bytes) -> None:
        """
        A piece of the response body (decoded from chunked framing); after a
        C{101 Switching Protocols}, what the backend sent, as it is.
        """

    def responseDone() -> None:
        """
        The whole response has arrived; after a C{101}, the backend closed
        the tunnel cleanly.
        """

    def responseFailed(reason: UpstreamError) -> None:
        """
        The response cannot be completed; nothing more will be delivered.
        After a C{101}, the tunnel broke.
        """


# Parser states.
_IDLE = "idle"
_HEAD = "head"
_LENGTH = "length"
_CHUNK_SIZE = "chunk-size"
_CHUNK_DATA = "chunk-data"
_CHUNK_END = "chunk-end"
_TRAILERS = "trailers"
_UNTIL_CLOSE = "until-close"
# After a 101 Switching Protocols: raw bytes until the connection closes.
_TUNNEL = "tunnel"


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


@implementer(IPushProducer)
class UpstreamConnection(Protocol):
    """
    One persistent HTTP/1.1 connection to a backend server.

    It is also the producer of the response body: pausing it stops reading
    from the backend, which is how a slow client slows the backend down.

    @ivar reused: C{True} once the connection has carried an exchange, so that
        a failure before any response byte may be the backend closing an
        idle connection rather than a real error.
    """

    _receiver: IResponseReceiver | None = None
    _readTimer: IDelayedCall | None = None
    _throttle: _BodyThrottle | None = None
    _paused = False
    _closed = False
    _upgrade = False

    def __init__(self, pool: "ConnectionPool"):
        self.pool = pool
        self.reactor = pool.reactor
        self.config = pool.config
        self.reused = False
        self.exchanges = 0
        self.idleTimer: IDelayedCall | None = None
        self._state = _IDLE
        self._buffer = b""

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
        """
        self.exchanges += 1
        self._receiver = receiver
        self._method = method
        self._chunkedBody = chunked
        self._bodyDone = False
        self._upgrade = upgrade
        self._closeAfter = (
            upgrade or not reuse or self.exchanges >= self.config.keepalive_requests
        )
        self._state = _HEAD
        self._buffer = b""
        self.transport.write(head)

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
        if not data or self._closed:
            return
        if self._chunkedBody:
            self.transport.writeSequence([b"%x\r\n" % (len(data),), data, b"\r\n"])
        else:
            self.transport.write(data)

    def finishBody(self) -> None:
        """
        The request body is complete; from now on the backend's silence counts
        against C{read_timeout}.
        """
        if self._closed or self._bodyDone:
            return
        self._bodyDone = True
        self._detachBody()
        if self._chunkedBody:
            self.transport.write(b"0\r\n\r\n")
        if self._receiver is not None:
            self._armReadTimer()
        elif self.pool is not None:
            self._reuseOrClose()

    @property
    def tunnelling(self) -> bool:
        """
        Whether the backend switched protocols: the connection is now a raw
        byte tunnel, whose bytes from the backend go to the receiver's
        C{responseData} and whose close to C{responseDone} (or
        C{responseFailed}); what is written to its transport goes to the
        backend as it is.
        """
        return self._state == _TUNNEL

    def _detachBody(self) -> None:
        if self._throttle is not None:
            self._throttle.cancelTimer()
            self._throttle = None
            if not self._closed:
                self.transport.unregisterProducer()

    # Flow control of the response.

    def pauseProducing(self) -> None:
        self._paused = True
        self._cancelReadTimer()
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._receiver is not None and self._state != _TUNNEL:
            self._armReadTimer()
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.abort()

    # Timers.

    def _armReadTimer(self) -> None:
        if self._paused:
            return
        timeout = self.config.read_timeout
        if self._readTimer is None:
            self._readTimer = self.reactor.callLater(timeout, self._readTimedOut)
        else:
            self._readTimer.reset(timeout)

    def _cancelReadTimer(self) -> None:
        self._readTimer = cancelCall(self._readTimer)

    def _readTimedOut(self) -> None:
        self._readTimer = None
        self.fail(
            UpstreamTimeout(
                "backend sent nothing for " + formatDuration(self.config.read_timeout)
            )
        )

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
        if self._state != _TUNNEL:
            self._receiver = None
        self._cancelReadTimer()
        if not self._closed:
            # The body's producer goes first: the transport would otherwise
            # stop it while closing, from inside the reactor.
            self._detachBody()
            self._closed = True
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:
        self._closed = True
        self._cancelReadTimer()
        self._detachBody()
        if self.pool is not None:
            self.pool.forget(self)
        receiver = self._receiver
        if receiver is None:
            return
        if self._state == _TUNNEL:
            self._receiver = None
            if reason is None or reason.check(error.ConnectionDone):
                receiver.responseDone()
            else:
                receiver.responseFailed(
                    UpstreamClosed(
                        "backend connection lost: " + describeFailure(reason), False
                    )
                )
            return
        if self._state == _UNTIL_CLOSE and reason.check(error.ConnectionDone):
            self._responseComplete()
            return
        self._receiver = None
        beforeResponse = self._state == _HEAD and not self._buffer
        receiver.responseFailed(
            UpstreamClosed(
                "backend closed the connection "
                + ("before sending a response" if beforeResponse else "mid-response"),
                beforeResponse,
            )
        )

    def _responseComplete(self) -> None:
        receiver = self._receiver
        self._receiver = None
        self._state = _IDLE
        self._cancelReadTimer()
        self._paused = False
        self.reused = True
        if self._bodyDone:
            self._reuseOrClose()
        else:
            # The backend answered before it had the whole request body; the
            # rest of the body will not follow, so the connection is spent.
            self.abort()
        receiver.responseDone()

    def _reuseOrClose(self) -> None:
        if self._closed:
            return
        if self._closeAfter or self._buffer or self.pool is None:
            self.transport.loseConnection()
        else:
            self.transport.resumeProducing()
            self.pool.release(self)

    # Parsing.

    def dataReceived(self, data: bytes) -> None:
        if self._receiver is None:
            # A backend may not speak unasked; whatever it is, the
            # connection can no longer be trusted.
            if data:
                self.abort()
            return
        if not self._paused and self._state != _TUNNEL:
            self._armReadTimer()
        try:
            self._parse(data)
        except UpstreamBadResponse as e:
            self.fail(e)

    def _parse(self, data: bytes) -> None:
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        while data and self._receiver is not None:
            state = self._state
            if state == _LENGTH:
                rest = self._deliverCounted(data)
                if rest is not None:
                    self._endOfMessage(rest)
                return
            elif state == _UNTIL_CLOSE or state == _TUNNEL:
                self._receiver.responseData(data)
                return
            elif state == _CHUNK_DATA:
                data = self._deliverCounted(data)
                if data is None:
                    return
                self._state = _CHUNK_END
            elif state == _HEAD:
                end = data.find(b"\r\n\r\n")
                if end == -1:
                    if len(data) > MAX_HEAD_SIZE:
                        raise UpstreamBadResponse("response head too large")
                    self._buffer = data
                    return
                head = data[:end]
                data = data[end + 4 :]
                if not self._headReceived(head):
                    continue
                if self._state == _IDLE:
                    self._endOfMessage(data)
                    return
            else:
                end = data.find(b"\r\n")
                if end == -1:
                    if len(data) > MAX_CHUNK_LINE:
                        raise UpstreamBadResponse("chunk framing line too long")
                    self._buffer = data
                    return
                line = data[:end]
                data = data[end + 2 :]
                if state == _CHUNK_SIZE:
                    self._chunkSize(line)
                elif state == _CHUNK_END:
                    if line:
                        raise UpstreamBadResponse("chunk data not followed by CRLF")
                    self._state = _CHUNK_SIZE
                elif not line:  # _TRAILERS: an empty line ends them
                    self._endOfMessage(data)
                    return

    def _deliverCounted(self, data: bytes) -> bytes | None:
        """
        Pass on what C{data} holds of a body or chunk of known length (the
        C{_remaining} bytes): the bytes that follow it once it is complete;
        L{None} while it is not, or when the exchange ended meanwhile.
        """
        remaining = self._remaining
        if len(data) < remaining:
            self._remaining = remaining - len(data)
            self._receiver.responseData(data)
            return None
        self._receiver.responseData(data[:remaining])
        if self._receiver is None:
            return None
        return data[remaining:]

    def _chunkSize(self, line: bytes) -> None:
        size = line.split(b";", 1)[0].strip()
        try:
            if not size or size.startswith((b"-", b"+", b"0x", b"0X")):
                raise ValueError(size)
            self._remaining = int(size, 16)
        except ValueError:
            raise UpstreamBadResponse("bad chunk size %r" % (size[:20],))
        self._state = _CHUNK_DATA if self._remaining else _TRAILERS

    def _endOfMessage(self, rest: bytes) -> None:
        # Anything the backend sent past its response makes the connection
        # unusable for the next exchange.
        self._buffer = rest
        self._responseComplete()

    def _headReceived(self, head: bytes) -> bool:
        """
        Parse a response head and choose how its body is framed.

        @return: C{False} for an interim (1xx) response, after which the real
            head follows.
        """
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise UpstreamBadResponse("bad status line %r" % (lines[0][:80],))
        version, codeText = parts[0], parts[1]
        if len(codeText) != 3 or not codeText.isdigit():
            raise UpstreamBadResponse("bad status code %r" % (codeText[:20],))
        code = int(codeText)
        reason = parts[2] if len(parts) == 3 else b""
        headers = []
        lengths = set()
        transferCodings: list[bytes] = []
        connection = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.match(name) or _FORBIDDEN_IN_VALUE.search(value):
                raise UpstreamBadResponse("bad header line %r" % (line[:80],))
            value = value.strip(b" \t")
            lowered = name.lower()
            if lowered == b"content-length":
                lengths.update(v.strip() for v in value.split(b","))
            elif lowered == b"transfer-encoding":
                transferCodings.extend(
                    t.strip().lower() for t in value.split(b",") if t.strip()
                )
                continue
            elif lowered == b"connection":
                connection.append(value)
            headers.append((name, value))

        if code == 101:
            if not self._upgrade:
                raise UpstreamBadResponse("unexpected 101 Switching Protocols")
            # From here on the backend speaks the protocol it switched to:
            # its bytes go on as they are, for as long as the connection
            # lasts, with the tunnel's own idle timeout instead of ours.
            self._state = _TUNNEL
            self._closeAfter = True
            self._cancelReadTimer()
            self._receiver.responseStarted(code, reason, headers)
            return True
        if 100 <= code < 200:
            return False

        keepAlive = version == b"HTTP/1.1" and b"close" not in connectionTokens(
            connection
        )
        if self._method == b"HEAD" or code in (204, 304):
            self._state = _IDLE
        elif transferCodings:
            # RFC 9112, section 6.3: Transfer-Encoding overrides any
            # Content-Length, which must then not be passed on.
            headers = [h for h in headers if h[0].lower() != b"content-length"]
            if transferCodings[-1] == b"chunked":
                self._state = _CHUNK_SIZE
            else:
                self._state = _UNTIL_CLOSE
            keepAlive = keepAlive and not lengths
        elif lengths:
            if len(lengths) != 1:
                raise UpstreamBadResponse("conflicting Content-Length values")
            (length,) = lengths
            if not length.isdigit():
                raise UpstreamBadResponse("bad Content-Length %r" % (length[:20],))
            self._remaining = int(length)
            self._state = _LENGTH if self._remaining else _IDLE
        else:
            self._state = _UNTIL_CLOSE
        if self._state == _UNTIL_CLOSE:
            keepAlive = False
        if not keepAlive:
            self._closeAfter = True
        self._receiver.responseStarted(code, reason, headers)
        return True


class OneConnection(Factory):
    """
    Hands an endpoint the protocol of one new connection, quietly: a busy
    balancer makes many.
    """

    noisy = False

    def __init__(self, protocol: Protocol):
        self.protocol = protocol

    def buildProtocol(self, addr):
        return self.protocol


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
        self._closeWaiters: dict[UpstreamConnection, list[Deferred[None]]] = {}

    @property
    def idleCount(self) -> int:
        """
        How many connections wait in the pool for their next exchange.
        """
        return len(self._idle)

    def acquire(self) -> Deferred[UpstreamConnection]:
        """
        A connection ready for an exchange: the most recently used idle one,
        or a new one.  Fails with L{UpstreamConnectFailed} or
        L{UpstreamTimeout}.
        """
        if self._idle:
            connection = self._idle.pop()
            connection.idleTimer = cancelCall(connection.idleTimer)
            return succeed(connection)
        return self.connect()

    def connect(self) -> Deferred[UpstreamConnection]:
        """
        A new connection, bounded by C{connect_timeout}.
        """
        d = connectWithTimeout(
            self.reactor,
            self.endpoint,
            OneConnection(UpstreamConnection(self)),
            self.config.connect_timeout,
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

    def release(self, connection: UpstreamConnection) -> None:
        """
        Take back a connection whose exchange is complete.
        """
        if len(self._idle) >= self.config.keepalive:
            connection.transport.loseConnection()
            return
        connection.idleTimer = self.reactor.callLater(
            self.config.keepalive_timeout, connection.transport.loseConnection
        )
        self._idle.append(connection)

    def forget(self, connection: UpstreamConnection) -> None:
        """
        A connection has closed: it is no longer in the pool.
        """
        self._open.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)
        connection.idleTimer = cancelCall(connection.idleTimer)
        if self._closeWaiters:
            for d in self._closeWaiters.pop(connection, ()):
                d.callback(None)
        self._checkClosed()

    def _checkClosed(self) -> None:
        """
        Fire the waiters of L{closeAll} once nothing is open or connecting.
        """
        if self._closing and not self._open and not self._connecting:
            closing, self._closing = self._closing, []
            for d in closing:
                d.callback(None)

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

