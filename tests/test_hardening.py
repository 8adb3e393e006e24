"""
manualb attacked as a hostile client would attack it, over HTTP/1.1:
request splitting, smuggling through framing and headers, slow clients,
oversized heads and bodies, too many connections, and clients that leave
midway.
"""

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.interfaces import IPushProducer
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from manualb.configfile import parseConfig
from manualb.service import LoadBalancer
from manualb.testing import MemoryBalancer, balancerConfig, serverAddress

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def statusOf(data: bytes) -> int:
    """
    The status code of the first response in C{data}.
    """
    return int(data.split(b" ", 2)[1])


def requestLines(data: bytes) -> list[bytes]:
    """
    The request lines of the bodiless requests in C{data}, as a backend
    would read them.
    """
    return [head.split(b"\r\n", 1)[0] for head in data.split(b"\r\n\r\n") if head]


ROUTES = """\
[manualb]
listen = tcp:0
access_log = off

[upstream app]
servers = 10.0.0.1:80

[upstream admin]
servers = 10.0.0.2:80

[route admin]
path = /admin/
upstream = admin

[route api]
path = ^~ /api/
strip_prefix = on
upstream = app

[route old]
path = ~ ^/old/(.*)$
rewrite = ^/old/(.*)$ /new/$1
upstream = app

[route default]
path = /
upstream = app
"""


class RequestSplittingTests(SynchronousTestCase):
    """
    What the URL map decodes to route a request never reaches the backend's
    request line raw: the target sent on is the client's own encoding, or
    the rewritten path encoded again.
    """

    def setUp(self):
        self.lb = MemoryBalancer(parseConfig(ROUTES))

    def forwarded(self, target: bytes) -> bytes:
        """
        Send a GET for C{target}; return everything the backend received.
        """
        client = self.lb.client()
        client.send(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % (target,))
        self.assertEqual(self.lb.pendingConnections(), [("10.0.0.1", 80)])
        return self.lb.acceptConnection().received()

    def test_absoluteFormKeepsEncoding(self):
        """
        The reported attack: an absolute-form target whose path hides a
        second request behind C{%0d%0a} goes on as one request, still
        encoded, to the route its decoded path matches.
        """
        target = (
            b"http://x/a%20HTTP/1.1%0d%0aHost:%20x%0d%0a%0d%0aGET%20/admin/secret"
            b"%20HTTP/1.1%0d%0aX-Z:%20z"
        )
        sent = self.forwarded(target)
        self.assertEqual(
            requestLines(sent)[0],
            b"GET /a%20HTTP/1.1%0d%0aHost:%20x%0d%0a%0d%0aGET%20/admin/secret"
            b"%20HTTP/1.1%0d%0aX-Z:%20z HTTP/1.1",
        )
        self.assertEqual(sent.count(b"\r\n\r\n"), 1)
        self.assertNotIn(b"\r\nGET ", sent)

    def test_stripPrefixEncodesAgain(self):
        """
        C{strip_prefix} works on the decoded path; what goes on is that path
        encoded again.
        """
        sent = self.forwarded(b"/api/a%0d%0aX-Injected:%20y%00?q=%0d%0a")
        self.assertTrue(
            sent.startswith(b"GET /a%0D%0AX-Injected:%20y%00?q=%0d%0a HTTP/1.1\r\n"),
            sent,
        )
        self.assertNotIn(b"\r\nX-Injected", sent)

    def test_rewriteEncodesAgain(self):
        """
        So does C{rewrite}; a decoded C{?}, C{#} or C{%} stays part of the
        path.
        """
        sent = self.forwarded(b"/old/a%0d%3fb%23c%25d%20e")
        self.assertTrue(sent.startswith(b"GET /new/a%0D%3Fb%23c%25d%20e HTTP/1.1\r\n"), sent)

    def test_absoluteFormWithQueryOnly(self):
        """
        An absolute-form target with no path goes on as C{/} and its query.
        """
        sent = self.forwarded(b"http://x?q=1")
        self.assertTrue(sent.startswith(b"GET /?q=1 HTTP/1.1\r\n"), sent)


class RequestCheckTests(SynchronousTestCase):
    """
    Requests that HTTP/1.1 does not allow, or that would be read differently
    by the proxy and the backend, are refused before any backend is touched.
    """

    def setUp(self):
        self.lb = MemoryBalancer(balancerConfig(["10.0.0.1:80"]))

    def refused(self, request: bytes, status: int = 400) -> bytes:
        client = self.lb.client()
        client.send(request)
        answer = client.received()
        self.assertEqual(statusOf(answer), status, answer)
        self.assertIn(b"\r\nServer: manualb/", answer)
        self.assertEqual(self.lb.pendingConnections(), [])
        self.assertFalse(client.connected)
        return answer

    def test_lowerCaseMethod(self):
        """
        A lower-case method is refused, not taken for another method: so
        C{trace} cannot slip past the refusal of TRACE.
        """
        self.refused(b"trace / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.refused(b"get / HTTP/1.1\r\nHost: a\r\n\r\n")

    def test_methodNotToken(self):
        self.refused(b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.refused(b"GET\x00 / HTTP/1.1\r\nHost: a\r\n\r\n")

    def test_targetBytes(self):
        """
        Targets with controls, DEL, 8-bit bytes or a fragment are refused.
        """
        for target in (b"/a\x7fb", b"/\xc3\xa9", b"/a#b", b"/a\nX:y", b"a/b"):
            self.refused(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % (target,))

    def test_asteriskOnlyForOptions(self):
        self.refused(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n")

    def test_optionsAsterisk(self):
        """
        C{OPTIONS *} asks about the proxy itself: manualb answers it, and
        logs it.
        """
        client = self.lb.client()
        client.send(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
        answer = client.received()
        self.assertEqual(statusOf(answer), 200)
        self.assertIn(b"\r\nServer: manualb/", answer)
        self.assertIn(b"\r\nAllow: ", answer)
        self.assertIn(b"\r\nContent-Length: 0\r\n", answer)
        self.assertEqual(self.lb.pendingConnections(), [])
        self.assertTrue(client.connected)

    def test_missingHost(self):
        """
        An HTTP/1.1 request without C{Host} is refused (RFC 9112, 3.2); an
        HTTP/1.0 one goes on.
        """
        self.refused(b"GET / HTTP/1.1\r\n\r\n")
        client = self.lb.client()
        client.send(b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(len(self.lb.pendingConnections()), 1)

    def test_controlsInHeaders(self):
        """
        Controls and DEL in a header line are refused; obs-text is not.
        """
        for line in (b"X: a\x7fb", b"X: a\x01b", b"X: a\x0bb", b"X\x01: y", b"X Y: z"):
            self.refused(b"GET / HTTP/1.1\r\nHost: a\r\n%s\r\n\r\n" % (line,))
        client = self.lb.client()
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n\r\n")
        self.assertEqual(len(self.lb.pendingConnections()), 1)

    def test_refusalFramedAndFinal(self):
        """
        A refused head followed by a pipelined request in the same bytes:
        one whole answer (its length as its header says, then a close), and
        nothing reaches a backend, the second request included.
        """
        answer = self.refused(
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n"
            b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        head, body = answer.split(b"\r\n\r\n", 1)
        self.assertEqual(answer.count(b"HTTP/1.1 "), 1)
        self.assertIn(b"\r\nConnection: close", head)
        self.assertIn(b"\r\nContent-Length: %d" % (len(body),), head)
        self.assertNotIn(b"/admin", answer)

    def test_foldedHostRefused(self):
        """
        A continuation line folds into C{Host} with a space, which no host
        has.
        """
        self.refused(b"GET / HTTP/1.1\r\nHost: a\r\n X: y\r\n\r\n")

    def test_duplicateHost(self):
        self.refused(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")

    def test_badHost(self):
        self.refused(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
        self.refused(b"GET / HTTP/1.1\r\nHost: a,b\r\n\r\n")
        self.refused(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n")

    def test_hugeContentLength(self):
        """
        A C{Content-Length} beyond 2**63 - 1 cannot be trusted to mean the
        same to everyone.
        """
        self.refused(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (2**64 + 5,)
        )

    def test_smugglingFraming(self):
        """
        Both framings at once, repeated or bad lengths: 400.
        """
        for head in (
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            b"Content-Length: 5\r\nContent-Length: 5\r\n",
            b"Content-Length: -1\r\n",
            b"Content-Length: +5\r\n",
            b"Transfer-Encoding: gzip, chunked\r\n",
        ):
            self.refused(b"POST / HTTP/1.1\r\nHost: a\r\n" + head + b"\r\nhello")

    def test_refusalIsLogged(self):
        """
        A request refused after its head was read is in the access log.
        """
        self.refused(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        self.assertIn(b'"GET / HTTP/1.1" 400 ', self.lb.accessLog.getvalue())


class EarlyAnswerTests(SynchronousTestCase):
    """
    A request answered before its body has all arrived.
    """

    def setUp(self):
        self.lb = MemoryBalancer(balancerConfig(["10.0.0.1:80"]))

    def test_lingeringEnds(self):
        """
        The rest of the body is read and dropped for a while, then the
        connection closes, cleanly.
        """
        client = self.lb.client()
        client.send(b"TRACE / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        self.assertEqual(statusOf(client.received()), 405)
        self.assertTrue(client.connected)
        self.lb.reactor.advance(31)
        self.assertFalse(client.connected)

    def test_badBodyAfterAnswer(self):
        """
        A broken chunked body after the answer closes the connection without
        a second answer, which the client would take for another request's.
        """
        client = self.lb.client()
        client.send(b"TRACE / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        client.send(b"zz\r\n")
        answer = client.received()
        self.assertEqual(answer.count(b"HTTP/1.1 "), 1)
        self.assertEqual(statusOf(answer), 405)
        self.assertFalse(client.connected)


class HeaderTrustTests(SynchronousTestCase):
    """
    What a client says in its headers cannot remove what the proxy must
    send, nor pass for what the proxy sends.
    """

    def setUp(self):
        self.lb = MemoryBalancer(balancerConfig(["10.0.0.1:80"]))

    def forwarded(self, headers: bytes) -> bytes:
        client = self.lb.client()
        client.send(b"GET / HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n")
        return self.lb.acceptConnection().received()

    def test_connectionCannotDropHost(self):
        sent = self.forwarded(b"Connection: Host, X-Forwarded-For, Foo\r\nFoo: 1\r\n")
        self.assertIn(b"\r\nHost: h\r\n", sent)
        self.assertIn(b"\r\nX-Forwarded-For: 127.0.0.1\r\n", sent)
        self.assertNotIn(b"Foo: 1", sent)

    def test_underscoreAliasesDropped(self):
        """
        C{X_Forwarded_For} would be read as C{X-Forwarded-For} by a CGI or
        WSGI backend: it is dropped, as nginx drops it.  An ordinary name
        with C{_} goes on.
        """
        sent = self.forwarded(
            b"X_Forwarded_For: 6.6.6.6\r\nX_forwarded_host: evil\r\nX_Custom: 1\r\n"
            b"Transfer_Encoding: chunked\r\n"
        )
        self.assertNotIn(b"6.6.6.6", sent)
        self.assertNotIn(b"evil", sent)
        self.assertNotIn(b"Transfer_Encoding", sent)
        self.assertIn(b"\r\nX_custom: 1\r\n", sent.replace(b"X_Custom", b"X_custom"))

    def test_connectionCloseAmongTokens(self):
        """
        C{Connection: close, foo} closes the connection after the answer.
        """
        client = self.lb.client()
        client.send(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close, foo\r\n\r\n")
        backend = self.lb.acceptConnection()
        backend.send(OK)
        self.assertEqual(statusOf(client.received()), 200)
        self.assertFalse(client.connected)


class HeadLimitTests(SynchronousTestCase):
    """
    A request line or header block beyond its limit is answered with its
    own status, not closed in silence.
    """

    def setUp(self):
        self.lb = MemoryBalancer(
            balancerConfig(
                ["10.0.0.1:80"],
                gatekeeper={
                    "max_request_line": "100",
                    "max_header_size": "200",
                    "max_headers": "5",
                },
            )
        )

    def answer(self, data: bytes) -> bytes:
        client = self.lb.client()
        client.send(data)
        answer = client.received()
        self.assertFalse(client.connected)
        self.assertEqual(self.lb.pendingConnections(), [])
        return answer

    def test_requestLineTooLong(self):
        answer = self.answer(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(statusOf(answer), 414)

    def test_refusalsLogged(self):
        """
        A request refused before it was read whole is in the access log,
        with its request line when that was read.
        """
        self.answer(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n")
        self.answer(b"GET /b HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 5 + b"\r\n")
        self.answer(b"GET /c HTTP/1.0\r\nHost: a\r\nX-A: " + b"b" * 300)
        output = self.lb.accessLog.getvalue().splitlines(True)
        self.assertRegex(output[0], rb'^127\.0\.0\.1 - - \[[^]]+\] "-" 414 \d+ "-" "-" - -\n$')
        self.assertIn(b'"GET /b HTTP/1.1" 431 ', output[1])
        self.assertIn(b'"GET /c HTTP/1.0" 431 ', output[2])

    def test_requestLineWithoutEnd(self):
        """
        A request line that never ends is refused once it passes the limit.
        """
        answer = self.answer(b"GET /" + b"a" * 300)
        self.assertEqual(statusOf(answer), 414)

    def test_headerBlockTooLarge(self):
        answer = self.answer(
            b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: %s\r\n" % (b"b" * 100,) * 2 + b"\r\n"
        )
        self.assertEqual(statusOf(answer), 431)

    def test_headerLineWithoutEnd(self):
        answer = self.answer(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: " + b"b" * 300)
        self.assertEqual(statusOf(answer), 431)

    def test_tooManyHeaders(self):
        answer = self.answer(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 5 + b"\r\n")
        self.assertEqual(statusOf(answer), 431)

    def test_withinLimits(self):
        client = self.lb.client()
        client.send(b"GET /" + b"a" * 80 + b" HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 4 + b"\r\n")
        self.assertEqual(len(self.lb.pendingConnections()), 1)


class BodyLimitTests(SynchronousTestCase):
    """
    C{client_max_body_size}: a declared length beyond it is refused before
    any of the body is read; a chunked body is cut off when it passes it.
    """

    def setUp(self):
        self.lb = MemoryBalancer(
            balancerConfig(["10.0.0.1:80"], gatekeeper={"client_max_body_size": "1k"})
        )

    def test_declaredTooLarge(self):
        client = self.lb.client()
        client.send(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1025\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        answer = client.received()
        self.assertEqual(statusOf(answer), 413)
        self.assertNotIn(b"100 Continue", answer)
        self.assertEqual(self.lb.pendingConnections(), [])

    def test_declaredWithinLimit(self):
        client = self.lb.client()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1024\r\n\r\n")
        self.assertEqual(len(self.lb.pendingConnections()), 1)

    def test_chunkedTooLarge(self):
        """
        The backend connection carrying the body is dropped, and the client
        gets 413 when no answer had started.
        """
        client = self.lb.client()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        backend = self.lb.acceptConnection()
        client.send(b"400\r\n" + b"x" * 1024 + b"\r\n")
        self.assertTrue(backend.connected)
        client.send(b"1\r\nx\r\n")
        self.assertFalse(backend.connected)
        self.assertEqual(statusOf(client.received()), 413)

    def test_chunkedTooLargeWhileConnecting(self):
        """
        A body that passes the limit before the backend connection is made:
        the connecting is given up, and the client gets one answer, 413.
        """
        client = self.lb.client()
        client.send(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"401\r\n" + b"x" * 1025 + b"\r\n"
        )
        self.assertEqual(self.lb.pendingConnections(), [])
        answer = client.received()
        self.assertEqual(statusOf(answer), 413)
        self.assertEqual(answer.count(b"HTTP/1.1 "), 1)

    def test_chunkedTooLargeAfterAnswerStarted(self):
        """
        Once the answer has started, the client's connection is cut.
        """
        client = self.lb.client()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        backend = self.lb.acceptConnection()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        client.send(b"801\r\n" + b"x" * 2049 + b"\r\n")
        self.assertFalse(backend.connected)
        self.assertFalse(client.connected)


class SlowClientTests(SynchronousTestCase):
    """
    The gatekeeper's timeouts, on a clock that moves only when told.
    """

    def setUp(self):
        self.lb = MemoryBalancer(
            balancerConfig(
                ["10.0.0.1:80"],
                gatekeeper={
                    "client_header_timeout": "10s",
                    "client_body_timeout": "10s",
                    "keepalive_timeout": "20s",
                    "send_timeout": "30s",
                },
            )
        )

    def test_tricklingHeadClosed(self):
        """
        A head that trickles in a byte every three seconds is closed once
        C{client_header_timeout} has passed since its first byte, with 408.
        """
        client = self.lb.client()
        for byte in b"GET / HTTP/1.1\r\nHost: a\r\n":
            if not client.connected:
                break
            client.send(bytes([byte]))
            self.lb.reactor.advance(3)
        self.assertFalse(client.connected)
        self.assertEqual(statusOf(client.received()), 408)
        self.assertLessEqual(self.lb.reactor.seconds(), 12)

    def test_silentConnectionClosed(self):
        """
        A connection that sends nothing is closed after
        C{client_header_timeout}.
        """
        client = self.lb.client()
        self.lb.reactor.advance(9)
        self.assertTrue(client.connected)
        self.lb.reactor.advance(1)
        self.assertFalse(client.connected)

    def test_keepaliveThenHeadTimeout(self):
        """
        Between requests the connection may idle for C{keepalive_timeout};
        a next head is timed from its first byte.
        """
        client = self.lb.client()
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        backend = self.lb.acceptConnection()
        backend.send(OK)
        self.assertEqual(statusOf(client.received()), 200)
        self.lb.reactor.advance(19)
        self.assertTrue(client.connected)
        client.send(b"G")
        self.lb.reactor.advance(9)
        self.assertTrue(client.connected)
        self.lb.reactor.advance(1)
        self.assertFalse(client.connected)

    def test_idleKeepaliveClosed(self):
        client = self.lb.client()
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.lb.acceptConnection().send(OK)
        self.lb.reactor.advance(20)
        self.assertFalse(client.connected)

    def test_bodyTimeoutBetweenReads(self):
        """
        A body may take as long as it likes as long as no pause between two
        reads passes C{client_body_timeout}; then the client and its backend
        connection are closed.
        """
        client = self.lb.client()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
        backend = self.lb.acceptConnection()
        for _ in range(5):
            client.send(b"x")
            self.lb.reactor.advance(9)
        self.assertTrue(client.connected)
        self.lb.reactor.advance(1)
        self.assertFalse(client.connected)
        self.assertFalse(backend.connected)

    def test_waitingForBackendNotTimed(self):
        """
        While the backend works on the request, the client's timeouts do not
        run (the backend's read_timeout does).
        """
        client = self.lb.client()
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        backend = self.lb.acceptConnection()
        self.lb.reactor.advance(50)
        self.assertTrue(client.connected)
        backend.send(OK)
        self.assertEqual(statusOf(client.received()), 200)

    def test_clientThatNeverReads(self):
        """
        A client that takes none of a response for C{send_timeout} is
        dropped, and with it the backend connection it pinned.
        """
        client = self.lb.client()
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        backend = self.lb.acceptConnection()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        client.transport.producer.pauseProducing()
        self.lb.reactor.advance(29)
        self.assertTrue(backend.connected)
        self.lb.reactor.advance(1)
        self.assertFalse(backend.connected)
        self.assertFalse(client.transport.connected)

    def test_clientThatCatchesUp(self):
        """
        A client that reads again in time keeps its connection.
        """
        client = self.lb.client()
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        backend = self.lb.acceptConnection()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        client.transport.producer.pauseProducing()
        self.lb.reactor.advance(29)
        client.transport.producer.resumeProducing()
        self.lb.reactor.advance(29)
        backend.send(b"cd")
        self.assertTrue(client.received().endswith(b"abcd"))

    def test_clientTimeoutIsTheDefault(self):
        """
        C{[manualb] client_timeout} still sets the head, body and keep-alive
        timeouts when the gatekeeper does not.
        """
        config = parseConfig(
            "[manualb]\nlisten = tcp:0\naccess_log = off\nclient_timeout = 5s\n"
            "[upstream u]\nservers = 10.0.0.1:80\n[route r]\npath = /\nupstream = u\n"
        )
        gatekeeper = config.gatekeeper
        self.assertEqual(
            (
                gatekeeper.client_header_timeout,
                gatekeeper.client_body_timeout,
                gatekeeper.keepalive_timeout,
                gatekeeper.send_timeout,
            ),
            (5.0, 5.0, 5.0, 60.0),
        )


class ConnectionCapTests(SynchronousTestCase):
    def test_beyondMaxConnections(self):
        """
        A connection beyond C{max_connections} gets 503 and is closed; once
        one closes, the next is served.
        """
        lb = MemoryBalancer(balancerConfig(["10.0.0.1:80"], gatekeeper={"max_connections": "2"}))
        first, second = lb.client(port=1), lb.client(port=2)
        third = lb.client(port=3)
        answer = third.received()
        self.assertEqual(statusOf(answer), 503)
        head, body = answer.split(b"\r\n\r\n", 1)
        self.assertIn(b"\r\nContent-Length: %d" % (len(body),), head)
        self.assertFalse(third.connected)
        self.assertTrue(first.connected and second.connected)
        first.reset()
        fourth = lb.client(port=4)
        self.assertTrue(fourth.connected)
        self.assertEqual(fourth.received(), b"")


class _Counting(Protocol):
    """
    A backend that reads and never answers; C{factory.lost} fires when a
    connection to it closes.
    """

    def connectionMade(self):
        self.factory.open += 1
        self.factory.received.callback(self)

    def connectionLost(self, reason=None):
        self.factory.open -= 1
        self.factory.lost.callback(None)


class _Client(Protocol):
    def __init__(self, data: bytes):
        self.data = data
        self.closed = Deferred()

    def connectionMade(self):
        self.transport.write(self.data)

    def connectionLost(self, reason=None):
        self.closed.callback(None)


class LeakTests(TestCase):
    """
    Over real sockets: a client that leaves mid-body leaves no backend
    socket behind.
    """

    timeout = 20

    @inlineCallbacks
    def setUp(self):
        self.backends = Factory.forProtocol(_Counting)
        self.backends.open = 0
        self.backends.received = Deferred()
        self.backends.lost = Deferred()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.backends)
        self.addCleanup(port.stopListening)
        self.balancer = LoadBalancer(
            balancerConfig([serverAddress(port)], gatekeeper={"client_body_timeout": "1s"}),
            reactor,
        )
        self.addCleanup(self.balancer.close)
        listening = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            self.balancer.site
        )
        self.addCleanup(listening.stopListening)
        self.endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", listening.getHost().port)

    @inlineCallbacks
    def test_clientLeavesMidBody(self):
        client = yield connectProtocol(
            self.endpoint,
            _Client(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nhello"),
        )
        yield self.backends.received
        client.transport.loseConnection()
        yield self.backends.lost
        self.assertEqual(self.backends.open, 0)

    @inlineCallbacks
    def test_clientStallsMidBody(self):
        """
        The body timeout's path releases the backend connection too.
        """
        client = yield connectProtocol(
            self.endpoint,
            _Client(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nhello"),
        )
        yield self.backends.received
        yield client.closed
        yield self.backends.lost
        self.assertEqual(self.backends.open, 0)


class _EndlessBody(Resource):
    """
    Answers with an endless body, written as fast as the connection takes
    it; C{gone} fires when the proxy drops the connection.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.gone = Deferred()

    def render_GET(self, request):
        request.notifyFinish().addErrback(lambda reason: self.gone.callback(None))
        request.registerProducer(_Writer(request), True)
        return NOT_DONE_YET


@implementer(IPushProducer)
class _Writer:
    def __init__(self, request):
        self.request = request
        self.paused = False
        reactor.callLater(0, self.resumeProducing)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.request is not None:
            self.request.write(b"x" * 65536)

    def stopProducing(self):
        self.request = None


class SendTimeoutEndToEndTests(TestCase):
    """
    Over real sockets: a client that never reads a large response does not
    pin its backend connection.
    """

    timeout = 30

    @inlineCallbacks
    def test_clientNeverReads(self):
        backend = _EndlessBody()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(backend)
        )
        self.addCleanup(port.stopListening)
        balancer = LoadBalancer(
            balancerConfig([serverAddress(port)], gatekeeper={"send_timeout": "1s"}),
            reactor,
        )
        self.addCleanup(balancer.close)
        listening = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            balancer.site
        )
        self.addCleanup(listening.stopListening)
        client = _Client(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        client.dataReceived = lambda data: client.transport.pauseProducing()
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", listening.getHost().port), client
        )
        # The client reads nothing more, so it cannot see its connection go.
        self.addCleanup(client.transport.abortConnection)
        yield backend.gone
        self.assertEqual(balancer.connections.open, 0)

