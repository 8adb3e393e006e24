"""
Big request bodies moved from socket to socket by the kernel
(L{manualb.web.uploadsplicing}), over real sockets on 127.0.0.1: intact,
with back-pressure, timeouts, early answers and closes of either side and
keep-alive as on the copying path, which the cases that cannot splice still
take.
"""

import hashlib
import os
import re

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from manualb import handoff, waf
from manualb.testing import balancerConfig, serverAddress
from manualb.web import uploadsplicing
from tests.test_splicing import RecordsSplices, dechunk, openFiles, twistedFront

MiB = 1024 * 1024
THRESHOLD = uploadsplicing.SPLICE_MIN
PIECE = bytes(range(256)) * 256 + b"manualb"


def pattern(size: int) -> bytes:
    """
    The first C{size} bytes of the bodies the clients send.
    """
    return (PIECE * (size // len(PIECE) + 1))[:size]


def digest(size: int) -> str:
    return hashlib.sha256(pattern(size)).hexdigest()


class Sink(Protocol):
    """
    The backend's side of one connection: reads requests with a
    C{Content-Length} body, hashes each body, and answers C{200} with the
    body's length and SHA-256, kept alive.  Its factory may have it stop
    reading after some bytes of a body (C{stallAfter}), answer early
    (C{answerAfter}), or abort the connection (C{abortAfter}).
    """

    def connectionMade(self):
        self.factory.opened += 1
        self.factory.connections.append(self)
        self.buffer = b""
        self.left = None
        self.got = 0
        self.chunks = None

    def dataReceived(self, data):
        if self.chunks is not None:
            self.chunks += data
            if self.chunks.endswith(b"\r\n0\r\n\r\n"):
                body = dechunk(self.chunks)
                self.chunks = None
                answer = b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode("ascii"))
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer)
                )
            return
        while data:
            if self.left is None:
                self.buffer += data
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head, data = self.buffer[:end], self.buffer[end + 4 :]
                self.buffer = b""
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                if length is not None:
                    self.left = int(length.group(1))
                elif re.search(rb"(?i)\r\ntransfer-encoding: *chunked", head):
                    self.chunks = b""
                    self.dataReceived(data)
                    return
                else:
                    self.left = 0
                self.got = 0
                self.hash = hashlib.sha256()
                if not self.left:
                    self.answer()
                continue
            piece = data[: self.left]
            data = data[len(piece) :]
            self.left -= len(piece)
            self.got += len(piece)
            self.hash.update(piece)
            factory = self.factory
            if factory.reachAfter is not None and self.got >= factory.reachAfter:
                factory.reachAfter = None
                factory.reached.callback(self)
            if factory.abortAfter is not None and self.got >= factory.abortAfter:
                self.transport.abortConnection()
                return
            if factory.answerAfter is not None and self.got >= factory.answerAfter and self.left:
                factory.answerAfter = None
                self.transport.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 4\r\n\r\nbig!")
                if factory.closeAfterAnswer:
                    self.transport.loseConnection()
                    return
            if factory.stallAfter is not None and self.got >= factory.stallAfter and self.left:
                factory.stallAfter = None
                self.transport.pauseProducing()
                factory.stalled.callback(self)
                self.buffer, data = data, b""
                return
            if not self.left:
                self.answer()

    def answer(self):
        """
        Answer the body just read with its length and SHA-256.
        """
        self.left = None
        answer = b"%d %s" % (self.got, self.hash.hexdigest().encode("ascii"))
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer)
        )

    def resume(self):
        """
        Read again after a stall.
        """
        rest, self.buffer = self.buffer, b""
        self.transport.resumeProducing()
        self.dataReceived(rest)

    def connectionLost(self, reason):
        self.factory.open -= 1
        if self.left:
            self.factory.broken += 1
        if not self.factory.open:
            waiting, self.factory.waiting = self.factory.waiting, []
            for d in waiting:
                d.callback(None)


class SinkFactory(Factory):
    protocol = Sink

    def __init__(self):
        self.opened = self.open = self.broken = 0
        self.connections = []
        self.waiting = []
        self.stallAfter = self.answerAfter = self.abortAfter = self.reachAfter = None
        self.closeAfterAnswer = False
        self.stalled = Deferred()
        self.reached = Deferred()

    def buildProtocol(self, addr):
        self.open += 1
        return super().buildProtocol(addr)

    def allClosed(self) -> Deferred:
        d = Deferred()
        if self.open:
            self.waiting.append(d)
        else:
            d.callback(None)
        return d


@implementer(IPushProducer)
class Uploader(Protocol):
    """
    A raw HTTP/1.1 client that sends requests with bodies of the test
    pattern as fast as its connection takes them, and reads responses with a
    C{Content-Length}.
    """

    def __init__(self):
        self.closed = Deferred()
        self.waiting = []
        self.buffer = b""
        self.after = []
        self.sending = b""
        self.offset = 0
        self.paused = False
        self.stopAfter = None
        self.sent = 0

    def connectionMade(self):
        self.transport.registerProducer(self, True)

    def send(self, size: int, method=b"POST", headers=b"", chunked=False) -> Deferred:
        """
        Send a request with a body of C{size} bytes; fires with the
        response's status, head and body.
        """
        waiting = Deferred()
        self.waiting.append(waiting)
        self.offset = 0
        if chunked:
            body = pattern(size)
            framing = b"Transfer-Encoding: chunked"
            self.sending = b"".join(
                b"%x\r\n%s\r\n" % (len(body[i : i + 100000]), body[i : i + 100000])
                for i in range(0, size, 100000)
            ) + b"0\r\n\r\n"
        else:
            framing = b"Content-Length: %d" % (size,)
            self.sending = memoryview(pattern(size))
        self.transport.write(b"%s /up HTTP/1.1\r\nHost: t\r\n%s\r\n%s\r\n" % (method, framing, headers))
        if b"100-continue" not in headers:
            self.resumeProducing()
        return waiting

    def get(self, path: bytes) -> Deferred:
        """
        Send a C{GET} for C{path}, pipelined after what was sent before.
        """
        waiting = Deferred()
        self.waiting.append(waiting)
        request = b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % (path,)
        if self.offset < len(self.sending):
            # After the body being sent.
            self.after.append(request)
        else:
            self.transport.write(request)
        return waiting

    def resumeProducing(self):
        self.paused = False
        while self.offset < len(self.sending) and not self.paused:
            end = self.offset + 65536
            stop = self.stopAfter is not None and self.sent + 65536 >= self.stopAfter
            if stop:
                end = self.offset + self.stopAfter - self.sent
            piece = self.sending[self.offset : end]
            self.offset = end
            if stop:
                self.sending = b""
                self.offset = 0
                self.stopAfter = None
            self.sent += len(piece)
            self.transport.write(bytes(piece))
        if self.offset >= len(self.sending) and self.after:
            after, self.after = self.after, []
            self.transport.write(b"".join(after))

    def pauseProducing(self):
        self.paused = True

    def stopProducing(self):
        self.sending = b""

    def dataReceived(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            if head.startswith(b"HTTP/1.1 100 "):
                self.buffer = self.buffer[end + 4 :]
                self.resumeProducing()
                continue
            length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            if self.waiting:
                self.waiting.pop(0).callback((int(head.split(b" ")[1]), head, body))

    def connectionLost(self, reason):
        self.transport.unregisterProducer()
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.errback(reason)
        self.closed.callback(None)


class UploadSplicingTests(RecordsSplices, TestCase):
    """
    The lean front end in front of a real backend, both over plain TCP,
    with request bodies of known length.
    """

    spliceClass = uploadsplicing.UploadSplice

    @inlineCallbacks
    def serve(self, **options):
        """
        Start the backend and manualb in front of it (configured by
        L{balancerConfig} with C{options}); return the backend's factory.
        """
        self.sink = SinkFactory()
        self.backendPort = port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            self.sink
        )
        self.addCleanup(port.stopListening)
        options.setdefault("gatekeeper", {}).setdefault("client_max_body_size", "0")
        yield self.serveBalancer(balancerConfig([serverAddress(port)], **options))
        return self.sink

    def connect(self) -> Deferred:
        return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), Uploader())

    @inlineCallbacks
    def assertIntact(self, client, size: int, **kwargs):
        code, head, body = yield client.send(size, **kwargs)
        self.assertEqual(code, 200, head)
        self.assertEqual(body, b"%d %s" % (size, digest(size).encode("ascii")))

    @inlineCallbacks
    def close(self, client):
        client.transport.unregisterProducer()
        client.transport.loseConnection()
        yield client.closed

    @inlineCallbacks
    def test_intactAroundThreshold(self):
        """
        Bodies around the threshold and far above it arrive intact over one
        kept-alive client connection and one backend connection; those whose
        rest is at least L{uploadsplicing.SPLICE_MIN} are spliced, shorter
        ones are not.
        """
        yield self.serve()
        client = yield self.connect()
        for size in [1000, THRESHOLD - 1]:
            yield self.assertIntact(client, size)
        self.assertEqual(self.splices, [])
        sizes = [THRESHOLD, THRESHOLD + 1, 2 * THRESHOLD + 3, MiB + 7, 24 * MiB, 100]
        for size in sizes:
            yield self.assertIntact(client, size)
        expected = [size for size in sizes if size >= 2 * THRESHOLD]
        self.assertGreaterEqual(len(self.splices), len(expected))
        yield self.assertIntact(client, 3 * MiB, headers=b"Expect: 100-continue\r\n")
        self.assertEqual(self.splices[-1].total, 3 * MiB)
        self.assertEqual(self.sink.opened, 1)
        self.assertPipesClosed()
        yield self.close(client)

    @inlineCallbacks
    def test_keptForRetry(self):
        """
        A C{PUT} body short enough to be kept to try another server
        (C{retry_body_limit}) is copied; a longer one, which would not be
        kept, is spliced.
        """
        yield self.serve()
        client = yield self.connect()
        yield self.assertIntact(client, 512 * 1024, method=b"PUT")
        self.assertEqual(self.splices, [])
        yield self.assertIntact(client, 4 * MiB, method=b"PUT")
        self.assertEqual(len(self.splices), 1)
        yield self.close(client)

    @inlineCallbacks
    def test_slowBackend(self):
        """
        A backend that does not read stops the client being read: the pipe
        and the sockets hold what the backend does not take, not manualb.
        Once it reads again, the rest comes intact, and both connections
        serve the next request.
        """
        total = 64 * MiB
        sink = yield self.serve()
        sink.stallAfter = MiB
        paused = self.whenPaused()
        client = yield self.connect()
        response = client.send(total)
        backend = yield sink.stalled
        yield paused
        [splice] = self.splices
        self.assertTrue(splice.paused)
        self.assertLess(client.sent, total // 2)
        [connection] = self.balancer.site.connections.connections
        request = connection._requests[0]
        self.assertEqual(request.body._pending, [])
        proxied = splice.backend
        self.assertEqual(len(proxied.dataBuffer) + proxied._tempDataLen, 0)
        backend.resume()
        code, head, body = yield response
        self.assertEqual(body, b"%d %s" % (total, digest(total).encode("ascii")))
        yield self.assertIntact(client, 1000)
        yield self.assertIntact(client, MiB)
        self.assertEqual(self.sink.opened, 1)
        self.assertPipesClosed()
        yield self.close(client)

    def whenPaused(self) -> Deferred:
        """
        Fires the first time a body is paused while it is spliced.
        """
        paused = Deferred()
        original = handoff._BodyThrottle.pauseProducing

        def pauseProducing(throttle):
            original(throttle)
            if throttle._connection.splice is not None and not paused.called:
                paused.callback(None)

        self.patch(handoff._BodyThrottle, "pauseProducing", pauseProducing)
        return paused

    @inlineCallbacks
    def test_clientGone(self):
        """
        A client that goes away mid-body takes the backend connection with
        it, and the pipe is closed.
        """
        sink = yield self.serve()
        sink.reachAfter = 2 * MiB
        client = yield self.connect()
        client.stopAfter = 3 * MiB
        response = client.send(64 * MiB)
        yield sink.reached
        self.assertEqual(len(self.splices), 1)
        client.transport.abortConnection()
        yield self.assertFailure(response, Exception)
        yield sink.allClosed()
        self.assertEqual(sink.broken, 1)
        self.assertPipesClosed()

    @inlineCallbacks
    def test_clientStops(self):
        """
        A client that sends no more of its body for C{client_body_timeout}
        is closed, and the backend connection with it.
        """
        sink = yield self.serve(gatekeeper={"client_body_timeout": "0.3s"})
        client = yield self.connect()
        client.stopAfter = 2 * MiB
        response = client.send(64 * MiB)
        yield self.assertFailure(response, Exception)
        self.assertEqual(len(self.splices), 1)
        yield sink.allClosed()
        self.assertEqual(sink.broken, 1)
        self.assertPipesClosed()

    @inlineCallbacks
    def test_sendTimeout(self):
        """
        A backend that takes nothing for C{send_timeout} fails the request
        (504), and the client connection, whose body was not read, closes.
        """
        sink = yield self.serve(send_timeout="0.3s")
        sink.stallAfter = MiB
        client = yield self.connect()
        code, head, body = yield client.send(64 * MiB)
        self.assertEqual(code, 504)
        yield client.closed
        backend = yield sink.stalled
        backend.transport.resumeProducing()
        yield sink.allClosed()
        self.assertEqual(len(self.splices), 1)
        self.assertPipesClosed()
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_backendAnswersEarly(self):
        """
        A backend that answers before it has the whole body gets its answer
        to the client, its connection is not reused, and the client's
        closes once its body is in.
        """
        sink = yield self.serve()
        sink.answerAfter = MiB
        client = yield self.connect()
        code, head, body = yield client.send(16 * MiB)
        self.assertEqual((code, body), (413, b"big!"))
        yield client.closed
        yield sink.allClosed()
        self.assertEqual(len(self.splices), 1)
        self.assertPipesClosed()

    @inlineCallbacks
    def test_backendAnswersEarlyAndCloses(self):
        """
        A backend that answers before it has the whole body, then closes,
        gets its answer to the client when it came before the close was
        seen (a 502 otherwise); the client's connection closes.
        """
        sink = yield self.serve()
        sink.answerAfter = MiB
        sink.closeAfterAnswer = True
        client = yield self.connect()
        code, head, body = yield client.send(16 * MiB)
        self.assertIn(code, (413, 502))
        yield client.closed
        yield sink.allClosed()
        self.assertEqual(len(self.splices), 1)
        self.assertPipesClosed()
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_backendCloses(self):
        """
        A backend that closes mid-body fails the request (502), and the
        client connection, whose body was not read, closes.
        """
        sink = yield self.serve()
        sink.abortAfter = MiB
        client = yield self.connect()
        code, head, body = yield client.send(16 * MiB)
        self.assertEqual(code, 502)
        yield client.closed
        self.assertEqual(len(self.splices), 1)
        self.assertPipesClosed()
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_pipelined(self):
        """
        A body pipelined behind another request is not spliced while that
        request is answered; all arrive intact, in order.
        """
        yield self.serve()
        depth = []
        start = uploadsplicing.UploadSplice.start

        def recordingStart(splice):
            depth.append(len(splice.connection._requests))
            start(splice)

        self.patch(uploadsplicing.UploadSplice, "start", recordingStart)
        client = yield self.connect()
        empty = b"0 " + hashlib.sha256().hexdigest().encode("ascii")
        first = client.get(b"/first")
        second = client.send(8 * MiB)
        third = client.get(b"/third")
        self.assertEqual((yield first)[2], empty)
        self.assertEqual((yield second)[2], b"%d %s" % (8 * MiB, digest(8 * MiB).encode("ascii")))
        self.assertEqual((yield third)[2], empty)
        self.assertEqual(self.sink.opened, 1)
        self.assertEqual(depth, [1])
        yield self.close(client)

    @inlineCallbacks
    def test_accessLog(self):
        """
        The access log has its line for a spliced upload, with the bytes of
        the answer.
        """
        path = os.path.abspath(self.mktemp())
        yield self.serve(accessLog=path)
        client = yield self.connect()
        yield self.assertIntact(client, 3 * MiB)
        self.assertEqual(len(self.splices), 1)
        yield self.close(client)
        yield self.balancer.close()
        with open(path) as log:
            line = log.read().splitlines()[-1]
        self.assertIn('"POST /up HTTP/1.1" 200 72 ', line)

    @inlineCallbacks
    def test_chunkedCopied(self):
        """
        A chunked body goes the copying way, intact.
        """
        yield self.serve()
        client = yield self.connect()
        code, head, body = yield client.send(2 * MiB, chunked=True)
        self.assertEqual(code, 200)
        self.assertEqual(body.split(b" ")[1], digest(2 * MiB).encode("ascii"))
        self.assertEqual(self.splices, [])
        yield self.close(client)

    @inlineCallbacks
    def test_inspectedCopied(self):
        """
        A body the WAF reads goes the copying way, intact.
        """
        if waf.libinjection is None:
            raise SkipTest("libinjection is not installed")
        yield self.serve(gatekeeper={"waf": "block", "client_max_body_size": "0"})
        client = yield self.connect()
        yield self.assertIntact(client, 2 * MiB)
        self.assertEqual(self.splices, [])
        yield self.close(client)

    @inlineCallbacks
    def test_clientTLSCopied(self):
        """
        A client over TLS sends its body the copying way.
        """
        client = yield self.connectOverTLS(Uploader())
        yield self.assertIntact(client, 2 * MiB)
        self.assertEqual(self.splices, [])
        yield self.close(client)

    @inlineCallbacks
    def test_noDescriptorLeft(self):
        """
        After spliced bodies, whole or broken off by either side, the
        process has the file descriptors it had before.
        """
        yield deferLater(reactor, 0, lambda: None)
        before = sorted(openFiles())
        sink = yield self.serve()
        client = yield self.connect()
        yield self.assertIntact(client, 2 * MiB)
        sink.abortAfter = MiB
        code, head, body = yield client.send(8 * MiB)
        self.assertEqual(code, 502)
        yield client.closed
        sink.abortAfter = None
        sink.reachAfter = MiB
        client = yield self.connect()
        client.stopAfter = 2 * MiB
        response = client.send(64 * MiB)
        yield sink.reached
        client.transport.abortConnection()
        yield self.assertFailure(response, Exception)
        yield sink.allClosed()
        self.assertEqual(len(self.splices), 3)
        yield self.balancer.close()
        yield self.backendPort.stopListening()
        yield self.frontPort.stopListening()
        self.assertEqual(sorted(openFiles()), before)
        self.flushLoggedErrors()


class TwistedFrontEndTests(TestCase):
    """
    The twisted.web front end copies big request bodies.
    """

    @inlineCallbacks
    def test_copied(self):
        splices = []
        self.patch(uploadsplicing.UploadSplice, "start", lambda splice: splices.append(splice))
        sink = SinkFactory()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(sink)
        self.addCleanup(port.stopListening)
        config = balancerConfig([serverAddress(port)], gatekeeper={"client_max_body_size": "0"})
        front = yield twistedFront(self, config)
        client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", front), Uploader())
        code, head, body = yield client.send(2 * MiB)
        self.assertEqual(body, b"%d %s" % (2 * MiB, digest(2 * MiB).encode("ascii")))
        self.assertEqual(splices, [])
        client.transport.unregisterProducer()
        client.transport.loseConnection()
        yield client.closed

