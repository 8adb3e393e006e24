"""
manualb over real sockets on 127.0.0.1: real backends, real clients, the
reactor that runs the tests.
"""

import hashlib

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from manualb.handoff import UpstreamConnection
from manualb.service import LoadBalancer
from manualb.testing import NamedBackend, balancerConfig, listenBackend, serverAddress

MiB = 1024 * 1024
PIECE = bytes(range(256)) * 256  # 64 KiB


class CountingSite(Site):
    """
    A Site that counts the connections it accepted.
    """

    connections = 0

    def buildProtocol(self, addr):
        self.connections += 1
        return super().buildProtocol(addr)


def whenBackendPaused(case, which=lambda connection: True) -> Deferred:
    """
    Patch C{case} so that the returned Deferred fires the first time the
    proxy pauses (stops reading) a backend connection that C{which}
    accepts.
    """
    paused = Deferred()
    original = UpstreamConnection.pauseProducing

    def pauseProducing(connection):
        original(connection)
        if not paused.called and which(connection):
            paused.callback(None)

    case.patch(UpstreamConnection, "pauseProducing", pauseProducing)
    return paused


@implementer(IPushProducer)
class Stream:
    """
    Writes C{total} bytes of a known pattern to a request, honouring
    pauses; C{paused} fires the first time it is paused.
    """

    def __init__(self, request, total: int):
        self.request = request
        self.remaining = total
        self.produced = 0
        self.paused = Deferred()
        self._isPaused = False
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(lambda reason: None)
        reactor.callLater(0, self.resumeProducing)

    def pauseProducing(self):
        self._isPaused = True
        if not self.paused.called:
            self.paused.callback(self.produced)

    def resumeProducing(self):
        self._isPaused = False
        while not self._isPaused and self.remaining > 0:
            piece = PIECE[: min(len(PIECE), self.remaining)]
            self.remaining -= len(piece)
            self.produced += len(piece)
            self.request.write(piece)
        if self.remaining == 0 and self.request is not None:
            request, self.request = self.request, None
            request.unregisterProducer()
            self.written(request)

    def written(self, request):
        """
        All of the body is written to C{request}: the response ends.
        """
        request.finish()

    def stopProducing(self):
        self.remaining = 0
        self.request = None


class StreamingBackend(Resource):
    """
    Answers with C{total} bytes, written as fast as the connection takes them.
    """

    isLeaf = True

    def __init__(self, total: int):
        super().__init__()
        self.total = total
        self.streams: list[Stream] = []

    def render_GET(self, request):
        request.setHeader(b"Content-Length", b"%d" % (self.total,))
        self.streams.append(Stream(request, self.total))
        return NOT_DONE_YET


class DigestBackend(Resource):
    """
    Answers a request with the length and SHA-256 of its body.
    """

    isLeaf = True

    def render(self, request):
        body = request.content.read()
        return b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())


class DyingBackend(Resource):
    """
    Promises 1 MiB, sends a little, then closes the connection, as a
    process that dies does.
    """

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"Content-Length", b"%d" % (MiB,))
        request.write(b"x" * 1000)
        request.notifyFinish().addErrback(lambda reason: None)
        request.transport.loseConnection()
        return NOT_DONE_YET


class HangingBackend(Resource):
    """
    Never answers; C{received} fires with each request, C{gone} when its
    client goes away.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.received = Deferred()
        self.gone = Deferred()

    def render_GET(self, request):
        request.notifyFinish().addErrback(lambda reason: self.gone.callback(None))
        self.received.callback(request)
        return NOT_DONE_YET


@implementer(IBodyProducer)
class PatternBody:
    """
    A request body of C{total} bytes of a known pattern, of unknown length
    (so it goes chunked), written as fast as the connection allows.
    """

    length = UNKNOWN_LENGTH

    def __init__(self, total: int):
        self.remaining = total
        self.digest = hashlib.sha256()
        self._paused = False

    def startProducing(self, consumer):
        self.consumer = consumer
        self.done = Deferred()
        self.resumeProducing()
        return self.done

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        while not self._paused and self.remaining > 0:
            piece = PIECE[: min(len(PIECE), self.remaining)]
            self.remaining -= len(piece)
            self.digest.update(piece)
            self.consumer.write(piece)
        if self.remaining == 0 and not self.done.called:
            self.done.callback(None)

    def stopProducing(self):
        self.remaining = 0


class SlowReader(Protocol):
    """
    A raw HTTP client that sends one request and stops reading after the
    first bytes of the response, until told to resume.
    """

    def __init__(self, request: bytes):
        self.request = request
        self.received = 0
        self.data = []
        self.firstData = Deferred()
        self.closed = Deferred()

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        self.received += len(data)
        self.data.append(data)
        if not self.firstData.called:
            self.transport.pauseProducing()
            self.firstData.callback(None)

    def connectionLost(self, reason):
        self.closed.callback(None)


class EndToEndTests(TestCase):
    """
    A balancer on a real port in front of real backends.
    """

    @inlineCallbacks
    def startBackends(self, *resources, **options):
        sites = [CountingSite(resource) for resource in resources]
        ports = []
        for site in sites:
            port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
            self.addCleanup(port.stopListening)
            ports.append(port)
        yield self.startBalancer([serverAddress(port) for port in ports], **options)
        return sites

    @inlineCallbacks
    def startBalancer(self, servers, **options):
        self.balancer = LoadBalancer(balancerConfig(servers, **options), reactor)
        self.addCleanup(self.balancer.close)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            self.balancer.site
        )
        self.addCleanup(port.stopListening)
        self.url = b"http://127.0.0.1:%d" % (port.getHost().port,)
        self.port = port.getHost().port
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=pool)

    @inlineCallbacks
    def get(self, path=b"/"):
        response = yield self.agent.request(b"GET", self.url + path)
        body = yield readBody(response)
        return response, body

    @inlineCallbacks
    def test_roundRobin(self):
        """
        Requests alternate between the two backends, each over one kept-alive
        connection.
        """
        sites = yield self.startBackends(NamedBackend("Backend A"), NamedBackend("Backend B"))
        bodies = []
        for _ in range(6):
            response, body = yield self.get()
            bodies.append(body)
        self.assertEqual(bodies, [b"Backend A\n", b"Backend B\n"] * 3)
        self.assertEqual([site.connections for site in sites], [1, 1])

    @inlineCallbacks
    def test_forwardedHeaders(self):
        """
        The backend sees who the client is.
        """
        backend = NamedBackend("A")
        yield self.startBackends(backend)
        yield self.get()
        method, uri, headers = backend.requests[0]
        self.assertEqual(headers.getRawHeaders(b"x-forwarded-for"), [b"127.0.0.1"])
        self.assertEqual(headers.getRawHeaders(b"x-forwarded-proto"), [b"http"])
        self.assertEqual(
            headers.getRawHeaders(b"x-forwarded-host"), [b"127.0.0.1:%d" % (self.port,)]
        )
        self.assertEqual(headers.getRawHeaders(b"via"), [b"1.1 manualb"])

    @inlineCallbacks
    def test_largeUpload(self):
        """
        A large chunked upload arrives whole and intact.
        """
        yield self.startBackends(
            DigestBackend(), gatekeeper={"client_max_body_size": "0"}
        )
        body = PatternBody(24 * MiB)
        response = yield self.agent.request(b"PUT", self.url + b"/up", Headers(), body)
        answer = yield readBody(response)
        self.assertEqual(answer, b"%d %s" % (24 * MiB, body.digest.hexdigest().encode()))

    @inlineCallbacks
    def test_largeDownload(self):
        """
        A large response arrives whole and intact.
        """
        yield self.startBackends(StreamingBackend(24 * MiB))
        response, body = yield self.get()
        self.assertEqual(len(body), 24 * MiB)
        expected = hashlib.sha256(PIECE * (24 * MiB // len(PIECE))).hexdigest()
        self.assertEqual(hashlib.sha256(body).hexdigest(), expected)

    @inlineCallbacks
    def test_slowReaderPausesBackend(self):
        """
        A client that stops reading makes the proxy stop reading from the
        backend, long before the backend has written everything; when the
        client reads again, the whole response arrives.
        """
        total = 256 * MiB
        backend = StreamingBackend(total)
        yield self.startBackends(backend)
        proxyPaused = whenBackendPaused(self)
        client = SlowReader(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        yield client.firstData
        yield proxyPaused
        yield backend.streams[0].paused
        self.assertLess(backend.streams[0].produced, total // 4)
        client.transport.resumeProducing()
        yield client.closed
        data = b"".join(client.data)
        self.assertEqual(len(data.split(b"\r\n\r\n", 1)[1]), total)

    @inlineCallbacks
    def test_backendDiesMidResponse(self):
        """
        The client connection is aborted: the client knows the body is
        incomplete.
        """
        yield self.startBackends(DyingBackend())
        response = yield self.agent.request(b"GET", self.url + b"/")
        self.assertEqual(response.length, MiB)
        yield self.assertFailure(readBody(response), ResponseFailed)

    @inlineCallbacks
    def test_deadBackend(self):
        """
        A backend that is not there gets the client a 502.
        """
        deadPort = yield listenBackend(reactor, Resource())
        dead = serverAddress(deadPort)
        yield deadPort.stopListening()
        yield self.startBalancer([dead])
        response, body = yield self.get()
        self.assertEqual(response.code, 502)
        # The reason is in the log; the page shows the request id.
        self.assertNotIn(b"connection refused", body)
        self.assertIn(b"Request id: ", body)
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_clientGoneCancelsBackendRequest(self):
        """
        When the client disconnects, the backend sees its request go away.
        """
        backend = HangingBackend()
        yield self.startBackends(backend)
        client = SlowReader(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        yield backend.received
        client.transport.loseConnection()
        yield backend.gone
        yield client.closed
