"""
A route's own C{connect_timeout}, C{read_timeout}, C{send_timeout},
C{tries} (and C{client_max_body_size}) in place of its upstream's, over
the upstream's own servers, health and connections.
"""

from __future__ import annotations

from io import BytesIO

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from manualb.config import ConfigError
from manualb.configfile import parseConfig
from manualb.routelimits import RoutePool, poolFor
from manualb.service import LoadBalancer
from manualb.testing import MemoryBalancer, listenBackend, responseBody, serverAddress

ROUTES = """\
[manualb]
access_log = off

[upstream app]
servers =
    10.0.0.1:80 max_fails=0
    10.0.0.2:80 max_fails=0
read_timeout = 2s
connect_timeout = 1s

[route slow]
path = /report
upstream = app
read_timeout = 2m
connect_timeout = 30s
send_timeout = 10s
tries = 1

[route default]
path = /
upstream = app
"""


class ConfigTests(SynchronousTestCase):
    def test_read(self) -> None:
        slow, default = parseConfig(ROUTES).routes
        self.assertEqual(
            (slow.connect_timeout, slow.read_timeout, slow.send_timeout, slow.tries),
            (30.0, 120.0, 10.0, 1),
        )
        self.assertEqual(
            (default.connect_timeout, default.read_timeout, default.send_timeout, default.tries),
            (None, None, None, None),
        )

    def test_refused(self) -> None:
        for line, message in [
            ("read_timeout = soon", "[route slow] read_timeout: "),
            ("connect_timeout = 0", "[route slow] connect_timeout: "),
            ("tries = -1", "[route slow] tries: "),
            ("tries = 1.5", "[route slow] tries: "),
        ]:
            text = ROUTES.replace("read_timeout = 2m\n", "").replace(
                "connect_timeout = 30s\n", ""
            ).replace("tries = 1\n", line + "\n")
            error = self.assertRaises(ConfigError, parseConfig, text, "lb.ini")
            self.assertTrue(str(error).startswith("lb.ini: " + message), str(error))

    def test_misspelt(self) -> None:
        error = self.assertRaises(
            ConfigError, parseConfig, ROUTES.replace("tries = 1", "read_timout = 1s"), "lb.ini"
        )
        self.assertIn("did you mean 'read_timeout'?", str(error))

    def test_samePool(self) -> None:
        """
        A route without limits of its own has its upstream's pool itself: it
        costs nothing.  One with limits sees the same servers.
        """
        lb = MemoryBalancer(parseConfig(ROUTES))
        pool = lb.balancer.pools["app"]
        slow, default = lb.balancer.resource.urlMap.routes
        self.assertIs(default.pool, pool)
        self.assertIsInstance(slow.pool, RoutePool)
        self.assertIs(slow.pool.servers, pool.servers)
        self.assertEqual(slow.pool.config.read_timeout, 120.0)
        self.assertEqual(slow.pool.config.tries, 1)
        self.assertEqual(slow.pool.name, "app")
        self.assertIs(poolFor(default.config, pool), pool)


class ExchangeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.lb = MemoryBalancer(parseConfig(ROUTES))

    def test_readTimeout(self) -> None:
        """
        A route's C{read_timeout} bounds its requests, the upstream's the
        others; over the same server and the same connection pool.
        """
        lb = self.lb
        fast = lb.agent().request(b"GET", b"http://example.com/")
        first = lb.acceptConnection()
        slow = lb.agent().request(b"GET", b"http://example.com/report")
        second = lb.acceptConnection()
        self.assertIn(b"GET / HTTP/1.1", first.received())
        self.assertIn(b"GET /report HTTP/1.1", second.received())
        lb.advance(3)
        # The default route's request timed out, and is tried on the other
        # server, with the same timeout.
        lb.acceptConnection()
        lb.advance(3)
        self.assertEqual(self.successResultOf(fast).code, 504)
        self.assertNoResult(slow)
        lb.advance(100)
        self.assertNoResult(slow)
        second.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        lb.flush()
        response = self.successResultOf(slow)
        self.assertEqual(response.code, 200)
        self.assertEqual(self.successResultOf(responseBody(response)), b"ok")
        # The connection went back to the server's one pool, shared by the
        # routes.
        server = lb.balancer.pools["app"].servers[1]
        self.assertEqual(server.name, "10.0.0.2:80")
        self.assertEqual(server.connections.idleCount, 1)

    def test_connectTimeout(self) -> None:
        lb = self.lb
        fast = lb.agent().request(b"GET", b"http://example.com/")
        slow = lb.agent().request(b"GET", b"http://example.com/report")
        lb.advance(1.5)
        # The default route tried its second server after the first second.
        self.assertNoResult(slow)
        lb.advance(1)
        self.assertEqual(self.successResultOf(fast).code, 504)
        self.assertNoResult(slow)
        lb.advance(30)
        self.assertEqual(self.successResultOf(slow).code, 504)

    def test_tries(self) -> None:
        """
        A route's C{tries} bounds its retries: one server only here, while
        the upstream's (every server) holds on the other route.
        """
        lb = self.lb
        slow = lb.agent().request(b"GET", b"http://example.com/report")
        lb.refuseConnection()
        lb.flush()
        self.assertEqual(self.successResultOf(slow).code, 502)
        self.assertEqual(lb.pendingConnections(), [])
        fast = lb.agent().request(b"GET", b"http://example.com/")
        lb.refuseConnection()
        lb.flush()
        self.assertEqual(len(lb.pendingConnections()), 1)
        backend = lb.acceptConnection()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        lb.flush()
        self.assertEqual(self.successResultOf(fast).code, 200)

    def test_healthShared(self) -> None:
        """
        Failures on a route's requests count against the upstream's servers,
        which every route shares.
        """
        text = ROUTES.replace("max_fails=0", "max_fails=1 fail_timeout=30s")
        lb = MemoryBalancer(parseConfig(text))
        slow = lb.agent().request(b"GET", b"http://example.com/report")
        lb.refuseConnection()
        lb.flush()
        self.assertEqual(self.successResultOf(slow).code, 502)
        servers = lb.balancer.pools["app"].servers
        self.assertEqual(sorted(server.available() for server in servers), [False, True])
        failed = [server.name for server in servers if not server.available()][0]
        fast = lb.agent().request(b"GET", b"http://example.com/")
        lb.flush()
        [(host, port)] = lb.pendingConnections()
        self.assertNotEqual("%s:%d" % (host, port), failed)
        lb.acceptConnection().send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        lb.flush()
        self.assertEqual(self.successResultOf(fast).code, 200)


class _Never(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list = []

    def render(self, request):
        self.requests.append(request)
        if request.path == b"/fast":
            return b"fast\n"
        return NOT_DONE_YET


class EndToEndTests(TestCase):
    @inlineCallbacks
    def test_readTimeoutOverSockets(self):
        """
        Over real sockets, a route with a short C{read_timeout} answers 504
        when its backend is silent, while the upstream's long one serves the
        other route from the same server; the route's C{client_max_body_size}
        refuses a large body with 413.
        """
        backend = _Never()
        backendPort = yield listenBackend(reactor, backend)
        self.addCleanup(backendPort.stopListening)
        config = parseConfig(
            "[manualb]\naccess_log = off\n\n[upstream app]\n"
            f"servers = {serverAddress(backendPort)}\nread_timeout = 1h\n\n"
            "[route quick]\npath = /quick\nupstream = app\nread_timeout = 100ms\n"
            "client_max_body_size = 4\n\n"
            "[route default]\npath = /\nupstream = app\n"
        )
        balancer = LoadBalancer(config, reactor)
        self.addCleanup(self._closeAll, backend, balancer)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(balancer.site)
        self.addCleanup(port.stopListening)
        url = b"http://127.0.0.1:%d" % (port.getHost().port,)
        agent = Agent(reactor)
        response = yield agent.request(b"GET", url + b"/quick")
        self.assertEqual(response.code, 504)
        yield readBody(response)
        response = yield agent.request(b"GET", url + b"/fast")
        self.assertEqual((yield readBody(response)), b"fast\n")
        response = yield agent.request(
            b"POST", url + b"/quick", bodyProducer=FileBodyProducer(BytesIO(b"123456"))
        )
        self.assertEqual(response.code, 413)
        yield readBody(response)

    def _closeAll(self, backend, balancer):
        for request in backend.requests:
            if not request.finished and not request._disconnected:
                request.finish()
        return balancer.close()
