"""
The HTTP/2 client connection (L{manualb.web.http2}): connection errors, floods,
flow control, request validation, size limits, streamed request bodies, and
C{TCP_NODELAY} on the proxy's sockets.

Most tests drive a L{ProxyH2Connection} in memory with the C{h2} package
as the client (or with frames made by hand, where the client would refuse
to send them); the end-to-end ones use real TLS sockets on 127.0.0.1 with
the client in a thread.
"""

from __future__ import annotations

import hashlib
import socket
import threading

import attrs
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
)
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from manualb.web.channel import ChannelSwitch
from manualb.config import GatekeeperConfig
from manualb.configfile import parseConfig
from manualb.handoff import UpstreamConnection
from manualb.web.http2 import (
    CONTROL_FRAME_BURST,
    MAX_HEADER_BLOCK_FRAMES,
    ProxyH2Connection,
    headerListSize,
)
from manualb.web import ProxySite
from manualb.service import LoadBalancer
from manualb.streams import _ServerSide
from manualb.testing import balancerConfig, serverAddress
from manualb.transports import setNoDelay
from tests.test_termination import TerminationTestsMixin, _clientContext

ErrorCodes = h2.errors.ErrorCodes
TIMEOUT = 10

REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":path", b"/"),
    (b":authority", b"www.example.com"),
]


class Recorder(Resource):
    """
    Answers C{ok} (or C{size} bytes, or nothing when C{hold}) and remembers
    the requests it saw.
    """

    isLeaf = True
    hold = False

    def __init__(self, size: int = 0):
        super().__init__()
        self.size = size
        self.requests: list = []

    def render(self, request):
        self.requests.append((request.method, request.uri, request.requestHeaders.copy()))
        if self.hold:
            return NOT_DONE_YET
        return b"x" * self.size if self.size else b"ok"


class MemoryClient:
    """
    An C{h2} client talking to a L{ProxyH2Connection} in memory.

    @ivar events: What the client has received so far.
    """

    def __init__(self, gatekeeper: GatekeeperConfig = GatekeeperConfig(), size: int = 0):
        self.reactor = MemoryReactorClock()
        self.resource = Recorder(size)
        site = ProxySite(self.resource, reactor=self.reactor, gatekeeper=gatekeeper)
        self.server = ProxyH2Connection(self.reactor, gatekeeper)
        self.server.requestFactory = site.requestFactory
        self.server.site = site
        self.server.callLater = self.reactor.callLater
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)
        # As ChannelSwitch does.
        self.transport.registerProducer(self.server, True)
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
                validate_inbound_headers=False,
            )
        )
        self.h2.initiate_connection()
        self.events: list = []
        self.output = b""
        self.flush()
        self.receive()
        self.flush()

    def send(self, data: bytes, pump: bool = True) -> None:
        self.server.dataReceived(data)
        if pump:
            self.pump()

    def pump(self) -> None:
        """
        Run the calls that are due, as C{reactor.advance(0)} does, but fail
        rather than spin for ever when they keep scheduling more.
        """
        clock = self.reactor
        for _ in range(10000):
            clock._sortCalls()
            if not clock.calls or clock.calls[0].getTime() > clock.seconds():
                return
            call = clock.calls.pop(0)
            call.called = 1
            call.func(*call.args, **call.kw)
        raise AssertionError("the connection keeps itself busy")

    def flush(self) -> None:
        self.send(self.h2.data_to_send())

    def receive(self) -> list:
        data = self.transport.value()
        self.transport.clear()
        self.output += data
        try:
            events = self.h2.receive_data(data) if data else []
        except h2.exceptions.ProtocolError:
            # Frames for streams sent by hand: see frames().
            return []
        self.events += events
        return events

    def frames(self) -> list:
        """
        All the frames the server sent.
        """
        self.receive()
        return parseFrames(self.output)

    def exchange(self) -> list:
        self.flush()
        return self.receive()

    def request(self, headers=REQUEST, endStream: bool = True) -> int:
        stream = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream, headers, end_stream=endStream)
        self.exchange()
        return stream

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def goaway(self) -> GoAwayFrame | None:
        for frame in self.frames():
            if isinstance(frame, GoAwayFrame):
                return frame
        return None

    def ofType(self, kind, stream=None) -> list:
        return [
            event
            for event in self.events
            if isinstance(event, kind)
            and (stream is None or getattr(event, "stream_id", None) == stream)
        ]

    def status(self, stream: int) -> int | None:
        for event in self.ofType(h2.events.ResponseReceived, stream):
            return int(dict(event.headers)[b":status"])
        return None

    def body(self, stream: int) -> bytes:
        return b"".join(event.data for event in self.ofType(h2.events.DataReceived, stream))


def parseFrames(data: bytes) -> list:
    """
    The frames in C{data}.
    """
    frames = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    return frames


class ContinuationFloodTests(SynchronousTestCase):
    """
    A header block is bounded while it is still coming.
    """

    def assertClosedWith(self, client: MemoryClient, code: ErrorCodes) -> None:
        client.receive()
        goaway = client.goaway()
        self.assertIsNotNone(goaway, "no GOAWAY")
        self.assertEqual(goaway.error_code, code)
        self.assertTrue(client.closed)

    def test_bigContinuations(self):
        """
        HEADERS without END_HEADERS and then CONTINUATION frames: the
        connection is closed with ENHANCE_YOUR_CALM once the block passes
        twice the advertised header list size, after a few frames.
        """
        client = MemoryClient()
        limit = 2 * headerListSize(GatekeeperConfig())
        headers = HeadersFrame(1)
        headers.data = Encoder().encode(REQUEST)
        headers.flags.add("END_STREAM")
        client.send(headers.serialize())
        sent = 0
        while not client.closed and sent < 200:
            frame = ContinuationFrame(1)
            frame.data = b"\x00" * 16384
            client.send(frame.serialize())
            sent += 1
        self.assertLessEqual(sent, limit // 16384 + 1)
        self.assertClosedWith(client, ErrorCodes.ENHANCE_YOUR_CALM)
        # What still comes is not even read.
        client.send(b"\x00" * 100000)
        self.assertEqual(client.transport.value(), b"")
        self.assertEqual(client.resource.requests, [])

    def test_manyEmptyContinuations(self):
        """
        Empty CONTINUATION frames count too: a block may span at most
        L{MAX_HEADER_BLOCK_FRAMES} frames.
        """
        client = MemoryClient()
        headers = HeadersFrame(1)
        headers.data = Encoder().encode(REQUEST)
        client.send(headers.serialize())
        empty = ContinuationFrame(1).serialize()
        sent = 0
        while not client.closed and sent < 1000:
            client.send(empty)
            sent += 1
        self.assertEqual(sent, MAX_HEADER_BLOCK_FRAMES)
        self.assertClosedWith(client, ErrorCodes.ENHANCE_YOUR_CALM)

    def test_overlongFrame(self):
        """
        A frame header announcing more than SETTINGS_MAX_FRAME_SIZE closes
        the connection with FRAME_SIZE_ERROR at once, not after the frame
        was buffered.
        """
        client = MemoryClient()
        frame = DataFrame(1)
        frame.data = b"x" * (2**24 - 1)
        client.send(frame.serialize()[:9 + 1000])
        self.assertClosedWith(client, ErrorCodes.FRAME_SIZE_ERROR)

    def test_legitimateContinuations(self):
        """
        A header block split in CONTINUATION frames within the limits is a
        request like any other.
        """
        client = MemoryClient()
        stream = client.h2.get_next_available_stream_id()
        client.h2.send_headers(stream, REQUEST + [(b"cookie", b"~" * 20000)], end_stream=True)
        data = client.h2.data_to_send()
        self.assertEqual(
            [type(frame) for frame in parseFrames(data)], [HeadersFrame, ContinuationFrame]
        )
        client.send(data)
        client.receive()
        self.assertEqual(client.status(stream), 200)
        self.assertFalse(client.closed)


class ConnectionErrorTests(SynchronousTestCase):
    """
    A connection error is answered by GOAWAY with its code, and the
    connection closes at once.
    """

    def test_compressionError(self):
        """
        A header block that cannot be decoded: COMPRESSION_ERROR.
        """
        client = MemoryClient()
        frame = HeadersFrame(1)
        # Index 0 does not exist in HPACK's tables.
        frame.data = b"\x80"
        frame.flags.add("END_HEADERS")
        frame.flags.add("END_STREAM")
        client.send(frame.serialize())
        client.receive()
        self.assertEqual(client.goaway().error_code, ErrorCodes.COMPRESSION_ERROR)
        self.assertTrue(client.closed)

    def test_protocolError(self):
        """
        A frame h2 refuses (DATA on stream 0): PROTOCOL_ERROR.
        """
        client = MemoryClient()
        client.send(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
        client.receive()
        self.assertEqual(client.goaway().error_code, ErrorCodes.PROTOCOL_ERROR)
        self.assertTrue(client.closed)

    def test_oversizedHeaderList(self):
        """
        A decoded header list above the advertised
        SETTINGS_MAX_HEADER_LIST_SIZE: ENHANCE_YOUR_CALM.
        """
        gatekeeper = GatekeeperConfig(max_header_size=1024, max_headers=10)
        client = MemoryClient(gatekeeper)
        fields = [(b"x-%d" % (i,), b"v" * 1000) for i in range(12)]
        client.request(REQUEST + fields)
        self.assertEqual(client.goaway().error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(client.closed)
        self.assertEqual(client.resource.requests, [])

    def test_abortedIfGoawayNotTaken(self):
        """
        A client that does not take the GOAWAY is cut off after
        C{abortTimeout}.
        """
        client = MemoryClient()
        client.send(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
        self.assertFalse(client.transport.disconnected)
        client.reactor.advance(client.server.abortTimeout)
        self.assertTrue(client.transport.disconnected)


class GoawayTests(SynchronousTestCase):
    """
    After the client's GOAWAY, the connection still works.
    """

    def test_pingAfterGoaway(self):
        """
        A PING sent after a GOAWAY is answered.
        """
        client = MemoryClient()
        goaway = GoAwayFrame(0)
        ping = PingFrame(0)
        ping.opaque_data = b"12345678"
        client.send(goaway.serialize() + ping.serialize())
        acks = [f for f in client.frames() if isinstance(f, PingFrame)]
        self.assertEqual([(a.opaque_data, "ACK" in a.flags) for a in acks], [(b"12345678", True)])
        self.assertFalse(client.closed)

    def test_pingAfterGoawayLater(self):
        """
        Also when the PING comes in a later read, after streams finished.
        """
        client = MemoryClient()
        stream = client.request()
        self.assertEqual(client.status(stream), 200)
        frame = GoAwayFrame(0)
        frame.last_stream_id = 0
        client.send(frame.serialize())
        self.assertFalse(client.closed)
        ping = PingFrame(0)
        ping.opaque_data = b"abcdefgh"
        client.send(ping.serialize())
        acks = [f for f in client.frames() if isinstance(f, PingFrame)]
        self.assertEqual([a.opaque_data for a in acks], [b"abcdefgh"])

    def test_goawayWithError(self):
        """
        A GOAWAY with an error code ends the connection.
        """
        client = MemoryClient()
        frame = GoAwayFrame(0)
        frame.error_code = ErrorCodes.INTERNAL_ERROR
        client.send(frame.serialize())
        self.assertTrue(client.closed)


class FlowControlTests(SynchronousTestCase):
    """
    A stream's window may go negative; sending waits for it to be positive.
    """

    def test_negativeWindow(self):
        """
        The client lowers SETTINGS_INITIAL_WINDOW_SIZE below what the server
        already sent on a stream with more data queued, so that the
        stream's window is negative, and opens it a little: nothing more is
        sent (h2 would raise FlowControlError) until the window is positive
        again; then the whole response arrives.
        """
        size = 100000
        client = MemoryClient(size=size)
        client.h2.increment_flow_control_window(10 * size)
        stream = client.h2.get_next_available_stream_id()
        client.h2.send_headers(stream, REQUEST, end_stream=True)
        # The response fills the stream's window at once.
        client.send(client.h2.data_to_send(), pump=False)
        client.receive()
        self.assertEqual(len(client.body(stream)), 65535)
        client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
        client.h2.increment_flow_control_window(1000, stream)
        client.exchange()
        self.assertEqual(len(client.body(stream)), 65535)
        client.h2.increment_flow_control_window(2 * size, stream)
        client.exchange()
        self.assertEqual(len(client.body(stream)), size)
        self.assertTrue(client.ofType(h2.events.StreamEnded, stream))
        self.assertFalse(client.closed)

    def test_zeroWindowIdle(self):
        """
        While a stream waits for its window, the connection does not spin:
        the only call pending is the stream's send_timeout.
        """
        client = MemoryClient(size=100000)
        stream = client.request()
        self.assertEqual(len(client.body(stream)), 65535)
        [call] = client.reactor.getDelayedCalls()
        self.assertEqual(call.getTime(), client.reactor.seconds() + 60)

    def test_settingsOpenWindow(self):
        """
        Raising SETTINGS_INITIAL_WINDOW_SIZE is enough to send what waits.
        """
        size = 100000
        client = MemoryClient(size=size)
        client.h2.increment_flow_control_window(10 * size)
        stream = client.request()
        self.assertEqual(len(client.body(stream)), 65535)
        client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2 * size})
        client.exchange()
        self.assertEqual(len(client.body(stream)), size)


class ControlFloodTests(SynchronousTestCase):
    """
    PING, SETTINGS and PRIORITY frames are rate-limited.
    """

    def flood(self, client: MemoryClient, frame: bytes, count: int) -> int:
        sent = 0
        while sent < count and not client.closed:
            client.send(frame)
            sent += 1
        return sent

    def test_pingFlood(self):
        """
        A burst of PINGs beyond L{CONTROL_FRAME_BURST} closes the connection
        with ENHANCE_YOUR_CALM; the ones before are answered.
        """
        client = MemoryClient()
        ping = PingFrame(0)
        ping.opaque_data = b"pingpong"
        sent = self.flood(client, ping.serialize(), 10000)
        # The client's first SETTINGS took a token.
        self.assertEqual(sent, CONTROL_FRAME_BURST)
        client.receive()
        self.assertEqual(len(client.ofType(h2.events.PingAckReceived)), CONTROL_FRAME_BURST - 1)
        self.assertEqual(client.goaway().error_code, ErrorCodes.ENHANCE_YOUR_CALM)

    def test_settingsFlood(self):
        """
        So does a burst of SETTINGS frames.
        """
        client = MemoryClient()
        settings = SettingsFrame(0)
        settings.settings = {h2.settings.SettingCodes.ENABLE_PUSH: 0}
        sent = self.flood(client, settings.serialize(), 10000)
        self.assertEqual(sent, CONTROL_FRAME_BURST)
        client.receive()
        self.assertEqual(client.goaway().error_code, ErrorCodes.ENHANCE_YOUR_CALM)

    def test_steadyPings(self):
        """
        PINGs at a modest rate go on for ever.
        """
        client = MemoryClient()
        ping = PingFrame(0)
        ping.opaque_data = b"pingpong"
        for _ in range(50):
            self.flood(client, ping.serialize(), 10)
            client.reactor.advance(1)
        self.assertFalse(client.closed)


MALFORMED = {
    "space in :method": [(b":method", b"GET /x HTTP/1.1")],
    "tab in :method": [(b":method", b"GET\t")],
    "space in :path": [(b":path", b"/a b")],
    "tab in :path": [(b":path", b"/a\tb")],
    "control in :path": [(b":path", b"/a\x01")],
    "high byte in :path": [(b":path", b"/\xff")],
    "relative :path": [(b":path", b"a")],
    "empty :path": [(b":path", b"")],
    "* for GET": [(b":path", b"*")],
    "userinfo in :authority": [(b":authority", b"user@www.example.com")],
    "space in :authority": [(b":authority", b"www.example.com x")],
    "CR in value": [(b"x-a", b"a\rb")],
    "LF in value": [(b"x-a", b"a\nb")],
    "NUL in value": [(b"x-a", b"a\x00b")],
    "leading space": [(b"x-a", b" a")],
    "trailing tab": [(b"x-a", b"a\t")],
    "upper case name": [(b"X-A", b"a")],
    "space in name": [(b"x a", b"a")],
    "connection": [(b"connection", b"close")],
    "transfer-encoding": [(b"transfer-encoding", b"chunked")],
    "keep-alive": [(b"keep-alive", b"5")],
    "upgrade": [(b"upgrade", b"websocket")],
    "proxy-connection": [(b"proxy-connection", b"close")],
    "te": [(b"te", b"gzip")],
    "unknown pseudo-header": [(b":protocol", b"websocket")],
    "no :scheme": [(b":scheme", None)],
    "host differs": [(b"host", b"other.example.com")],
    "lower-case :method": [(b":method", b"get")],
    "DEL in value": [(b"x-a", b"a\x7fb")],
    "control in value": [(b"x-a", b"a\x01b")],
    "fragment in :path": [(b":path", b"/a#b")],
    "port in :authority not a number": [(b":authority", b"www.example.com:x")],
    "content-length beyond 2**63 - 1": [(b"content-length", b"%d" % (2**64,))],
    "content-length not a number": [(b"content-length", b"g")],
    "two content-lengths": [(b"content-length", b"1"), (b"content-length", b"2")],
}


def _malformedHeaders(change):
    headers = dict(REQUEST)
    extra = []
    for name, value in change:
        if name in headers and name[:1] == b":":
            headers[name] = value
        else:
            extra.append((name, value))
    return [(k, v) for k, v in headers.items() if v is not None] + extra


class ValidationTests(SynchronousTestCase):
    """
    Malformed requests (RFC 9113, 8.1.1) are reset and never reach the
    site.
    """

    def test_malformed(self):
        for description, change in MALFORMED.items():
            client = MemoryClient()
            client.request(_malformedHeaders(change))
            resets = client.ofType(h2.events.StreamReset, 1)
            self.assertEqual(
                [reset.error_code for reset in resets],
                [ErrorCodes.PROTOCOL_ERROR],
                description,
            )
            self.assertEqual(client.resource.requests, [], description)
            self.assertFalse(client.closed, description)
            # The connection goes on.
            client.request()
            self.assertEqual(client.status(3), 200, description)

    def test_validRequest(self):
        """
        OPTIONS C{*} with TE: trailers and a port in :authority, and a GET
        with a query and an IPv6 :authority, are requests like any other.
        """
        client = MemoryClient()
        client.request(
            [
                (b":method", b"OPTIONS"),
                (b":scheme", b"https"),
                (b":path", b"*"),
                (b":authority", b"www.example.com:8443"),
                (b"te", b"trailers"),
            ]
        )
        client.request(
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":path", b"/a?b=c%20d"),
                (b":authority", b"[::1]:8443"),
            ],
        )
        self.assertEqual((client.status(1), client.status(3)), (200, 200))
        self.assertEqual(client.ofType(h2.events.StreamReset), [])
        method, uri, headers = client.resource.requests[-1]
        self.assertEqual((method, uri), (b"GET", b"/a?b=c%20d"))
        self.assertEqual(headers.getRawHeaders(b"host"), [b"[::1]:8443"])


class SizeLimitTests(SynchronousTestCase):
    """
    The C{[gatekeeper]} size limits, as over HTTP/1.1.
    """

    def test_advertised(self):
        """
        SETTINGS_MAX_HEADER_LIST_SIZE follows the gatekeeper's limits.
        """
        gatekeeper = GatekeeperConfig(max_header_size=4096, max_headers=20)
        client = MemoryClient(gatekeeper)
        self.assertEqual(
            client.h2.remote_settings.max_header_list_size, headerListSize(gatekeeper)
        )

    def test_tooManyHeaders(self):
        """
        More than C{max_headers} fields: 431.
        """
        client = MemoryClient(GatekeeperConfig(max_headers=10))
        stream = client.request(REQUEST + [(b"x-%d" % (i,), b"a") for i in range(11)])
        self.assertEqual(client.status(stream), 431)
        self.assertEqual(client.resource.requests, [])
        stream = client.request(REQUEST + [(b"x-%d" % (i,), b"a") for i in range(10)])
        self.assertEqual(client.status(stream), 200)

    def test_headersTooLarge(self):
        """
        More than C{max_header_size} bytes of fields: 431.
        """
        client = MemoryClient(GatekeeperConfig(max_header_size=1000))
        stream = client.request(REQUEST + [(b"cookie", b"a" * 1000)])
        self.assertEqual(client.status(stream), 431)
        self.assertIn(b"431", client.body(stream))
        self.assertEqual(client.resource.requests, [])

    def test_pathTooLong(self):
        """
        A :path longer than C{max_request_line}: 414.
        """
        client = MemoryClient(GatekeeperConfig(max_request_line=100))
        headers = dict(REQUEST)
        headers[b":path"] = b"/" + b"a" * 100
        stream = client.request(list(headers.items()))
        self.assertEqual(client.status(stream), 414)
        self.assertEqual(client.resource.requests, [])

    def test_declaredBodyTooLarge(self):
        """
        A content-length above C{client_max_body_size}: 413 before any of
        the body is read, and the stream is reset (NO_ERROR) so that the
        client sends no more.
        """
        client = MemoryClient(GatekeeperConfig(client_max_body_size=1000))
        headers = dict(REQUEST)
        headers[b":method"] = b"POST"
        stream = client.request(list(headers.items()) + [(b"content-length", b"1001")], False)
        self.assertEqual(client.status(stream), 413)
        resets = client.ofType(h2.events.StreamReset, stream)
        self.assertEqual([reset.error_code for reset in resets], [ErrorCodes.NO_ERROR])
        self.assertEqual(client.resource.requests, [])
        self.assertFalse(client.closed)

    def test_bodyTooLarge(self):
        """
        A body without content-length that grows beyond
        C{client_max_body_size}: 413 when nothing was answered yet, and the
        connection's window is given back (else the client could not send
        these 100 bodies).
        """
        client = MemoryClient(GatekeeperConfig(client_max_body_size=1000))
        client.resource.hold = True
        headers = dict(REQUEST)
        headers[b":method"] = b"POST"
        for i in range(100):
            stream = client.request(list(headers.items()), False)
            self.assertEqual(len(client.resource.requests), i + 1)
            client.h2.send_data(stream, b"x" * 600)
            client.exchange()
            client.h2.send_data(stream, b"x" * 600)
            client.exchange()
            self.assertEqual(client.status(stream), 413)
        self.assertFalse(client.closed)


@implementer(ITCPTransport)
class NoDelayTransport(StringTransport):
    """
    Remembers whether Nagle's algorithm was turned off.
    """

    noDelay = False

    def setTcpNoDelay(self, enabled):
        self.noDelay = enabled

    def getTcpNoDelay(self):
        return self.noDelay


class Wrapper(StringTransport):
    """
    A transport over another (as TLS is).
    """

    def __init__(self, transport):
        super().__init__()
        self.transport = transport


class NoDelayUnitTests(SynchronousTestCase):
    """
    L{setNoDelay}, and the protocols that use it.
    """

    def test_throughLayers(self):
        tcp = NoDelayTransport()
        setNoDelay(Wrapper(Wrapper(tcp)))
        self.assertTrue(tcp.noDelay)

    def test_notTCP(self):
        setNoDelay(StringTransport())

    def test_backendConnections(self):
        """
        Backend connections, HTTP and TCP streams, turn Nagle off.
        """
        for protocol in [UpstreamConnection(_Pool()), _ServerSide()]:
            tcp = NoDelayTransport()
            protocol.makeConnection(Wrapper(tcp))
            self.assertTrue(tcp.noDelay, protocol)

    def test_clientConnections(self):
        tcp = NoDelayTransport()
        ChannelSwitch(Protocol()).makeConnection(Wrapper(tcp))
        self.assertTrue(tcp.noDelay)

    def test_streamClientConnections(self):
        """
        So do the client connections of a TCP stream.
        """
        config = parseConfig(
            "[stream s]\nlisten = tcp:0\nupstream = u\n"
            "[upstream u]\nservers = 10.0.0.1:80\n"
        )
        balancer = LoadBalancer(config, MemoryReactorClock())
        factory = balancer.streams["s"]
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        tcp = NoDelayTransport()
        protocol.makeConnection(Wrapper(tcp))
        self.assertTrue(tcp.noDelay)
        factory.closeAll()


class _Pool:
    reactor = MemoryReactorClock()
    config = None


# End to end ----------------------------------------------------------------


class HashingBackend(Protocol):
    """
    An HTTP/1.1 backend that answers one request with the sha256 of its
    body (with a Content-Length), after telling C{headSeen} it has the head.
    """

    def __init__(self, headSeen, sockets):
        self.headSeen = headSeen
        self.sockets = sockets
        self.buffer = b""
        self.left = None
        self.hash = hashlib.sha256()

    def dataReceived(self, data):
        if self.left is None:
            self.buffer += data
            if b"\r\n\r\n" not in self.buffer:
                return
            head, _, data = self.buffer.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            fields = dict(line.lower().split(b": ", 1) for line in lines[1:])
            self.left = int(fields.get(b"content-length", b"0"))
            self.headSeen()
        self.hash.update(data)
        self.left -= len(data)
        if self.left <= 0:
            digest = self.hash.hexdigest().encode("ascii")
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(digest), digest)
            )
            self.left = None
            self.buffer = b""
            self.hash = hashlib.sha256()


def upload(port: int, cafile: str, body: bytes, headSeen: threading.Event, noDelay=True):
    """
    POST C{body} over HTTP/2; before its last megabyte, wait until the
    backend has the request's head.  Return the status, the response body
    and the client's socket.  Blocking: run it in a thread.
    """
    context = _clientContext(cafile, alpn=["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        if noDelay:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with context.wrap_socket(raw, server_hostname="www.example.com") as tls:
            client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            client.initiate_connection()
            tls.sendall(client.data_to_send())
            stream = client.get_next_available_stream_id()
            client.send_headers(
                stream,
                [
                    (":method", "POST"),
                    (":path", "/upload"),
                    (":scheme", "https"),
                    (":authority", "www.example.com"),
                    ("content-length", str(len(body))),
                ],
            )
            tls.sendall(client.data_to_send())
            response = {"status": None, "body": b"", "done": False}

            def receive():
                data = tls.recv(65536)
                if not data:
                    raise AssertionError("the server closed the connection")
                for event in client.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        response["status"] = int(dict(event.headers)[b":status"])
                    elif isinstance(event, h2.events.DataReceived):
                        response["body"] += event.data
                        client.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded):
                        response["done"] = True
                    elif isinstance(
                        event, (h2.events.StreamReset, h2.events.ConnectionTerminated)
                    ):
                        raise AssertionError(f"HTTP/2 failure: {event!r}")
                tls.sendall(client.data_to_send())

            position = 0
            waited = False
            while position < len(body):
                if not waited and len(body) - position <= 1024 * 1024:
                    if not headSeen.wait(TIMEOUT):
                        raise AssertionError("the backend has not seen the request")
                    waited = True
                size = min(
                    len(body) - position,
                    client.local_flow_control_window(stream),
                    client.max_outbound_frame_size,
                )
                if size == 0:
                    receive()
                    continue
                client.send_data(
                    stream, body[position : position + size], end_stream=position + size == len(body)
                )
                position += size
                tls.sendall(client.data_to_send())
            while not response["done"]:
                receive()
            return response["status"], response["body"]


def socketOf(transport) -> socket.socket:
    """
    The socket under a (possibly TLS) transport.
    """
    while getattr(transport, "transport", None) is not None:
        transport = transport.transport
    return transport.getHandle()


class EndToEndTests(TerminationTestsMixin, TestCase):
    """
    Through a real L{LoadBalancer} over TLS.
    """

    @inlineCallbacks
    def setUpBalancer(self, **gatekeeper):
        self.headSeen = threading.Event()
        self.backendSockets: list = []
        factory = Factory.forProtocol(
            lambda: HashingBackend(
                lambda: reactor.callInThread(self.headSeen.set), self.backendSockets
            )
        )
        backendPort = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            factory
        )
        self.addCleanup(backendPort.stopListening)
        config = attrs.evolve(
            balancerConfig([serverAddress(backendPort)]),
            gatekeeper=GatekeeperConfig(**gatekeeper),
        )
        self.balancer = LoadBalancer(config, reactor)
        self.addCleanup(self.balancer.close)
        # TCP_NODELAY of the proxy's sockets, once connected.
        self.noDelay: dict[str, list] = {"client": [], "h2": [], "backend": []}
        self.patch(
            ChannelSwitch,
            "makeConnection",
            _recording(ChannelSwitch.makeConnection, self.noDelay["client"]),
        )
        self.patch(
            ProxyH2Connection,
            "connectionMade",
            _recording(ProxyH2Connection.connectionMade, self.noDelay["h2"]),
        )
        self.patch(
            UpstreamConnection,
            "connectionMade",
            _recording(UpstreamConnection.connectionMade, self.noDelay["backend"]),
        )
        self.port = yield self.serve(site=self.balancer.site)

    @inlineCallbacks
    def test_largeUploadStreams(self):
        """
        An 8 MiB upload reaches the backend whole (its sha256 checks), and
        the backend sees the request before the client has sent the body's
        last megabyte: the body streams.
        """
        yield self.setUpBalancer(client_max_body_size=0)
        body = hashlib.sha256(b"seed").digest() * (8 * 1024 * 1024 // 32)
        status, answer = yield deferToThread(
            upload, self.port, self.cafile, body, self.headSeen
        )
        self.assertEqual(status, 200)
        self.assertEqual(answer, hashlib.sha256(body).hexdigest().encode("ascii"))

    @inlineCallbacks
    def test_uploadLimit(self):
        """
        With the default C{client_max_body_size}, the same upload gets 413.
        """
        yield self.setUpBalancer()
        self.headSeen.set()
        body = b"x" * (2 * 1024 * 1024)
        failure = yield self.assertFailure(
            deferToThread(upload, self.port, self.cafile, body, self.headSeen),
            AssertionError,
        )
        self.assertIn("StreamReset", str(failure))

    @inlineCallbacks
    def test_noDelay(self):
        """
        The proxy's sockets have TCP_NODELAY: the client's (TLS, HTTP/2) and
        the backend's.
        """
        yield self.setUpBalancer(client_max_body_size=0)
        status, _ = yield deferToThread(
            upload, self.port, self.cafile, b"x" * 100, self.headSeen
        )
        self.assertEqual(status, 200)
        self.assertEqual(self.noDelay, {"client": [True], "h2": [True], "backend": [True]})

    @inlineCallbacks
    def test_noDelayHTTP11(self):
        """
        Also over HTTP/1.1, with TLS and without.
        """
        yield self.setUpBalancer()
        plain = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            self.balancer.site
        )
        self.addCleanup(plain.stopListening)
        # A request over TLS, and one in plain HTTP.
        result = yield self.handshake(self.port, "www.example.com", alpn=["http/1.1"])
        self.assertEqual(result["alpn"], "http/1.1")
        yield deferToThread(_plainRequest, plain.getHost().port)
        self.assertEqual(self.noDelay["client"], [True, True])

    @inlineCallbacks
    def test_connectionErrorClosesTLS(self):
        """
        Over TLS, a connection error is followed by GOAWAY and the close of
        the connection, without waiting for the idle timeout.
        """
        yield self.setUpBalancer()

        def exchange():
            context = _clientContext(self.cafile, alpn=["h2"])
            with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as raw:
                with context.wrap_socket(raw, server_hostname="www.example.com") as tls:
                    tls.sendall(
                        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                        + SettingsFrame(0).serialize()
                        + b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"
                    )
                    return _plainResponse(tls)

        received = yield deferToThread(exchange)
        client = h2.connection.H2Connection()
        client.initiate_connection()
        events = client.receive_data(received)
        goaways = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        self.assertEqual([e.error_code for e in goaways], [ErrorCodes.PROTOCOL_ERROR])


def _recording(method, into: list):
    """
    C{method} (C{makeConnection} or C{connectionMade}), which also appends
    whether the socket has TCP_NODELAY afterwards to C{into}.
    """

    def record(self, *args):
        result = method(self, *args)
        sock = socketOf(self.transport if args == () else args[0])
        into.append(bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
        return result

    return record


def _plainRequest(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return _plainResponse(sock)


def _plainResponse(sock: socket.socket) -> bytes:
    """
    What C{sock} (or a TLS socket over it) receives until the other side
    closes.
    """
    received = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return received
        received += data


class EarlyAnswerTests(SynchronousTestCase):
    """
    A response that is complete before its request body has all arrived.
    """

    def test_streamEndsAtOnce(self):
        """
        The stream's response ends at once, not when the body is done (or
        after a lingering time), and the stream is reset with NO_ERROR so
        that the client sends no more; nothing is logged as an error when
        time passes.
        """
        client = MemoryClient()
        post = [(b":method", b"POST")] + REQUEST[1:]
        stream = client.request(post, endStream=False)
        client.h2.send_data(stream, b"x" * 1000)
        client.exchange()
        self.assertEqual(client.status(stream), 200)
        self.assertTrue(client.ofType(h2.events.StreamEnded, stream))
        # The client is asked to send no more of the body (RFC 9113, 8.1).
        [reset] = client.ofType(h2.events.StreamReset, stream)
        self.assertEqual(reset.error_code, ErrorCodes.NO_ERROR)
        client.reactor.advance(60)
        client.pump()
        self.assertFalse(client.closed)
        self.assertEqual(client.status(client.request()), 200)


class SendTimeoutTests(SynchronousTestCase):
    """
    C{send_timeout} over HTTP/2: a stream whose window the client keeps
    shut.
    """

    def test_shutWindow(self):
        """
        The stream is reset once the client has taken nothing of it for
        C{send_timeout}; the connection and its other streams go on.
        """
        client = MemoryClient(GatekeeperConfig(send_timeout=10.0), size=100000)
        stream = client.request()
        self.assertEqual(client.status(stream), 200)
        client.reactor.advance(9)
        client.pump()
        client.receive()
        self.assertEqual(client.ofType(h2.events.StreamReset, stream), [])
        client.reactor.advance(1)
        client.pump()
        client.receive()
        [reset] = client.ofType(h2.events.StreamReset, stream)
        self.assertEqual(reset.error_code, ErrorCodes.CANCEL)
        self.assertFalse(client.closed)

    def test_windowOpened(self):
        """
        A client that opens the window again in time gets the whole body.
        """
        client = MemoryClient(GatekeeperConfig(send_timeout=10.0), size=100000)
        stream = client.request()
        client.reactor.advance(9)
        client.pump()
        client.receive()
        received = len(client.body(stream))
        client.h2.increment_flow_control_window(200000)
        client.h2.increment_flow_control_window(200000, stream)
        client.exchange()
        client.pump()
        client.receive()
        client.reactor.advance(20)
        client.pump()
        client.receive()
        self.assertLess(received, 100000)
        self.assertEqual(len(client.body(stream)), 100000)
        self.assertEqual(client.ofType(h2.events.StreamReset, stream), [])
