"""
Big response bodies moved from socket to socket by the kernel
(L{manualb.web.splicing}), over real sockets on 127.0.0.1: intact, with
back-pressure, timeouts, early closes of either side and keep-alive as on
the copying path, which the cases that cannot splice still take.
"""

import gzip
import hashlib
import os
import re

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from manualb.configfile import parseConfig
from manualb.front import serving
from manualb.service import LoadBalancer
from manualb.termination import sniEndpoint
from manualb.testing import balancerConfig, serverAddress
from manualb.tlstesting import makeCA, makeTLSConfig, writeCA, writeTLSFiles
from manualb.web import splicing
from tests.test_endtoend import MiB, PIECE, Stream, whenBackendPaused

THRESHOLD = splicing.SPLICE_MIN


def pattern(size: int) -> bytes:
    """
    The first C{size} bytes of the bodies the backend sends.
    """
    return (PIECE * (size // len(PIECE) + 1))[:size]


def digest(size: int) -> str:
    return hashlib.sha256(pattern(size)).hexdigest()


def openFiles() -> list[str]:
    """
    What this process's file descriptors are open on.
    """
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            found.append(os.readlink("/proc/self/fd/" + name))
        except OSError:
            pass
    return found


class Stop(Exception):
    """
    A backend stream stopped short on purpose.
    """


class PartialStream(Stream):
    """
    Promises C{total} bytes, writes C{sent} of them, then closes the
    connection (C{close}) or leaves it open and silent.
    """

    def __init__(self, request, total: int, sent: int, close: bool):
        self.close = close
        self.promised = total
        super().__init__(request, sent)

    def written(self, request):
        # Short of what was promised: the response never ends.
        if self.close:
            request.transport.loseConnection()


class Bodies(Resource):
    """
    A backend of bodies of the test pattern: C{/N} is N bytes with a
    C{Content-Length}; C{/chunked/N} without one (so chunked);
    C{/short/N/M} promises N bytes and closes after M; C{/stall/N/M}
    promises N and stops after M, the connection left open.

    @ivar streams: The streams, in order.
    @ivar gone: Fires when a request's connection went away before its end.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.streams: list[Stream] = []
        self.gone = Deferred()
        self.contentType = b"application/octet-stream"

    def _lost(self, reason):
        if not self.gone.called:
            self.gone.callback(None)

    def render_GET(self, request):
        parts = request.path.strip(b"/").split(b"/")
        request.setHeader(b"Content-Type", self.contentType)
        request.notifyFinish().addErrback(self._lost)
        if parts[0] == b"chunked":
            self.streams.append(Stream(request, int(parts[1])))
            return NOT_DONE_YET
        if parts[0] in (b"short", b"stall"):
            total, sent = int(parts[1]), int(parts[2])
            request.setHeader(b"Content-Length", b"%d" % (total,))
            self.streams.append(PartialStream(request, total, sent, parts[0] == b"short"))
            return NOT_DONE_YET
        size = int(parts[0])
        request.setHeader(b"Content-Length", b"%d" % (size,))
        self.streams.append(Stream(request, size))
        return NOT_DONE_YET

    render_HEAD = render_GET


class CountingSite(Site):
    """
    Counts the connections it accepted, and those still open.
    """

    def __init__(self, resource):
        super().__init__(resource)
        self.connections = 0
        self.open = 0
        self._allClosed: list[Deferred] = []

    def buildProtocol(self, addr):
        self.connections += 1
        self.open += 1
        protocol = super().buildProtocol(addr)
        lost = protocol.connectionLost

        def connectionLost(reason):
            lost(reason)
            self.open -= 1
            if not self.open:
                waiting, self._allClosed = self._allClosed, []
                for d in waiting:
                    d.callback(None)

        protocol.connectionLost = connectionLost
        return protocol

    def allClosed(self) -> Deferred:
        d = Deferred()
        if self.open:
            self._allClosed.append(d)
        else:
            d.callback(None)
        return d


class Incomplete(Exception):
    """
    The connection closed before the whole response came.

    @ivar received: How many body bytes had come.
    """

    def __init__(self, received: int):
        super().__init__(received)
        self.received = received


class Client(Protocol):
    """
    A raw HTTP/1.1 client: one request at a time over one connection,
    responses with a C{Content-Length} (or none, to C{HEAD}), whose bodies
    it hashes as they come rather than keep.
    """

    def __init__(self):
        self.closed = Deferred()
        self.waiting: Deferred | None = None
        self.firstData: Deferred | None = None

    def get(self, path: bytes, method: bytes = b"GET", headers: bytes = b"") -> Deferred:
        """
        Send a request; fires with the response head, the body's length and
        its SHA-256, or fails with L{Incomplete}.
        """
        self.waiting = Deferred()
        self.firstData = Deferred()
        self.head = None
        self.buffer = b""
        self.got = 0
        self.hash = hashlib.sha256()
        self.method = method
        self.transport.write(b"%s %s HTTP/1.1\r\nHost: test\r\n%s\r\n" % (method, path, headers))
        return self.waiting

    def dataReceived(self, data):
        if self.head is None:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head = self.buffer[:end]
            data = self.buffer[end + 4 :]
            self.buffer = b""
            if self.method == b"HEAD":
                self.length = 0
            else:
                self.length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", self.head).group(1))
        if data and not self.firstData.called:
            self.firstData.callback(None)
        data = data[: self.length - self.got]
        self.got += len(data)
        self.hash.update(data)
        if self.got == self.length and self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            waiting.callback((self.head, self.got, self.hash.hexdigest()))

    def connectionLost(self, reason):
        if self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            waiting.errback(Incomplete(self.got))
        self.closed.callback(None)


@inlineCallbacks
def twistedFront(case: TestCase, config):
    """
    Serve a balancer of C{config} on the twisted.web front end, on a port
    of 127.0.0.1 that C{case} closes when it ends; return the port number.
    """
    balancer = LoadBalancer(config, reactor)
    case.addCleanup(balancer.close)
    front = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        serving(balancer.site, "twisted")
    )
    case.addCleanup(front.stopListening)
    return front.getHost().port


class RecordsSplices:
    """
    A test case through the lean front end that records the splices of
    C{spliceClass} it makes (C{splices}) and the pipes they open (C{pipes}),
    and can connect a client over TLS (L{connectOverTLS}).  Its C{serve()}
    starts a backend and manualb and sets C{port}, using L{listen}.
    """

    frontEnd = "lean"
    spliceClass = splicing.Splice

    def setUp(self):
        if not splicing.enabled:
            raise SkipTest("os.splice is not available here")
        self.splices = []
        self.pipes = set()
        start = self.spliceClass.start

        def recordingStart(splice):
            self.splices.append(splice)
            self.pipes.add(os.readlink("/proc/self/fd/%d" % (splice._readEnd,)))
            start(splice)

        self.patch(self.spliceClass, "start", recordingStart)

    def listen(self, factory):
        return TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)

    @inlineCallbacks
    def serveBalancer(self, config):
        """
        Start a balancer of C{config} and serve it (L{listen}) on the front
        end C{frontEnd}: sets C{balancer}, C{frontPort} and C{port}.
        """
        self.balancer = LoadBalancer(config, reactor)
        self.balancer.load()
        self.addCleanup(self.balancer.close)
        self.frontPort = port = yield self.listen(serving(self.balancer.site, self.frontEnd))
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    def assertPipesClosed(self):
        """
        The pipes of the splices so far are closed.
        """
        self.assertTrue(self.splices)
        self.assertEqual(self.pipes & set(openFiles()), set())
        self.assertEqual([splice for splice in self.splices if splice._readEnd != -1], [])

    @inlineCallbacks
    def connectOverTLS(self, protocol: Protocol):
        """
        Serve on an C{sni:} listener with a certificate of a new authority,
        and connect C{protocol} to it over TLS, trusting that authority.
        """
        directory = self.mktemp()
        ca = makeCA("splice test CA")
        cafile = writeCA(directory, ca)
        tls = makeTLSConfig(directory, ca, [["default.example.com"]])
        self.listen = lambda factory: sniEndpoint(reactor, "sni:0:interface=127.0.0.1", tls).listen(factory)
        yield self.serve()
        with open(cafile, "rb") as f:
            trust = Certificate.loadPEM(f.read())
        endpoint = wrapClientTLS(
            optionsForClientTLS("default.example.com", trustRoot=trust),
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.port),
        )
        return (yield connectProtocol(endpoint, protocol))


class SplicingTests(RecordsSplices, TestCase):
    """
    The lean front end in front of a real backend, both over plain TCP.
    """

    @inlineCallbacks
    def serve(self, text: str | None = None, backendTLS=None, **options):
        """
        Start the backend and manualb in front of it (configured by
        C{text}, with C{SERVER} for the backend's address, or by
        L{balancerConfig} with C{options}); return the backend.
        """
        self.backend = Bodies()
        self.backendSite = CountingSite(self.backend)
        if backendTLS is None:
            endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        else:
            endpoint = SSL4ServerEndpoint(reactor, 0, backendTLS, interface="127.0.0.1")
        self.backendPort = port = yield endpoint.listen(self.backendSite)
        self.addCleanup(port.stopListening)
        server = serverAddress(port)
        if backendTLS is not None:
            server = "https://" + server
        if text is None:
            config = balancerConfig([server], **options)
        else:
            config = parseConfig(text.replace("SERVER", server), "<test>")
        yield self.serveBalancer(config)
        return self.backend

    def connect(self) -> Deferred:
        return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), Client())

    @inlineCallbacks
    def assertIntact(self, client, size: int, path: bytes | None = None):
        head, length, sha = yield client.get(path or b"/%d" % (size,))
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertEqual((length, sha), (size, digest(size)))

    def proxyClient(self):
        """
        The proxy's side of the one client connection.
        """
        [connection] = self.balancer.site.connections.connections
        return connection

    @inlineCallbacks
    def test_intactAroundThreshold(self):
        """
        Bodies around the threshold and far above it arrive intact over one
        kept-alive client connection and one backend connection; those whose
        rest is at least L{splicing.SPLICE_MIN} are spliced, shorter ones
        are not.
        """
        yield self.serve()
        client = yield self.connect()
        small = [1000, THRESHOLD - 1]
        for size in small:
            yield self.assertIntact(client, size)
        self.assertEqual(self.splices, [])
        sizes = [THRESHOLD, THRESHOLD + 1, 2 * THRESHOLD + 3, MiB + 7, 24 * MiB, 100]
        for size in sizes:
            yield self.assertIntact(client, size)
        self.assertGreaterEqual(len(self.splices), 2)
        self.assertEqual(self.backendSite.connections, 1)
        self.assertPipesClosed()
        client.transport.loseConnection()
        yield client.closed

    @inlineCallbacks
    def test_accessLogCounts(self):
        """
        The access log counts the spliced bytes as sent.
        """
        self.accessLog = os.path.abspath(self.mktemp())
        text = (
            "[manualb]\naccess_log = %s\n\n[upstream u]\nservers = SERVER\n\n"
            "[route default]\npath = /\nupstream = u\n" % (self.accessLog,)
        )
        yield self.serve(text)
        client = yield self.connect()
        yield self.assertIntact(client, 3 * MiB)
        self.assertEqual(len(self.splices), 1)
        client.transport.loseConnection()
        yield client.closed
        yield self.balancer.close()
        with open(self.accessLog) as log:
            line = log.read().splitlines()[-1]
        self.assertIn(" 200 %d " % (3 * MiB,), line)

    @inlineCallbacks
    def test_slowReader(self):
        """
        A client that does not read stops the backend being read: the pipe
        holds what the client does not take, not manualb, whose transport
        buffers stay empty.  Once it reads again, the rest comes intact, and
        the connections serve the next request.
        """
        total = 256 * MiB
        backend = yield self.serve()
        paused = self.whenPaused()
        client = yield self.connect()
        response = client.get(b"/%d" % (total,))
        yield client.firstData
        client.transport.pauseProducing()
        yield paused
        [splice] = self.splices
        self.assertTrue(splice.paused)
        yield backend.streams[0].paused
        self.assertLess(backend.streams[0].produced, total // 4)
        self.assertLessEqual(splice.piped, splice.capacity)
        proxied = self.proxyClient().transport
        self.assertEqual(len(proxied.dataBuffer) + proxied._tempDataLen, 0)
        client.transport.resumeProducing()
        head, length, sha = yield response
        self.assertEqual(length, total)
        self.assertEqual(sha, digest(total))
        yield self.assertIntact(client, 1000)
        self.assertEqual(self.backendSite.connections, 1)
        self.assertPipesClosed()
        client.transport.loseConnection()
        yield client.closed

    def whenPaused(self) -> Deferred:
        """
        Fires the first time a backend connection is paused while its
        body is spliced.
        """
        return whenBackendPaused(self, lambda connection: connection.splice is not None)

    @inlineCallbacks
    def test_clientGone(self):
        """
        A client that goes away mid-body takes the backend request with it,
        and the pipe is closed.
        """
        backend = yield self.serve()
        client = yield self.connect()
        response = client.get(b"/%d" % (256 * MiB,))
        yield client.firstData
        client.transport.abortConnection()
        yield self.assertFailure(response, Incomplete)
        yield backend.gone
        self.assertEqual(len(self.splices), 1)
        yield self.backendSite.allClosed()
        self.assertPipesClosed()

    @inlineCallbacks
    def test_backendShortBody(self):
        """
        A backend that closes before the whole body is sent gets the client
        connection closed, not left waiting for the rest.
        """
        yield self.serve()
        client = yield self.connect()
        failure = yield self.assertFailure(
            client.get(b"/short/%d/%d" % (4 * MiB, MiB)), Incomplete
        )
        self.assertLess(failure.received, 4 * MiB)
        self.assertEqual(len(self.splices), 1)
        yield client.closed
        self.assertPipesClosed()
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_readTimeout(self):
        """
        A backend that stalls mid-body times out (C{read_timeout}) and both
        connections close.
        """
        backend = yield self.serve(read_timeout="0.3s")
        client = yield self.connect()
        yield self.assertFailure(client.get(b"/stall/%d/%d" % (4 * MiB, MiB)), Incomplete)
        self.assertEqual(len(self.splices), 1)
        yield backend.gone
        self.assertPipesClosed()
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_sendTimeout(self):
        """
        A client that takes nothing for C{send_timeout} is dropped, and the
        backend request with it.
        """
        backend = yield self.serve(gatekeeper={"send_timeout": "0.3s"})
        client = yield self.connect()
        response = client.get(b"/%d" % (256 * MiB,))
        yield client.firstData
        client.transport.pauseProducing()
        yield backend.gone
        self.assertEqual(len(self.splices), 1)
        client.transport.resumeProducing()
        yield self.assertFailure(response, Incomplete)
        self.assertPipesClosed()

    @inlineCallbacks
    def test_noDescriptorLeft(self):
        """
        After spliced bodies, whole or broken off by either side, the
        process has the file descriptors it had before.
        """
        # Once the reactor runs, which makes descriptors of its own.
        yield deferLater(reactor, 0, lambda: None)
        before = sorted(openFiles())
        yield self.serve()
        client = yield self.connect()
        yield self.assertIntact(client, 2 * MiB)
        yield self.assertFailure(client.get(b"/short/%d/%d" % (4 * MiB, MiB)), Incomplete)
        yield client.closed
        client = yield self.connect()
        response = client.get(b"/%d" % (64 * MiB,))
        yield client.firstData
        client.transport.abortConnection()
        yield self.assertFailure(response, Incomplete)
        yield self.backend.gone
        self.assertEqual(len(self.splices), 3)
        yield self.balancer.close()
        yield self.backendSite.allClosed()
        yield self.backendPort.stopListening()
        yield self.frontPort.stopListening()
        self.assertEqual(sorted(openFiles()), before)
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_head(self):
        """
        A C{HEAD} has no body to splice.
        """
        yield self.serve()
        client = yield self.connect()
        head, length, sha = yield client.get(b"/%d" % (MiB,), method=b"HEAD")
        self.assertIn(b"Content-Length: %d" % (MiB,), head)
        yield self.assertIntact(client, MiB)
        self.assertEqual(len(self.splices), 1)
        client.transport.loseConnection()
        yield client.closed

    @inlineCallbacks
    def test_chunkedCopied(self):
        """
        A body of unknown length goes the copying way, intact.
        """
        yield self.serve()
        client = yield self.connect()
        client.transport.write(b"GET /chunked/%d HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % (MiB,))
        data = []
        client.dataReceived = data.append
        yield client.closed
        raw = b"".join(data)
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertIn(b"Transfer-Encoding: chunked", head)
        self.assertEqual(hashlib.sha256(dechunk(body)).hexdigest(), digest(MiB))
        self.assertEqual(self.splices, [])

    @inlineCallbacks
    def test_gzipCopied(self):
        """
        A body the proxy compresses goes the copying way.
        """
        text = (
            "[manualb]\naccess_log = off\n\n[upstream u]\nservers = SERVER\n\n"
            "[route default]\npath = /\nupstream = u\ngzip = on\ngzip_types = *\n"
        )
        yield self.serve(text)
        client = yield self.connect()
        client.transport.write(
            b"GET /%d HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n" % (MiB,)
        )
        data = []
        client.dataReceived = data.append
        yield client.closed
        head, _, body = b"".join(data).partition(b"\r\n\r\n")
        self.assertIn(b"Content-Encoding: gzip", head)
        self.assertEqual(hashlib.sha256(gzip.decompress(dechunk(body))).hexdigest(), digest(MiB))
        self.assertEqual(self.splices, [])

    @inlineCallbacks
    def test_backendTLSCopied(self):
        """
        A backend over TLS goes the copying way.
        """
        directory = self.mktemp()
        ca = makeCA("splice test CA")
        certificate, key = writeTLSFiles(directory, ca, ["localhost"])
        with open(certificate, "rb") as c, open(key, "rb") as k:
            options = PrivateCertificate.loadPEM(c.read() + k.read()).options()
        yield self.serve(backendTLS=options, tls_verify="off")
        client = yield self.connect()
        yield self.assertIntact(client, 2 * MiB)
        self.assertEqual(self.splices, [])
        client.transport.loseConnection()
        yield client.closed

    @inlineCallbacks
    def test_clientTLSCopied(self):
        """
        A client over TLS gets the body the copying way.
        """
        client = yield self.connectOverTLS(Client())
        yield self.assertIntact(client, 2 * MiB)
        self.assertEqual(self.splices, [])
        client.transport.loseConnection()
        yield client.closed

    @inlineCallbacks
    def test_unavailable(self):
        """
        Without C{os.splice}, bodies are copied.
        """
        self.patch(splicing, "enabled", False)
        yield self.serve()
        client = yield self.connect()
        yield self.assertIntact(client, 2 * MiB)
        self.assertEqual(self.splices, [])
        client.transport.loseConnection()
        yield client.closed


class TwistedFrontEndTests(TestCase):
    """
    The twisted.web front end copies big bodies.
    """

    @inlineCallbacks
    def test_copied(self):
        splices = []
        self.patch(splicing.Splice, "start", lambda splice: splices.append(splice))
        backend = Bodies()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(backend))
        self.addCleanup(port.stopListening)
        front = yield twistedFront(self, balancerConfig([serverAddress(port)]))
        client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", front), Client())
        head, length, sha = yield client.get(b"/%d" % (2 * MiB,))
        self.assertEqual((length, sha), (2 * MiB, digest(2 * MiB)))
        self.assertEqual(splices, [])
        client.transport.loseConnection()
        yield client.closed


def dechunk(body: bytes) -> bytes:
    """
    The data of a chunked body.
    """
    out = []
    while True:
        line, _, body = body.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if not size:
            return b"".join(out)
        out.append(body[:size])
        body = body[size + 2 :]
