"""
The reading side of an HTTP/2 client connection: header blocks decoded once
for as long as they mean the same.

Clients send near-identical header blocks for their requests: once the
first request has put its fields in the HPACK dynamic table, the next ones
are made of indexed fields only (h2load's are a few bytes, a browser's
mostly so).  Such a block changes nothing in the table, and while the table
is unchanged the same bytes decode to the same header list: L{BlockDecoder}
keeps the lists of the last few such blocks, and the proxy keeps what it
made of each (its checks and its split into pseudo-header and regular
fields) with it.

A block with anything but indexed fields (a literal, which may add to the
table, or a table size update) empties the cache before it is decoded, so
that no list decoded against an older table is ever handed out again.

L{RequestHead} is what the proxy makes of a request's header list: the
checks of RFC 9113 and of the C{[gatekeeper]} limits, once for each list.
L{FrameReceiver} is h2's connection with a cheaper handling of each frame.
"""

from __future__ import annotations

import re

from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import StreamClosedError, StreamIDTooLowError
from h2.stream import STREAM_OPEN, H2Stream, StreamState
from hpack import Decoder
from hpack.exceptions import InvalidTableSizeError, OversizedHeaderListError
from hyperframe.frame import RstStreamFrame

from manualb.config import GatekeeperConfig
from manualb.rules import CONTROL, HOST, MAX_CONTENT_LENGTH, METHOD, TARGET

_TCHAR = frozenset(
    b"!#$%&'*+-.^_`|~0123456789"
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_NAME_CHARS = frozenset(c for c in _TCHAR if not 0x41 <= c <= 0x5A)
#: A field name of L{_NAME_CHARS} only (a lower-case token).
_NAME = re.compile(b"[" + re.escape(bytes(sorted(_NAME_CHARS))) + b"]+")
# Enum members read once: reading one from its class costs.
_SERVER_OPEN = ConnectionState.SERVER_OPEN
_HALF_CLOSED_REMOTE = StreamState.HALF_CLOSED_REMOTE
_CLOSED = StreamState.CLOSED
_SCHEME_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.")
#: The pseudo-header fields of a request (RFC 9113, section 8.3.1).
PSEUDO_HEADERS = frozenset([b":method", b":scheme", b":path", b":authority"])
_CONNECTION_HEADERS = frozenset(
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"]
)


class DecodedBlock(tuple):
    """
    The header list of one cached header block (a tuple of C{(name, value)}
    pairs), shared by the requests that sent it.

    @ivar received: The list as h2 hands a request's fields over (cookie
        fields joined into one, at the end), once made; L{None} before.
    @ivar request: Of that list: what the proxy made of it (see
        L{manualb.web.http2.ProxyH2Stream}), once it has; L{None} before.
    @ivar size: The list's size as RFC 7541 counts it (32 bytes more for
        each field).
    """

    received = None
    request = None
    size = 0


def indexedOnly(block: bytes) -> bool:
    """
    Whether C{block} is made of indexed header fields only (RFC 7541,
    section 6.1): fields that change nothing in the dynamic table.
    """
    position = 0
    size = len(block)
    while position < size:
        first = block[position]
        if not first & 0x80:
            return False
        position += 1
        if first & 0x7F == 0x7F:
            # The index goes on in bytes with the high bit set, up to one
            # without.
            while position < size and block[position] & 0x80:
                position += 1
            position += 1
    return position == size


class BlockDecoder(Decoder):
    """
    An HPACK decoder that remembers the header lists of up to
    L{CACHE_SIZE} blocks of indexed fields only, as long as its dynamic
    table does not change (see the module's docstring).

    @ivar last: The cached list that the last block decoded to, or L{None}
        when that block was not one to cache.
    """

    #: How many blocks are remembered.
    CACHE_SIZE = 16
    #: The longest block (bytes) that is remembered.
    MAX_BLOCK = 128
    #: The most fields of a block that is remembered.
    MAX_FIELDS = 48

    last: DecodedBlock | None = None

    def __init__(self, max_header_list_size: int) -> None:
        super().__init__(max_header_list_size=max_header_list_size)
        self._blocks: dict[bytes, DecodedBlock] = {}

    def cached(self, data: bytes) -> DecodedBlock | None:
        """
        The list that C{data} decodes to when it is a block that is cached
        and within the limits, else L{None} (and C{decode} is to be used).
        Nothing changes.
        """
        block = self._blocks.get(data)
        if (
            block is None
            or block.size > self.max_header_list_size
            or self.header_table_size > self.max_allowed_table_size
        ):
            return None
        return block

    def decode(self, data, raw: bool = False):
        if not raw:
            self.last = None
            self._blocks.clear()
            return super().decode(data, raw)
        if type(data) is not bytes:
            data = bytes(data)
        blocks = self._blocks
        block = blocks.get(data)
        if block is not None:
            # Limits may have been lowered since it was decoded.
            if block.size > self.max_header_list_size:
                raise OversizedHeaderListError(
                    f"A header list larger than {self.max_header_list_size} has been received"
                )
            if self.header_table_size > self.max_allowed_table_size:
                raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
            self.last = block
            return block
        self.last = None
        if len(data) > self.MAX_BLOCK or not indexedOnly(data):
            # It may change the table: what was decoded before may no
            # longer be what the same bytes mean.
            blocks.clear()
            return super().decode(data, raw)
        headers = super().decode(data, raw)
        if len(headers) > self.MAX_FIELDS:
            return headers
        block = DecodedBlock(headers)
        block.size = sum(32 + len(name) + len(value) for name, value in headers)
        if len(blocks) >= self.CACHE_SIZE:
            blocks.clear()
        blocks[data] = self.last = block
        return block


class FrameReceiver(H2Connection):
    """
    h2's connection, handling each frame it reads as h2 does but without
    first making the frame's description for a trace log that is off, and
    letting go of a closed stream as soon as the proxy is done with it
    rather than when the next request counts the open streams (which h2
    does by going through all it knows, for every new stream).
    """

    def openStream(self, streamID: int) -> bool:
        """
        Open stream C{streamID} of the client as h2 does on a HEADERS frame
        that ends the stream (a request without a body), when nothing about
        it can go wrong: the connection is open, the ID is new and the
        client's, and fewer streams than allowed are known.  The stream is
        left half closed (remote), as h2 leaves it.

        @return: Whether it did; when not, nothing has changed.
        """
        if (
            self.state_machine.state is not _SERVER_OPEN
            or streamID <= self.highest_inbound_stream_id
            or not streamID & 1
            or len(self.streams) >= self.local_settings.max_concurrent_streams
        ):
            return False
        stream = H2Stream(
            streamID,
            self.config,
            self.local_settings.initial_window_size,
            self.remote_settings.initial_window_size,
        )
        stream.max_outbound_frame_size = self.max_outbound_frame_size
        machine = stream.state_machine
        machine.state = _HALF_CLOSED_REMOTE
        machine.client = False
        machine.headers_received = True
        self.streams[streamID] = stream
        self.highest_inbound_stream_id = streamID
        return True

    def forgetClosed(self, streamID: int) -> None:
        """
        Let go of stream C{streamID} if it is closed, remembering how, as h2
        does when it counts the open streams.
        """
        stream = self.streams.get(streamID)
        if stream is not None and stream.state_machine.state is _CLOSED:
            del self.streams[streamID]
            self._closed_streams[streamID] = stream.state_machine.stream_closed_by

    def _open_streams(self, remainder: int) -> int:
        # h2's, reading each stream's state once.
        count = 0
        closed = []
        for streamID, stream in self.streams.items():
            state = stream.state_machine.state
            if STREAM_OPEN[state]:
                if streamID % 2 == remainder:
                    count += 1
            elif state is _CLOSED:
                closed.append(streamID)
        for streamID in closed:
            stream = self.streams.pop(streamID)
            self._closed_streams[streamID] = stream.state_machine.stream_closed_by
        return count

    def _receive_frame(self, frame):
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            # Closed by RST_STREAM: a stream error; else a connection error.
            if self._stream_is_closed_by_reset(e.stream_id):
                reset = RstStreamFrame(e.stream_id)
                reset.error_code = e.error_code
                self._prepare_for_sending([reset])
                events = e._events
            else:
                raise
        except StreamIDTooLowError as e:
            # A stream that is gone: closed by RST_STREAM, a stream error;
            # by END_STREAM, a connection error (STREAM_CLOSED); implicitly,
            # a connection error (PROTOCOL_ERROR).
            if self._stream_is_closed_by_reset(e.stream_id):
                reset = RstStreamFrame(e.stream_id)
                reset.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([reset])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events


class RequestHead:
    """
    What a request's header list means to the proxy: the checks' verdict
    and, for a request that passes them, its parts.  It depends on the
    list and the C{[gatekeeper]} limits only, so a cached header block
    (L{DecodedBlock}) keeps it for the next request that sends the same.

    @ivar refusal: L{None}, or the arguments of C{ProxyH2Stream._refuse} (L{manualb.web.http2})
        for a request that may not go on.
    @ivar fields: The regular fields, as a tuple.
    @ivar proxyFields: The regular fields with C{host} from C{:authority}
        when there is none, as the proxy's exchange sees them.
    @ivar expectsContinue: Whether the request has C{Expect: 100-continue}.
    @ivar length: The declared length of the body, or L{None}.
    """

    __slots__ = (
        "gatekeeper",
        "refusal",
        "pseudo",
        "fields",
        "proxyFields",
        "expectsContinue",
        "method",
        "path",
        "length",
    )

    def __init__(self, headers, gatekeeper: GatekeeperConfig) -> None:
        self.gatekeeper = gatekeeper
        self.refusal = None
        self.pseudo = pseudo = {name: value for name, value in headers if name[:1] == b":"}
        self.fields = fields = tuple(
            (name, value) for name, value in headers if name[:1] != b":"
        )
        self.method = method = pseudo.get(b":method", b"")
        self.path = path = pseudo.get(b":path", b"")
        self.length = None
        self.proxyFields = fields
        self.expectsContinue = False
        problem = malformed(headers)
        if problem is not None:
            self.refusal = (None, ErrorCodes.PROTOCOL_ERROR, "malformed request: " + problem)
            return
        if len(method) + len(path) + 10 > gatekeeper.max_request_line:
            self.refusal = (414, ErrorCodes.REFUSED_STREAM, "request line too long")
            return
        headerBytes = sum(len(name) + len(value) + 4 for name, value in fields)
        if len(fields) > gatekeeper.max_headers or headerBytes > gatekeeper.max_header_size:
            self.refusal = (431, ErrorCodes.REFUSED_STREAM, "header fields too large")
            return
        if method == b"CONNECT":
            self.refusal = (405, ErrorCodes.REFUSED_STREAM, "CONNECT")
            return
        lengths = {value for name, value in fields if name == b"content-length"}
        length = self.length = int(lengths.pop()) if lengths else None
        limit = gatekeeper.client_max_body_size
        if limit and length is not None and length > limit:
            self.refusal = (413, ErrorCodes.CANCEL, "declared body too large")
            return
        authority = pseudo.get(b":authority")
        if authority is not None and not any(name == b"host" for name, _ in fields):
            self.proxyFields = fields + ((b"host", authority),)
        self.expectsContinue = any(
            name == b"expect" and value.lower() == b"100-continue" for name, value in fields
        )


def malformed(headers) -> str | None:
    """
    What makes a request's header list malformed (RFC 9113, sections 8.1.1,
    8.2 and 8.3), or L{None}.
    """
    pseudo: dict[bytes, bytes] = {}
    regular = False
    for name, value in headers:
        if not name:
            return "empty field name"
        if value and (
            value[0] in b" \t" or value[-1] in b" \t" or CONTROL.search(value)
        ):
            return f"bad value of {name!r}"
        if name[:1] == b":":
            if regular:
                return f"{name!r} after regular fields"
            if name not in PSEUDO_HEADERS:
                return f"unknown pseudo-header {name!r}"
            if name in pseudo:
                return f"repeated {name!r}"
            pseudo[name] = value
            continue
        regular = True
        if _NAME.fullmatch(name) is None:
            return f"bad field name {name!r}"
        if name in _CONNECTION_HEADERS:
            return f"connection-specific field {name!r}"
        if name == b"te" and value.lower() != b"trailers":
            return "te other than trailers"
    method = pseudo.get(b":method")
    if not method or METHOD.fullmatch(method) is None:
        return "bad or missing :method"
    authority = pseudo.get(b":authority")
    hosts = [value for name, value in headers if name == b"host"]
    if len(hosts) > 1:
        return "more than one host"
    if authority is not None and hosts and hosts[0] != authority:
        return ":authority and host differ"
    host = authority if authority is not None else (hosts[0] if hosts else None)
    if host is None:
        return "no :authority or host"
    if not host or HOST.fullmatch(host) is None:
        return "bad :authority"
    if method == b"CONNECT":
        if b":scheme" in pseudo or b":path" in pseudo:
            return ":scheme or :path in CONNECT"
        return None
    scheme = pseudo.get(b":scheme")
    if not scheme or not set(scheme) <= _SCHEME_CHARS:
        return "bad or missing :scheme"
    path = pseudo.get(b":path")
    if not path:
        return "empty or missing :path"
    if path == b"*":
        if method != b"OPTIONS":
            return ":path * for another method than OPTIONS"
    elif path[:1] != b"/" or TARGET.fullmatch(path) is None:
        return "bad :path"
    for name, value in headers:
        if name == b"content-length" and not (
            value.isdigit() and int(value) <= MAX_CONTENT_LENGTH
        ):
            return "bad content-length"
    return None
