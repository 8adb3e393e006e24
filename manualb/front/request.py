"""
The client's side of one request of the lean HTTP/1.1 front end
(L{manualb.front.http1}), as its exchange speaks to it (L{IDownstream}):
the response written straight to the connection, its head in one write.
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from manualb.bodies import NO_BODY
from manualb.forwarding import headerBlock
from manualb.interfaces import IDownstream
from manualb.transports import sendNow
from manualb.web.splicing import takeBody

_NO_BODY_CODES = frozenset([204, 304])
_LAST_CHUNK = b"0\r\n\r\n"




class HeaderLines:
    """
    The request's header lines as L{requestProblem} and L{wantsUpgrade}
    read them (C{getRawHeaders}), without building a L{Headers}.
    """

    __slots__ = ("lines", "hosts", "lengths")

    def __init__(
        self, lines: list[tuple[bytes, bytes]], hosts: list[bytes], lengths: list[bytes]
    ) -> None:
        """
        @param hosts: The values of the C{Host} lines, which the front end
            found as it read the head.
        @param lengths: Those of the C{Content-Length} lines.
        """
        self.lines = lines
        self.hosts = hosts
        self.lengths = lengths

    def getRawHeaders(self, name: bytes, default=None):
        if name == b"host":
            return self.hosts or default
        if name == b"content-length":
            return self.lengths or default
        size = len(name)
        found = None
        # A loop, not a comprehension, which would make a function each
        # time.
        for key, value in self.lines:
            if len(key) == size and key.lower() == name:
                if found is None:
                    found = [value]
                else:
                    found.append(value)
        return default if found is None else found


@implementer(IPushProducer)
class BodyReader:
    """
    What a request body pauses and resumes: the reading of its connection,
    among the other reasons that connection may have to stop reading.
    """

    __slots__ = ("connection",)

    def __init__(self, connection) -> None:
        self.connection = connection

    def pauseProducing(self) -> None:
        self.connection._pauseReading(self)

    def resumeProducing(self) -> None:
        self.connection._resumeReading(self)

    def stopProducing(self) -> None:
        pass

    def __call__(self) -> "BodyReader":
        # What a StreamingBody asks for its reader.
        return self


@implementer(IDownstream)
class LeanRequest:
    """
    One request of an L{HTTP1Connection}, the client's side of its
    exchange.
    """

    __slots__ = (
        "connection",
        "view",
        "version",
        "refusal",
        "hsts",
        "method",
        "body",
        "headers",
        "persistent",
        "closeHeader",
        "expectContinue",
        "upgrade",
        "started",
        "finished",
        "head",
        "chunked",
        "bodyless",
        "framed",
        "sent",
        "gone",
        "producer",
        "exchange",
    )

    def __init__(self, connection) -> None:
        self.connection = connection
        self.refusal = None
        self.body = NO_BODY
        self.closeHeader = False
        self.expectContinue = False
        self.upgrade = False
        self.started = False
        self.finished = False
        self.head = None
        self.chunked = False
        self.bodyless = False
        self.framed = False
        self.sent = 0
        self.gone = None
        self.producer = None
        self.exchange = None

    # IDownstream

    def mayUpgrade(self) -> bool:
        return self.upgrade

    def whenGone(self, callback) -> None:
        self.gone = callback

    def startResponse(self, code: int, reason: bytes, headers) -> None:
        connection = self.connection
        self.started = True
        hasLength = False
        for name, _ in headers:
            if len(name) == 14 and name.lower() == b"content-length":
                hasLength = True
                break
        lines = [
            self.version,
            b" %d " % (code,),
            reason,
            b"\r\nDate: ",
            connection.site.date(),
            b"\r\n",
            headerBlock(headers),
        ]
        append = lines.append
        bodyless = self.bodyless = (
            self.method == b"HEAD" or code in _NO_BODY_CODES or code < 200
        )
        if not bodyless and not hasLength:
            if self.version == b"HTTP/1.1":
                self.chunked = True
                append(b"Transfer-Encoding: chunked\r\n")
            else:
                # Delimited by the close.
                self.persistent = False
        self.framed = self.chunked or hasLength
        if connection.draining and not self.closeHeader:
            self.closeHeader = True
            self.persistent = False
        if self.closeHeader:
            append(b"Connection: close\r\n")
        append(b"\r\n")
        self.head = b"".join(lines)

    def write(self, data: bytes) -> None:
        if self.finished or self.connection.transport is None:
            return
        head = self.head
        if self.bodyless:
            if head is not None:
                self.head = None
                sendNow(self.connection.transport, head)
            return
        if not data:
            return
        self.sent += len(data)
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        if head is not None:
            self.head = None
            data = head + data
        sendNow(self.connection.transport, data)

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        connection = self.connection
        transport = connection.transport
        if transport is not None:
            head = self.head
            if head is not None:
                self.head = None
                sendNow(transport, head + _LAST_CHUNK if self.chunked else head)
            elif self.chunked:
                sendNow(transport, _LAST_CHUNK)
        connection._responseDone(self)

    def breakOff(self) -> None:
        self.finished = True
        connection = self.connection
        connection.persistent = False
        transport = connection.transport
        if transport is None:
            return
        self.head = None
        if self.framed:
            connection._close()
        else:
            transport.abortConnection()

    def abort(self) -> None:
        transport = self.connection.transport
        if transport is not None:
            transport.abortConnection()

    def closeAfterResponse(self) -> None:
        self.persistent = False

    def registerProducer(self, producer) -> None:
        self.producer = producer
        if self.connection.writePaused:
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self.producer = None

    def takeBody(self, upstream, left: int) -> bool:
        """
        Offered the rest of a body of known length that C{upstream} reads:
        spliced from socket to socket when it can be
        (L{manualb.web.splicing.takeBody}).
        """
        return takeBody(self, upstream, left)

    def takeOver(self, protocol):
        return self.connection._takeOver(self, protocol)

    def logTo(self, accessLog, status, upstreams, times, sent=None, passage=None) -> None:
        if sent is None:
            sent = self.sent
        accessLog.record(self.view, self.version, status, sent, upstreams, times, passage)
