"""
The client's side of an HTTP connection (between stage 2, termination, and
the proxy): Twisted's HTTP/1.1 channel held to the C{[gatekeeper]} limits,
and the switch that hands a connection that negotiated C{h2} by ALPN to the
HTTP/2 connection of L{manualb.web.http2} instead.

What a client can make the proxy hold is bounded here, as nginx bounds it:

  - the whole request head must arrive within C{client_header_timeout},
    however slowly it trickles in; between two requests a kept-alive
    connection may stay idle for C{keepalive_timeout}; a request body may
    pause for at most C{client_body_timeout} between two reads;
  - a client that takes none of a response for C{send_timeout} is dropped;
  - a request line longer than C{max_request_line} gets 414, a header block
    larger than C{max_header_size} or with more than C{max_headers} fields
    gets 431;
  - a request that HTTP/1.1 does not allow gets 400 before anything is
    forwarded: a method that is not an upper-case token, a target with
    bytes outside visible ASCII, a missing or repeated C{Host}, a
    C{Content-Length} beyond 2**63 - 1; one whose C{Content-Length} is
    beyond C{client_max_body_size} gets 413 before any of the body is read;
  - one client address may hold at most C{limit_conn} connections open at
    once (by the socket's peer address); one more gets 503 and is closed.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.http import HTTPChannel, Request, _GenericHTTPChannelProtocol

from manualb.config import GatekeeperConfig
from manualb.forwarding import connectionTokens
from manualb.rules import CONTROL, SERVER_NAME, errorResponse, requestProblem, serverNameOf
from manualb.transports import Deadline, cancelCall, setNoDelay
from manualb.view import clientHost

log = Logger()

# The life of one request head on the connection.
_IDLE = "idle"  # between requests: keepalive_timeout
_HEAD = "head"  # reading the request line and headers: client_header_timeout
_BODY = "body"  # reading the body: client_body_timeout between reads
_WAITING = "waiting"  # the request is in; the proxy has it
_REFUSED = "refused"  # answered with an error; nothing more is read


class ProxyChannel(HTTPChannel):
    """
    An HTTP/1.x client connection of the proxy, held to the limits of
    C{gatekeeper}.

    A request refused once its head is read (L{requestProblem}) still goes
    to the site, with its C{refusal} set, so that the proxy answers it and
    logs it like any other; its body is not read, and the connection closes
    after the answer.

    @ivar phase: Where the connection is in the life of a request head:
        C{"idle"}, C{"head"}, C{"body"}, C{"waiting"} or C{"refused"}.
    """

    def __init__(self, gatekeeper: GatekeeperConfig, clock: IReactorTime) -> None:
        super().__init__()
        self.gatekeeper = gatekeeper
        # Twisted's timeout is a reactor call made and cancelled about
        # twice a request; a Deadline asks for one a timeout period.
        self._deadline = Deadline(clock, self.timeoutConnection)
        # Twisted's own line and header limits answer a bare 400; those of
        # the gatekeeper come first, with their own status codes.
        self.MAX_LENGTH = max(gatekeeper.max_request_line, gatekeeper.max_header_size)
        self.totalHeadersSize = (
            gatekeeper.max_request_line + gatekeeper.max_header_size + 1024
        )
        self.maxHeaders = gatekeeper.max_headers + 1
        self.phase = _IDLE
        self._heads = 0
        self._headLines = 0
        self._headSize = 0
        self._headerCount = 0
        self._sendTimer: IDelayedCall | None = None
        self._draining = False

    def connectionMade(self) -> None:
        super().connectionMade()
        # The first request's head is timed from the connection's start.
        self._time(self.gatekeeper.client_header_timeout)

    # Reading the request head.

    def dataReceived(self, data: bytes) -> None:
        if self.phase == _REFUSED:
            return
        if self.phase == _IDLE and not self._handlingRequest:
            self._startHead()
        super().dataReceived(data)

    def _startHead(self) -> None:
        if self._heads:
            # A later request's head is timed from its first byte.
            self._time(self.gatekeeper.client_header_timeout)
        self._heads += 1
        self.phase = _HEAD
        self._headLines = 0
        self._headSize = 0
        self._headerCount = 0

    def _time(self, seconds: float) -> None:
        """
        Close the connection if the current phase lasts C{seconds}.
        """
        self.setTimeout(seconds)

    def setTimeout(self, period: float | None) -> float | None:
        previous, self.timeOut = self.timeOut, period
        if period is None:
            self._deadline.clear()
        else:
            self._deadline.set(period)
        return previous

    def stopTimeout(self) -> None:
        """
        No timeout any more, and no reactor call kept for it: the channel
        lets go of its connection (taken over, or switched to HTTP/2).
        """
        self.timeOut = None
        self._deadline.stop()

    def resetTimeout(self) -> None:
        # Only a body's timeout counts from the last read; the head's runs
        # from its first byte, whatever trickles in after.
        if self.phase == _BODY and self._deadline.pending:
            self._deadline.set(self.timeOut)

    def lineReceived(self, line: bytes) -> None:
        if self.phase == _REFUSED:
            return
        if self.phase == _IDLE:
            self._startHead()
        if self._headLines == 0 and not line:
            # An empty line before a request (allowed once by Twisted).
            super().lineReceived(line)
            return
        self._headLines += 1
        if self._headLines == 1:
            if len(line) > self.gatekeeper.max_request_line:
                self._refuseLine()
                return
        elif line:
            self._headSize += len(line) + 2
            if self._headSize > self.gatekeeper.max_header_size:
                self._refuseHeaders()
                return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._headLines == 0:
            self._refuseLine()
        else:
            self._refuseHeaders()

    def headerReceived(self, line: bytes) -> bool:
        self._headerCount += 1
        if self._headerCount > self.gatekeeper.max_headers:
            self._refuseHeaders()
            return False
        if CONTROL.search(line) is not None:
            self._respondToBadRequestAndDisconnect()
            return False
        return super().headerReceived(line)

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        # Twisted's parser has checked the method is a token and the target
        # has no controls or spaces; the gatekeeper asks for more.
        problem = requestProblem(
            self._command,
            self._path,
            self._version,
            request.requestHeaders,
            self.gatekeeper,
        )
        if problem is None:
            self.phase = _BODY if self.length != 0 else _WAITING
            super().allHeadersReceived()
            if self.phase == _BODY:
                self._time(self.gatekeeper.client_body_timeout)
            return
        # Answered without reading the body, which cannot be trusted to be
        # framed as it says: the connection closes after the answer.
        request.refusal = problem
        request.requestHeaders.removeHeader(b"expect")
        self.length = 0
        self._transferDecoder = None
        self.phase = _WAITING
        super().allHeadersReceived()
        self.persistent = False
        request.responseHeaders.setRawHeaders(b"Connection", [b"close"])

    def allContentReceived(self) -> None:
        self.phase = _WAITING
        super().allContentReceived()
        # Twisted restores the timeout it had when the request is done; the
        # connection then waits for the next one under keepalive_timeout.
        self._savedTimeOut = None

    def checkPersistence(self, request: Request, version: bytes) -> bool:
        """
        Whether the connection stays open after this request: for HTTP/1.1
        unless C{close} is among the C{Connection} tokens (however they are
        spaced), never for HTTP/1.0, nor while the proxy stops (L{drain}).
        """
        tokens = connectionTokens(request.requestHeaders.getRawHeaders(b"connection"))
        if b"close" in tokens or self._draining:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return version == b"HTTP/1.1"

    def requestDone(self, request: Request) -> None:
        if self.phase != _REFUSED:
            self.phase = _IDLE
            if self.persistent:
                self._time(self.gatekeeper.keepalive_timeout)
        # Parses whatever the client pipelined meanwhile.
        super().requestDone(request)

    def drain(self) -> int:
        """
        The proxy is stopping: close the connection at once when it is idle
        between requests, else right after the response to the request in
        hand (which says C{Connection: close} when it has not started yet).
        A request whose head is arriving is read and answered first.

        @return: How many requests the connection is busy with (0 or 1).
        """
        self._draining = True
        if self.phase == _REFUSED:
            return 0
        if self.phase == _IDLE and not self.requests:
            self.persistent = False
            self.loseConnection()
            return 0
        self.persistent = False
        for request in self.requests:
            if not request.startedWriting:
                request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        return 1

    def loseConnection(self) -> None:
        # What is still to be written goes first, but only as long as the
        # client keeps taking it: a closing connection is held to
        # send_timeout too.
        self._armSendTimer()
        super().loseConnection()

    def timeoutConnection(self) -> None:
        if self.phase in (_HEAD, _BODY):
            log.info(
                "client {peer} took too long to send its request ({phase})",
                peer=_describePeer(self.transport),
                phase=self.phase,
            )
            if self.phase == _HEAD or not self.requests:
                self._writeError(408, b"The request took too long to arrive.")
        super().timeoutConnection()

    # Answering what cannot be parsed.

    def _refuseLine(self) -> None:
        self._refuse(414, b"The request line is too long.")

    def _refuseHeaders(self) -> None:
        self._refuse(431, b"The request headers are too large.")

    def _respondToBadRequestAndDisconnect(self) -> None:
        self._refuse(400, b"The request is not valid HTTP.")

    def _refuse(self, code: int, detail: bytes) -> None:
        """
        Answer C{code} and close: the request could not be read, so nothing
        after it can be either.
        """
        if self.phase == _REFUSED:
            return
        log.info(
            "refused client {peer}: {code} {detail}",
            peer=_describePeer(self.transport),
            code=code,
            detail=detail.decode("ascii"),
        )
        if not any(request.startedWriting for request in self.requests):
            # Else the client already has an answer to this request, and a
            # second would be taken for the next request's.
            self._writeError(code, detail)
        self.phase = _REFUSED
        self._buffer = b""
        self.persistent = False
        self.loseConnection()

    def _writeError(self, code: int, detail: bytes) -> None:
        """
        Answer a request that could not be read, and log it.
        """
        answer = errorResponse(code, detail, serverNameOf(self.site))
        self.transport.write(answer)
        accessLog = getattr(self.site, "accessLog", None)
        if accessLog is not None:
            # Known once Twisted has parsed the request line.
            command = getattr(self, "_command", None)
            requestLine = None
            if command is not None:
                requestLine = b" ".join([command, self._path, self._version])
            accessLog.recordUnread(
                self.transport.getPeer(), requestLine, code, len(answer)
            )

    # Writing: send_timeout.

    def pauseProducing(self) -> None:
        # The client's connection takes no more for now.
        self._armSendTimer()
        super().pauseProducing()

    def _armSendTimer(self) -> None:
        if self._sendTimer is None and self.transport is not None:
            self._sendTimer = self.callLater(
                self.gatekeeper.send_timeout, self._sendTimedOut
            )

    def resumeProducing(self) -> None:
        self._sendTimer = cancelCall(self._sendTimer)
        super().resumeProducing()

    def _sendTimedOut(self) -> None:
        self._sendTimer = None
        log.info(
            "client {peer} took nothing for {seconds}s (send_timeout): closing",
            peer=_describePeer(self.transport),
            seconds=self.gatekeeper.send_timeout,
        )
        self.transport.abortConnection()

    def connectionLost(self, reason) -> None:
        self._sendTimer = cancelCall(self._sendTimer)
        super().connectionLost(reason)
        self.stopTimeout()


def _describePeer(transport) -> str:
    address = getattr(transport, "getPeer", lambda: None)()
    host = getattr(address, "host", None)
    return "-" if host is None else host


class ConnectionLimit:
    """
    The client connections open at once, across every listener of one
    balancer, against C{max_connections}, and those of each client address
    against C{limit_conn}; also what closes them all when the balancer
    stops.

    @ivar connections: The connections open now.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.connections: set[ChannelSwitch] = set()
        self._waiting: list[Deferred[None]] = []
        # The connections open of each client address, while any is (so at
        # most one entry a connection).
        self._clients: dict[str, int] = {}

    @property
    def open(self) -> int:
        """
        How many client connections are open.
        """
        return len(self.connections)

    @property
    def full(self) -> bool:
        return self.open >= self.limit

    def opened(self, connection: "ChannelSwitch") -> None:
        """
        Count C{connection} until it closes.
        """
        self.connections.add(connection)
        connection.limit = self

    def admit(self, connection: "ChannelSwitch", client: str, most: int) -> bool:
        """
        Count C{connection} against its client address C{client}, which may
        hold C{most} connections at once (0 for any number): L{False} when
        it holds that many already.
        """
        if most <= 0 or not client:
            return True
        clients = self._clients
        count = clients.get(client, 0)
        if count >= most:
            return False
        clients[client] = count + 1
        connection.client = client
        return True

    def closed(self, connection: "ChannelSwitch") -> None:
        """
        C{connection} has closed.
        """
        self.connections.discard(connection)
        client = connection.client
        if client is not None:
            connection.client = None
            count = self._clients.pop(client, 1) - 1
            if count > 0:
                self._clients[client] = count
        if not self.connections:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def closeAll(self) -> Deferred[None]:
        """
        Close every client connection at once, whatever it is doing.

        @return: Fires once all of them are closed.
        """
        d = self.whenClosed()
        for connection in list(self.connections):
            connection.abortConnection()
        return d

    def drain(self) -> int:
        """
        Close every client connection once it has answered the requests it
        is busy with: idle ones at once (see L{ChannelSwitch.drain}).

        @return: How many requests the connections are busy with.
        """
        return sum(connection.drain() for connection in list(self.connections))

    def whenClosed(self) -> Deferred[None]:
        """
        @return: Fires once no client connection is open.
        """
        if not self.connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d


class Overloaded(Protocol):
    """
    A connection beyond C{max_connections} (or C{limit_conn}): answered with
    503 and closed at once, so that the client is told rather than left
    waiting.

    @ivar limit: The name of the limit reached, for the log.
    """

    limit = "max_connections"
    server = SERVER_NAME

    def connectionMade(self) -> None:
        log.warn(
            "client {peer} refused: {limit} reached",
            peer=_describePeer(self.transport),
            limit=self.limit,
        )
        self.transport.write(
            errorResponse(503, b"Too many connections; try again later.", self.server)
        )
        self.transport.loseConnection()


class ChannelSwitch(_GenericHTTPChannelProtocol):
    """
    A client connection that starts as L{ProxyChannel} and becomes a
    L{ProxyH2Connection} when the TLS handshake negotiated C{h2}.  Any other
    protocol, or none, is served as HTTP/1.x.

    @ivar limit: Where the connection is counted while it is open, or
        L{None}.
    @ivar client: The client address it is counted against for
        C{limit_conn}, or L{None}.
    """

    limit: ConnectionLimit | None = None
    client: str | None = None

    def connectionLost(self, reason) -> None:
        try:
            self._channel.connectionLost(reason)
        finally:
            if self.limit is not None:
                limit, self.limit = self.limit, None
                limit.closed(self)

    def abortConnection(self) -> None:
        """
        Drop the connection at once, with whatever was in flight.
        """
        transport = self._channel.transport
        if transport is not None:
            transport.abortConnection()

    def getHost(self):
        """
        The local address the client connected to, or L{None} once the
        connection is gone.
        """
        transport = self._channel.transport
        return None if transport is None else transport.getHost()

    def drain(self) -> int:
        """
        Close the connection once the requests it is busy with are answered
        (for HTTP/2, after a GOAWAY); at once when it is idle.

        @return: How many requests it is busy with.
        """
        drain = getattr(self._channel, "drain", None)
        if drain is None:
            # Refused (Overloaded): closing already.
            return 0
        return drain()

    def makeConnection(self, transport) -> None:
        # Twisted's channels turn Nagle off only on a bare TCP transport.
        setNoDelay(transport)
        limit = self.limit
        if limit is not None:
            most = getattr(self._site, "gatekeeper", GatekeeperConfig()).limit_conn
            if most and not limit.admit(self, clientHost(transport.getPeer()), most):
                refusal = Overloaded()
                refusal.limit = "limit_conn"
                refusal.server = serverNameOf(self._site)
                self._channel = refusal
                # Served as it is, whatever ALPN chose.
                self._negotiatedProtocol = b"http/1.1"
        self._channel.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self._negotiatedProtocol is None:
            transport = self._channel.transport
            negotiated = getattr(transport, "negotiatedProtocol", None)
            if negotiated == b"h2":
                self._becomeH2(transport)
            self._negotiatedProtocol = negotiated or b"http/1.1"
        self._channel.dataReceived(data)

    def _becomeH2(self, transport) -> None:
        old = self._channel
        # The HTTP/1.1 channel registered itself as the transport's producer.
        networkProducer = old._networkProducer
        networkProducer.unregisterProducer()
        old.stopTimeout()
        site = self._site
        from manualb.web.http2 import ProxyH2Connection

        channel = ProxyH2Connection(
            site.reactor, getattr(site, "gatekeeper", GatekeeperConfig())
        )
        channel.requestFactory = self._requestFactory
        channel.site = site
        channel.factory = self._factory
        channel.timeOut = self._timeOut
        channel.callLater = self._callLater
        self._channel = channel
        channel.makeConnection(transport)
        networkProducer.registerProducer(channel, True)


def buildChannel(site) -> ChannelSwitch:
    """
    The protocol of a L{manualb.web.ProxySite}'s connection (used as its
    C{protocol}, called with the site).
    """
    return ChannelSwitch(
        ProxyChannel(getattr(site, "gatekeeper", GatekeeperConfig()), site.reactor)
    )
