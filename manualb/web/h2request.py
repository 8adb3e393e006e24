"""
The client's side of one HTTP/2 request of the proxy, as its exchange
speaks to it (L{IDownstream}): the stream's response written straight to
its connection, without a twisted.web L{Request} in between.

L{manualb.web.http2.ProxyH2Stream} uses it when the site's resource is the
proxy's own (it has a stage chain); any other resource gets Twisted's
request.  To the stream it looks like the part of a twisted.web request
that a stream speaks to (C{handleContentChunk}, C{requestReceived},
C{connectionLost}, C{startedWriting}).
"""

from __future__ import annotations


from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from manualb.bodies import NO_BODY, STILL, StreamingBody
from manualb.exchange import Exchange
from manualb.interfaces import IDownstream
from manualb.web.h2output import CONNECTION_FIELDS

_NO_BODY_CODES = frozenset([204, 304])




@implementer(IDownstream)
class StreamDownstream:
    """
    One request of an HTTP/2 stream (a L{manualb.web.http2.ProxyH2Stream}),
    the client's side of its exchange.

    @ivar startedWriting: Whether the response's HEADERS frame is made.
    """

    __slots__ = (
        "stream",
        "view",
        "version",
        "refusal",
        "hsts",
        "body",
        "method",
        "head",
        "startedWriting",
        "finished",
        "bodyless",
        "sent",
        "gone",
        "date",
    )

    def __init__(self, stream, view, method: bytes, length: int | None, limit: int, hsts, date):
        """
        @param stream: The stream.
        @param view: The request, as the stages see it.
        @param length: The declared length of the body, 0 for none, L{None}
            when unknown.
        @param limit: C{client_max_body_size}.
        @param date: Returns the C{Date} of a response sent now.
        """
        self.stream = stream
        self.view = view
        self.version = b"HTTP/2"
        self.refusal = None
        self.hsts = hsts
        self.method = method
        self.date = date
        if length == 0:
            self.body = NO_BODY
        else:
            self.body = StreamingBody(length, self._reader, limit)
        self.head = None
        self.startedWriting = False
        self.finished = False
        self.bodyless = False
        self.sent = 0
        self.gone = None

    def start(self, stages, reactor, accessLog, recent, listener, metrics) -> None:
        """
        Hand the request to an exchange.
        """
        Exchange(self, stages, reactor, accessLog, recent, listener, metrics).start()

    def _reader(self) -> IPushProducer:
        return STILL if self.finished else self.stream

    # As the stream sees it.

    def handleContentChunk(self, data: bytes) -> None:
        self.body.dataReceived(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if isinstance(self.body, StreamingBody):
            self.body.allReceived()

    def connectionLost(self, reason) -> None:
        if self.finished:
            return
        self.finished = True
        gone, self.gone = self.gone, None
        if gone is not None:
            gone(reason)

    # IDownstream

    def mayUpgrade(self) -> bool:
        return False

    def whenGone(self, callback) -> None:
        self.gone = callback

    def startResponse(self, code: int, reason: bytes, headers) -> None:
        fields = [(b":status", b"%d" % (code,)), (b"date", self.date())]
        append = fields.append
        for name, value in headers:
            name = name.lower()
            if name not in CONNECTION_FIELDS:
                append((name, value))
        self.head = fields
        self.bodyless = self.method == b"HEAD" or code in _NO_BODY_CODES

    def _sendHead(self) -> None:
        head, self.head = self.head, None
        if head is not None:
            self.startedWriting = True
            stream = self.stream
            stream._conn.writeFields(stream.streamID, head)

    def write(self, data: bytes) -> None:
        if self.finished:
            return
        self._sendHead()
        if self.bodyless or not data:
            return
        self.sent += len(data)
        stream = self.stream
        stream._conn.writeDataToStream(stream.streamID, data)

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.gone = None
        self._sendHead()
        if not getattr(self.body, "complete", True):
            # The stream ends on its own; the rest of the body is dropped.
            self.body.discard()
        stream = self.stream
        stream._conn.endRequest(stream.streamID)

    def breakOff(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.gone = None
        self.head = None
        self.stream.abortConnection()

    def abort(self) -> None:
        self.breakOff()

    def closeAfterResponse(self) -> None:
        # Other streams may go on.
        pass

    def registerProducer(self, producer) -> None:
        stream = self.stream
        stream.registerProducer(producer, True)
        if not stream._conn.mayProduce(stream.streamID):
            stream.pauseOutput()

    def unregisterProducer(self) -> None:
        self.stream.unregisterProducer()

    def takeOver(self, protocol):
        raise RuntimeError("an HTTP/2 stream cannot be taken over")

    def logTo(self, accessLog, status, upstreams, times, sent=None, passage=None) -> None:
        if sent is None:
            sent = self.sent
        accessLog.record(self.view, self.version, status, sent, upstreams, times, passage)
