"""
The sending side of an HTTP/2 client connection: Twisted's L{H2Connection}
and L{H2Stream} with their output batched.

Twisted's connection sends one DATA frame per reactor iteration (a
C{callLater(0)} for each, chosen from a priority tree), one more frame to
end each stream, and writes every HEADERS frame and control frame to the
transport as it is made.  Here every frame made while the reactor handles
one batch of events (the client's bytes, or responses coming in from
backends) goes out in one write when that batch is done:

  - HEADERS and control frames stay in h2's buffer until then;
  - response data waits in its stream's queue, and one pass sends every
    stream's queue as far as its flow control window allows (at most
    L{FLUSH_BUDGET} bytes a pass, the streams taking turns), ending a
    stream in its last DATA frame rather than in a frame of its own;
  - the pass runs at the end of L{dataReceived}, or in a call scheduled
    for the next reactor iteration when the frames come from elsewhere.

The HEADERS and DATA frames of responses are made here rather than by h2
(which builds them as objects and checks the fields again), with h2's
state machines and flow control windows moved as h2 would move them.

Priority signals are ignored (RFC 9113, section 5.3.2, lets a server do
so, and deprecates them): the streams are served in turn.

A stream's producer (the backend connection of its response) is paused
while its flow control window is shut, as in Twisted, and also while more
than L{STREAM_HIGH_WATER} bytes of it wait to be sent (the transport
pushes back, or the client reads slowly), so that memory stays flat
whatever window the client grants.
"""

from __future__ import annotations

from collections import deque

import h2.events
import h2.exceptions
import h2.settings
from h2.connection import ConnectionInputs, ConnectionState
from h2.stream import StreamClosedBy, StreamInputs, StreamState
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.web._http2 import _END_STREAM_SENTINEL, H2Connection, H2Stream

# Enum members read once: reading one from its class costs.
_SERVER_OPEN = ConnectionState.SERVER_OPEN
_HALF_CLOSED_REMOTE = StreamState.HALF_CLOSED_REMOTE
_CLOSED = StreamState.CLOSED
_SENT_END_STREAM = StreamClosedBy.SEND_END_STREAM

#: Response fields that HTTP/2 forbids (RFC 9113, section 8.2.2).
CONNECTION_FIELDS = frozenset(
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"]
)
#: The most response data (bytes) one pass sends, before the reactor gets to
#: write it and to read.
FLUSH_BUDGET = 256 * 1024
#: How much of a stream's response data (bytes) may wait to be sent before
#: its producer is paused.
STREAM_HIGH_WATER = 64 * 1024


class BatchingH2Connection(H2Connection):
    """
    An L{H2Connection} that sends what one batch of events produced in one
    write (see the module's docstring).

    @ivar _ready: The IDs of the streams with output waiting, in the order
        they are served (a dict used as an ordered set).
    @ivar _queued: How many bytes of response data wait in each stream's
        queue.
    @ivar _flushCall: The scheduled sending pass, if any.
    """

    _flushCall = None
    _receiving = False
    _host = None

    def __init__(self, reactor) -> None:
        super().__init__(reactor)
        self._ready: dict[int, None] = {}
        self._queued: dict[int, int] = {}

    # The peer's address does not change; Twisted's request asks for it on
    # every stream.

    def getHost(self):
        if self._host is None:
            self._host = self.transport.getHost()
        return self._host

    def writeFields(self, streamID: int, fields: list) -> None:
        """
        Send the HEADERS of a response: C{fields}, its C{:status} first, with
        lower-case names and no connection-specific ones.

        The frames are made here rather than by h2 (which would build them
        as objects, check and normalise the fields again and then serialise
        them): h2's state machines still move as they would.
        """
        conn = self.conn
        stream = conn.streams.get(streamID)
        if stream is None or fields[0][1][:1] == b"1":
            # Unknown to h2, or informational: h2 knows what to do.
            self._sendHeadersByH2(streamID, fields)
            return
        machine = stream.state_machine
        if (
            machine.state is _HALF_CLOSED_REMOTE
            and not machine.headers_sent
            and machine.client is False
            and conn.state_machine.state is _SERVER_OPEN
        ):
            # The response to a whole request: h2's state machines would
            # only note that its headers are sent.
            machine.headers_sent = True
        else:
            try:
                conn.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
                machine.process_input(StreamInputs.SEND_HEADERS)
            except h2.exceptions.StreamClosedError:
                # The client reset the stream meanwhile.
                return
            if machine.trailers_sent:
                raise h2.exceptions.ProtocolError("Trailers must have END_STREAM set.")
        stream.request_method = None
        block = conn.encoder.encode(fields)
        conn._data_to_send += headerFrames(streamID, block, conn.max_outbound_frame_size)
        self._scheduleFlush()

    def _sendHeadersByH2(self, streamID: int, fields: list) -> None:
        try:
            self.conn.send_headers(streamID, fields)
        except (h2.exceptions.StreamClosedError, h2.exceptions.StreamIDTooLowError):
            # The client reset the stream meanwhile (and h2 may have let go
            # of it since).
            return
        self._scheduleFlush()

    # Reading.

    def dataReceived(self, data: bytes) -> None:
        self._receiving = True
        try:
            if not self._receiveFrames(data):
                return
        finally:
            self._receiving = False
        self._afterEvents()
        self._flush()

    def _receiveFrames(self, data: bytes) -> bool:
        """
        Give C{data} to h2 and handle the events it makes of it.

        @return: Whether the connection goes on.
        """
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._terminate(Failure())
            return False
        self.resetTimeout()
        for event in events:
            handler = _HANDLERS.get(type(event))
            if handler is not None:
                getattr(self, handler)(event)
            if not self._stillProducing:
                return False
        return True

    def _afterEvents(self) -> None:
        """
        Called once the events of one read are handled, before the frames
        they made are sent.
        """

    def _connectionTerminated(self, event) -> None:
        self.transport.loseConnection()
        self.connectionLost(
            Failure(ConnectionLost("Remote peer sent GOAWAY")), _cancelTimeouts=False
        )

    def _settingsChanged(self, event) -> None:
        # A new SETTINGS_INITIAL_WINDOW_SIZE moves every stream's window.
        if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._wakeAll()

    def _handleWindowUpdate(self, event) -> None:
        streamID = event.stream_id
        if streamID:
            stream = self.streams.get(streamID)
            if stream is not None:
                self._wake(stream)
        else:
            self._wakeAll()

    def _wake(self, stream) -> None:
        streamID = stream.streamID
        if self._outboundStreamQueues.get(streamID):
            self._ready[streamID] = None
            self._scheduleFlush()
        stream.windowUpdated()

    def _wakeAll(self) -> None:
        for stream in list(self.streams.values()):
            if stream.streamID in self.streams:
                self._wake(stream)

    def _handlePriorityUpdate(self, event) -> None:
        pass

    # Writing.

    def writeHeaders(self, version, code, reason, headers, streamID) -> None:
        # A twisted.web request's: made fit for HTTP/2 here, as h2 would
        # (its own normalisation and checks of outbound fields are off).
        fields = [(b":status", code)]
        for name, value in headers:
            name = name.lower()
            if name not in CONNECTION_FIELDS:
                fields.append((name, value.strip()))
        self.writeFields(streamID, fields)

    def writeDataToStream(self, streamID: int, data: bytes) -> None:
        queue = self._outboundStreamQueues.get(streamID)
        if queue is None or not data:
            return
        queue.append(data)
        queued = self._queued[streamID] = self._queued[streamID] + len(data)
        self._ready[streamID] = None
        self._scheduleFlush()
        stream = self.streams[streamID]
        if self._window(streamID) - queued <= 0:
            stream.flowControlBlocked()
        elif queued > STREAM_HIGH_WATER:
            stream.pauseOutput()

    def endRequest(self, streamID: int) -> None:
        queue = self._outboundStreamQueues.get(streamID)
        if queue is None:
            return
        queue.append(_END_STREAM_SENTINEL)
        self._ready[streamID] = None
        self._scheduleFlush()

    def remainingOutboundWindow(self, streamID: int) -> int:
        return self._window(streamID) - self._queued.get(streamID, 0)

    def mayProduce(self, streamID: int) -> bool:
        """
        Whether the producer of stream C{streamID}'s response may go on: its
        window has room, and not too much of it waits to be sent.
        """
        queued = self._queued.get(streamID, 0)
        return queued <= STREAM_HIGH_WATER and self._window(streamID) - queued > 0

    def _window(self, streamID: int) -> int:
        try:
            return self.conn.local_flow_control_window(streamID)
        except h2.exceptions.ProtocolError:
            return 0

    def _tryToWriteControlData(self) -> bool:
        if self._consumerBlocked is None and not self._bufferedControlFrames:
            # Sent with the rest of this batch.
            self._scheduleFlush()
            return True
        return super()._tryToWriteControlData()

    def _writeNow(self) -> None:
        """
        Write the frames made so far (but not the queued response data), for
        a connection that is about to close.
        """
        pending = b"".join(self._bufferedControlFrames) + self.conn.data_to_send()
        self._bufferedControlFrames.clear()
        self._bufferedControlFrameBytes = 0
        if pending:
            self.transport.write(pending)

    def _scheduleFlush(self) -> None:
        if self._flushCall is None and not self._receiving and self._stillProducing:
            self._flushCall = self._reactor.callLater(0, self._flush)

    def _sendPrioritisedData(self, *args) -> None:
        # Twisted's sending loop, started by its __init__ and resumed by
        # resumeProducing: one pass.
        self._flush()

    def resumeProducing(self) -> None:
        super().resumeProducing()
        if self._consumerBlocked is None and self._stillProducing:
            self._scheduleFlush()

    def _flush(self) -> None:
        """
        One sending pass: the queued response data of every stream, as far
        as flow control and L{FLUSH_BUDGET} allow, and the frames h2 has
        made, in one write.
        """
        call, self._flushCall = self._flushCall, None
        if call is not None and call.active():
            call.cancel()
        if not self._stillProducing or self._consumerBlocked is not None:
            # resumeProducing starts a pass.
            return
        if self._bufferedControlFrames:
            self._flushBufferedControlData()
            if self._consumerBlocked is not None:
                return
        conn = self.conn
        budget = FLUSH_BUDGET
        sent: dict[int, None] = {}
        ended: list[int] = []
        broken: list[int] = []
        turn = list(self._ready)
        while turn and budget > 0:
            turn, budget = self._sendRound(turn, budget, sent, ended, broken)
        data = conn.data_to_send()
        if data:
            self.resetTimeout()
            self.transport.write(data)
        for streamID in broken:
            stream = self.streams.get(streamID)
            if stream is not None:
                stream.connectionLost(Failure(ConnectionLost("stream closed")))
                self._requestDone(streamID)
        for streamID in ended:
            if streamID in self.streams:
                self._requestDone(streamID)
        for streamID in sent:
            stream = self.streams.get(streamID)
            if stream is None:
                continue
            if self.remainingOutboundWindow(streamID) <= 0:
                stream.flowControlBlocked()
            else:
                stream.windowUpdated()
        if turn and budget <= 0:
            self._scheduleFlush()

    def _sendRound(self, turn, budget, sent, ended, broken):
        """
        One round of a sending pass: one DATA frame (or the end) of each
        stream of C{turn} in order, as far as its window and C{budget}
        allow.  Streams that ended or have nothing more to send leave
        L{_ready}; C{sent}, C{ended} and C{broken} note what happened.

        @return: The streams that may send more in the next round, and the
            budget left.
        """
        conn = self.conn
        queues = self._outboundStreamQueues
        queued = self._queued
        ready = self._ready
        more = []
        for index, streamID in enumerate(turn):
            if budget <= 0:
                # The streams served this round wait behind the others.
                for served in turn[:index]:
                    if ready.pop(served, False) is None:
                        ready[served] = None
                return more, budget
            queue = queues.get(streamID)
            if not queue:
                ready.pop(streamID, None)
                continue
            chunk = queue[0]
            try:
                if chunk is _END_STREAM_SENTINEL:
                    queue.popleft()
                    conn.end_stream(streamID)
                    ended.append(streamID)
                    del ready[streamID]
                    continue
                stream = conn.streams.get(streamID)
                if stream is None:
                    # h2 has forgotten it: closed.
                    raise h2.exceptions.StreamClosedError(streamID)
                size = min(
                    conn.outbound_flow_control_window,
                    stream.outbound_flow_control_window,
                    conn.max_outbound_frame_size,
                    budget,
                )
                if size <= 0:
                    # Its window is shut: a WINDOW_UPDATE wakes it.
                    continue
                end = False
                if len(chunk) > size:
                    queue[0] = chunk[size:]
                    chunk = chunk[:size]
                else:
                    queue.popleft()
                    if queue and queue[0] is _END_STREAM_SENTINEL:
                        queue.popleft()
                        end = True
                self._sendData(stream, streamID, chunk, end)
            except h2.exceptions.ProtocolError:
                queue.clear()
                ready.pop(streamID, None)
                broken.append(streamID)
                continue
            queued[streamID] -= len(chunk)
            budget -= len(chunk)
            sent[streamID] = None
            if end:
                ended.append(streamID)
                del ready[streamID]
            elif queue:
                more.append(streamID)
            else:
                del ready[streamID]
        return more, budget

    def _sendData(self, stream, streamID: int, chunk: bytes, end: bool) -> None:
        """
        Send C{chunk} in one DATA frame on C{stream}, h2's stream of
        C{streamID} (ending it if C{end}), as h2's C{send_data} would, with
        the frame made here: the caller made sure that it fits the flow
        control windows and the frame size.
        """
        conn = self.conn
        machine = stream.state_machine
        if machine.state is _HALF_CLOSED_REMOTE and conn.state_machine.state is _SERVER_OPEN:
            # Where h2's state machines would go.
            if end:
                machine.state = _CLOSED
                machine.stream_closed_by = _SENT_END_STREAM
        else:
            conn.state_machine.process_input(ConnectionInputs.SEND_DATA)
            machine.process_input(StreamInputs.SEND_DATA)
            if end:
                machine.process_input(StreamInputs.SEND_END_STREAM)
        length = len(chunk)
        stream.outbound_flow_control_window -= length
        conn.outbound_flow_control_window -= length
        out = conn._data_to_send
        out += length.to_bytes(3, "big")
        out += _DATA_END if end else _DATA
        out += streamID.to_bytes(4, "big")
        out += chunk

    def _requestDone(self, streamID: int) -> None:
        self._outboundStreamQueues.pop(streamID, None)
        self._ready.pop(streamID, None)
        self._queued.pop(streamID, None)
        self._streamCleanupCallbacks.pop(streamID, None)
        self.streams.pop(streamID, None)

    def _newStream(self, stream) -> None:
        """
        Take on C{stream}, a request the client has just opened.
        """
        streamID = stream.streamID
        self.streams[streamID] = stream
        self._outboundStreamQueues[streamID] = deque()
        self._queued[streamID] = 0

    def connectionLost(self, reason, _cancelTimeouts=True) -> None:
        call, self._flushCall = self._flushCall, None
        if call is not None and call.active():
            call.cancel()
        super().connectionLost(reason, _cancelTimeouts)
        if _cancelTimeouts:
            # Lost for good (Twisted calls this early, keeping the timers,
            # when it gives up on a client that would not close).  What
            # refers back to this connection is let go of, so that it is
            # freed once done with, not by the cycle collector: h2
            # dispatches frames through a table of its own methods, and the
            # transport holds this connection as its producer.
            self.conn._frame_dispatch_table = {}
            self.transport = None


class BatchingH2Stream(H2Stream):
    """
    An L{H2Stream} of a L{BatchingH2Connection}: its producer is paused
    while its window is shut or too much of its output waits.
    """

    def pauseOutput(self) -> None:
        """
        Too much of this stream's output waits: pause its producer until
        the connection has sent some.
        """
        if self.producer is not None and self._producerProducing:
            self._producerProducing = False
            self.producer.pauseProducing()

    def flowControlBlocked(self) -> None:
        self.pauseOutput()

    def windowUpdated(self) -> None:
        if self.producer is None or self._producerProducing:
            return
        if not self._conn.mayProduce(self.streamID):
            return
        self._producerProducing = True
        self.producer.resumeProducing()


_HEADERS, _CONTINUATION, _END_HEADERS = 0x1, 0x9, 0x4
# The type and flags bytes of a DATA frame, without and with END_STREAM.
_DATA, _DATA_END = b"\x00\x00", b"\x00\x01"


def headerFrames(streamID: int, block: bytes, maxFrameSize: int) -> bytes:
    """
    The HEADERS frame of header block C{block} on stream C{streamID},
    followed by CONTINUATION frames for what does not fit in
    C{maxFrameSize} bytes (RFC 9113, sections 6.2 and 6.10).
    """
    stream = streamID.to_bytes(4, "big")
    if len(block) <= maxFrameSize:
        return len(block).to_bytes(3, "big") + bytes([_HEADERS, _END_HEADERS]) + stream + block
    frames = []
    kind = _HEADERS
    for start in range(0, len(block), maxFrameSize):
        chunk = block[start : start + maxFrameSize]
        last = start + maxFrameSize >= len(block)
        frames.append(
            len(chunk).to_bytes(3, "big")
            + bytes([kind, _END_HEADERS if last else 0])
            + stream
            + chunk
        )
        kind = _CONTINUATION
    return b"".join(frames)


def _integer(value: int, prefixBits: int, flags: int) -> bytes:
    """
    An HPACK integer (RFC 7541, section 5.1) of C{prefixBits} bits in its
    first byte, with C{flags} in that byte's other bits.
    """
    limit = (1 << prefixBits) - 1
    if value < limit:
        return bytes([flags | value])
    out = bytearray([flags | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def _string(value: bytes, huffman: bool = False) -> bytes:
    if huffman:
        coded = _HUFFMAN.encode(value)
        if len(coded) < len(value):
            return _integer(len(coded), 7, 0x80) + coded
    return _integer(len(value), 7, 0) + value


_STATIC: dict[bytes, tuple[int, dict[bytes, int]]] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC.setdefault(_name, (_index, {}))[1].setdefault(_value, _index)
del _index, _name, _value


#: The encoded fields and name prefixes every L{LiteralEncoder} shares.
_ENCODED_FIELDS: dict[tuple, bytes] = {}
_ENCODED_NAMES: dict[tuple, bytes] = {}


class LiteralEncoder:
    """
    An HPACK encoder (RFC 7541) that keeps no dynamic table: a field is the
    index of the static table's entry when it has one, else a literal
    (with the static table's index of its name, if any) that is not
    indexed (never indexed, for the fields h2 marks sensitive).  The
    decoder's dynamic table is set to size 0 in the first block, and again
    after every change of the client's C{SETTINGS_HEADER_TABLE_SIZE}.

    Encoding then costs a dictionary look-up per field, with the encoded
    fields cached (up to L{CACHE_SIZE} of them), where h2's encoder
    searches its dynamic table for every field and reorganises it.  Names
    are Huffman-coded (once each); values, which may differ in every
    response (C{x-request-id}), are not.

    A field is encoded the same for every connection, so all the encoders
    of the process share one cache: its bound is the process's, not each
    connection's (a connection's own would fill with the request ids of
    its responses, some 800 KiB a connection), and a new connection finds
    the usual fields encoded already.
    """

    CACHE_SIZE = 4096

    def __init__(self) -> None:
        self._cache = _ENCODED_FIELDS
        self._names = _ENCODED_NAMES
        self._sizeUpdate = True
        self._tableSize = 4096

    @property
    def header_table_size(self) -> int:
        return self._tableSize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._tableSize = value
        self._sizeUpdate = True

    def encode(self, headers, huffman: bool = True) -> bytes:
        parts = []
        if self._sizeUpdate:
            self._sizeUpdate = False
            # A dynamic table size update, to 0.
            parts.append(b"\x20")
        cache = self._cache
        for header in headers:
            if type(header) is tuple:
                # A plain pair, indexable: its own key.
                block = cache.get(header)
                if block is None:
                    block = self._remember(header, header[0], header[1], True)
            else:
                key = (header[0], header[1], getattr(header, "indexable", True))
                block = cache.get(key)
                if block is None:
                    block = self._remember(key, *key)
            parts.append(block)
        return b"".join(parts)

    def _remember(self, key: tuple, name, value, indexable: bool) -> bytes:
        block = self._field(name, value, indexable)
        if len(self._cache) >= self.CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = block
        return block

    def _field(self, name, value, indexable: bool) -> bytes:
        if isinstance(name, str):
            name = name.encode("utf-8")
        if isinstance(value, str):
            value = value.encode("utf-8")
        entry = _STATIC.get(name)
        if entry is not None and indexable:
            index = entry[1].get(value)
            if index is not None:
                return _integer(index, 7, 0x80)
        names = self._names
        prefix = names.get((name, indexable))
        if prefix is None:
            flags = 0x00 if indexable else 0x10
            if entry is None:
                prefix = bytes([flags]) + _string(name, huffman=True)
            else:
                prefix = _integer(entry[0], 4, flags)
            if len(names) >= self.CACHE_SIZE:
                names.clear()
            names[(name, indexable)] = prefix
        return prefix + _string(value)


#: The method of the connection that handles each kind of h2 event.
_HANDLERS = {
    h2.events.RequestReceived: "_requestReceived",
    h2.events.DataReceived: "_requestDataReceived",
    h2.events.StreamEnded: "_requestEnded",
    h2.events.StreamReset: "_requestAborted",
    h2.events.WindowUpdated: "_handleWindowUpdate",
    h2.events.PriorityUpdated: "_handlePriorityUpdate",
    h2.events.RemoteSettingsChanged: "_settingsChanged",
    h2.events.ConnectionTerminated: "_connectionTerminated",
}
