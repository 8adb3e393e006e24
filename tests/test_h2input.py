"""
Cached header blocks of HTTP/2 requests (L{manualb.web.h2input}): the same
bytes are decoded once only while they mean the same, whatever a client
does to the HPACK dynamic table in between.
"""

from __future__ import annotations

import h2.errors
from hpack import Decoder
from hpack.exceptions import HPACKDecodingError, OversizedHeaderListError
from hyperframe.frame import DataFrame, HeadersFrame, RstStreamFrame
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET

from manualb.config import GatekeeperConfig
from manualb.web.h2input import BlockDecoder, DecodedBlock, indexedOnly
from tests.test_http2 import REQUEST, MemoryClient

ErrorCodes = h2.errors.ErrorCodes

# Indexed fields of HPACK's static table: :method GET, :scheme https,
# :path /, and the first two entries of the dynamic table.
GET, HTTPS, SLASH = b"\x82", b"\x87", b"\x84"
DYNAMIC62, DYNAMIC63 = b"\xbe", b"\xbf"


def _string(value: bytes) -> bytes:
    """
    An HPACK string literal, not Huffman-coded.
    """
    length = len(value)
    if length < 127:
        return bytes([length]) + value
    out = bytearray([127])
    length -= 127
    while length >= 128:
        out.append((length & 0x7F) | 0x80)
        length >>= 7
    out.append(length)
    return bytes(out) + value


def indexing(nameIndex: int, value: bytes) -> bytes:
    """
    A literal field with incremental indexing (it is added to the dynamic
    table), its name from static index C{nameIndex}.
    """
    return bytes([0x40 | nameIndex]) + _string(value)


def authority(value: bytes) -> bytes:
    """
    An C{:authority} field added to the dynamic table.
    """
    return indexing(1, value)


def headersFrame(stream: int, block: bytes) -> bytes:
    frame = HeadersFrame(stream)
    frame.data = block
    frame.flags.add("END_HEADERS")
    frame.flags.add("END_STREAM")
    return frame.serialize()


class IndexedOnlyTests(SynchronousTestCase):
    """
    L{indexedOnly} tells blocks that cannot change the dynamic table.
    """

    def test_indexed(self):
        self.assertTrue(indexedOnly(b""))
        self.assertTrue(indexedOnly(GET + HTTPS + SLASH + DYNAMIC62))
        # An index of more than one byte: 127 + 1.
        self.assertTrue(indexedOnly(b"\xff\x01" + GET))
        self.assertTrue(indexedOnly(b"\xff\x81\x01"))

    def test_notIndexed(self):
        self.assertFalse(indexedOnly(GET + authority(b"example.com")))
        # Literals without indexing, never indexed, table size updates.
        self.assertFalse(indexedOnly(GET + b"\x01\x03abc"))
        self.assertFalse(indexedOnly(GET + b"\x11\x03abc"))
        self.assertFalse(indexedOnly(b"\x20" + GET))
        self.assertFalse(indexedOnly(b"\x3f\xe1\x1f" + GET))

    def test_truncated(self):
        """
        An index cut short is no block of indexed fields (the decoder then
        refuses it).
        """
        self.assertFalse(indexedOnly(b"\xff"))
        self.assertFalse(indexedOnly(b"\xff\x81"))


class BlockDecoderTests(SynchronousTestCase):
    """
    L{BlockDecoder} remembers blocks of indexed fields while its table is
    unchanged.
    """

    def test_cachedWhileTableUnchanged(self):
        decoder = BlockDecoder(65536)
        first = decoder.decode(GET + HTTPS + SLASH + authority(b"a.example"), raw=True)
        self.assertIsNone(decoder.last)
        self.assertNotIsInstance(first, DecodedBlock)
        block = GET + HTTPS + SLASH + DYNAMIC62
        decoded = decoder.decode(block, raw=True)
        self.assertIsInstance(decoded, DecodedBlock)
        self.assertIs(decoder.last, decoded)
        self.assertEqual(list(decoded)[-1], (b":authority", b"a.example"))
        self.assertIs(decoder.decode(bytearray(block), raw=True), decoded)
        # A literal with indexing moves index 62 to a new entry.
        decoder.decode(GET + HTTPS + SLASH + authority(b"b.example"), raw=True)
        again = decoder.decode(block, raw=True)
        self.assertIsNot(again, decoded)
        self.assertEqual(list(again)[-1], (b":authority", b"b.example"))

    def test_tableSizeUpdateEmptiesCache(self):
        """
        A block that empties the table (a size update to 0) leaves no list
        decoded against the old one: the same bytes are now an error.
        """
        decoder = BlockDecoder(65536)
        decoder.decode(authority(b"a.example"), raw=True)
        block = GET + DYNAMIC62
        decoder.decode(block, raw=True)
        decoder.decode(b"\x20" + GET, raw=True)
        self.assertRaises(HPACKDecodingError, decoder.decode, block, raw=True)

    def test_loweredListSize(self):
        """
        A cached list above a since-lowered header list size is refused as
        a fresh one would be.
        """
        decoder = BlockDecoder(65536)
        decoder.decode(authority(b"a" * 100), raw=True)
        block = GET + DYNAMIC62
        decoder.decode(block, raw=True)
        decoder.max_header_list_size = 100
        self.assertRaises(OversizedHeaderListError, decoder.decode, block, raw=True)

    def test_bounded(self):
        """
        Long blocks, blocks of many fields, and more than C{CACHE_SIZE}
        blocks are not all kept.
        """
        decoder = BlockDecoder(2**20)
        decoder.decode(b"\x90" * (BlockDecoder.MAX_BLOCK + 1), raw=True)
        self.assertIsNone(decoder.last)
        decoder.decode(b"\x90" * (BlockDecoder.MAX_FIELDS + 1), raw=True)
        self.assertIsNone(decoder.last)
        for index in range(1, 62):
            decoder.decode(bytes([0x80 | index]), raw=True)
            self.assertIsNotNone(decoder.last)
            self.assertLessEqual(len(decoder._blocks), BlockDecoder.CACHE_SIZE)

    def test_notRaw(self):
        """
        Text lists (C{raw=False}) are decoded every time.
        """
        decoder = BlockDecoder(65536)
        self.assertEqual(decoder.decode(GET, raw=False), [(":method", "GET")])
        self.assertIsNone(decoder.last)


def _sent(client: MemoryClient):
    """
    The statuses (C{:status} of HEADERS) and resets the server sent, by
    stream.
    """
    statuses, resets = {}, {}
    for frame in client.frames():
        if isinstance(frame, HeadersFrame):
            statuses[frame.stream_id] = frame
        elif isinstance(frame, RstStreamFrame):
            resets[frame.stream_id] = frame.error_code
    return statuses, resets


class CachedRequestTests(SynchronousTestCase):
    """
    Requests whose blocks are cached are checked and limited as any other;
    a client cannot make the proxy take one request for another.
    """

    def hosts(self, client: MemoryClient) -> list[bytes]:
        return [
            headers.getRawHeaders(b"host")[0] for method, uri, headers in client.resource.requests
        ]

    def test_tableChangeBetweenIdenticalBlocks(self):
        """
        The same bytes after the dynamic table changed are the request they
        now mean: a valid one, a malformed one (reset, never served), and a
        valid one again.
        """
        client = MemoryClient()
        block = GET + HTTPS + SLASH + DYNAMIC62
        client.send(headersFrame(1, GET + HTTPS + SLASH + authority(b"a.example")))
        client.send(headersFrame(3, block))
        client.send(headersFrame(5, block))
        self.assertEqual(self.hosts(client), [b"a.example"] * 3)
        # Both a request of its own and a change of the table.
        client.send(headersFrame(7, GET + HTTPS + SLASH + authority(b"bad host")))
        client.send(headersFrame(9, block))
        client.send(headersFrame(11, block))
        client.send(headersFrame(13, GET + HTTPS + SLASH + authority(b"b.example")))
        client.send(headersFrame(15, block))
        self.assertEqual(self.hosts(client), [b"a.example"] * 3 + [b"b.example"] * 2)
        statuses, resets = _sent(client)
        self.assertEqual(sorted(statuses), [1, 3, 5, 13, 15])
        self.assertEqual(
            resets,
            {7: ErrorCodes.PROTOCOL_ERROR, 9: ErrorCodes.PROTOCOL_ERROR, 11: ErrorCodes.PROTOCOL_ERROR},
        )
        self.assertFalse(client.closed)

    def test_splitCookies(self):
        """
        Cookie fields split in two are joined (RFC 9113, 8.2.3) in a request
        whose block is cached as in one whose block is not.
        """
        client = MemoryClient()
        setup = GET + HTTPS + SLASH + authority(b"a.example")
        setup += indexing(32, b"a=1") + indexing(32, b"b=2")
        client.send(headersFrame(1, setup))
        # 62 is b=2, 63 a=1, 64 :authority.
        block = GET + HTTPS + SLASH + b"\xc0" + DYNAMIC63 + DYNAMIC62
        client.send(headersFrame(3, block))
        client.send(headersFrame(5, block))
        self.assertEqual(
            [headers.getRawHeaders(b"cookie") for method, uri, headers in client.resource.requests],
            [[b"a=1; b=2"]] * 3,
        )

    def test_poisonedPath(self):
        """
        A valid cached block whose indices a malformed request then moves
        (a second C{:path} slips in) is reset, not served as before.
        """
        client = MemoryClient()
        setup = GET + HTTPS + authority(b"a.example") + indexing(4, b"/ok")
        block = GET + HTTPS + DYNAMIC62 + DYNAMIC63
        client.send(headersFrame(1, setup))
        client.send(headersFrame(3, block))
        self.assertEqual(
            [uri for method, uri, headers in client.resource.requests], [b"/ok", b"/ok"]
        )
        client.send(headersFrame(5, GET + HTTPS + indexing(4, b"nope") + b"\xc0"))
        client.send(headersFrame(7, block))
        self.assertEqual(len(client.resource.requests), 2)
        statuses, resets = _sent(client)
        self.assertEqual(resets, {5: ErrorCodes.PROTOCOL_ERROR, 7: ErrorCodes.PROTOCOL_ERROR})

    def test_sizeUpdateBetweenIdenticalBlocks(self):
        """
        A table emptied by a size update between two identical blocks makes
        the second one undecodable: COMPRESSION_ERROR, not the first one's
        request again.
        """
        client = MemoryClient()
        block = GET + HTTPS + SLASH + DYNAMIC62
        client.send(headersFrame(1, GET + HTTPS + SLASH + authority(b"a.example")))
        client.send(headersFrame(3, block))
        client.send(headersFrame(5, b"\x20" + GET + HTTPS + SLASH + b"\x01" + _string(b"a.example")))
        self.assertEqual(len(client.resource.requests), 3)
        client.send(headersFrame(7, block))
        client.receive()
        self.assertEqual(client.goaway().error_code, ErrorCodes.COMPRESSION_ERROR)
        self.assertTrue(client.closed)
        self.assertEqual(len(client.resource.requests), 3)

    def test_invalidPseudoHeaderCached(self):
        """
        A block of indexed fields with a pseudo-header field the proxy
        refuses is refused every time it comes, the cached verdict too.
        """
        client = MemoryClient()
        # An unknown pseudo-header field, and one repeated after a regular
        # field.
        for name, first in ((b":foo", 1), (b":path", 7)):
            setup = GET + HTTPS + SLASH + authority(b"a.example")
            setup += b"\x40" + _string(b"x-a") + _string(b"1")
            setup += b"\x40" + _string(name) + _string(b"/x")
            client.send(headersFrame(first, setup))
            # 62 is the pseudo-header field, 63 x-a, 64 :authority.
            block = GET + HTTPS + SLASH + b"\xc0" + DYNAMIC63 + DYNAMIC62
            for stream in (first + 2, first + 4):
                client.send(headersFrame(stream, block))
            statuses, resets = _sent(client)
            for stream in (first, first + 2, first + 4):
                self.assertEqual(resets.get(stream), ErrorCodes.PROTOCOL_ERROR, (name, stream))
        self.assertEqual(client.resource.requests, [])
        self.assertFalse(client.closed)

    def test_manyFields(self):
        """
        A block of more indexed fields than C{max_headers}, sent again and
        again, gets 431 each time and never reaches the site, cached or not.
        """
        client = MemoryClient(GatekeeperConfig(max_headers=20))
        head = GET + HTTPS + SLASH + authority(b"a.example")
        client.send(headersFrame(1, head))
        for count, stream in ((30, 3), (30, 5), (BlockDecoder.MAX_BLOCK, 7), (BlockDecoder.MAX_BLOCK, 9)):
            client.send(headersFrame(stream, GET + HTTPS + SLASH + DYNAMIC62 + b"\x90" * count))
        statuses, resets = _sent(client)
        self.assertEqual(
            {stream: _status(frame) for stream, frame in statuses.items()},
            {1: 200, 3: 431, 5: 431, 7: 431, 9: 431},
        )
        self.assertEqual(len(client.resource.requests), 1)

    def test_hpackBomb(self):
        """
        A short block of indexed fields that decodes to more than the
        advertised header list size closes the connection
        (ENHANCE_YOUR_CALM) and is not kept.
        """
        client = MemoryClient()
        big = b"\x40" + _string(b"x-big") + _string(b"a" * 1000)
        client.send(headersFrame(1, GET + HTTPS + SLASH + authority(b"a.example") + big))
        self.assertEqual(len(client.resource.requests), 1)
        decoder = client.server.conn.decoder
        block = GET + HTTPS + SLASH + DYNAMIC63 + DYNAMIC62 * 100
        self.assertLessEqual(len(block), BlockDecoder.MAX_BLOCK)
        client.send(headersFrame(3, block))
        client.receive()
        self.assertEqual(client.goaway().error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(client.closed)
        self.assertEqual(decoder._blocks, {})
        self.assertEqual(len(client.resource.requests), 1)

    def test_plainRequestsStillCached(self):
        """
        The h2 package's own encoder sends a repeated request as a block of
        indexed fields: it is decoded once.
        """
        client = MemoryClient()
        for _ in range(3):
            client.request(REQUEST + [(b"user-agent", b"test")])
        decoder = client.server.conn.decoder
        self.assertEqual(len(decoder._blocks), 1)
        self.assertEqual([client.status(stream) for stream in (1, 3, 5)], [200] * 3)


def _status(frame: HeadersFrame) -> int:
    """
    The C{:status} of a response's HEADERS frame (the proxy's blocks need
    no dynamic table).
    """
    return int(dict(Decoder().decode(frame.data, raw=True))[b":status"])


class FrameReceiverTests(SynchronousTestCase):
    """
    Frames on streams that are gone are handled as h2 handles them.
    """

    def assertLateDataReset(self, client: MemoryClient):
        """
        DATA that C{client} sends now on stream 1 is answered with
        RST_STREAM (STREAM_CLOSED), and the connection goes on.
        """
        data = DataFrame(1)
        data.data = b"late"
        client.send(data.serialize())
        statuses, resets = _sent(client)
        self.assertEqual(resets, {1: ErrorCodes.STREAM_CLOSED})
        self.assertIsNone(client.goaway())

    def test_afterReset(self):
        """
        DATA on a stream the client reset: RST_STREAM (STREAM_CLOSED) for
        it, and the connection goes on.
        """
        client = MemoryClient()
        client.resource.hold = True
        # A request with a body to come.
        frame = HeadersFrame(1)
        frame.data = GET + HTTPS + SLASH + authority(b"a.example")
        frame.flags.add("END_HEADERS")
        client.send(frame.serialize())
        reset = RstStreamFrame(1)
        reset.error_code = ErrorCodes.CANCEL
        client.send(reset.serialize())
        self.assertLateDataReset(client)
        client.resource.hold = False
        client.send(headersFrame(3, GET + HTTPS + SLASH + DYNAMIC62))
        statuses, resets = _sent(client)
        self.assertEqual(list(statuses), [3])

    def test_afterEnd(self):
        """
        DATA on a stream that is over (the client ended it, the response is
        sent): RST_STREAM (STREAM_CLOSED) for it, and the connection goes
        on.
        """
        client = MemoryClient()
        client.send(headersFrame(1, GET + HTTPS + SLASH + authority(b"a.example")))
        self.assertEqual(len(client.resource.requests), 1)
        self.assertLateDataReset(client)
        self.assertFalse(client.closed)

    def test_implicitlyClosed(self):
        """
        HEADERS on a stream below one the client already opened: a
        connection error, PROTOCOL_ERROR.
        """
        client = MemoryClient()
        client.send(headersFrame(5, GET + HTTPS + SLASH + authority(b"a.example")))
        client.send(headersFrame(3, GET + HTTPS + SLASH + DYNAMIC62))
        self.assertEqual(client.goaway().error_code, ErrorCodes.PROTOCOL_ERROR)
        self.assertTrue(client.closed)
        self.assertEqual(len(client.resource.requests), 1)


class OpenStreamsTests(SynchronousTestCase):
    """
    h2 lets go of streams the proxy is done with at once, and still counts
    the open ones against SETTINGS_MAX_CONCURRENT_STREAMS.
    """

    def test_forgotten(self):
        """
        Once answered, a stream is no longer among the streams h2 keeps, and
        h2 remembers how it was closed.
        """
        client = MemoryClient()
        for _ in range(3):
            client.request()
        conn = client.server.conn
        self.assertEqual(conn.streams, {})
        self.assertEqual(sorted(conn._closed_streams), [1, 3, 5])
        self.assertEqual([client.status(stream) for stream in (1, 3, 5)], [200] * 3)

    def test_concurrencyLimit(self):
        """
        100 streams may be open at once: the 101st is an error; once some
        are answered, as many new ones may open.
        """
        client = MemoryClient()
        held = []
        client.resource.render = lambda request: (held.append(request), NOT_DONE_YET)[1]
        frames = b"".join(
            headersFrame(stream, GET + HTTPS + SLASH + b"\x01" + _string(b"a.example"))
            for stream in range(1, 201, 2)
        )
        client.send(frames)
        self.assertEqual(len(held), 100)
        for request in held[:50]:
            request.finish()
        client.pump()
        frames = b"".join(
            headersFrame(stream, GET + HTTPS + SLASH + b"\x01" + _string(b"a.example"))
            for stream in range(201, 301, 2)
        )
        client.send(frames)
        self.assertEqual(len(held), 150)
        self.assertFalse(client.closed)
        self.assertEqual(client.server.conn.open_inbound_streams, 100)
        client.send(headersFrame(301, GET + HTTPS + SLASH + b"\x01" + _string(b"a.example")))
        self.assertEqual(len(held), 150)
        self.assertIsNotNone(client.goaway())


class FastOpenTests(SynchronousTestCase):
    """
    A request without a body whose cached block the proxy checked before
    opens its stream without h2's frame machinery
    (L{manualb.web.http2.ProxyH2Connection._openFast}), leaving h2's state
    as h2 would; whatever that cannot vouch for goes through h2, with h2's
    verdict.
    """

    def setUp(self):
        self.client = MemoryClient()
        self.opened: list[tuple[int, bool]] = []
        conn = self.client.server.conn
        original = conn.openStream

        def recording(streamID):
            opened = original(streamID)
            self.opened.append((streamID, opened))
            return opened

        conn.openStream = recording
        self.held: list = []
        # The first block fills the dynamic table; the second, cached, is
        # checked by the proxy; from the third on, the fast way is open.
        self.client.send(headersFrame(1, GET + HTTPS + SLASH + authority(b"a.example")))
        self.client.send(headersFrame(3, CACHED))

    def hold(self):
        self.client.resource.render = lambda request: (self.held.append(request), NOT_DONE_YET)[1]

    def test_opened(self):
        """
        The stream is opened without h2's frame machinery, its request
        served as any other, and h2 ends up knowing the stream as it knows
        one it opened itself.
        """
        self.client.send(headersFrame(5, CACHED))
        self.assertEqual(self.opened, [(5, True)])
        statuses, resets = _sent(self.client)
        self.assertEqual(sorted(statuses), [1, 3, 5])
        self.assertEqual(resets, {})
        self.assertEqual(len(self.client.resource.requests), 3)
        conn = self.client.server.conn
        self.assertEqual(conn.streams, {})
        self.assertEqual(conn._closed_streams[5], conn._closed_streams[3])
        self.assertEqual(conn.highest_inbound_stream_id, 5)

    def test_openState(self):
        """
        While its response is awaited, the stream is half closed (remote) in
        h2, as h2 leaves a request that ended with its HEADERS frame.
        """
        self.hold()
        self.client.send(headersFrame(5, CACHED))
        self.client.send(headersFrame(7, GET + HTTPS + SLASH + authority(b"b.example")))
        conn = self.client.server.conn
        fast, slow = conn.streams[5], conn.streams[7]
        for name in ("state", "client", "headers_received", "headers_sent", "stream_closed_by"):
            self.assertEqual(
                getattr(fast.state_machine, name), getattr(slow.state_machine, name), name
            )
        self.assertEqual(fast.inbound_flow_control_window, slow.inbound_flow_control_window)
        self.assertEqual(fast.outbound_flow_control_window, slow.outbound_flow_control_window)
        self.assertEqual(fast.max_outbound_frame_size, slow.max_outbound_frame_size)
        self.assertEqual(conn.open_inbound_streams, 2)
        for request in self.held:
            request.finish()
        self.client.pump()
        statuses, resets = _sent(self.client)
        self.assertEqual(sorted(statuses), [1, 3, 5, 7])
        self.assertEqual(conn.streams, {})

    def test_concurrencyLimit(self):
        """
        Streams opened the fast way count against
        SETTINGS_MAX_CONCURRENT_STREAMS: the 101st is refused by h2.
        """
        self.hold()
        self.client.send(b"".join(headersFrame(stream, CACHED) for stream in range(5, 205, 2)))
        self.assertEqual(len(self.held), 100)
        self.assertFalse(self.client.closed)
        self.client.send(headersFrame(205, CACHED))
        self.assertEqual(len(self.held), 100)
        self.assertEqual(self.opened[-1], (205, False))
        self.assertIsNotNone(self.client.goaway())
        self.assertTrue(self.client.closed)

    def test_streamIDReused(self):
        """
        A stream ID that is not above the last one is h2's to judge: a
        connection error, and no request.
        """
        self.client.send(headersFrame(3, CACHED))
        self.assertEqual(self.opened, [(3, False)])
        self.assertEqual(len(self.client.resource.requests), 2)
        self.assertEqual(self.client.goaway().error_code, ErrorCodes.STREAM_CLOSED)

    def test_evenStreamID(self):
        """
        A stream ID of the server's kind is a connection error.
        """
        self.client.send(headersFrame(6, CACHED))
        self.assertEqual(self.opened, [(6, False)])
        self.assertEqual(len(self.client.resource.requests), 2)
        self.assertEqual(self.client.goaway().error_code, ErrorCodes.PROTOCOL_ERROR)

    def test_draining(self):
        """
        Once the proxy drains the connection, a new stream is refused
        (C{REFUSED_STREAM}), whatever its block.
        """
        self.hold()
        self.client.send(headersFrame(5, CACHED))
        self.client.server.drain()
        self.client.send(headersFrame(7, CACHED))
        self.assertEqual(self.opened, [(5, True)])
        statuses, resets = _sent(self.client)
        self.assertEqual(resets, {7: ErrorCodes.REFUSED_STREAM})
        self.assertEqual(len(self.held), 1)

    def test_refusedNotFast(self):
        """
        A cached block of a request that is refused goes through h2 each
        time, and is refused each time.
        """
        self.client.send(headersFrame(5, GET + HTTPS + SLASH + authority(b"bad host")))
        self.client.send(headersFrame(7, CACHED))
        self.client.send(headersFrame(9, CACHED))
        self.assertEqual(self.opened, [])
        statuses, resets = _sent(self.client)
        self.assertEqual(
            resets, {5: ErrorCodes.PROTOCOL_ERROR, 7: ErrorCodes.PROTOCOL_ERROR, 9: ErrorCodes.PROTOCOL_ERROR}
        )

    def test_withBody(self):
        """
        A request that does not end with its HEADERS frame goes through h2.
        """
        frame = HeadersFrame(5)
        frame.data = CACHED
        frame.flags.add("END_HEADERS")
        self.client.send(frame.serialize())
        data = DataFrame(5)
        data.data = b"body"
        data.flags.add("END_STREAM")
        self.client.send(data.serialize())
        self.assertEqual(self.opened, [])
        statuses, resets = _sent(self.client)
        self.assertEqual(sorted(statuses), [1, 3, 5])

    def test_splitFrame(self):
        """
        A HEADERS frame that comes in two reads goes through h2.
        """
        frame = headersFrame(5, CACHED)
        self.client.send(frame[:11])
        self.client.send(frame[11:])
        self.assertEqual(self.opened, [])
        statuses, resets = _sent(self.client)
        self.assertEqual(sorted(statuses), [1, 3, 5])

    def test_anySplit(self):
        """
        Frames cut anywhere, their headers too, in reads of every size from
        one byte up, are all read: every request is answered.
        """
        frames = b"".join(headersFrame(stream, CACHED) for stream in range(5, 31, 2))
        for size in range(1, 24):
            client = MemoryClient()
            client.send(headersFrame(1, GET + HTTPS + SLASH + authority(b"a.example")))
            client.send(headersFrame(3, CACHED))
            for start in range(0, len(frames), size):
                client.send(frames[start : start + size])
            statuses, resets = _sent(client)
            self.assertEqual(sorted(statuses), list(range(1, 31, 2)), size)
            self.assertEqual(resets, {})

    def test_amongOtherFrames(self):
        """
        Frames before and after one that opens its stream the fast way, in
        the same read, are handled in order.
        """
        self.hold()
        frames = (
            headersFrame(5, GET + HTTPS + SLASH + authority(b"b.example"))
            + headersFrame(7, CACHED)
            + headersFrame(9, CACHED)
        )
        reset = RstStreamFrame(7)
        reset.error_code = ErrorCodes.CANCEL
        self.client.send(frames + reset.serialize() + headersFrame(11, CACHED))
        # 5 changed the table: 7 is decoded again (and cached), 9 and 11
        # go the fast way.
        self.assertEqual(self.opened, [(9, True), (11, True)])
        self.assertEqual(
            [request.requestHeaders.getRawHeaders(b"host")[0] for request in self.held],
            [b"b.example"] * 4,
        )
        self.assertEqual(sorted(self.client.server.streams), [5, 9, 11])


# :method GET, :scheme https, :path /, and the :authority of the dynamic table.
CACHED = GET + HTTPS + SLASH + DYNAMIC62
