"""
The HTTP/2 side of a client connection: Twisted's L{H2Connection}, bounded
by the C{[gatekeeper]} limits.

HTTP/2 limits
=============

A client connection that negotiated C{h2} is held to the same
C{[gatekeeper]} limits as an HTTP/1.1 one, and to a few of HTTP/2's own:

  - C{SETTINGS_MAX_HEADER_LIST_SIZE} is advertised from C{max_header_size},
    C{max_request_line} and C{max_headers} (RFC 7541 counts 32 bytes more
    for each field).  A decoded header list above it closes the connection
    (GOAWAY C{ENHANCE_YOUR_CALM}).  Within it, a request whose header fields
    (name and value) add up to more than C{max_header_size} bytes, or that
    has more than C{max_headers} fields, gets 431; a C{:method} and C{:path}
    longer than C{max_request_line} gets 414.  None of these reach a
    backend.
  - The encoded header block (a HEADERS frame and its CONTINUATION frames)
    may not grow beyond twice the advertised list size, nor span more than
    L{MAX_HEADER_BLOCK_FRAMES} frames: the connection is closed (GOAWAY
    C{ENHANCE_YOUR_CALM}) as soon as a frame header shows it would, before
    that frame is read.  A frame longer than C{SETTINGS_MAX_FRAME_SIZE}
    closes it with C{FRAME_SIZE_ERROR}, also before it is read.
  - PING, SETTINGS and PRIORITY frames cost the client a token from a bucket
    of L{CONTROL_FRAME_BURST} tokens refilled at L{CONTROL_FRAME_RATE} a
    second; an empty bucket closes the connection (C{ENHANCE_YOUR_CALM}).
    Stream resets have Twisted's own bucket (against Rapid Reset).
  - A request body streams to the backend as it arrives, with back-pressure:
    while the backend (or the proxy's buffer) is not ready, the stream's
    WINDOW_UPDATE frames are withheld, so the client holds at most one flow
    control window of it.  A declared C{content-length} above
    C{client_max_body_size} gets 413 before any of the body is read; a body
    that grows beyond it gets 413 (or, when the response has started, a
    reset of its stream).
  - A malformed request (RFC 9113, section 8.1.1 and 8.3, read as
    L{manualb.rules} reads HTTP/1.1: a C{:method} that is not an upper-case
    token, a C{:path} that is empty, not in origin form (or C{*} for
    OPTIONS) or has bytes other than visible ASCII, an C{:authority} that is
    no host and port, a header name that is not a lower-case token, a value
    with controls or surrounding whitespace, a C{content-length} beyond
    2**63 - 1, connection-specific fields, pseudo-header fields that are
    unknown, repeated, missing or after regular ones) is reset with
    C{PROTOCOL_ERROR} and never reaches a backend.
  - After any connection error the client gets GOAWAY with its code
    (C{COMPRESSION_ERROR} for a header block that cannot be decoded) and the
    connection is closed at once (aborted if the client does not take the
    GOAWAY within Twisted's C{abortTimeout}).
  - A stream whose flow control window the client keeps shut for
    C{send_timeout} is reset (C{CANCEL}), and the backend connection that
    its response held is released.
  - A client's GOAWAY does not end the connection by itself: its open
    streams finish, and PING is still answered, until the client closes or
    the idle timeout passes.
"""

from __future__ import annotations

from collections import deque

import h2.config
import h2.errors
import h2.exceptions
import h2.settings
from h2.events import RequestReceived
from hpack.exceptions import HPACKError
from hyperframe.frame import GoAwayFrame
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web._http2 import _END_STREAM_SENTINEL

from manualb.config import GatekeeperConfig
from manualb.rules import ALLOWED_METHODS, REASONS, errorBody, serverNameOf
from manualb.stages import requestView
from manualb.transports import cancelCall, setNoDelay
from manualb.view import clientHost
from manualb.web.h2input import (
    PSEUDO_HEADERS,
    BlockDecoder,
    DecodedBlock,
    FrameReceiver,
    RequestHead,
)
from manualb.web.h2output import BatchingH2Connection, BatchingH2Stream, LiteralEncoder
from manualb.web.h2request import StreamDownstream

ErrorCodes = h2.errors.ErrorCodes

#: The most frames (a HEADERS frame and its CONTINUATION frames) one header
#: block may span.
MAX_HEADER_BLOCK_FRAMES = 32
#: How many PING, SETTINGS and PRIORITY frames a client may send at once.
CONTROL_FRAME_BURST = 100
#: How many PING, SETTINGS and PRIORITY frames a client may send a second,
#: over time.
CONTROL_FRAME_RATE = 10

_PREFACE_LENGTH = len(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
_FRAME_HEADER_LENGTH = 9
# Frame types and flags (RFC 9113, section 6).
_HEADERS, _PRIORITY, _SETTINGS, _PUSH_PROMISE, _PING, _GOAWAY, _CONTINUATION = (
    0x1,
    0x2,
    0x4,
    0x5,
    0x6,
    0x7,
    0x9,
)
_ACK = 0x1
_END_HEADERS = 0x4
_END_HEADERS_STREAM = 0x5
#: The longest header block (bytes) of a request without a body that the
#: connection may open its stream with itself (see
#: L{ProxyH2Connection._openFast}) rather than through h2's frame machinery:
#: the longest that L{BlockDecoder} caches.
FAST_BLOCK = BlockDecoder.MAX_BLOCK

def headerListSize(gatekeeper: GatekeeperConfig) -> int:
    """
    The C{SETTINGS_MAX_HEADER_LIST_SIZE} advertised to clients: room for
    C{max_header_size} bytes of fields, a request line of C{max_request_line}
    bytes as pseudo-header fields, and RFC 7541's 32 bytes for each of them.
    """
    return (
        gatekeeper.max_header_size
        + gatekeeper.max_request_line
        + 32 * (gatekeeper.max_headers + len(PSEUDO_HEADERS))
    )


class _H2Protocol(FrameReceiver):
    """
    h2's connection state, with one malformed request that h2 itself rejects
    as a connection error made a stream error, as RFC 9113 (8.1.1) has it:
    a C{content-length} that is not a number, or two that differ, resets
    that stream and leaves the connection's other streams alone.
    """

    def _receive_headers_frame(self, frame):
        decoder = self.decoder
        decoder.last = None
        try:
            frames, events = super()._receive_headers_frame(frame)
        except h2.exceptions.ProtocolError as e:
            # By then the header block is decoded and the stream open: only
            # the stream is broken.
            if "content-length" not in str(e) or frame.stream_id not in self.streams:
                raise
            self.reset_stream(frame.stream_id, ErrorCodes.PROTOCOL_ERROR)
            return [], []
        block = decoder.last
        if block is not None:
            # The request carries the cached list as h2 hands it over (its
            # cookie fields joined), and with it what the proxy made of it
            # before.
            for event in events:
                if type(event) is RequestReceived:
                    received = block.received
                    if received is None:
                        received = block.received = DecodedBlock(event.headers)
                    event.headers = received
        return frames, events


class _ConnectionError(Exception):
    """
    The client broke a rule that ends its connection.

    @ivar code: The HTTP/2 error code for its GOAWAY.
    """

    def __init__(self, code: ErrorCodes, message: str):
        super().__init__(message)
        self.code = code


class _TokenBucket:
    """
    Allows C{burst} events at once and C{rate} a second over time.
    """

    def __init__(self, reactor: IReactorTime, burst: int, rate: float):
        self._reactor = reactor
        self._burst = burst
        self._rate = rate
        self._tokens = float(burst)
        self._stamp = reactor.seconds()

    def take(self) -> bool:
        """
        Spend one token; C{False} when there is none left.
        """
        now = self._reactor.seconds()
        # A wall clock may step back: never count that as time gone by.
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class _FrameWatch:
    """
    Reads the frame headers of what a client sends, before h2 parses it, so
    that a frame that breaks a limit ends the connection before it is
    buffered, and so that the client's GOAWAY frames can be handled here
    (h2 would refuse to answer anything after one).

    @ivar maxFrameSize: Returns the largest frame payload allowed.
    """

    def __init__(
        self,
        maxFrameSize,
        blockLimit: int,
        controlFrames: _TokenBucket,
    ):
        self.maxFrameSize = maxFrameSize
        self._blockLimit = blockLimit
        self._controlFrames = controlFrames
        self._preface = _PREFACE_LENGTH
        self._header = b""
        self._left = 0
        self._goaway: bytearray | None = None
        self._blockStream: int | None = None
        self._blockBytes = 0
        self._blockFrames = 0

    def feed(self, data: bytes) -> tuple[list, list[bytes]]:
        """
        Take the next bytes from the client.

        @return: What to hand on, in order: bytes to give h2 (all but GOAWAY
            frames, and a frame header only once it is whole), and, for each
            whole HEADERS frame that ends its header block and its stream
            with a block of at most L{FAST_BLOCK} bytes, a tuple of its
            stream ID, frame header and block, which the connection may
            handle without h2's frame machinery; and the payloads of the
            GOAWAY frames that were completed.
        @raise _ConnectionError: When a frame breaks a limit.
        """
        view = memoryview(data)
        size = len(view)
        parts: list = []
        out: list = []
        goaways: list[bytes] = []
        position = 0
        if self._preface:
            position = min(self._preface, size)
            out.append(view[:position])
            self._preface -= position
        while position < size:
            if self._left:
                take = min(self._left, size - position)
                chunk = view[position : position + take]
                position += take
                self._left -= take
                if self._goaway is None:
                    out.append(chunk)
                    continue
                self._goaway += chunk
                if not self._left:
                    goaways.append(bytes(self._goaway))
                    self._goaway = None
                continue
            if self._header or size - position < _FRAME_HEADER_LENGTH:
                take = min(_FRAME_HEADER_LENGTH - len(self._header), size - position)
                self._header += bytes(view[position : position + take])
                position += take
                if len(self._header) < _FRAME_HEADER_LENGTH:
                    break
                header, self._header = self._header, b""
            else:
                header = bytes(view[position : position + _FRAME_HEADER_LENGTH])
                position += _FRAME_HEADER_LENGTH
            length = int.from_bytes(header[:3], "big")
            kind, flags = header[3], header[4]
            streamID = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
            self._check(length, kind, flags, streamID)
            if (
                kind == _HEADERS
                and flags == _END_HEADERS_STREAM
                and length <= FAST_BLOCK
                and length <= size - position
            ):
                if out:
                    parts.append(b"".join(out))
                    out = []
                end = position + length
                parts.append((streamID, header, bytes(view[position:end])))
                position = end
                continue
            self._left = length
            if kind == _GOAWAY and streamID == 0 and length >= 8:
                self._goaway = bytearray()
            else:
                out.append(header)
        if out:
            parts.append(b"".join(out))
        return parts, goaways

    def _check(self, length: int, kind: int, flags: int, streamID: int) -> None:
        if length > self.maxFrameSize():
            raise _ConnectionError(
                ErrorCodes.FRAME_SIZE_ERROR,
                f"frame of {length} bytes, above SETTINGS_MAX_FRAME_SIZE",
            )
        if self._blockStream is not None:
            if kind != _CONTINUATION or streamID != self._blockStream:
                raise _ConnectionError(
                    ErrorCodes.PROTOCOL_ERROR, "another frame inside a header block"
                )
            self._blockBytes += length
            self._blockFrames += 1
            self._checkBlock()
            if flags & _END_HEADERS:
                self._blockStream = None
        elif kind in (_HEADERS, _PUSH_PROMISE):
            self._blockBytes = length
            self._blockFrames = 1
            self._checkBlock()
            if not flags & _END_HEADERS:
                self._blockStream = streamID
        elif (kind in (_PING, _SETTINGS) and not flags & _ACK) or kind == _PRIORITY:
            if not self._controlFrames.take():
                raise _ConnectionError(
                    ErrorCodes.ENHANCE_YOUR_CALM, "too many PING, SETTINGS or PRIORITY frames"
                )

    def _checkBlock(self) -> None:
        if self._blockBytes > self._blockLimit:
            raise _ConnectionError(
                ErrorCodes.ENHANCE_YOUR_CALM,
                f"header block above {self._blockLimit} bytes",
            )
        if self._blockFrames > MAX_HEADER_BLOCK_FRAMES:
            raise _ConnectionError(
                ErrorCodes.ENHANCE_YOUR_CALM,
                f"header block in more than {MAX_HEADER_BLOCK_FRAMES} frames",
            )


class ProxyH2Connection(BatchingH2Connection):
    """
    An HTTP/2 client connection of the proxy.

    Where Twisted's connection has a gap this class fills it by overriding
    the smallest method it can (see the module's docstring for the limits).

    @param reactor: Schedules the connection's sends and timeouts.
    @param gatekeeper: The limits a client is held to.
    """

    _closing = False
    _clientGoingAway = False
    # The last stream served, once the proxy sent GOAWAY to stop (drain).
    _lastStream: int | None = None
    # The payloads of the GOAWAY frames of the read being handled.
    _goaways: list[bytes] = []

    def __init__(self, reactor: IReactorTime, gatekeeper: GatekeeperConfig) -> None:
        super().__init__(reactor)
        self.gatekeeper = gatekeeper
        listSize = headerListSize(gatekeeper)
        # Requests are validated once (RequestHead), as stream errors; the
        # response fields are made fit for HTTP/2 by the connection
        # (writeHeaders) and StreamDownstream.
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = _H2Protocol(config=config)
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: listSize,
            },
        )
        # h2 applies the setting to its decoder once the client acknowledges
        # it; a client may not wait for that.
        self.conn.decoder = BlockDecoder(listSize)
        self.conn.encoder = LiteralEncoder()
        conn = self.conn
        self._frames = _FrameWatch(
            # Not through self, which the watch would then keep in a cycle.
            lambda: conn.max_inbound_frame_size,
            2 * listSize,
            _TokenBucket(self._reactor, CONTROL_FRAME_BURST, CONTROL_FRAME_RATE),
        )

    def connectionMade(self) -> None:
        setNoDelay(self.transport)
        super().connectionMade()

    # What every request of the connection shares.

    _client: str | None = None
    _local: str | None = None
    _secure: bool | None = None

    def clientAddress(self) -> str:
        """
        The client's address (L{clientHost}).
        """
        if self._client is None:
            self._client = clientHost(self.transport.getPeer())
        return self._client

    def localAddress(self) -> str:
        """
        The address the client connected to (L{clientHost}).
        """
        if self._local is None:
            self._local = clientHost(self.getHost())
        return self._local

    def secure(self) -> bool:
        """
        Whether the connection is over TLS.
        """
        if self._secure is None:
            self._secure = self._isSecure()
        return self._secure

    # Reading.

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            parts, goaways = self._frames.feed(data)
        except _ConnectionError as e:
            self._abandon(e.code, str(e))
            return
        self._goaways = goaways
        self._receiving = True
        try:
            for part in parts:
                if type(part) is bytes:
                    if not self._receiveFrames(part):
                        return
                elif not self._openFast(*part):
                    # h2 takes it as any other frame.
                    if not self._receiveFrames(part[1] + part[2]):
                        return
                if not self._stillProducing or self._closing:
                    return
        finally:
            self._receiving = False
        self._afterEvents()
        self._flush()

    def _openFast(self, streamID: int, header: bytes, block: bytes) -> bool:
        """
        Open stream C{streamID} for a request without a body whose header
        block C{block} the connection has seen and checked before (a block
        that L{BlockDecoder} caches, of a request that passed the checks),
        as h2 and Twisted would (their state moves as theirs would) but
        without h2's frame objects, events and checks, which have nothing
        new to find.

        @return: Whether it did; when not, nothing has changed and h2 is to
            read the frame.
        """
        if self._lastStream is not None or self._clientGoingAway:
            return False
        conn = self.conn
        decoded = conn.decoder.cached(block)
        if decoded is None:
            return False
        headers = decoded.received
        if headers is None:
            return False
        head = headers.request
        if (
            head is None
            or head.gatekeeper is not self.gatekeeper
            or head.refusal is not None
            or head.length is not None
            or not conn.openStream(streamID)
        ):
            return False
        self.resetTimeout()
        stream = ProxyH2Stream(
            streamID, self, headers, self.requestFactory, self.site, self.factory
        )
        self._newStream(stream)
        stream.start(ended=True)
        if self._stillProducing and streamID in self.streams:
            stream.requestComplete()
        return True

    def _afterEvents(self) -> None:
        goaways, self._goaways = self._goaways, []
        for payload in goaways:
            if self._closing or not self._stillProducing:
                return
            self._goawayReceived(payload)

    def _goawayReceived(self, payload: bytes) -> None:
        """
        The client sent GOAWAY: it opens no more streams.  With an error
        code, the connection is over; without, the open streams finish and
        the connection stays (answering PING) until the client closes it or
        it times out.
        """
        self._clientGoingAway = True
        code = int.from_bytes(payload[4:8], "big")
        if code != ErrorCodes.NO_ERROR:
            self._log.info(
                "HTTP/2 client {client} went away with error {code}",
                client=self.transport.getPeer(),
                code=code,
            )
            self._releaseTransport()
            self.transport.loseConnection()
            self.connectionLost(
                Failure(ConnectionLost("Remote peer sent GOAWAY")), _cancelTimeouts=False
            )

    def _requestReceived(self, event) -> None:
        if self._lastStream is not None and event.stream_id > self._lastStream:
            # Sent before the client saw the GOAWAY: it may send it again,
            # elsewhere (RFC 9113, 6.8).
            try:
                self.conn.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
            except h2.exceptions.ProtocolError:
                pass
            self._tryToWriteControlData()
            return
        # As Twisted's, but the stream is a ProxyH2Stream, and it is started
        # only once the connection knows it.
        stream = ProxyH2Stream(
            event.stream_id, self, event.headers, self.requestFactory, self.site, self.factory
        )
        self._newStream(stream)
        stream.start(ended=event.stream_ended is not None)

    def _requestDataReceived(self, event) -> None:
        if event.stream_id in self.streams:
            super()._requestDataReceived(event)
            return
        # A stream the proxy is done with: give the connection window back.
        self._acknowledge(event.flow_controlled_length, event.stream_id)

    def _requestEnded(self, event) -> None:
        if event.stream_id in self.streams:
            super()._requestEnded(event)

    def _requestAborted(self, event) -> None:
        if event.stream_id in self.streams:
            super()._requestAborted(event)

    # Sending.

    def _requestDone(self, streamID: int) -> None:
        stream = self.streams.get(streamID)
        if stream is not None:
            # Its response is all sent (or dropped): no send_timeout.
            stream._sendTimer = cancelCall(stream._sendTimer)
        if stream is not None and self._stillProducing and not self._closing:
            # The client may still be sending a body that will not be read:
            # give its window back, and ask it to stop (RFC 9113, 8.1).
            unread = 0
            buffered = stream._inboundDataBuffer
            if buffered:
                for chunk, length in buffered:
                    if chunk is not _END_STREAM_SENTINEL:
                        unread += length
                buffered.clear()
            state = self.conn.streams.get(streamID)
            # Once both sides have ended (as they mostly have), h2 would
            # refuse, and send nothing.
            if state is not None and not state.closed:
                try:
                    self.conn.reset_stream(streamID, ErrorCodes.NO_ERROR)
                except h2.exceptions.ProtocolError:
                    pass
            self._acknowledge(unread, streamID)
            self.conn.forgetClosed(streamID)
        super()._requestDone(streamID)
        if stream is not None:
            # The stream and its request refer to each other: without this,
            # both would wait for the garbage collector.
            stream._request = None
        if self._lastStream is not None and not self.streams:
            self._closeDrained()

    def _acknowledge(self, length: int, streamID: int) -> None:
        if not length:
            return
        try:
            self.conn.acknowledge_received_data(length, streamID)
        except h2.exceptions.ProtocolError:
            return
        self._tryToWriteControlData()

    def refuseStream(
        self,
        streamID: int,
        status: int | None,
        errorCode: ErrorCodes,
        reason: str,
    ) -> None:
        """
        End a request that must not go on: answer C{status} (headers and a
        short page, when the response has not started), then reset the
        stream so that the client sends no more of its body (C{NO_ERROR}
        after a whole answer, C{errorCode} otherwise).
        """
        stream = self.streams.get(streamID)
        if stream is None:
            return
        answered = False
        if status is not None and not stream.responseStarted:
            answered = self._answer(streamID, status)
        try:
            # h2 refuses (sending nothing) once both sides have ended.
            self.conn.reset_stream(
                streamID, ErrorCodes.NO_ERROR if answered else errorCode
            )
        except h2.exceptions.ProtocolError:
            pass
        stream.connectionLost(Failure(ConnectionLost(reason)))
        if self._tryToWriteControlData() and streamID in self.streams:
            self._requestDone(streamID)

    def _answer(self, streamID: int, status: int) -> bool:
        title = REASONS[status]
        body = errorBody(status, title, b"The request was refused.")
        if len(body) > min(self._window(streamID), self.conn.max_outbound_frame_size):
            body = b""
        headers = [
            (b":status", b"%d" % (status,)),
            (b"server", serverNameOf(self.site)),
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", b"%d" % (len(body),)),
        ]
        if status == 405:
            headers.append((b"allow", ALLOWED_METHODS))
        try:
            self.conn.send_headers(streamID, headers, end_stream=not body)
            if body:
                self.conn.send_data(streamID, body, end_stream=True)
        except h2.exceptions.ProtocolError:
            return False
        return True

    # Ending.

    def drain(self) -> int:
        """
        The proxy is stopping: tell the client with GOAWAY (no error, the
        last stream it opened) that no new stream will be served, let the
        open streams finish, then close.  Streams the client opens after
        it are refused (C{REFUSED_STREAM}), so that it may send them again
        elsewhere.

        @return: How many streams are open.
        """
        if self._closing or not self._stillProducing:
            return 0
        if self._lastStream is None:
            self._lastStream = self.conn.highest_inbound_stream_id
            if self.streams:
                # h2 would take a GOAWAY of its own as the end, refusing
                # to send anything more on the open streams.
                goaway = GoAwayFrame(0)
                goaway.last_stream_id = self._lastStream
                goaway.error_code = ErrorCodes.NO_ERROR
                self.conn._data_to_send += goaway.serialize()
                self._tryToWriteControlData()
        if not self.streams:
            self._closeDrained()
        return len(self.streams)

    def _closeDrained(self) -> None:
        """
        The last stream of a draining connection is done: GOAWAY, and close.
        """
        if self._closing or not self._stillProducing:
            return
        self._closing = True
        self.conn.close_connection(last_stream_id=self._lastStream)
        self._writeNow()
        self._releaseTransport()
        self.transport.loseConnection()

    def _abandon(self, errorCode: ErrorCodes, reason: str) -> None:
        """
        End the connection for a connection error: GOAWAY with C{errorCode},
        then close.
        """
        if self._closing:
            return
        self.conn.close_connection(error_code=errorCode)
        self._terminate(Failure(ConnectionLost(reason)))

    def _terminate(self, reason: Failure) -> None:
        # Twisted's leaves the transport open under TLS (it waits for this
        # connection to unregister as its producer) until the idle timeout,
        # reading all the while.  Send the GOAWAY now and close.
        if self._closing:
            return
        self._closing = True
        error = reason.value
        if (
            isinstance(error, h2.exceptions.ProtocolError)
            and not isinstance(error, h2.exceptions.DenialOfServiceError)
            and isinstance(error.__cause__, HPACKError)
        ):
            # h2 says PROTOCOL_ERROR; RFC 9113 (4.3) wants this one.
            self.conn.clear_outbound_data_buffer()
            self.conn.close_connection(error_code=ErrorCodes.COMPRESSION_ERROR)
        self._log.info(
            "Closing HTTP/2 client {client}: {reason}",
            client=self.transport.getPeer(),
            reason=error,
        )
        self._writeNow()
        self._releaseTransport()
        self.transport.loseConnection()
        if self.abortTimeout is not None and self._abortingCall is None:
            self._abortingCall = self._reactor.callLater(
                self.abortTimeout, self.forceAbortClient
            )
        self.connectionLost(reason, _cancelTimeouts=False)

    def timeoutConnection(self) -> None:
        self._releaseTransport()
        super().timeoutConnection()

    def _releaseTransport(self) -> None:
        """
        Stop being the transport's producer, which a TLS transport waits for
        before it closes.
        """
        try:
            self.transport.unregisterProducer()
        except RuntimeError:
            # No producer was registered.
            pass


class ProxyH2Stream(BatchingH2Stream):
    """
    One request of a L{ProxyH2Connection}: validated and held to the
    C{[gatekeeper]} limits before it goes to the site, with its body
    streamed (L{manualb.web.StreamingRequest} sees the request line it
    needs in C{_command}, C{_path} and C{_version}, and pauses and resumes
    this stream, which withholds its WINDOW_UPDATE frames meanwhile).
    """

    _bodyReceived = 0

    def __init__(self, streamID, connection, headers, requestFactory, site, factory):
        # As H2Stream's, but the request is made by start(), once the
        # connection knows this stream: a twisted.web one only when the
        # site's resource is not the proxy's own.
        self.streamID = streamID
        self.site = site
        self.factory = factory
        self.producing = True
        self.command = None
        self.path = None
        self.producer = None
        self._producerProducing = False
        self._inboundDataBuffer = deque()
        self._conn = connection
        self._requestFactory = requestFactory
        self._request = None
        self._headers = headers

    @property
    def callLater(self):
        """
        Schedules calls (L{manualb.web.StreamingRequest} lingers with it).
        """
        return self._conn._reactor.callLater

    @property
    def responseStarted(self) -> bool:
        """
        Whether the response's headers have been written.
        """
        return bool(getattr(self._request, "startedWriting", False))

    def _stages(self, path: bytes):
        """
        The stage chain of the site's resource when it is the proxy's own
        (and the target is a path), else L{None}.
        """
        site = self.site
        if path[:1] != b"/" or getattr(site, "trustedProxies", False) is False:
            return None
        return getattr(site.resource, "stages", None)

    def start(self, ended: bool) -> None:
        """
        Check the request's headers and hand it to the site, or refuse it.

        @param ended: The request's HEADERS frame ended the stream (there is
            no body).
        """
        gatekeeper = self._conn.gatekeeper
        headers = self._headers
        head = getattr(headers, "request", None)
        if head is None or head.gatekeeper is not gatekeeper:
            head = RequestHead(headers, gatekeeper)
            if isinstance(headers, DecodedBlock):
                headers.request = head
        if head.refusal is not None:
            self._refuse(*head.refusal)
            return
        method, path = head.method, head.path
        length = 0 if ended else head.length
        self.command = self._command = method
        self.path = self._path = path
        self._version = b"HTTP/2"
        stages = self._stages(path)
        if stages is not None:
            self._startExchange(stages, head, length)
            return
        pseudo = head.pseudo
        request = self._request = self._requestFactory(self, queued=False)
        headers = request.requestHeaders
        for name, value in head.fields:
            headers.addRawHeader(name, value)
        if b":authority" in pseudo and not headers.hasHeader(b"host"):
            headers.setRawHeaders(b"host", [pseudo[b":authority"]])
        expect = headers.getRawHeaders(b"expect")
        if expect and expect[0].lower() == b"100-continue" and length != 0:
            self._send100Continue()
        request.parseCookies()
        request.gotLength(length)

    def _startExchange(self, stages, head: RequestHead, length: int | None) -> None:
        """
        Hand the request to the proxy's exchange, with a
        L{StreamDownstream} for its client.
        """
        conn = self._conn
        site = self.site
        resource = site.resource
        method, path = head.method, head.path
        fields = list(head.proxyFields)
        client = peer = conn.clientAddress()
        trusted = site.trustedProxies
        if trusted is not None:
            client = trusted.clientAddress(client, fields)
        view = requestView(
            client,
            conn.secure(),
            method,
            path,
            fields,
            conn.localAddress(),
            trusted is not None and trusted.trusts(peer),
            site.reactor.seconds(),
        )
        downstream = self._request = StreamDownstream(
            self,
            view,
            method,
            length,
            conn.gatekeeper.client_max_body_size,
            site.hsts,
            site.date,
        )
        if length != 0 and head.expectsContinue:
            self._send100Continue()
        downstream.start(
            stages,
            resource.reactor,
            resource.accessLog,
            resource.recent,
            resource.listener,
            resource.metrics,
        )

    def _refuse(self, status: int | None, errorCode: ErrorCodes, reason: str) -> None:
        self._conn._log.info(
            "HTTP/2 client {client}: stream {stream} refused: {reason}",
            client=self._conn.transport.getPeer(),
            stream=self.streamID,
            reason=reason,
        )
        self._conn.refuseStream(self.streamID, status, errorCode, reason)

    # send_timeout: a client that keeps its stream's window shut takes
    # nothing of the response, and holds the backend connection meanwhile.

    _sendTimer = None

    def flowControlBlocked(self) -> None:
        super().flowControlBlocked()
        if self._sendTimer is None:
            self._sendTimer = self.callLater(
                self._conn.gatekeeper.send_timeout, self._sendTimedOut
            )

    def windowUpdated(self) -> None:
        super().windowUpdated()
        if self._conn.remainingOutboundWindow(self.streamID) > 0:
            self._sendTimer = cancelCall(self._sendTimer)

    def _sendTimedOut(self) -> None:
        self._sendTimer = None
        self._refuse(None, ErrorCodes.CANCEL, "took nothing for send_timeout")

    def requestDone(self, request) -> None:
        self._sendTimer = cancelCall(self._sendTimer)
        super().requestDone(request)

    def connectionLost(self, reason) -> None:
        self._sendTimer = cancelCall(self._sendTimer)
        if self._request is not None:
            super().connectionLost(reason)

    def receiveDataChunk(self, data: bytes, flowControlledLength: int) -> None:
        self._bodyReceived += len(data)
        limit = self._conn.gatekeeper.client_max_body_size
        if limit and self._bodyReceived > limit:
            self._refuse(413, ErrorCodes.CANCEL, "body too large")
            self._conn._acknowledge(flowControlledLength, self.streamID)
            return
        super().receiveDataChunk(data, flowControlledLength)
