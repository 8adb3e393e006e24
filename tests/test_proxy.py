"""
The proxy driven in memory: clients and backends are in-memory peers and the
clock moves only when a test says so.
"""

from twisted.trial.unittest import SynchronousTestCase

from manualb.configfile import parseConfig
from manualb.testing import MemoryBalancer, balancerConfig

GET = b"GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def headOf(data: bytes) -> tuple[bytes, dict[bytes, list[bytes]]]:
    """
    Split a message head into its first line and its headers, names
    lower-cased, every value kept.
    """
    head = data.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, value = line.split(b":", 1)
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], headers


def bodyOf(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[1]


class ProxyTests(SynchronousTestCase):
    def setUp(self):
        self.lb = MemoryBalancer(
            balancerConfig(["10.0.0.1:8001", "10.0.0.2:8002"], keepalive_timeout="30s")
        )

    def exchange(self, client, request=GET, response=OK):
        """
        Send C{request}, let the balancer reach a backend (a new connection
        when one is pending) and answer with C{response}.
        """
        client.send(request)
        backend = None
        if self.lb.pendingConnections():
            backend = self.lb.acceptConnection()
        return backend

    def test_roundRobinOverPooledConnections(self):
        """
        Requests alternate between the servers, and a server's kept-alive
        connection carries its next request: no new connection is made.
        """
        client = self.lb.client()
        client.send(GET)
        self.assertEqual(self.lb.pendingConnections(), [("10.0.0.1", 8001)])
        a = self.lb.acceptConnection()
        self.assertTrue(a.received().startswith(b"GET /path?q=1 HTTP/1.1\r\n"))
        a.send(OK)
        self.assertTrue(client.received().endswith(b"hello"))

        client.send(GET)
        self.assertEqual(self.lb.pendingConnections(), [("10.0.0.2", 8002)])
        b = self.lb.acceptConnection()
        b.send(OK)
        client.received()

        client.send(GET)
        self.assertEqual(self.lb.pendingConnections(), [])
        self.assertTrue(a.received().startswith(b"GET /path"))
        a.send(OK)
        self.assertTrue(client.received().endswith(b"hello"))
        self.assertTrue(a.connected)

    def test_forwardedHeaders(self):
        """
        The backend learns the client's address, scheme and host, the proxy
        names itself in Via, and Host passes through.
        """
        client = self.lb.client(host="192.0.2.7")
        client.send(
            b"GET / HTTP/1.1\r\nHost: shop.example\r\n"
            b"X-Forwarded-For: 203.0.113.9\r\nVia: 1.1 edge\r\n\r\n"
        )
        backend = self.lb.acceptConnection()
        line, headers = headOf(backend.received())
        self.assertEqual(line, b"GET / HTTP/1.1")
        self.assertEqual(headers[b"host"], [b"shop.example"])
        self.assertEqual(headers[b"x-forwarded-for"], [b"203.0.113.9, 192.0.2.7"])
        self.assertEqual(headers[b"x-forwarded-proto"], [b"http"])
        self.assertEqual(headers[b"x-forwarded-host"], [b"shop.example"])
        self.assertEqual(headers[b"via"], [b"1.1 edge, 1.1 manualb"])

    def test_http10ClientWithoutHost(self):
        """
        An HTTP/1.0 request without Host still reaches the backend as a valid
        HTTP/1.1 request, naming the server as its host.
        """
        client = self.lb.client()
        client.send(b"GET / HTTP/1.0\r\n\r\n")
        backend = self.lb.acceptConnection()
        line, headers = headOf(backend.received())
        self.assertEqual(line, b"GET / HTTP/1.1")
        self.assertEqual(headers[b"host"], [b"10.0.0.1:8001"])
        self.assertEqual(headers[b"via"], [b"1.0 manualb"])
        backend.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        response = client.received()
        self.assertTrue(response.startswith(b"HTTP/1.0 200 OK"))
        self.assertTrue(response.endswith(b"\r\n\r\nabc"))
        self.assertFalse(client.connected)

    def test_hopByHopHeadersRemovedBothWays(self):
        """
        Connection, the headers it names, and the other hop-by-hop headers
        go no further than the proxy, in either direction.
        """
        client = self.lb.client()
        client.send(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\n"
            b"X-Secret: 1\r\nKeep-Alive: 300\r\nTE: trailers\r\nUpgrade: foo\r\n"
            b"Proxy-Connection: keep-alive\r\nTrailer: X\r\nX-Kept: yes\r\n\r\n"
        )
        backend = self.lb.acceptConnection()
        line, headers = headOf(backend.received())
        for name in [b"connection", b"x-secret", b"keep-alive", b"te", b"upgrade",
                     b"proxy-connection", b"trailer", b"transfer-encoding"]:
            self.assertNotIn(name, headers)
        self.assertEqual(headers[b"x-kept"], [b"yes"])
        backend.send(
            b"HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: 1\r\n"
            b"Keep-Alive: timeout=5\r\nUpgrade: h2c\r\nX-Public: 2\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        line, headers = headOf(client.received())
        self.assertEqual(line, b"HTTP/1.1 200 OK")
        for name in [b"x-internal", b"keep-alive", b"upgrade"]:
            self.assertNotIn(name, headers)
        self.assertEqual(headers[b"x-public"], [b"2"])

    def test_repeatedHeadersKeepEveryValue(self):
        """
        Set-Cookie and other repeated headers reach the client with every
        value, in order; so do repeated request headers.
        """
        client = self.lb.client()
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Tag: one\r\nX-Tag: two\r\n\r\n")
        backend = self.lb.acceptConnection()
        line, headers = headOf(backend.received())
        self.assertEqual(headers[b"x-tag"], [b"one", b"two"])
        backend.send(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Path=/\r\nSet-Cookie: b=2\r\n"
            b"Set-Cookie: c=3, d=4\r\nContent-Length: 0\r\n\r\n"
        )
        line, headers = headOf(client.received())
        self.assertEqual(headers[b"set-cookie"], [b"a=1; Path=/", b"b=2", b"c=3, d=4"])

    def test_proxyAnswersWithItsOwnServerAndDate(self):
        """
        As nginx does, the backend's Server and Date are replaced.
        """
        client = self.lb.client()
        client.send(GET)
        backend = self.lb.acceptConnection()
        backend.send(
            b"HTTP/1.1 200 OK\r\nServer: secret/1.0\r\nDate: yesterday\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        line, headers = headOf(client.received())
        self.assertEqual(len(headers[b"server"]), 1)
        self.assertTrue(headers[b"server"][0].startswith(b"manualb/"))
        self.assertNotEqual(headers[b"date"], [b"yesterday"])

    def test_noRoute(self):
        """
        A path that no route covers gets 404.
        """
        lb = MemoryBalancer(
            parseConfig(
                "[manualb]\nlisten = tcp:0\naccess_log = off\n"
                "[upstream api]\nservers = 10.0.0.1:8001\n"
                "[route api]\npath = /api\nupstream = api\n"
            )
        )
        client = lb.client()
        client.send(GET)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 404 Not Found"))
        self.assertEqual(lb.pendingConnections(), [])

    def test_pathNormalizedForRouting(self):
        """
        Routes match the normalised path (so C{..} cannot walk out of a
        route), the backend gets the client's target; a path above the root
        gets 400; an absolute URI goes on in origin form.
        """
        lb = MemoryBalancer(
            parseConfig(
                "[manualb]\nlisten = tcp:0\naccess_log = off\n"
                "[upstream static]\nservers = 10.0.0.1:8001\n"
                "[upstream admin]\nservers = 10.0.0.2:8002\n"
                "[route static]\npath = ^~ /static/\nupstream = static\n"
                "[route admin]\npath = /admin\nupstream = admin\n"
            )
        )
        client = lb.client()
        client.send(b"GET /static/%2e%2e/admin?x HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(lb.pendingConnections(), [("10.0.0.2", 8002)])
        backend = lb.acceptConnection()
        self.assertTrue(backend.received().startswith(b"GET /static/%2e%2e/admin?x HTTP/1.1"))
        backend.send(OK)
        client.received()
        client.send(b"GET /../etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(client.received().startswith(b"HTTP/1.1 400 Bad Request"))
        client.send(b"GET http://a/admin/x?q HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(backend.received().startswith(b"GET /admin/x?q HTTP/1.1\r\n"))

    def test_connectAndTraceRefused(self):
        """
        CONNECT and TRACE get 405 without reaching a backend, as with nginx.
        """
        for method in [b"CONNECT", b"TRACE"]:
            client = self.lb.client()
            client.send(method + b" / HTTP/1.1\r\nHost: a\r\n\r\n")
            self.assertTrue(client.received().startswith(b"HTTP/1.1 405 Method Not Allowed"))
        self.assertEqual(self.lb.pendingConnections(), [])

    def test_backendRefuses(self):
        """
        A backend that refuses the connection gets the client a 502, and the
        access log names the server.
        """
        self.lb = MemoryBalancer(balancerConfig(["10.0.0.1:8001"]))
        client = self.lb.client()
        client.send(GET)
        self.lb.refuseConnection()
        response = client.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 502 Bad Gateway"), response)
        # The reason is in the log; the page shows the request id.
        self.assertNotIn(b"connection refused", response)
        self.assertIn(b"Request id: ", response)
        self.assertIn(b'"GET /path?q=1 HTTP/1.1" 502 ', self.lb.accessLog.getvalue())
        self.assertIn(b" 10.0.0.1:8001 ", self.lb.accessLog.getvalue())
        self.assertTrue(client.connected)
        self.flushLoggedErrors()

    def test_connectTimeout(self):
        """
        A backend that does not accept within connect_timeout gets the
        client a 504.
        """
        self.lb = MemoryBalancer(balancerConfig(["10.0.0.1:8001"]))
        client = self.lb.client()
        client.send(GET)
        self.lb.reactor.advance(4.9)
        self.assertEqual(client.received(), b"")
        self.lb.reactor.advance(0.2)
        response = client.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 504 Gateway Timeout"), response)
        # The reason is in the log; the page shows the request id.
        self.assertNotIn(b"timed out after 5s", response)
        self.assertIn(b"Request id: ", response)

    def test_readTimeout(self):
        """
        A backend that accepts but does not answer within read_timeout gets
        the client a 504, and its connection is dropped.
        """
        self.lb = MemoryBalancer(balancerConfig(["10.0.0.1:8001"]))
        client = self.lb.client()
        client.send(GET)
        backend = self.lb.acceptConnection()
        self.lb.reactor.advance(59)
        self.assertEqual(client.received(), b"")
        self.lb.reactor.advance(2)
        response = client.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 504 Gateway Timeout"), response)
        self.assertFalse(backend.connected)

    def test_readTimeoutBetweenReads(self):
        """
        read_timeout bounds the silence between two reads, not the whole
        response: a slow but steady backend is not cut off.
        """
        client = self.lb.client()
        client.send(GET)
        backend = self.lb.acceptConnection()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")
        for piece in [b"a", b"b", b"c"]:
            self.lb.reactor.advance(50)
            backend.send(piece)
        self.assertTrue(client.received().endswith(b"\r\n\r\nabc"))
        self.assertTrue(client.connected)

    def test_backendDiesMidResponse(self):
        """
        A response broken midway aborts the client connection: the client
        never gets a short body passed off as complete.
        """
        client = self.lb.client()
        client.send(GET)
        backend = self.lb.acceptConnection()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        self.assertTrue(client.received().endswith(b"partial"))
        backend.reset()
        self.assertFalse(client.connected)
        self.assertIn(b'"GET /path?q=1 HTTP/1.1" 200 7 ', self.lb.accessLog.getvalue())

    def test_unframedResponseBrokenIsReset(self):
        """
        To an HTTP/1.0 client, whose body ends with the connection, a broken
        response ends with a reset, never a clean close.
        """
        client = self.lb.client()
        client.send(b"GET / HTTP/1.0\r\n\r\n")
        backend = self.lb.acceptConnection()
        backend.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        self.assertFalse(client.transport.disconnected)
        backend.reset()
        self.assertTrue(client.transport.disconnected)

    def test_backendClosesChunkedResponseEarly(self):
        """
        A chunked response whose connection closes cleanly before the last
        chunk is broken too: the client connection is aborted, and the
        final empty chunk is never sent.
        """
        client = self.lb.client()
        client.send(GET)
        backend = self.lb.acceptConnection()
        backend.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        backend.close()
        self.assertFalse(client.connected)
        self.assertFalse(client.transport.disconnected, "framed: flushed, then closed")
        self.assertNotIn(b"0\r\n\r\n", client.received())

    def test_closeDelimitedResponse(self):
        """
        A response without length ends when the backend closes, and reaches
        an HTTP/1.1 client chunked, complete.
        """
        client = self.lb.client()
        client.send(GET)
        backend = self.lb.acceptConnection()
        backend.send(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
        backend.close()
        response = client.received()
        self.assertIn(b"Transfer-Encoding: chunked", response)
        self.assertTrue(response.endswith(b"d\r\nuntil the end\r\n0\r\n\r\n"), response)
        self.assertTrue(client.connected)

    def test_clientGoneCancelsBackendRequest(self):
        """
        A client that disconnects takes its backend exchange with it.
        """
        client = self.lb.client()
        client.send(GET)
        backend = self.lb.acceptConnection()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")
        client.reset()
        self.assertFalse(backend.connected)
        self.assertIn(b" 499 ", self.lb.accessLog.getvalue())

    def test_clientGoneWhileConnecting(self):
        """
        A client that leaves before the backend connection is made cancels
        the connection attempt.
        """
        client = self.lb.client()
        client.send(GET)
        connector = self.lb.reactor.connectors[-1]
        client.reset()
        self.assertTrue(connector.stoppedConnecting)

    def test_headAndNoBodyStatuses(self):
        """
        Responses to HEAD and 204/304 responses have no body, whatever their
        headers say, and the connection stays reusable.
        """
        client = self.lb.client()
        client.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
        a = self.lb.acceptConnection()
        a.received()
        a.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        line, headers = headOf(client.received())
        self.assertEqual(headers[b"content-length"], [b"1234"])
        client.send(GET)
        b = self.lb.acceptConnection()
        b.send(b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n")
        self.assertTrue(client.received().startswith(b"HTTP/1.1 304 Not Modified"))
        client.send(GET)
        self.assertEqual(self.lb.pendingConnections(), [])
        self.assertTrue(a.received().startswith(b"GET "))

    def test_interimResponsesSkipped(self):
        """
        1xx interim responses from the backend are not passed on.
        """
        client = self.lb.client()
        client.send(GET)
        backend = self.lb.acceptConnection()
        backend.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + OK)
        response = client.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK"), response)
        self.assertTrue(response.endswith(b"hello"))

    def test_badResponse(self):
        """
        A backend that does not speak HTTP gets the client a 502.
        """
        self.lb = MemoryBalancer(balancerConfig(["10.0.0.1:8001"]))
        client = self.lb.client()
        client.send(GET)
        backend = self.lb.acceptConnection()
        backend.send(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502 Bad Gateway"))
        self.assertFalse(backend.connected)

    def test_staleKeptAliveConnectionRetried(self):
        """
        When a kept-alive connection turns out closed as it is reused, an
        idempotent request goes again on a fresh connection.
        """
        lb = MemoryBalancer(balancerConfig(["10.0.0.1:8001"]))
        client = lb.client()
        client.send(GET)
        first = lb.acceptConnection()
        first.send(OK)
        client.received()
        client.send(GET)
        self.assertEqual(lb.pendingConnections(), [])
        first.close()
        self.assertEqual(lb.pendingConnections(), [("10.0.0.1", 8001)])
        second = lb.acceptConnection()
        self.assertTrue(second.received().startswith(b"GET /path"))
        second.send(OK)
        self.assertTrue(client.received().endswith(b"hello"))

    def test_backendConnectionCloseNotReused(self):
        """
        A backend that says Connection: close gets a new connection next time.
        """
        lb = MemoryBalancer(balancerConfig(["10.0.0.1:8001"]))
        client = lb.client()
        client.send(GET)
        first = lb.acceptConnection()
        first.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        self.assertFalse(first.connected)
        client.send(GET)
        self.assertEqual(lb.pendingConnections(), [("10.0.0.1", 8001)])

    def test_keepaliveRequestsLimit(self):
        """
        A backend connection is closed after keepalive_requests exchanges.
        """
        lb = MemoryBalancer(balancerConfig(["10.0.0.1:8001"], keepalive_requests="2"))
        client = lb.client()
        client.send(GET)
        backend = lb.acceptConnection()
        backend.send(OK)
        client.send(GET)
        self.assertEqual(lb.pendingConnections(), [])
        backend.send(OK)
        self.assertFalse(backend.connected)

    def test_idleConnectionsExpire(self):
        """
        An idle backend connection is closed after keepalive_timeout, and
        no more than keepalive idle connections are kept.
        """
        lb = MemoryBalancer(balancerConfig(["10.0.0.1:8001"], keepalive_timeout="10s", keepalive="1"))
        first, second = lb.client(port=1), lb.client(port=2)
        first.send(GET)
        second.send(GET)
        a, b = lb.acceptConnection(), lb.acceptConnection()
        a.send(OK)
        b.send(OK)
        self.assertTrue(a.connected)
        self.assertFalse(b.connected)
        lb.reactor.advance(10)
        self.assertFalse(a.connected)

    def test_streamingUpload(self):
        """
        The request body goes to the backend as it arrives, before the client
        has sent all of it, and the backend's flow control pauses the client.
        """
        client = self.lb.client()
        client.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nfirst")
        backend = self.lb.acceptConnection()
        sent = backend.received()
        self.assertTrue(sent.endswith(b"Content-Length: 10\r\n\r\nfirst"), sent)
        backend.transport.producer.pauseProducing()
        self.assertEqual(client.transport.producerState, "paused")
        backend.transport.producer.resumeProducing()
        self.assertEqual(client.transport.producerState, "producing")
        client.send(b"-last")
        self.assertEqual(backend.received(), b"-last")
        backend.send(OK)
        self.assertTrue(client.received().endswith(b"hello"))

    def test_chunkedUpload(self):
        """
        A chunked request body is streamed on chunked.
        """
        client = self.lb.client()
        client.send(b"PUT /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n")
        backend = self.lb.acceptConnection()
        sent = backend.received()
        self.assertIn(b"Transfer-Encoding: chunked\r\n", sent)
        self.assertTrue(sent.endswith(b"\r\n\r\n4\r\nabcd\r\n"), sent)
        client.send(b"0\r\n\r\n")
        self.assertEqual(backend.received(), b"0\r\n\r\n")

    def test_uploadBufferedUntilConnected(self):
        """
        Body data that arrives while the backend connection is being made
        waits, bounded, with the client paused beyond the bound.
        """
        client = self.lb.client()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n")
        client.send(b"x" * 70000)
        self.assertEqual(client.transport.producerState, "paused")
        backend = self.lb.acceptConnection()
        self.assertEqual(len(bodyOf(backend.received())), 70000)
        self.assertEqual(client.transport.producerState, "producing")

    def test_slowClientPausesBackend(self):
        """
        When the client cannot take more, reading from the backend stops,
        and resumes when the client catches up.
        """
        self.lb = MemoryBalancer(
            balancerConfig(["10.0.0.1:8001"], gatekeeper={"send_timeout": "5m"})
        )
        client = self.lb.client()
        client.send(GET)
        backend = self.lb.acceptConnection()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nabcd")
        client.transport.producer.pauseProducing()
        self.assertEqual(backend.transport.producerState, "paused")
        self.lb.reactor.advance(120)
        self.assertTrue(backend.connected, "a paused read is not a read timeout")
        client.transport.producer.resumeProducing()
        self.assertEqual(backend.transport.producerState, "producing")
        backend.send(b"efgh")
        self.assertTrue(client.received().endswith(b"abcdefgh"))

    def test_earlyResponseDuringUpload(self):
        """
        A backend that answers before the whole body arrived: the client gets
        the answer once it has finished sending, then the connection closes;
        the backend connection is not reused.
        """
        client = self.lb.client()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
        backend = self.lb.acceptConnection()
        backend.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!")
        self.assertFalse(backend.connected)
        client.send(b"def")
        response = client.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 413 Payload Too Large"), response)
        self.assertTrue(response.endswith(b"big!"))
        self.assertFalse(client.connected)

    def test_accessLogLine(self):
        """
        The access log has nginx's combined format, then the upstream address
        and response time.
        """
        client = self.lb.client(host="192.0.2.1")
        client.send(
            b"GET /x HTTP/1.1\r\nHost: a\r\nReferer: http://r/\r\nUser-Agent: t\"x\r\n\r\n"
        )
        backend = self.lb.acceptConnection()
        backend.send(OK)
        line = self.lb.accessLog.getvalue()
        self.assertRegex(
            line,
            rb'^192\.0\.2\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
            rb'"GET /x HTTP/1\.1" 200 5 "http://r/" "t\\x22x" 10\.0\.0\.1:8001 0\.000\n$',
        )



class ClientTimeoutTests(SynchronousTestCase):
    def test_idleClientClosed(self):
        """
        A client connection silent for client_timeout is closed; one busy
        with a slow backend is not.
        """
        config = parseConfig(
            "[manualb]\nlisten = tcp:0\naccess_log = off\nclient_timeout = 5s\n"
            "[upstream u]\nservers = 10.0.0.1:80\n[route r]\npath = /\nupstream = u\n"
        )
        lb = MemoryBalancer(config)
        idle, busy = lb.client(port=1), lb.client(port=2)
        busy.send(GET)
        backend = lb.acceptConnection()
        lb.reactor.advance(6)
        self.assertFalse(idle.connected)
        self.assertTrue(busy.connected)
        backend.send(OK)
        self.assertTrue(busy.received().endswith(b"hello"))


class HSTSTests(SynchronousTestCase):
    """
    A L{ProxySite} built with C{hsts} gives it to every response over TLS,
    in place of the backend's, and to none over plain HTTP.
    """

    def setUp(self):
        from twisted.internet.interfaces import ISSLTransport
        from zope.interface import alsoProvides

        self.lb = MemoryBalancer(balancerConfig(["10.0.0.1:8001"]))
        self.lb.balancer.site.hsts = b"max-age=60"
        self.secure = self.lb.client(port=1)
        alsoProvides(self.secure.transport, ISSLTransport)
        self.plain = self.lb.client(port=2)

    def test_overTLS(self):
        self.secure.send(GET)
        backend = self.lb.acceptConnection()
        backend.send(
            b"HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=1\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        line, headers = headOf(self.secure.received())
        self.assertEqual(headers[b"strict-transport-security"], [b"max-age=60"])

    def test_errorPagesToo(self):
        self.secure.send(b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n")
        line, headers = headOf(self.secure.received())
        self.assertEqual(line, b"HTTP/1.1 405 Method Not Allowed")
        self.assertEqual(headers[b"strict-transport-security"], [b"max-age=60"])

    def test_notOverPlainHTTP(self):
        self.plain.send(GET)
        backend = self.lb.acceptConnection()
        backend.send(OK)
        line, headers = headOf(self.plain.received())
        self.assertNotIn(b"strict-transport-security", headers)
