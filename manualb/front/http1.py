"""
The lean HTTP/1.1 front end: a Twisted protocol that parses requests with
httptools (llhttp, the parser of Node.js) and hands each to an L{Exchange}
through L{IDownstream}, with none of twisted.web's per-request machinery.

It serves what a L{manualb.web.ProxySite} serves, from the same site (its
resource's URL map and stage chain, its gatekeeper limits, trusted proxies,
HSTS and connection count, which a reload swaps in place), and holds
clients to the same limits as L{manualb.web.channel.ProxyChannel}: the
head, body, keep-alive and send timeouts, the request line and header
limits, C{client_max_body_size}, C{max_connections} and C{limit_conn};
requests that HTTP/1.1 does not allow (L{requestProblem}, and what llhttp
refuses itself: both framings at once, a repeated or malformed
C{Content-Length}, folded or control-laden header lines, bare CR or LF)
get a 400 before anything is forwarded.

Requests may be pipelined: they are answered in order, one exchange at a
time, while those behind it wait (their bodies buffered up to a limit, the
client paused beyond it).  A TLS client that negotiated C{h2} is handed to
Twisted's HTTP/2 stack (L{ProxyH2Connection}).
"""

from __future__ import annotations

from collections import deque

import httptools
from twisted.internet.interfaces import IProtocolNegotiationFactory, IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from manualb.bodies import StreamingBody
from manualb.config import GatekeeperConfig
from manualb.exchange import Exchange
from manualb.forwarding import connectionTokens
from manualb.front.request import BodyReader, HeaderLines, LeanRequest
from manualb.rules import errorResponse, requestProblem, serverNameOf
from manualb.stages import requestView
from manualb.transports import Deadline, cancelCall, setNoDelay
from manualb.view import clientHost
from manualb.web import LINGERING_TIME
from manualb.web.channel import Overloaded
from manualb.web.uploadsplicing import SPLICE_MIN, SplicingBody

log = Logger()

# The life of the request being read, for its timeouts.
_IDLE = 0  # between requests: keepalive_timeout
_HEAD = 1  # the head arrives: client_header_timeout from its first byte
_BODY = 2  # the body arrives: client_body_timeout between two reads
_WAITING = 3  # the request is in; the proxy has it
_REFUSED = 4  # answered with an error; nothing more is read

# How many pipelined requests may wait behind the one answered before the
# client is no longer read.
_PIPELINE_LIMIT = 16

_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# What pauses the reading of pipelined requests beyond _PIPELINE_LIMIT.
_PIPELINE = "pipeline"


class _Stop(Exception):
    """
    Raised from a parser callback to stop parsing what was received.
    """


#: The parser of a closed connection: one that calls nothing.
_CLOSED_PARSER = httptools.HttpRequestParser(object())


@implementer(IPushProducer)
class HTTP1Connection(Protocol):
    """
    An HTTP/1.x client connection of the proxy, served by the lean front
    end, or, when ALPN chose C{h2}, handed over to Twisted's HTTP/2 stack.

    @ivar site: The L{manualb.web.ProxySite} whose parts it serves.
    @ivar gatekeeper: The limits it is held to (the site's when it opened).
    @ivar limit: Where the connection is counted while it is open (a
        L{manualb.web.channel.ConnectionLimit}), or L{None}.
    @ivar client: The client address it is counted against for
        C{limit_conn}, or L{None}.
    @ivar persistent: Whether the connection stays open after the response
        being sent.
    @ivar draining: Whether the proxy is stopping (L{drain}).
    @ivar writePaused: Whether the client takes no more of the response for
        now.
    """

    limit = None
    client: str | None = None

    def __init__(self, site) -> None:
        self.site = site
        self.gatekeeper: GatekeeperConfig = getattr(site, "gatekeeper", GatekeeperConfig())
        self.clock = site.reactor
        self.persistent = True
        self.draining = False
        self.writePaused = False
        self.phase = _IDLE
        self._heads = 0
        self._begun = False
        self._last: LeanRequest | None = None
        self._requests: deque[LeanRequest] = deque()
        self._reading: LeanRequest | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._deadline = Deadline(self.clock, self._timedOut)
        self._sendTimer = None
        self._lingering = None
        self._readPauses: set = set()
        self._headSize = 0
        self._lineSeen = False
        self._url = b""
        self._lines: list[tuple[bytes, bytes]] = []
        self._headerRoom = 0
        self._requestLine: bytes | None = None
        # What the client sent after an upgrade request, until the upgrade
        # is carried out or refused.
        self._early: list[bytes] | None = None
        self._upgrading: LeanRequest | None = None
        # After an upgrade request with a body: what parses that body.
        self._bodyOf: LeanRequest | None = None
        # The protocol the connection was handed to (HTTP/2, or a tunnel).
        self._next: Protocol | None = None
        self._negotiated = False
        self._registered = False
        self._secure: bool | None = None
        self._peer = ""
        self._host = ""
        self._broken: tuple[int, bytes] | None = None

    # The connection.

    def makeConnection(self, transport) -> None:
        setNoDelay(transport)
        super().makeConnection(transport)

    def connectionMade(self) -> None:
        transport = self.transport
        self._peer = clientHost(transport.getPeer())
        self._host = clientHost(transport.getHost())
        transport.registerProducer(self, True)
        self._registered = True
        # The first request's head is timed from the connection's start.
        self._deadline.set(self.gatekeeper.client_header_timeout)

    def getHost(self):
        transport = self.transport
        return None if transport is None else transport.getHost()

    def abortConnection(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.abortConnection()

    def drain(self) -> int:
        """
        The proxy is stopping: close at once when idle between requests,
        else once the requests in hand are answered (saying C{Connection:
        close} on a response not started yet).

        @return: How many requests the connection is busy with.
        """
        self.draining = True
        if self._next is not None:
            drain = getattr(self._next, "drain", None)
            return 0 if drain is None else drain()
        if self.phase == _REFUSED:
            return 0
        self.persistent = False
        if not self._requests and self.phase == _IDLE:
            self._close()
            return 0
        return len(self._requests) or 1

    def connectionLost(self, reason: Failure = None) -> None:
        self._deadline.stop()
        self._sendTimer = cancelCall(self._sendTimer)
        self._lingering = cancelCall(self._lingering)
        try:
            if self._next is not None:
                self._next.connectionLost(reason)
            else:
                requests, self._requests = self._requests, deque()
                for request in requests:
                    if not request.finished:
                        request.finished = True
                        request.body.discard()
                        if request.gone is not None:
                            request.gone(reason)
                    # Parted from its exchange, as when it is done.
                    request.exchange = request.gone = None
        finally:
            self.transport = None
            # Nothing is read any more.  The parser, which calls methods of
            # this connection, and the last requests, which name it, would
            # otherwise keep it in cycles for the collector.
            self._parser = _CLOSED_PARSER
            self._last = self._reading = self._bodyOf = None
            if self.limit is not None:
                limit, self.limit = self.limit, None
                limit.closed(self)

    def _close(self) -> None:
        """
        Close once what was written is sent, as long as the client keeps
        taking it (C{send_timeout}).
        """
        self.persistent = False
        self._deadline.clear()
        transport = self.transport
        if transport is None:
            return
        self._armSendTimer()
        if self._registered:
            # TLS waits for a registered producer to go before it closes.
            self._registered = False
            transport.unregisterProducer()
        transport.loseConnection()

    # Reading.

    def dataReceived(self, data: bytes) -> None:
        if self._next is not None:
            self._next.dataReceived(data)
            return
        if not self._negotiated:
            self._negotiated = True
            if getattr(self.transport, "negotiatedProtocol", None) == b"h2":
                self._becomeH2(data)
                return
        phase = self.phase
        if phase == _REFUSED:
            return
        if self._early is not None:
            self._early.append(data)
            return
        if phase == _IDLE:
            self._startHead()
        elif phase == _BODY:
            self._deadline.set(self.gatekeeper.client_body_timeout)
        self._begun = False
        self._feed(data)
        if self.phase == _BODY and self._bodyOf is None:
            # All that came is parsed: the rest of a body may be spliced.
            body = getattr(self._reading, "body", None)
            if type(body) is SplicingBody and self._requests[0] is self._reading:
                body.offer()
        if self.phase == _HEAD and self._early is None and self.transport is not None:
            self._headOverflows(data)

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._upgraded(data[e.args[0]:])
        except httptools.HttpParserCallbackError as e:
            if not isinstance(e.__context__, _Stop):
                log.failure("parsing a request", Failure(e.__context__ or e))
                self._refuse(400, b"The request is not valid HTTP.")
        except httptools.HttpParserError:
            self._refuse(400, b"The request is not valid HTTP.")

    def _startHead(self) -> None:
        self.phase = _HEAD
        if self._heads:
            # A later request's head is timed from its first byte.
            self._deadline.set(self.gatekeeper.client_header_timeout)
        self._heads += 1

    def _headOverflows(self, data: bytes) -> None:
        """
        Count the bytes of a head that is still arriving, so that one whose
        request line or header line never ends is refused once past its
        limit (the parser keeps an unfinished line to itself).
        """
        if self._begun:
            # The head began in these bytes, after the end of another
            # message's (as near as can be told).
            end = data.rfind(b"\r\n\r\n")
            part = data if end < 0 else data[end + 4 :]
            self._headSize = len(part)
            self._lineSeen = b"\n" in part.lstrip(b"\r\n")
        else:
            self._headSize += len(data)
            if not self._lineSeen and b"\n" in data:
                self._lineSeen = True
        gatekeeper = self.gatekeeper
        if self._headSize > gatekeeper.max_request_line + gatekeeper.max_header_size + 4:
            if self._lineSeen or self._requestLine is not None:
                if self._requestLine is None and self._lines:
                    self._requestLine = self._startLine()
                self._refuse(431, b"The request headers are too large.")
            else:
                self._refuse(414, b"The request line is too long.")

    def _startLine(self) -> bytes:
        """
        The request line of the head being read, as far as the parser has
        it (for the access log line of a refused head).
        """
        parser = self._parser
        return b"%s %s HTTP/%s" % (
            parser.get_method(), self._url, parser.get_http_version().encode("ascii")
        )

    # The parser's callbacks.

    def on_message_begin(self) -> None:
        if self._bodyOf is not None:
            return
        if self.phase == _REFUSED or self.transport is None:
            raise _Stop()
        if self.phase != _HEAD:
            self._startHead()
        self._begun = True
        self._url = b""
        self._lines = []
        self._headerRoom = self.gatekeeper.max_header_size
        self._requestLine = None

    def on_url(self, url: bytes) -> None:
        if self._bodyOf is not None:
            return
        self._url += url
        if len(self._url) + 16 > self.gatekeeper.max_request_line:
            if len(self._url) + len(self._parser.get_method()) + 10 > self.gatekeeper.max_request_line:
                self._refuse(414, b"The request line is too long.")
                raise _Stop()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._bodyOf is not None:
            return
        lines = self._lines
        if not lines:
            self._lineSeen = True
        lines.append((name, value))
        room = self._headerRoom = self._headerRoom - len(name) - len(value) - 4
        if room < 0 or len(lines) > self.gatekeeper.max_headers:
            self._requestLine = self._startLine()
            self._refuse(431, b"The request headers are too large.")
            raise _Stop()

    def on_headers_complete(self) -> None:
        if self._bodyOf is not None:
            return
        parser = self._parser
        method = parser.get_method()
        target = self._url
        version = _VERSIONS.get(parser.get_http_version())
        lines = self._lines
        self._headSize = 0
        self._lineSeen = False
        if version is None:
            self._requestLine = self._startLine()
            self._refuse(400, b"The request is not valid HTTP.")
            raise _Stop()
        self._requestLine = b"%s %s %s" % (method, target, version)
        gatekeeper = self.gatekeeper
        if len(target) + len(method) + 10 > gatekeeper.max_request_line:
            self._refuse(414, b"The request line is too long.")
            raise _Stop()
        request = LeanRequest(self)
        request.method = method
        request.version = version
        request.headers = lines
        length = None
        chunked = False
        close = version != b"HTTP/1.1"
        expect = upgrade = False
        badFraming = False
        hosts = []
        lengths = []
        for name, value in lines:
            size = len(name)
            if size == 4 and name.lower() == b"host":
                hosts.append(value)
            elif size == 14 and name.lower() == b"content-length":
                lengths.append(value)
                length = int(value)
            elif size == 17 and name.lower() == b"transfer-encoding":
                if chunked or value.strip().lower() != b"chunked":
                    badFraming = True
                chunked = True
            elif size == 10 and name.lower() == b"connection":
                tokens = connectionTokens([value])
                if b"close" in tokens:
                    close = True
                    request.closeHeader = True
                if b"upgrade" in tokens:
                    upgrade = True
            elif size == 6 and name.lower() == b"expect":
                expect = value.lower() == b"100-continue"
        site = self.site
        headers = HeaderLines(lines, hosts, lengths)
        problem = requestProblem(method, target, version, headers, gatekeeper)
        if problem is None and badFraming:
            problem = (400, b"Bad Request", b"The request framing is not valid.")
        if self._secure is None:
            self._secure = ISSLTransport(self.transport, None) is not None
        client = peer = self._peer
        trusted = site.trustedProxies
        if trusted is not None:
            client = trusted.clientAddress(client, lines)
        request.view = requestView(
            client,
            self._secure,
            method,
            target,
            lines,
            self._host,
            trusted is not None and trusted.trusts(peer),
            self.clock.seconds(),
        )
        request.hsts = site.hsts
        requests = self._requests
        self._last = request
        if problem is not None:
            # Answered without reading the body, which cannot be trusted
            # to be framed as it says: the connection closes after it.
            request.refusal = problem
            request.persistent = False
            request.closeHeader = True
            self.phase = _REFUSED
            self._deadline.clear()
            requests.append(request)
            if len(requests) == 1:
                self._activate(request)
            raise _Stop()
        request.persistent = not close and not self.draining
        if self.draining:
            request.closeHeader = True
        request.upgrade = (
            upgrade
            and version == b"HTTP/1.1"
            and not chunked
            and not length
            and headers.getRawHeaders(b"upgrade") is not None
        )
        if chunked or length:
            if not chunked and length >= SPLICE_MIN:
                request.body = SplicingBody(
                    length, BodyReader(self), gatekeeper.client_max_body_size, request
                )
            else:
                request.body = StreamingBody(
                    None if chunked else length, BodyReader(self), gatekeeper.client_max_body_size
                )
            request.expectContinue = expect and version == b"HTTP/1.1"
            self.phase = _BODY
            self._deadline.set(gatekeeper.client_body_timeout)
            self._reading = request
        else:
            self.phase = _WAITING
            self._deadline.clear()
        requests.append(request)
        if len(requests) == 1:
            self._activate(request)
        elif len(requests) > _PIPELINE_LIMIT:
            self._pauseReading(_PIPELINE)

    def on_body(self, data: bytes) -> None:
        request = self._bodyOf or self._reading
        if request is not None:
            request.body.dataReceived(data)

    def on_message_complete(self) -> None:
        request = self._bodyOf
        if request is not None:
            # The body of an upgrade request, which is not carried out: what
            # follows is the next request.
            self._bodyOf = None
        else:
            request = self._reading
            if request is not None and self._parser.should_upgrade():
                # Its body, which the parser takes for the upgraded
                # protocol's bytes, is read on its own (see _upgraded).
                return
        self._reading = None
        if self.phase != _REFUSED:
            if self._requests:
                self.phase = _WAITING
                self._deadline.clear()
            elif self.phase != _IDLE:
                self.phase = _IDLE
                self._deadline.set(self.gatekeeper.keepalive_timeout)
        if request is not None:
            request.body.allReceived()
            if request.finished:
                # Answered before its body was in: now the connection closes.
                self._lingering = cancelCall(self._lingering)
                self._close()
                raise _Stop()

    def _upgraded(self, rest: bytes) -> None:
        """
        The parser stopped after a request that asks for an upgrade (or a
        C{CONNECT}, which the request checks refuse): what follows is kept
        until the exchange carries the upgrade out or answers without it.
        """
        if self.phase == _REFUSED or self.transport is None:
            return
        request = self._reading
        self._parser = httptools.HttpRequestParser(self)
        if request is not None:
            # A body to read first, with a parser of its own framing.
            self._bodyOf = request
            if request.body.length is None:
                framing = b"Transfer-Encoding: chunked"
            else:
                framing = b"Content-Length: %d" % (request.body.length,)
            self._feed(b"POST / HTTP/1.1\r\n" + framing + b"\r\n\r\n")
            self._feed(rest)
            return
        self._early = [rest]
        self._upgrading = self._last
        if self._last is None or self._last.finished:
            self._resumeAfterUpgrade()

    def _spliced(self, request: LeanRequest, left: int) -> None:
        """
        The body of C{request} went past the parser (spliced) but for its
        last C{left} bytes: they, and whatever follows them, are parsed
        again.
        """
        if self._reading is not request:
            return
        self._parser = httptools.HttpRequestParser(self)
        self._bodyOf = request
        self._feed(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (left,))

    def _resumeAfterUpgrade(self) -> None:
        """
        The upgrade was not carried out: what the client sent after the
        request is parsed as the next request.
        """
        early, self._early = self._early, None
        self._upgrading = None
        self._parser = httptools.HttpRequestParser(self)
        data = b"".join(early or ())
        if data and self.transport is not None:
            self.dataReceived(data)

    # Refusing.

    def _refuse(self, code: int, detail: bytes) -> None:
        """
        Answer C{code} and close: the request could not be read, so nothing
        after it can be either.
        """
        if self.phase == _REFUSED:
            return
        self.phase = _REFUSED
        self.persistent = False
        self._deadline.clear()
        log.info(
            "refused client {peer}: {code} {detail}",
            peer=self._peer or "-",
            code=code,
            detail=detail.decode("ascii"),
        )
        reading = self._reading
        if reading is not None and reading in self._requests and reading is not self._requests[0]:
            # A pipelined request whose body broke: it is not answered.
            self._requests.remove(reading)
            reading.body.discard()
        self._reading = None
        if any(request.started for request in self._requests):
            # The client already has (part of) an answer: a second would be
            # taken for the next request's.
            self._close()
            return
        if self._requests:
            first = self._requests[0]
            if first.exchange is not None and not first.body.complete:
                # Its body broke while it was proxied.
                self._writeError(code, detail)
                self._close()
                return
            # Answered once the requests before it are.
            self._broken = (code, detail)
            return
        self._writeError(code, detail)
        self._close()

    def _writeError(self, code: int, detail: bytes) -> None:
        answer = errorResponse(code, detail, serverNameOf(self.site))
        transport = self.transport
        if transport is None:
            return
        transport.write(answer)
        accessLog = getattr(self.site.resource, "accessLog", None)
        if accessLog is not None:
            accessLog.recordUnread(transport.getPeer(), self._requestLine, code, len(answer))

    def _timedOut(self) -> None:
        phase = self.phase
        if phase in (_HEAD, _BODY):
            log.info(
                "client {peer} took too long to send its request ({phase})",
                peer=self._peer or "-",
                phase="head" if phase == _HEAD else "body",
            )
            if not any(request.started for request in self._requests) and (
                phase == _HEAD or not self._requests
            ):
                self._writeError(408, b"The request took too long to arrive.")
            self.phase = _REFUSED
        self._close()

    # Answering, in order.

    def _activate(self, request: LeanRequest) -> None:
        """
        Hand C{request} to an exchange: it is the first the connection has
        not answered yet.
        """
        if request.expectContinue and request.refusal is None and not request.body.complete:
            self.transport.write(_CONTINUE)
        resource = self.site.resource
        request.exchange = exchange = Exchange(
            request,
            resource.stages,
            self.clock,
            resource.accessLog,
            resource.recent,
            resource.listener,
            resource.metrics,
        )
        exchange.start()

    def _responseDone(self, request: LeanRequest) -> None:
        requests = self._requests
        if not requests or requests[0] is not request:
            return
        if not request.body.complete:
            # Answered before the body is in: the rest is read and dropped
            # for a while, then the connection closes.
            request.body.discard()
            self.persistent = False
            if self._reading is request and self.transport is not None:
                self._lingering = self.clock.callLater(LINGERING_TIME, self._close)
                return
        requests.popleft()
        # The exchange and its request refer to each other: parted now, they
        # are freed as soon as the exchange is done, not by the collector.
        request.exchange = request.gone = None
        if not request.persistent:
            self.persistent = False
        if not self.persistent or self.transport is None:
            self._requests.clear()
            self._close()
            return
        if self._upgrading is request:
            self._resumeAfterUpgrade()
            return
        if requests:
            if len(requests) <= _PIPELINE_LIMIT:
                self._resumeReading(_PIPELINE)
            self._activate(requests[0])
            return
        if self._broken is not None:
            code, detail = self._broken
            self._writeError(code, detail)
            self._close()
            return
        if self.phase == _WAITING:
            self.phase = _IDLE
            self._deadline.set(self.gatekeeper.keepalive_timeout)

    def _takeOver(self, request: LeanRequest, protocol: Protocol):
        """
        Hand the connection to C{protocol}, an upgraded protocol's.
        """
        transport = self.transport
        if transport is None or self._requests[0] is not request:
            raise RuntimeError("the connection cannot be taken over")
        request.finished = True
        self._requests.clear()
        self._deadline.stop()
        self._sendTimer = cancelCall(self._sendTimer)
        self._registered = False
        transport.unregisterProducer()
        early = b"".join(self._early or ())
        self._early = None
        self._upgrading = None
        self._next = protocol
        protocol.makeConnection(transport)
        if self._readPauses:
            self._readPauses.clear()
            transport.resumeProducing()
        return transport, early

    def _becomeH2(self, data: bytes) -> None:
        transport = self.transport
        self._registered = False
        transport.unregisterProducer()
        self._deadline.stop()
        site = self.site
        from manualb.web.http2 import ProxyH2Connection

        channel = ProxyH2Connection(site.reactor, self.gatekeeper)
        channel.requestFactory = site.requestFactory
        channel.site = site
        channel.factory = site
        channel.timeOut = site.timeOut
        channel.callLater = site.reactor.callLater
        self._next = channel
        channel.makeConnection(transport)
        transport.registerProducer(channel, True)
        channel.dataReceived(data)

    # Back-pressure.

    def _pauseReading(self, reason) -> None:
        pauses = self._readPauses
        if reason in pauses:
            return
        pauses.add(reason)
        if len(pauses) == 1 and self.transport is not None:
            self.transport.pauseProducing()

    def _resumeReading(self, reason) -> None:
        pauses = self._readPauses
        if reason not in pauses:
            return
        pauses.discard(reason)
        if not pauses and self.transport is not None:
            self.transport.resumeProducing()

    def pauseProducing(self) -> None:
        # The client takes no more of the response for now.
        self.writePaused = True
        self._armSendTimer()
        if self._requests:
            producer = self._requests[0].producer
            if producer is not None:
                producer.pauseProducing()

    def resumeProducing(self) -> None:
        self.writePaused = False
        self._sendTimer = cancelCall(self._sendTimer)
        if self._requests:
            producer = self._requests[0].producer
            if producer is not None:
                producer.resumeProducing()

    def stopProducing(self) -> None:
        pass

    def quiet(self) -> bool:
        """
        Whether nothing is read from the client now (the requests in hand are
        in whole), so that its reading may stop a while: a splice stops it.
        """
        return self.phase == _WAITING and self._next is None

    def _armSendTimer(self) -> None:
        if self._sendTimer is None and self.transport is not None:
            self._sendTimer = self.clock.callLater(
                self.gatekeeper.send_timeout, self._sendTimedOut
            )

    def _sendTimedOut(self) -> None:
        self._sendTimer = None
        if self.transport is None:
            return
        log.info(
            "client {peer} took nothing for {seconds}s (send_timeout): closing",
            peer=self._peer or "-",
            seconds=self.gatekeeper.send_timeout,
        )
        self.transport.abortConnection()


@implementer(IProtocolNegotiationFactory)
class LeanFactory(ServerFactory):
    """
    Serves a listener's connections with the lean front end
    (L{HTTP1Connection}), from the parts of C{site}, a
    L{manualb.web.ProxySite}: a reload that changes them in place changes
    what this serves too.
    """

    noisy = False

    def __init__(self, site) -> None:
        self.site = site

    def buildProtocol(self, addr):
        site = self.site
        connections = site.connections
        if connections.full:
            refusal = Overloaded()
            refusal.server = serverNameOf(site)
            return refusal
        most = site.gatekeeper.limit_conn
        connection = HTTP1Connection(site)
        if most and not connections.admit(connection, clientHost(addr), most):
            refusal = Overloaded()
            refusal.limit = "limit_conn"
            refusal.server = serverNameOf(site)
            return refusal
        connections.opened(connection)
        return connection

    def startFactory(self) -> None:
        self.site.doStart()

    def stopFactory(self) -> None:
        self.site.doStop()

    def logPrefix(self) -> str:
        # The port's "... starting on PORT" line reads as it always has.
        return self.site.logPrefix()

    def acceptableProtocols(self) -> list[bytes]:
        return self.site.acceptableProtocols()
