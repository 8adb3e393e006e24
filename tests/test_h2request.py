"""
HTTP/2 requests to the proxy's own resource (L{manualb.web.h2request}):
each stream is the client's side of its exchange, without a twisted.web
request; and the HPACK encoder of the responses
(L{manualb.web.h2output.LiteralEncoder}).
"""

from __future__ import annotations

import gc
import weakref

import h2.events
import h2.settings
from hpack import Decoder
from hpack.struct import NeverIndexedHeaderTuple
from hyperframe.frame import HeadersFrame, RstStreamFrame
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from manualb.configfile import parseConfig
from manualb.testing import MemoryBalancer
from manualb.web.h2output import LiteralEncoder
from manualb.web.h2request import StreamDownstream
from tests.test_http2 import REQUEST, ErrorCodes, MemoryClient

BACKEND = "10.0.0.1:8001"
CONFIG = (
    "[manualb]\nlisten = tcp:0\naccess_log = off\n"
    "[gatekeeper]\n"
    f"[upstream u]\nservers = {BACKEND}\n"
    "[route default]\npath = /\nupstream = u\n"
)


class Backend(Resource):
    """
    Answers with the request's body (or C{hello}), with a few headers of
    its own; holds the requests when C{hold}.
    """

    isLeaf = True
    hold = False

    def __init__(self):
        super().__init__()
        self.requests: list = []
        self.gone: list = []

    def render(self, request):
        self.requests.append(request)
        request.notifyFinish().addErrback(self.gone.append)
        request.setHeader(b"X-Backend", b"A")
        request.setHeader(b"Content-Type", b"text/plain")
        if self.hold:
            return NOT_DONE_YET
        return request.content.read() or b"hello"


class ProxiedTests(SynchronousTestCase):
    """
    Requests through the load balancer's own site.
    """

    def setUp(self):
        self.lb = MemoryBalancer(parseConfig(CONFIG))
        self.backend = Backend()
        self.lb.addBackend(BACKEND, self.backend)
        self.client = MemoryClient(self.lb.balancer.config.gatekeeper)
        self.client.server.site = self.lb.balancer.site

    def roundTrip(self) -> None:
        for _ in range(5):
            self.lb.flush()
            self.client.pump()
            self.client.exchange()

    def fields(self, stream: int) -> list:
        [response] = self.client.ofType(h2.events.ResponseReceived, stream)
        return response.headers

    def test_get(self):
        """
        A GET goes to the backend; its answer comes back with lower-case
        field names, a date, and no twisted.web request was made.
        """
        made = []
        original = StreamDownstream.__init__

        def recording(downstream, *args):
            made.append(downstream)
            original(downstream, *args)

        self.patch(StreamDownstream, "__init__", recording)
        stream = self.client.request()
        self.roundTrip()
        self.assertEqual(self.client.status(stream), 200)
        self.assertEqual(self.client.body(stream), b"hello")
        self.assertTrue(self.client.ofType(h2.events.StreamEnded, stream))
        fields = dict(self.fields(stream))
        self.assertEqual(fields[b"x-backend"], b"A")
        self.assertEqual(fields[b"content-type"], b"text/plain")
        self.assertIn(b"date", fields)
        for name in fields:
            self.assertEqual(name, name.lower())
        self.assertEqual(len(made), 1)
        [request] = self.backend.requests
        self.assertEqual(request.getHeader(b"host"), b"www.example.com")
        self.assertEqual(self.client.server.streams, {})

    def test_freedWhenDone(self):
        """
        Once answered, a stream (and with it its request) is freed at once,
        not left as cyclic garbage for the collector.
        """
        made = []
        original = StreamDownstream.__init__

        def recording(downstream, stream, *args):
            made.append(weakref.ref(stream))
            original(downstream, stream, *args)

        self.patch(StreamDownstream, "__init__", recording)
        enabled = gc.isenabled()
        gc.disable()
        try:
            for _ in range(3):
                stream = self.client.request()
                self.roundTrip()
                self.assertEqual(self.client.body(stream), b"hello")
            self.assertEqual(len(made), 3)
            self.assertEqual([stream() for stream in made], [None] * 3)
        finally:
            if enabled:
                gc.enable()

    def test_connectionFreedWhenLost(self):
        """
        A lost connection is freed with all it held as soon as nothing else
        holds it, not left as cyclic garbage: h2's table of its own
        methods and the transport's hold on its producer are let go of.
        """
        stream = self.client.request()
        self.roundTrip()
        self.assertEqual(self.client.body(stream), b"hello")
        enabled = gc.isenabled()
        gc.disable()
        try:
            server = self.client.server
            freed = [weakref.ref(server), weakref.ref(server.conn)]
            server.connectionLost(Failure(ConnectionDone()))
            self.client = server = None
            self.assertEqual([thing() for thing in freed], [None, None])
        finally:
            if enabled:
                gc.enable()

    def test_head(self):
        """
        A HEAD gets the headers and no body.
        """
        stream = self.client.request([(b":method", b"HEAD")] + REQUEST[1:])
        self.roundTrip()
        self.assertEqual(self.client.status(stream), 200)
        self.assertEqual(self.client.body(stream), b"")
        self.assertTrue(self.client.ofType(h2.events.StreamEnded, stream))

    def test_body(self):
        """
        A request body streams to the backend.
        """
        stream = self.client.request(
            [(b":method", b"POST")] + REQUEST[1:] + [(b"content-length", b"9")],
            endStream=False,
        )
        self.client.h2.send_data(stream, b"some", end_stream=False)
        self.client.exchange()
        self.client.h2.send_data(stream, b" body", end_stream=True)
        self.client.exchange()
        self.roundTrip()
        self.assertEqual(self.client.status(stream), 200)
        self.assertEqual(self.client.body(stream), b"some body")

    def test_manyStreams(self):
        """
        Many streams at once each get their own answer.
        """
        streams = []
        for _ in range(20):
            stream = self.client.h2.get_next_available_stream_id()
            self.client.h2.send_headers(stream, REQUEST, end_stream=True)
            streams.append(stream)
        self.client.flush()
        self.roundTrip()
        for stream in streams:
            self.assertEqual(self.client.status(stream), 200)
            self.assertEqual(self.client.body(stream), b"hello")
        self.assertEqual(len(self.backend.requests), 20)

    def test_clientResets(self):
        """
        A client that resets its stream while the backend answers lets the
        backend's request go; the connection goes on.
        """
        self.backend.hold = True
        stream = self.client.request()
        self.roundTrip()
        self.assertEqual(len(self.backend.requests), 1)
        frame = RstStreamFrame(stream)
        frame.error_code = ErrorCodes.CANCEL
        self.client.send(frame.serialize())
        self.roundTrip()
        self.assertEqual(len(self.backend.gone), 1)
        self.assertEqual(self.client.server.streams, {})
        self.backend.hold = False
        stream = self.client.request()
        self.roundTrip()
        self.assertEqual(self.client.body(stream), b"hello")
        self.assertFalse(self.client.closed)

    def test_refusedStillAnswered(self):
        """
        A request the gatekeeper refuses (a declared body above its limit)
        is answered on the stream, and reaches no backend.
        """
        stream = self.client.request(
            [(b":method", b"POST")] + REQUEST[1:] + [(b"content-length", b"999999999")],
            endStream=False,
        )
        self.roundTrip()
        self.assertEqual(self.client.status(stream), 413)
        self.assertEqual(self.backend.requests, [])


class LiteralEncoderTests(SynchronousTestCase):
    """
    L{LiteralEncoder} makes HPACK blocks any decoder reads, and keeps the
    decoder's dynamic table empty.
    """

    FIELDS = [
        (b":status", b"200"),
        (b":status", b"204"),
        (b"date", b"Sun, 29 Nov 2026 16:00:00 GMT"),
        (b"content-type", b"text/plain"),
        (b"x-long", b"v" * 300),
        (b"x" * 200, b"y"),
        (b"x-bytes", bytes(range(256))),
        NeverIndexedHeaderTuple(b"authorization", b"secret"),
    ]

    def test_decoded(self):
        """
        The fields decode as they were, again and again (from the cache),
        and the decoder's table stays empty.
        """
        encoder = LiteralEncoder()
        decoder = Decoder()
        for _ in range(3):
            decoded = decoder.decode(encoder.encode(self.FIELDS), raw=True)
            self.assertEqual([tuple(field) for field in decoded], [tuple(f) for f in self.FIELDS])
            self.assertEqual(len(decoder.header_table.dynamic_entries), 0)
        self.assertFalse(decoded[-1].indexable)

    def test_sizeUpdate(self):
        """
        The first block, and the first after a change of the table size the
        client allows, starts with a dynamic table size update to 0.
        """
        encoder = LiteralEncoder()
        self.assertEqual(encoder.encode([(b":status", b"200")]), b"\x20\x88")
        self.assertEqual(encoder.encode([(b":status", b"200")]), b"\x88")
        encoder.header_table_size = 0
        self.assertEqual(encoder.encode([(b":status", b"200")]), b"\x20\x88")

    def test_sensitiveApart(self):
        """
        A field that is never to be indexed keeps that mark though the same
        name and value were sent as a plain pair before, and the plain pair
        stays indexable after it.
        """
        encoder = LiteralEncoder()
        decoder = Decoder()
        plain = (b"authorization", b"secret")
        sensitive = NeverIndexedHeaderTuple(b"authorization", b"secret")
        for fields, indexable in [
            ([plain], True),
            ([sensitive], False),
            ([plain], True),
            ([sensitive], False),
        ]:
            [decoded] = decoder.decode(encoder.encode(fields), raw=True)
            self.assertEqual(tuple(decoded), plain)
            self.assertEqual(decoded.indexable, indexable)

    def test_cacheBounded(self):
        """
        The cache of encoded fields holds at most C{CACHE_SIZE} of them.
        """
        encoder = LiteralEncoder()
        for number in range(LiteralEncoder.CACHE_SIZE * 2 + 5):
            encoder.encode([(b"x-n", b"%d" % (number,))])
        self.assertLessEqual(len(encoder._cache), LiteralEncoder.CACHE_SIZE)

    def test_cacheShared(self):
        """
        The encoders of all connections share one cache, so that its bound
        is the process's: fields that differ in every response (request
        ids) make it no larger with more connections.
        """
        encoders = [LiteralEncoder() for _ in range(3)]
        for number in range(LiteralEncoder.CACHE_SIZE * 2):
            encoders[number % 3].encode([(b"x-request-id", b"%016x" % (number,))])
        self.assertIs(encoders[0]._cache, encoders[2]._cache)
        self.assertLessEqual(len(encoders[1]._cache), LiteralEncoder.CACHE_SIZE)
        block = encoders[0].encode([(b"content-type", b"text/plain")])
        # A new connection's first block: the table size update, then the
        # field as the others encode it.
        self.assertEqual(
            LiteralEncoder().encode([(b"content-type", b"text/plain")]), b"\x20" + block
        )

    def test_clientTableSize(self):
        """
        A client that allows no dynamic table at all still reads every
        response.
        """
        client = MemoryClient()
        client.h2.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
        client.exchange()
        streams = [client.request() for _ in range(3)]
        for stream in streams:
            self.assertEqual(client.status(stream), 200)
        blocks = [frame.data for frame in client.frames() if isinstance(frame, HeadersFrame)]
        self.assertEqual(blocks[0][:1], b"\x20")


class Unfit(Resource):
    """
    Answers with fields HTTP/2 forbids or would refuse as they are.
    """

    isLeaf = True

    def render(self, request):
        request.setHeader(b"X-Mixed-Case", b" padded\t")
        request.setHeader(b"Connection", b"keep-alive")
        request.setHeader(b"Keep-Alive", b"timeout=5")
        request.setHeader(b"Transfer-Encoding", b"chunked")
        request.setHeader(b"Upgrade", b"h2c")
        return b"ok"


class TwistedRequestTests(SynchronousTestCase):
    """
    A twisted.web request's response over HTTP/2 (another resource than
    the proxy's).
    """

    def test_fieldsMadeFit(self):
        """
        Its field names are lower-cased, its values stripped, and the
        connection-specific fields dropped, as a client requires.
        """
        client = MemoryClient()
        client.server.site.resource = Unfit()
        stream = client.request()
        self.assertEqual(client.status(stream), 200)
        [response] = client.ofType(h2.events.ResponseReceived, stream)
        fields = dict(response.headers)
        for name in fields:
            self.assertEqual(name, name.lower())
        self.assertEqual(fields[b"x-mixed-case"], b"padded")
        for name in [b"connection", b"keep-alive", b"transfer-encoding", b"upgrade"]:
            self.assertNotIn(name, fields)
        self.assertEqual(client.body(stream), b"ok")


class SendTimerTests(SynchronousTestCase):
    """
    C{send_timeout} of a stream of the proxy's own resource.
    """

    def test_cancelledWhenDone(self):
        """
        A response that used up its stream's window arms the stream's send
        timeout; once the response ends, nothing is left scheduled.
        """
        lb = MemoryBalancer(parseConfig(CONFIG))
        held = []

        class Window(Resource):
            isLeaf = True

            def render(self, request):
                request.write(b"b" * 65535)
                held.append(request)
                return NOT_DONE_YET

        lb.addBackend(BACKEND, Window())
        client = MemoryClient(lb.balancer.config.gatekeeper)
        client.server.site = lb.balancer.site

        def roundTrip():
            for _ in range(5):
                lb.flush()
                client.pump()
                client.exchange()

        stream = client.request()
        roundTrip()
        self.assertEqual(len(client.body(stream)), 65535)
        self.assertEqual(len(client.reactor.getDelayedCalls()), 1)
        held[0].finish()
        roundTrip()
        self.assertTrue(client.ofType(h2.events.StreamEnded, stream))
        self.assertEqual(client.server.streams, {})
        self.assertEqual(client.reactor.getDelayedCalls(), [])
