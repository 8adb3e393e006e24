"""
The sending side of the HTTP/2 client connection (L{manualb.web.h2output}):
what one batch of events produces goes out in one write, streams take
turns, and a stream's producer is paused while too much of its output
waits, whatever window the client grants.
"""

from __future__ import annotations

import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PriorityFrame,
    RstStreamFrame,
)
from twisted.internet.interfaces import IPushProducer
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from manualb.web.h2output import FLUSH_BUDGET, STREAM_HIGH_WATER, headerFrames
from tests.test_http2 import REQUEST, ErrorCodes, MemoryClient, parseFrames

BIG_WINDOW = 2**31 - 1


def countWrites(client: MemoryClient) -> list[bytes]:
    """
    The writes the server makes to C{client}'s transport from now on.
    """
    writes: list[bytes] = []
    write = client.transport.write

    def recording(data):
        writes.append(data)
        write(data)

    client.transport.write = recording
    return writes


def openWindows(client: MemoryClient) -> None:
    """
    Grant the server the largest windows there are, for the connection and
    for every stream.
    """
    client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: BIG_WINDOW})
    client.h2.increment_flow_control_window(BIG_WINDOW - 65535)
    client.exchange()


def openStreams(client: MemoryClient, count: int) -> list[int]:
    """
    Open C{count} GET streams, sent to the server in one read.
    """
    streams = []
    for _ in range(count):
        stream = client.h2.get_next_available_stream_id()
        client.h2.send_headers(stream, REQUEST, end_stream=True)
        streams.append(stream)
    return streams


@implementer(IPushProducer)
class Producer:
    """
    A push producer that remembers whether it is paused.
    """

    paused = False
    pauses = 0

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        pass


class Held(Resource):
    """
    Holds every request it gets, with a producer registered, for the test
    to answer.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests: list = []

    def render(self, request):
        producer = Producer()
        request.registerProducer(producer, True)
        self.requests.append((request, producer))
        return NOT_DONE_YET


def finish(request) -> None:
    """
    End a held request's response.
    """
    request.unregisterProducer()
    request.finish()


def runOnce(client: MemoryClient) -> None:
    """
    Run the one call the server has scheduled, and nothing it schedules.
    """
    [call] = client.reactor.getDelayedCalls()
    client.reactor.calls.remove(call)
    call.called = 1
    call.func(*call.args, **call.kw)


def heldClient() -> tuple[MemoryClient, Held]:
    client = MemoryClient()
    held = Held()
    client.server.site.resource = held
    return client, held


class BatchingTests(SynchronousTestCase):
    """
    The frames made while handling one batch of events go out in one write.
    """

    def test_oneWritePerRead(self):
        """
        Requests on many streams that arrive in one read are answered in one
        write, each response's body and end in one DATA frame.
        """
        client = MemoryClient()
        streams = openStreams(client, 100)
        writes = countWrites(client)
        client.flush()
        self.assertEqual(len(writes), 1)
        frames = parseFrames(writes[0])
        data = [frame for frame in frames if isinstance(frame, DataFrame)]
        self.assertEqual(len([f for f in frames if isinstance(f, HeadersFrame)]), 100)
        self.assertEqual(sorted(frame.stream_id for frame in data), streams)
        for frame in data:
            self.assertEqual(frame.data, b"ok")
            self.assertIn("END_STREAM", frame.flags)
        client.receive()
        for stream in streams:
            self.assertEqual(client.status(stream), 200)
            self.assertTrue(client.ofType(h2.events.StreamEnded, stream))
        # Nothing left scheduled: the connection waits for the client.
        self.assertEqual(client.reactor.getDelayedCalls(), [])
        self.assertEqual(client.server.streams, {})

    def test_responsesFromElsewhere(self):
        """
        Responses made outside a read (a backend's answer) are sent together
        by one call on the next reactor iteration.
        """
        client, held = heldClient()
        streams = openStreams(client, 3)
        client.flush()
        writes = countWrites(client)
        for request, _ in held.requests:
            request.write(b"answer")
            finish(request)
        self.assertEqual(writes, [])
        self.assertEqual(len(client.reactor.getDelayedCalls()), 1)
        client.pump()
        self.assertEqual(len(writes), 1)
        client.receive()
        for stream in streams:
            self.assertEqual(client.body(stream), b"answer")
            self.assertTrue(client.ofType(h2.events.StreamEnded, stream))
        self.assertEqual(client.reactor.getDelayedCalls(), [])

    def test_turns(self):
        """
        Streams with much to send share a pass frame by frame, and one pass
        sends at most L{FLUSH_BUDGET} bytes of data: the rest goes on the
        next iterations, until every body is whole.
        """
        client, held = heldClient()
        openWindows(client)
        streams = openStreams(client, 4)
        client.flush()
        writes = countWrites(client)
        size = FLUSH_BUDGET // 2
        for request, _ in held.requests:
            request.write(b"x" * size)
            finish(request)
        runOnce(client)
        self.assertEqual(len(writes), 1)
        self.assertLess(len(writes[0]), FLUSH_BUDGET + 4096)
        # Every stream got its share of the first pass.
        self.assertEqual(
            {frame.stream_id for frame in parseFrames(writes[0]) if isinstance(frame, DataFrame)},
            set(streams),
        )
        client.pump()
        client.receive()
        for stream in streams:
            self.assertEqual(len(client.body(stream)), size)
            self.assertTrue(client.ofType(h2.events.StreamEnded, stream))


class BackPressureTests(SynchronousTestCase):
    """
    A stream's producer is paused while too much of its output waits, even
    when the client grants the largest windows.
    """

    def test_highWater(self):
        """
        More than L{STREAM_HIGH_WATER} bytes queued pause the producer; once
        they are sent, it is resumed.
        """
        client, held = heldClient()
        openWindows(client)
        [stream] = openStreams(client, 1)
        client.flush()
        [(request, producer)] = held.requests
        request.write(b"x" * (STREAM_HIGH_WATER + 1))
        self.assertTrue(producer.paused)
        client.pump()
        self.assertFalse(producer.paused)
        client.receive()
        self.assertEqual(len(client.body(stream)), STREAM_HIGH_WATER + 1)

    def test_transportPushesBack(self):
        """
        While the transport has paused the connection nothing is sent, and
        a stream's producer is paused once its output reaches the high
        water mark; when the transport resumes, the output goes and the
        producer resumes.
        """
        client, held = heldClient()
        openWindows(client)
        [stream] = openStreams(client, 1)
        client.flush()
        [(request, producer)] = held.requests
        writes = countWrites(client)
        client.server.pauseProducing()
        chunk = b"y" * 16384
        written = 0
        while not producer.paused:
            request.write(chunk)
            written += len(chunk)
            client.pump()
            self.assertLess(
                client.server._queued[stream], STREAM_HIGH_WATER + 2 * len(chunk)
            )
        self.assertEqual(writes, [])
        client.server.resumeProducing()
        client.pump()
        self.assertFalse(producer.paused)
        client.receive()
        self.assertEqual(len(client.body(stream)), written)
        self.assertEqual(client.server._queued[stream], 0)

    def test_shutWindowPauses(self):
        """
        A stream whose window is used up pauses its producer, as in Twisted;
        the client's WINDOW_UPDATE resumes it and the rest is sent.
        """
        client, held = heldClient()
        [stream] = openStreams(client, 1)
        client.flush()
        [(request, producer)] = held.requests
        request.write(b"z" * 70000)
        self.assertTrue(producer.paused)
        client.pump()
        client.receive()
        self.assertEqual(len(client.body(stream)), 65535)
        self.assertTrue(producer.paused)
        client.h2.increment_flow_control_window(100000)
        client.h2.increment_flow_control_window(100000, stream)
        client.exchange()
        self.assertFalse(producer.paused)
        self.assertEqual(len(client.body(stream)), 70000)


class HostileTests(SynchronousTestCase):
    """
    Clients that abuse the sending side.
    """

    def test_priorityIgnored(self):
        """
        PRIORITY frames (for open streams, for streams never opened, on
        themselves) change nothing: every stream is answered and no state
        is kept for the streams they name.
        """
        client = MemoryClient()
        frames = b""
        for stream in range(1, 160, 2):
            frame = PriorityFrame(stream)
            frame.depends_on = stream + 2
            frame.stream_weight = 255
            frame.exclusive = True
            frames += frame.serialize()
        client.send(frames)
        streams = openStreams(client, 5)
        client.flush()
        client.receive()
        self.assertFalse(client.closed)
        for stream in streams:
            self.assertEqual(client.status(stream), 200)
            self.assertEqual(client.body(stream), b"ok")
        self.assertEqual(client.server.streams, {})
        self.assertEqual(client.server._ready, {})

    def test_resetWhileQueued(self):
        """
        A client that resets streams whose output waits for its window
        leaves nothing queued; its other streams are answered.
        """
        client, held = heldClient()
        streams = openStreams(client, 3)
        client.flush()
        for request, _ in held.requests:
            request.write(b"q" * 100000)
        client.pump()
        for stream in streams[:2]:
            frame = RstStreamFrame(stream)
            frame.error_code = ErrorCodes.CANCEL
            client.send(frame.serialize())
        self.assertEqual(set(client.server._outboundStreamQueues), {streams[2]})
        self.assertEqual(set(client.server._queued), {streams[2]})
        finish(held.requests[2][0])
        client.h2.increment_flow_control_window(200000)
        client.h2.increment_flow_control_window(200000, streams[2])
        client.exchange()
        client.pump()
        client.receive()
        self.assertEqual(len(client.body(streams[2])), 100000)
        self.assertTrue(client.ofType(h2.events.StreamEnded, streams[2]))
        self.assertEqual(client.server._ready, {})
        self.assertFalse(client.closed)

    def test_queuedForAStreamH2Forgot(self):
        """
        Output queued for a stream that h2 no longer knows is dropped and
        its request told that the stream is gone, as when h2 refuses the
        data; the other streams are answered.
        """
        client, held = heldClient()
        streams = openStreams(client, 2)
        client.flush()
        lost = []
        for request, _ in held.requests:
            request.notifyFinish().addErrback(lost.append)
            request.write(b"data")
        del client.server.conn.streams[streams[0]]
        finish(held.requests[1][0])
        client.pump()
        client.receive()
        self.assertEqual(len(lost), 1)
        self.assertEqual(client.body(streams[1]), b"data")
        self.assertEqual(client.body(streams[0]), b"")
        self.assertEqual(client.server._ready, {})
        self.assertEqual(set(client.server._outboundStreamQueues), set())

    def test_tinyWindowUpdates(self):
        """
        A client that opens a shut window a byte at a time gets one byte a
        time, and the connection stays idle between its updates.
        """
        client, held = heldClient()
        [stream] = openStreams(client, 1)
        client.flush()
        [(request, _)] = held.requests
        request.write(b"w" * 70000)
        finish(request)
        client.pump()
        client.receive()
        self.assertEqual(len(client.body(stream)), 65535)
        client.h2.increment_flow_control_window(10000)
        for _ in range(10):
            client.h2.increment_flow_control_window(1, stream)
            client.exchange()
        self.assertEqual(len(client.body(stream)), 65545)
        self.assertEqual(
            [call.getTime() - client.reactor.seconds() for call in client.reactor.getDelayedCalls()],
            [60.0],
        )


class HeaderFramesTests(SynchronousTestCase):
    """
    The HEADERS of a response are framed by the connection itself
    (L{headerFrames}), with h2's state kept as h2 would keep it.
    """

    def test_frames(self):
        """
        A block that fits is one HEADERS frame with END_HEADERS; a longer one
        is split into CONTINUATION frames, END_HEADERS on the last only.
        """
        [frame] = parseFrames(headerFrames(3, b"abc", 16384))
        self.assertIsInstance(frame, HeadersFrame)
        self.assertEqual((frame.stream_id, frame.data), (3, b"abc"))
        self.assertEqual(set(frame.flags), {"END_HEADERS"})
        frames = parseFrames(headerFrames(5, b"x" * 25, 10))
        self.assertEqual(
            [type(frame) for frame in frames], [HeadersFrame, ContinuationFrame, ContinuationFrame]
        )
        self.assertEqual(b"".join(frame.data for frame in frames), b"x" * 25)
        self.assertEqual([set(frame.flags) for frame in frames], [set(), set(), {"END_HEADERS"}])
        self.assertEqual({frame.stream_id for frame in frames}, {5})

    def test_bigResponseHeaders(self):
        """
        Response fields beyond the client's SETTINGS_MAX_FRAME_SIZE go out in
        CONTINUATION frames, and the client reads them as any response.
        """
        client, held = heldClient()
        [stream] = openStreams(client, 1)
        client.flush()
        [(request, producer)] = held.requests
        request.setHeader(b"x-big", b"b" * 40000)
        request.write(b"body")
        finish(request)
        client.pump()
        frames = client.frames()
        kinds = [type(frame) for frame in frames if frame.stream_id == stream]
        self.assertEqual(kinds[:4], [HeadersFrame, ContinuationFrame, ContinuationFrame, DataFrame])
        client.receive()
        self.assertEqual(client.status(stream), 200)
        [response] = client.ofType(h2.events.ResponseReceived, stream)
        self.assertEqual(dict(response.headers)[b"x-big"], b"b" * 40000)
        self.assertEqual(client.body(stream), b"body")
        self.assertFalse(client.closed)

    def test_resetBeforeHeaders(self):
        """
        A stream the client reset before its response started gets no
        HEADERS, and the connection goes on.
        """
        client, held = heldClient()
        first, second = openStreams(client, 2)
        client.flush()
        client.h2.reset_stream(first)
        client.flush()
        # As a response that comes in just after the reset would.
        client.server.writeFields(first, [(b":status", b"200")])
        request, producer = held.requests[1]
        finish(request)
        client.pump()
        self.assertEqual(
            [frame.stream_id for frame in client.frames() if isinstance(frame, HeadersFrame)],
            [second],
        )
        self.assertEqual(client.status(second), 200)
        self.assertFalse(client.closed)

    def test_headersTwice(self):
        """
        A second HEADERS without END_STREAM on one stream is refused, as h2
        refuses trailers without it, and the state is h2's own afterwards.
        """
        client, held = heldClient()
        [stream] = openStreams(client, 1)
        client.flush()
        server = client.server
        server.writeFields(stream, [(b":status", b"200")])
        self.assertRaises(
            h2.exceptions.ProtocolError, server.writeFields, stream, [(b":status", b"200")]
        )
        machine = server.conn.streams[stream].state_machine
        self.assertTrue(machine.headers_sent)

    def test_dataKeepsH2State(self):
        """
        DATA frames made by the connection move h2's flow control windows
        and stream states as h2's own would: the client's count agrees, and
        the stream is closed once its last frame is sent.
        """
        client, held = heldClient()
        first, second = openStreams(client, 2)
        client.flush()
        (request, producer), (other, otherProducer) = held.requests
        request.write(b"a" * 1000)
        request.write(b"b" * 500)
        other.write(b"c" * 300)
        client.pump()
        server = client.server.conn
        client.receive()
        for stream, sent in ((first, 1500), (second, 300)):
            self.assertEqual(server.streams[stream].outbound_flow_control_window, 65535 - sent)
            self.assertEqual(client.h2.streams[stream].inbound_flow_control_window, 65535 - sent)
        self.assertEqual(server.outbound_flow_control_window, 65535 - 1800)
        self.assertEqual(server.local_flow_control_window(first), 65535 - 1800)
        self.assertEqual(client.body(first), b"a" * 1000 + b"b" * 500)
        finish(request)
        client.pump()
        client.receive()
        self.assertTrue(client.ofType(h2.events.StreamEnded, first))
        self.assertTrue(first not in server.streams or server.streams[first].closed)
        self.assertFalse(client.ofType(h2.events.StreamEnded, second))
        finish(other)
        client.pump()
        client.receive()
        self.assertEqual(client.body(second), b"c" * 300)
        self.assertTrue(client.ofType(h2.events.StreamEnded, second))
        self.assertFalse(client.closed)
