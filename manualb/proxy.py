"""
Stage 7, processing: the proxy resource that carries a client's request
through the URL map, the pool's choice and the handoff, and streams the
backend's response back.

L{ProxyResource} works in any L{twisted.web.server.Site}; there the request
body is read whole (Twisted spools a large one to a temporary file) before it
goes on.  In a L{ProxySite}, built on L{StreamingRequest}, the body streams to
the backend as it arrives, with back-pressure both ways.

A request of an HTTP/1.1 client that asks for a protocol upgrade (WebSocket:
C{Upgrade: websocket}, C{Connection: upgrade}) and has no body goes to the
backend with its C{Upgrade}; when the backend answers C{101 Switching
Protocols}, the client's connection is taken over from Twisted's channel and
joined to the backend's as a byte L{Tunnel}, until either side closes or the
upstream's C{tunnel_timeout} passes without a byte either way.
"""

from __future__ import annotations

from io import BytesIO
from typing import IO, Callable

from twisted.internet.interfaces import IPushProducer, IReactorTime, ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http import RESPONSES, HTTPChannel, Request, datetimeToString
from twisted.web.resource import Resource
from zope.interface import implementer

from manualb.accesslog import AccessLog
from manualb.channel import ConnectionLimit, Overloaded, buildChannel
from manualb.config import GatekeeperConfig
from manualb.forwarding import requestHead, responseHeaders, wantsUpgrade
from manualb.handoff import (
    IResponseReceiver,
    UpstreamClosed,
    UpstreamConnection,
    UpstreamError,
    UpstreamLocalError,
)
from manualb.rules import ALLOWED_METHODS, SERVER_NAME, errorBody
from manualb.selection import Attempts, Lease, Server
from manualb.tunnel import Tunnel
from manualb.transports import cancelCall
from manualb.urlmap import URLMap, encodePath, normalizePath
from manualb.view import RequestView, clientHost, normalizeHost

log = Logger()

_IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"])
# As nginx: CONNECT would make the proxy a tunnel, TRACE echoes headers the
# proxy added (cross-site tracing).
_REFUSED_METHODS = frozenset([b"CONNECT", b"TRACE"])
_GATEWAY_ERRORS = {
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
_HSTS = b"Strict-Transport-Security"
_BUFFER_LIMIT = 64 * 1024
_READ_SIZE = 64 * 1024
# How long a request body is still read (and dropped) after its response has
# been sent, so that the client sees the response, not a reset.
LINGERING_TIME = 30.0



def errorPage(request: Request, code: int, title: bytes, detail: bytes) -> None:
    """
    Finish C{request} with a short HTML error page, or with no body when
    C{detail} is empty.
    """
    body = errorBody(code, title, detail) if detail else b""
    request.setResponseCode(code, title)
    request.responseHeaders.setRawHeaders(b"Server", [SERVER_NAME])
    if body:
        request.responseHeaders.setRawHeaders(
            b"Content-Type", [b"text/html; charset=utf-8"]
        )
    request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % (len(body),)])
    request.write(body)
    request.finish()


@implementer(IPushProducer)
class _Gone:
    """
    The reader of a body whose client has left: nothing to pause or resume.
    """

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


_GONE = _Gone()


@implementer(IPushProducer)
class _StreamingBody:
    """
    A request body that streams in from the client while it is proxied.

    Data is passed straight to the backend connection once there is one;
    until then, up to L{_BUFFER_LIMIT} bytes wait here and the client is
    paused.  When asked to (L{keepForRetry}), the body is also kept, up to a
    limit, so that it can be sent again to another server.
    """

    def __init__(
        self, length: int | None, request: "StreamingRequest", limit: int = 0
    ):
        self.length = length
        self._request = request
        self._limit = limit
        self._received = 0
        self._tooLarge: Callable[[], None] | None = None
        self._pending: list[bytes] = []
        self._pendingSize = 0
        self._kept: list[bytes] | None = None
        self._keptSize = 0
        self._keepLimit = 0
        self._delivered = False
        self._target: UpstreamConnection | None = None
        self._complete = False
        self._paused = False
        self._discarding = False

    def _transport(self) -> IPushProducer:
        """
        What reads the body from the client: its connection; an HTTP/2
        stream, which has no transport of its own and pauses and resumes
        itself (withholding its WINDOW_UPDATE frames); or nothing to pause
        once the client is gone.
        """
        channel = self._request.channel
        if channel is None:
            return _GONE
        return channel.transport or channel

    def keepForRetry(self, limit: int) -> None:
        """
        Keep up to C{limit} bytes of the body, so that it can go again to
        another server after a first one took some of it and failed.
        """
        self._kept = []
        self._keepLimit = limit

    @property
    def replayable(self) -> bool:
        """
        Whether the body can still be sent whole to another server.
        """
        return not self._delivered or self._kept is not None

    def whenTooLarge(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback} if the body grows beyond C{client_max_body_size}
        (only a chunked body can: a declared length beyond it is refused
        before any of the body is read); the rest of the body is dropped.
        """
        self._tooLarge = callback

    def dataReceived(self, data: bytes) -> None:
        if self._discarding:
            return
        self._received += len(data)
        if self._limit and self._received > self._limit:
            self.discard()
            if self._tooLarge is not None:
                self._tooLarge()
            return
        if self._kept is not None:
            self._keptSize += len(data)
            if self._keptSize > self._keepLimit:
                self._kept = None
            else:
                self._kept.append(data)
        if self._target is not None and not self._paused:
            self._delivered = True
            self._target.writeBody(data)
            return
        self._pending.append(data)
        self._pendingSize += len(data)
        if self._pendingSize >= _BUFFER_LIMIT or self._paused:
            # Also re-pauses a transport that the channel resumed on its own.
            self._transport().pauseProducing()

    def allReceived(self) -> None:
        self._complete = True
        if self._target is not None and not self._pending:
            self._target.finishBody()

    def deliverTo(self, connection: UpstreamConnection) -> None:
        """
        Send the body to C{connection}: from its start, even when an earlier
        connection already took part of it.
        """
        if self._delivered:
            self._pending = list(self._kept)
            self._pendingSize = self._keptSize
        self._target = connection
        self._paused = False
        connection.attachBody(self)
        self._flush()

    def detach(self) -> None:
        """
        Stop sending to the current connection, which failed; the body may
        still go to another.
        """
        self._target = None

    def _flush(self) -> None:
        target = self._target
        while self._pending and not self._paused and target is self._target:
            data = self._pending.pop(0)
            self._pendingSize -= len(data)
            self._delivered = True
            target.writeBody(data)
        if not self._pending and target is self._target:
            if self._complete:
                target.finishBody()
            else:
                self._transport().resumeProducing()

    def pauseProducing(self) -> None:
        self._paused = True
        self._transport().pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._target is not None:
            self._flush()

    def stopProducing(self) -> None:
        self.discard()

    def discard(self) -> None:
        """
        Drop the rest of the body: its backend exchange is over.
        """
        self._target = None
        self._kept = None
        if self._complete or self._discarding:
            return
        self._discarding = True
        self._pending = []
        self._paused = False
        self._transport().resumeProducing()


@implementer(IPushProducer)
class _FileBody:
    """
    A request body that Twisted has already read into a file; it can always
    be sent again.
    """

    replayable = True

    def __init__(self, content: IO[bytes]):
        content.seek(0, 2)
        self.length = content.tell()
        content.seek(0, 0)
        self._content = content
        self._target: UpstreamConnection | None = None
        self._paused = False

    def keepForRetry(self, limit: int) -> None:
        pass

    def deliverTo(self, connection: UpstreamConnection) -> None:
        self._content.seek(0, 0)
        self._target = connection
        connection.attachBody(self)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        while not self._paused and self._target is not None:
            data = self._content.read(_READ_SIZE)
            if not data:
                target, self._target = self._target, None
                target.finishBody()
                return
            self._target.writeBody(data)

    def stopProducing(self) -> None:
        self.discard()

    def detach(self) -> None:
        self._target = None

    def discard(self) -> None:
        self._target = None


class StreamingRequest(server.Request):
    """
    A request whose body is streamed to the resource as it arrives, instead
    of being read whole first.

    Processing starts as soon as the headers are in.  The body arrives
    through L{body}; a response that ends before the body does still lets the
    rest of the body be read and dropped (for up to L{LINGERING_TIME}), so the
    client sees the response before the connection closes.
    """

    defaultContentType = None
    body: _StreamingBody | None = None
    _finishPending = False
    _lingering = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # A proxy passes form bodies on; it has no use for parsing them.
        self._parsePOSTFormSubmission = False

    def gotLength(self, length: int | None) -> None:
        requestLine = _requestLine(self.channel)
        if length == 0 or requestLine is None:
            super().gotLength(length)
            return
        self.content = BytesIO()
        gatekeeper = getattr(self.channel.site, "gatekeeper", None)
        limit = 0 if gatekeeper is None else gatekeeper.client_max_body_size
        self.body = _StreamingBody(length, self, limit)
        self.method, self.uri, self.clientproto = requestLine
        self.path = self.uri.split(b"?", 1)[0]
        self.args = {}
        self.process()

    def _handleStar(self) -> None:
        # Twisted answers C{*} targets itself; the proxy answers them as its
        # own, and logs them.
        self.render(self.site.resource)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body is None:
            super().handleContentChunk(data)
        else:
            self.body.dataReceived(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.body is None:
            super().requestReceived(command, path, version)
            return
        self.body.allReceived()
        if self._finishPending:
            self._finishPending = False
            self._lingering = cancelCall(self._lingering)
            super().finish()

    def finish(self) -> None:
        body = self.body
        if body is None or body._complete or self._disconnected:
            super().finish()
            return
        body.discard()
        if not isinstance(self.channel, HTTPChannel):
            # An HTTP/2 stream ends on its own, leaving the connection's
            # other streams alone; the rest of its body is dropped as it
            # comes.
            super().finish()
            return
        # The response is complete before the request body: read the rest of
        # the body and drop it, then close the connection, since the client
        # may not be done sending when we answer.
        self.channel.persistent = False
        self._finishPending = True
        self._lingering = self.channel.callLater(LINGERING_TIME, self._stopLingering)

    def _stopLingering(self) -> None:
        self._lingering = None
        if self._finishPending and not self._disconnected:
            self._finishPending = False
            # Finishing lets go of the channel.
            transport = self.channel.transport
            super().finish()
            transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self._lingering = cancelCall(self._lingering)
        super().connectionLost(reason)


def _requestLine(channel) -> tuple[bytes, bytes, bytes] | None:
    """
    The method, target and version of the request whose headers an
    HTTP/1.1 channel has just read; C{None} where the channel is of another
    kind, whose requests are then read whole.
    """
    try:
        return channel._command, channel._path, channel._version
    except AttributeError:
        return None


class ProxySite(server.Site):
    """
    A L{Site} for a L{ProxyResource}: request bodies stream to the backend,
    and access logging is left to the proxy, which knows the upstream.

    @ivar hsts: The C{Strict-Transport-Security} value the proxy gives every
        response over TLS (in place of any the backend sends), or L{None}.
    @ivar gatekeeper: The limits each client connection is held to.
    @ivar connections: The count of open client connections against
        C{max_connections}; several sites of one balancer share it.
    """

    requestFactory = StreamingRequest
    protocol = buildChannel

    def __init__(
        self,
        resource,
        *args,
        hsts: bytes | None = None,
        gatekeeper: GatekeeperConfig = GatekeeperConfig(),
        connections: ConnectionLimit | None = None,
        **kwargs,
    ):
        super().__init__(resource, *args, **kwargs)
        self._dateSecond = -1
        self._date = b""
        self.hsts = hsts
        self.gatekeeper = gatekeeper
        if connections is None:
            connections = ConnectionLimit(gatekeeper.max_connections)
        self.connections = connections

    def buildProtocol(self, addr):
        connections = self.connections
        if connections.full:
            return Overloaded()
        protocol = super().buildProtocol(addr)
        connections.opened(protocol)
        return protocol

    def log(self, request: Request) -> None:
        # The proxy writes the line, with the upstream (see _SiteLog).
        pass

    def getResourceFor(self, request: Request):
        # Twisted dates the response by the wall clock; the site's reactor
        # tells the time everywhere else (timeouts, the access log).
        now = int(self.reactor.seconds())
        if now != self._dateSecond:
            self._dateSecond = now
            self._date = datetimeToString(now)
        request.setHeader(b"Date", self._date)
        return super().getResourceFor(request)

    @property
    def accessLog(self) -> AccessLog | None:
        """
        Where the proxy logs requests, also those its channels refuse before
        they are read whole.
        """
        return getattr(self.resource, "accessLog", None)

    def acceptableProtocols(self) -> list[bytes]:
        """
        The protocols ALPN may choose: Twisted's (C{h2}, C{http/1.1}) and
        C{http/1.0}, which the channel serves as HTTP/1.x, for clients that
        offer only it (C{curl --http1.0}).
        """
        return super().acceptableProtocols() + [b"http/1.0"]


class _SiteLog:
    """
    The access log as the proxy resource writes it: one line for each
    request served through a L{ProxySite}, which leaves its logging to the
    proxy.  Any other L{server.Site} the resource is mounted in logs its
    requests itself, in its own format; the proxy adds no second line.
    """

    def __init__(self, log: AccessLog):
        self.log = log

    def record(
        self, request: Request, status: int, upstreams: list[str], upstreamTimes: list[float]
    ) -> None:
        if isinstance(getattr(request, "site", None), ProxySite):
            self.log.record(request, status, upstreams, upstreamTimes)

    def recordUnread(self, address, requestLine: bytes | None, status: int, sent: int) -> None:
        self.log.recordUnread(address, requestLine, status, sent)


class ProxyResource(Resource):
    """
    The reverse proxy, as a leaf resource: every request below it goes to a
    backend chosen by the URL map and the pool.

    @param urlMap: Routes requests, by host and path, to pools.
    @param reactor: Schedules timeouts and tells the time.
    @param accessLog: Where to write one line for each request, or L{None}.
        Only requests that come through a L{ProxySite} are written there;
        another L{server.Site} logs its requests itself (see L{_SiteLog}).
    """

    isLeaf = True

    def __init__(
        self,
        urlMap: URLMap,
        reactor: IReactorTime,
        accessLog: AccessLog | None = None,
    ):
        super().__init__()
        self.urlMap = urlMap
        self.reactor = reactor
        self.accessLog = None if accessLog is None else _SiteLog(accessLog)

    def render(self, request: Request):
        _Exchange(self, request).start()
        return server.NOT_DONE_YET


@implementer(IResponseReceiver)
class _Exchange:
    """
    One client request on its way to a backend and back, trying another
    server when one fails and the request can safely go again.
    """

    connection: UpstreamConnection | None = None
    attempts: Attempts | None = None
    lease: Lease | None = None
    _connecting = None
    _started = False
    _done = False
    _reused = False
    _lastError: UpstreamError | None = None
    upgrade = False
    _switched = False
    tunnel: Tunnel | None = None

    def __init__(self, proxy: ProxyResource, request: Request):
        self.proxy = proxy
        self.request = request

    @property
    def server(self) -> Server | None:
        """
        The server of the current attempt, or L{None} before the first.
        """
        return self.lease.server if self.lease is not None else None

    @property
    def tried(self) -> list[Server]:
        """
        The servers tried, in order.
        """
        return self.attempts.tried if self.attempts is not None else []

    @property
    def times(self) -> list[float]:
        """
        How long each attempt held its server, in order.
        """
        return self.attempts.times() if self.attempts is not None else []

    def start(self) -> None:
        request = self.request
        request.defaultContentType = None
        request.notifyFinish().addErrback(self._clientGone)
        hsts = getattr(getattr(request, "site", None), "hsts", None)
        if hsts is not None and request.isSecure():
            # HSTS over plain HTTP must be ignored (RFC 6797, section 8.1).
            request.responseHeaders.setRawHeaders(_HSTS, [hsts])
        refusal = getattr(request, "refusal", None)
        if refusal is not None:
            self._answer(*refusal)
            return
        if request.uri == b"*":
            # OPTIONS * asks about the server itself (RFC 9110, 9.3.7).
            request.responseHeaders.setRawHeaders(b"Allow", [ALLOWED_METHODS])
            self._answer(200, b"OK", b"")
            return
        if request.method in _REFUSED_METHODS:
            request.responseHeaders.setRawHeaders(b"Allow", [ALLOWED_METHODS])
            self._answer(405, b"Method Not Allowed", b"A proxy does not pass this method on.")
            return
        path = normalizePath(request.path)
        if path is None:
            self._answer(400, b"Bad Request", b"The request path is not valid.")
            return
        hosts = request.requestHeaders.getRawHeaders(b"host")
        match = self.proxy.urlMap.match(hosts[0] if hosts else None, path)
        if match is None:
            self._answer(404, b"Not Found", b"No route matches this path.")
            return
        self.pool = match.route.pool
        self.attempts = self.pool.select(_requestView(request, path, hosts))
        self.target = _target(request.uri, path, match.path)
        body = getattr(request, "body", None)
        if body is None:
            body = _FileBody(request.content)
        else:
            body.whenTooLarge(self._bodyTooLarge)
        self.body = body
        self.idempotent = request.method in _IDEMPOTENT
        self.upgrade = body.length == 0 and _mayUpgrade(request)
        if self.idempotent:
            body.keepForRetry(self.pool.config.retry_body_limit)
        self._attempt()

    def _attempt(self) -> None:
        """
        Send the request to the next server the pool picks.
        """
        request = self.request
        lease = self.attempts.next()
        if lease is None:
            self._noServer()
            return
        self.lease = lease
        server = lease.server
        self.head = requestHead(
            request.method,
            self.target,
            request.requestHeaders.getAllRawHeaders(),
            _clientHost(request).encode("ascii"),
            request.clientproto,
            self.attempts.view.secure,
            self.body.length,
            server.name.encode("ascii"),
            upgrade=self.upgrade,
        )
        self._connect(server.connections.acquire())

    def _noServer(self) -> None:
        if self._lastError is not None:
            self._answerError(self._lastError)
            return
        log.warn(
            "upstream {pool}: no server available for {method} {uri}",
            pool=self.pool.name,
            method=self.request.method.decode("ascii", "replace"),
            uri=self.request.uri.decode("ascii", "replace"),
        )
        self._answer(
            503, b"Service Unavailable", b"No server of this service is available now."
        )

    def _connect(self, connecting) -> None:
        self.connection = None
        self._connecting = connecting
        connecting.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, connection: UpstreamConnection) -> None:
        self._connecting = None
        if self._done:
            self.server.connections.release(connection)
            return
        self.connection = connection
        self._reused = connection.reused
        connection.sendRequest(
            self.head,
            self.request.method,
            self,
            chunked=self.body.length is None,
            upgrade=self.upgrade,
        )
        if self.body.length == 0:
            connection.finishBody()
        else:
            self.body.deliverTo(connection)

    def _connectFailed(self, reason: Failure) -> None:
        self._connecting = None
        if self._done:
            return
        if reason.check(UpstreamError):
            self.responseFailed(reason.value)
        else:
            self.responseFailed(UpstreamError(reason.getErrorMessage()))

    def _mayRetry(self) -> bool:
        """
        Whether the request may go to another server: not once any of the
        response has gone to the client; a request that reached a server
        only when it is idempotent and its body can be sent again; and
        within C{tries} and C{retry_timeout}.
        """
        if self._started or self._done:
            return False
        reached = self.connection is not None
        if reached and not (self.idempotent and self.body.replayable):
            return False
        return self.attempts.mayRetry()

    # IResponseReceiver

    def responseStarted(
        self, code: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        lease = self.lease
        if code == 101:
            # Only ever for an upgrade request: the connection parser
            # refuses a 101 to any other.
            lease.succeeded()
            self._switch(reason, headers)
            return
        if code in self.pool.config.passive_fail_on:
            failure = UpstreamError("status %d" % (code,))
            failure.status = code
            lease.failed(str(failure))
            if self._mayRetry() and self.attempts.canRetry():
                self._logFailure(failure, retrying=True)
                self._lastError = failure
                self.connection.abort()
                self.body.detach()
                self._endAttempt()
                self._attempt()
                return
        else:
            lease.succeeded()
        self._started = True
        request = self.request
        request.setResponseCode(code, reason)
        outgoing = request.responseHeaders
        outgoing.setRawHeaders(b"Server", [SERVER_NAME])
        for name, value in lease.affinityHeaders():
            outgoing.addRawHeader(name, value)
        ownHSTS = outgoing.hasHeader(_HSTS)
        for name, value in responseHeaders(headers):
            if ownHSTS and name.lower() == b"strict-transport-security":
                continue
            outgoing.addRawHeader(name, value)
        request.registerProducer(self.connection, True)

    def responseData(self, data: bytes) -> None:
        if self._switched:
            if self.tunnel is not None:
                self.tunnel.fromServer(data)
            return
        self.request.write(data)

    def responseDone(self) -> None:
        if self._switched:
            if self.tunnel is not None:
                self.tunnel.serverLost()
            return
        self._endAttempt()
        self.request.unregisterProducer()
        self.body.discard()
        self._finish()

    def responseFailed(self, reason: UpstreamError) -> None:
        if self._switched:
            if self.tunnel is not None:
                log.info(
                    "upstream {server} ({pool}): tunnel for {uri} broke: {reason}",
                    server=self.server.name,
                    pool=self.pool.name,
                    uri=self.request.uri.decode("ascii", "replace"),
                    reason=str(reason),
                )
                self.tunnel.serverLost()
            return
        if (
            isinstance(reason, UpstreamClosed)
            and reason.beforeResponse
            and self._reused
            and self.body.length == 0
            and self.idempotent
            and not self._done
        ):
            # The server closed a kept-alive connection as it was reused:
            # not a failure of the server; try a fresh connection to it.
            self._reused = False
            self._connect(self.server.connections.connect())
            return
        if isinstance(reason, UpstreamLocalError):
            self.lease.abandoned()
            self._endAttempt()
            self._localFailure(reason)
            return
        self.lease.failed(str(reason))
        self._endAttempt()
        if self._mayRetry():
            self._logFailure(reason, retrying=True)
            self._lastError = reason
            self.body.detach()
            self._attempt()
            return
        self._logFailure(reason, retrying=False)
        self.body.discard()
        if self._done:
            return
        if self._started:
            self.request.unregisterProducer()
            self._done = True
            self._log(self.request.code)
            _breakOff(self.request)
        else:
            self._answerError(reason)

    # Switching protocols.

    def _switch(self, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """
        The backend switched protocols: send its 101 on to the client, take
        the client's connection over from the HTTP channel and join the two
        connections.  The server stays counted as busy (C{active}) until the
        tunnel closes, when the access log line is written.
        """
        self._switched = True
        self._started = True
        request = self.request
        backend = self.connection.transport
        lines = [
            b"HTTP/1.1 101 ",
            reason or b"Switching Protocols",
            b"\r\nServer: ",
            SERVER_NAME,
            b"\r\n",
        ]
        for name, value in responseHeaders(headers, upgrade=True):
            lines += [name, b": ", value, b"\r\n"]
        lines.append(b"\r\n")
        tunnel = Tunnel(
            self.proxy.reactor, self.pool.config.tunnel_timeout, self._tunnelClosed
        )
        try:
            client, early = _takeOver(request, _TunnelClient(tunnel))
        except Exception:
            log.failure(
                "upstream {server} ({pool}): cannot take over the client's "
                "connection for the upgraded {uri}",
                server=self.server.name,
                pool=self.pool.name,
                uri=request.uri.decode("ascii", "replace"),
            )
            self._done = True
            self._endAttempt()
            self._log(502)
            backend.abortConnection()
            request.channel.transport.abortConnection()
            return
        self.tunnel = tunnel
        client.write(b"".join(lines))
        tunnel.join(client, backend)
        # The channel may have paused reading while the request was handled.
        client.resumeProducing()
        if early:
            tunnel.fromClient(early)

    def _tunnelClosed(self, tunnel: Tunnel) -> None:
        self._done = True
        self._endAttempt()
        self.request.sentLength = tunnel.toClient
        self._log(101)

    # Ending.

    def _endAttempt(self) -> None:
        """
        The current attempt no longer occupies its server.
        """
        if self.lease is not None:
            self.lease.release()

    def _localFailure(self, reason: UpstreamLocalError) -> None:
        """
        The proxy could not connect for want of its own resources: the
        server is not to blame and the next one would fail the same way, so
        the client gets a 503 at once.
        """
        log.error(
            "upstream {server} ({pool}): {reason} while proxying {method} {uri}; "
            "answering 503 (the server is not marked as failed)",
            server=self.server.name,
            pool=self.pool.name,
            reason=str(reason),
            method=self.request.method.decode("ascii", "replace"),
            uri=self.request.uri.decode("ascii", "replace"),
        )
        self.body.discard()
        self._answerError(reason)

    def _logFailure(self, reason: UpstreamError, retrying: bool) -> None:
        log.warn(
            "upstream {server} ({pool}) failed: {reason} while proxying "
            "{method} {uri}{next}",
            server=self.server.name,
            pool=self.pool.name,
            reason=str(reason),
            method=self.request.method.decode("ascii", "replace"),
            uri=self.request.uri.decode("ascii", "replace"),
            next="; trying another server" if retrying else "",
        )

    def _abandonAttempt(self) -> None:
        """
        Give up the current attempt for a reason of the client's, not the
        server's: its connection, or the connecting, goes.
        """
        lease = self.lease
        if lease is not None and lease.held:
            lease.abandoned()
            lease.release()
        if self._connecting is not None:
            self._connecting.cancel()
        if self.connection is not None:
            self.connection.abort()

    def _clientGone(self, reason: Failure) -> None:
        if self._done:
            return
        self._done = True
        self._abandonAttempt()
        self._log(499)

    def _bodyTooLarge(self) -> None:
        if self._done:
            return
        log.info(
            "request body of {method} {uri} is larger than client_max_body_size",
            method=self.request.method.decode("ascii", "replace"),
            uri=self.request.uri.decode("ascii", "replace"),
        )
        # Done first: abandoning the attempt may fail it, which must not
        # answer in its turn.
        self._done = True
        self._abandonAttempt()
        self.request.channel.persistent = False
        if self._started:
            self.request.unregisterProducer()
            self._log(413)
            _breakOff(self.request)
        else:
            self._answer(
                413,
                b"Content Too Large",
                b"The request body is larger than this server accepts.",
            )

    def _answerError(self, reason: UpstreamError) -> None:
        title = _GATEWAY_ERRORS.get(reason.status) or RESPONSES.get(reason.status, b"Error")
        self._answer(reason.status, title, str(reason).encode("utf-8"))

    def _answer(self, code: int, title: bytes, detail: bytes) -> None:
        self._done = True
        errorPage(self.request, code, title, detail)
        self._log(code)

    def _finish(self) -> None:
        self._done = True
        self.request.finish()
        self._log(self.request.code)

    def _log(self, status: int) -> None:
        if self.proxy.accessLog is not None:
            self.proxy.accessLog.record(
                self.request, status, [server.name for server in self.tried], self.times
            )


def _requestView(request: Request, path: bytes, hosts: list[bytes] | None) -> RequestView:
    """
    What the stages see of C{request}, whose normalised path is C{path} and
    C{Host} headers C{hosts}.
    """
    uri = request.uri
    authority = None
    if uri[:1] != b"/":
        _, separator, rest = uri.partition(b"://")
        if separator:
            authority = rest.partition(b"/")[0].partition(b"?")[0].rpartition(b"@")[2]
    headers = request.requestHeaders
    if authority is None and hosts:
        authority = hosts[0]
    return RequestView(
        clientHost(request.getClientAddress()),
        request.isSecure(),
        request.method,
        uri,
        path,
        normalizeHost(authority),
        [(name, value) for name, values in headers.getAllRawHeaders() for value in values],
    )


def _target(uri: bytes, path: bytes, newPath: bytes) -> bytes:
    """
    The request target sent to the backend, always in origin form
    (C{/path?query}): the client's own path and query, as the client
    encoded them, when the route keeps the path; else the path the route
    made of the normalised one, percent-encoded again (L{encodePath}), with
    the client's query.  No byte that the normalisation decoded goes on raw.
    """
    if newPath != path:
        _, separator, query = uri.partition(b"?")
        return encodePath(newPath) + separator + query
    if uri[:1] == b"/":
        return uri
    # Absolute form: what follows the authority.
    rest = uri.partition(b"://")[2]
    start = len(rest)
    for delimiter in (b"/", b"?"):
        found = rest.find(delimiter)
        if found != -1:
            start = min(start, found)
    origin = rest[start:]
    return origin if origin[:1] == b"/" else b"/" + origin


class _TunnelClient(Protocol):
    """
    The client's side of an upgraded connection, once taken over from the
    HTTP channel.
    """

    def __init__(self, tunnel: Tunnel):
        self.tunnel = tunnel

    def dataReceived(self, data: bytes) -> None:
        self.tunnel.fromClient(data)

    def connectionLost(self, reason: Failure = None) -> None:
        self.tunnel.clientLost(reason)


_upgradeHookMissing: list[bool] = []


def _mayUpgrade(request: Request) -> bool:
    """
    Whether C{request} asks for a protocol upgrade that the proxy can carry
    out: from an HTTP/1.1 client on Twisted's HTTP/1.1 channel (HTTP/2 has
    no such upgrade), which must offer the hook that hands its connection
    over.
    """
    if request.clientproto != b"HTTP/1.1" or not wantsUpgrade(request.requestHeaders):
        return False
    channel = request.channel
    if not isinstance(channel, HTTPChannel):
        return False
    if not callable(getattr(channel, "_protocolUpgradeForWebsockets", None)):
        if not _upgradeHookMissing:
            _upgradeHookMissing.append(True)
            log.error(
                "This Twisted's HTTPChannel has no _protocolUpgradeForWebsockets: "
                "WebSocket and other upgrades cannot be proxied; such requests "
                "go to the backend without their Upgrade header"
            )
        return False
    return True


def _takeOver(request: Request, protocol: Protocol) -> tuple[ITransport, bytes]:
    """
    Take the client's connection over from the HTTP channel: from now on
    C{protocol} gets what the client sends, and the channel's timeouts no
    longer apply.

    @return: The client's transport, and what the client sent after the
        request that the channel had kept for the next request.
    """
    channel = request.channel
    transport = channel.transport
    # The channel's idle timeout is off while it handles a request; it comes
    # back when the request is done, which this one never is.
    channel.setTimeout(None)
    channel._savedTimeOut = None
    early = b"".join(getattr(channel, "_dataBuffer", ()))
    channel._dataBuffer = []
    # The channel registered itself with the transport as its producer.
    networkProducer = getattr(channel, "_networkProducer", None)
    if networkProducer is not None:
        networkProducer.unregisterProducer()
    channel._protocolUpgradeForWebsockets(protocol)
    return transport, early


def _breakOff(request: Request) -> None:
    """
    End a response that cannot be completed so that the client cannot take
    the truncated body for a whole one.

    When the body is framed (chunked, or with a Content-Length), what was
    sent still goes out and the connection then closes with the framing
    unfinished; a body delimited by the close itself ends with a reset.  An
    HTTP/2 stream is reset (RST_STREAM), leaving the connection's other
    streams alone.
    """
    if request.transport is None:
        request.channel.abortConnection()
        return
    framed = request.chunked or request.responseHeaders.hasHeader(b"content-length")
    request.channel.persistent = False
    if framed:
        request.transport.loseConnection()
    else:
        request.transport.abortConnection()


def _clientHost(request: Request) -> str:
    address = request.getClientAddress()
    return getattr(address, "host", None) or "-"
