"""
Failover users never see: passive and active health, retries to the next
server, backups, slow start; all in memory, on a clock the tests move.
"""

import attrs
from twisted.trial.unittest import SynchronousTestCase

from manualb.config import HealthCheckConfig, ServerAddress, ServerConfig
from manualb.health import DOWN, UP
from manualb.testing import MemoryBalancer, balancerConfig

GET = b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
A = ("10.0.0.1", 8001)
B = ("10.0.0.2", 8002)


def balancer(*servers: ServerConfig, **upstream) -> MemoryBalancer:
    """
    A memory balancer over C{servers} (by default A and B, each with every
    option at its default), with C{upstream} fields set on the pool.
    """
    if not servers:
        servers = (server(A), server(B))
    config = balancerConfig(["10.9.9.9:1"])
    pool = attrs.evolve(config.upstreams["backends"], servers=servers, **upstream)
    return MemoryBalancer(attrs.evolve(config, upstreams={"backends": pool}))


def server(address, **options) -> ServerConfig:
    return ServerConfig(ServerAddress(*address), **options)


class PassiveHealthTests(SynchronousTestCase):
    def setUp(self):
        self.lb = balancer()
        self.pool = self.lb.balancer.pools["backends"]
        self.a, self.b = self.pool.servers

    def test_refusedRetriedOnNextServer(self):
        """
        A refused connection costs the client nothing: the request goes to
        the next server, and the refusing one is marked down.
        """
        client = self.lb.client()
        client.send(GET)
        self.assertEqual(self.lb.pendingConnections(), [A])
        self.lb.refuseConnection()
        self.assertEqual(self.lb.pendingConnections(), [B])
        self.lb.acceptConnection().send(OK)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 200 OK"))
        self.assertEqual(self.a.health.state, DOWN)
        self.assertRegex(
            self.lb.accessLog.getvalue(),
            rb" 200 2 .* 10\.0\.0\.1:8001, 10\.0\.0\.2:8002 0\.000, 0\.000\n$",
        )
        self.flushLoggedErrors()

    def test_downServerSkippedThenTested(self):
        """
        A server marked down gets no requests for fail_timeout; then one live
        request tests it, and its success brings the server back.
        """
        client = self.lb.client()
        client.send(GET)
        self.lb.refuseConnection()
        b = self.lb.acceptConnection()
        b.send(OK)
        for _ in range(3):
            client.send(GET)
            self.assertEqual(self.lb.pendingConnections(), [])
            b.send(OK)
        self.lb.reactor.advance(10)
        client.send(GET)
        if not self.lb.pendingConnections():  # round robin's turn for B
            b.send(OK)
            client.send(GET)
        self.assertEqual(self.lb.pendingConnections(), [A])
        other = self.lb.client(port=2)
        other.send(GET)
        self.assertEqual(self.lb.pendingConnections(), [A], "one test request at a time")
        b.send(OK)
        a = self.lb.acceptConnection()
        a.send(OK)
        self.assertEqual(self.a.health.state, UP)
        self.assertEqual(
            [(event.server, event.state) for event in self.pool.monitor.history],
            [("10.0.0.1:8001", DOWN), ("10.0.0.1:8001", UP)],
        )
        self.assertIn("connection refused", self.pool.monitor.history[0].reason)

    def test_failedTestRequestExtendsDowntime(self):
        """
        A server whose test request fails stays down another fail_timeout.
        """
        health = self.a.health
        health.requestFailed("connection refused")
        self.lb.reactor.advance(10)
        self.assertTrue(self.a.available())
        health.requestStarted()
        self.assertFalse(self.a.available())
        health.requestFailed("connection refused")
        self.lb.reactor.advance(9)
        self.assertFalse(self.a.available())
        self.lb.reactor.advance(1)
        self.assertTrue(self.a.available())
        self.assertEqual(health.state, DOWN)

    def test_abandonedTestRequest(self):
        """
        A test request whose client left lets the next request test.
        """
        health = self.a.health
        health.requestFailed("connection refused")
        self.lb.reactor.advance(10)
        health.requestStarted()
        health.requestAbandoned()
        self.assertTrue(self.a.available())

    def test_maxFailsWithinFailTimeout(self):
        """
        With max_fails=2, one failure is not enough, nor two far apart.
        """
        self.lb = balancer(server(A, max_fails=2, fail_timeout=5.0), server(B))
        a = self.lb.balancer.pools["backends"].servers[0]
        a.health.requestFailed("x")
        self.lb.reactor.advance(6)
        a.health.requestFailed("x")
        self.assertTrue(a.available())
        a.health.requestFailed("x")
        self.assertFalse(a.available())

    def test_maxFailsZeroNeverMarksDown(self):
        self.lb = balancer(server(A, max_fails=0), server(B))
        a = self.lb.balancer.pools["backends"].servers[0]
        for _ in range(5):
            a.health.requestFailed("x")
        self.assertTrue(a.available())

    def test_allDown(self):
        """
        With every server down, the client gets a 503 at once: no backend is
        tried, nothing loops.
        """
        self.a.health.requestFailed("x")
        self.b.health.requestFailed("x")
        client = self.lb.client()
        client.send(GET)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 503 Service Unavailable"))
        self.assertEqual(self.lb.pendingConnections(), [])

    def test_everyServerFails(self):
        """
        When every server fails the request, the client gets the last error.
        """
        client = self.lb.client()
        client.send(GET)
        self.lb.refuseConnection()
        self.lb.refuseConnection()
        response = client.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 502 Bad Gateway"), response)
        self.flushLoggedErrors()

    def test_backups(self):
        """
        A backup server serves only while no primary is available.
        """
        self.lb = balancer(server(A), server(B, backup=True))
        a = self.lb.balancer.pools["backends"].servers[0]
        client = self.lb.client()
        client.send(GET)
        self.assertEqual(self.lb.pendingConnections(), [A])
        self.lb.acceptConnection().send(OK)
        a.health.requestFailed("x")
        client.send(GET)
        self.assertEqual(self.lb.pendingConnections(), [B])

    def test_downAndMaxConns(self):
        """
        A server marked C{down} is never chosen; one at C{max_conns} waits
        until a request of its own ends.
        """
        self.lb = balancer(server(A, down=True), server(B, max_conns=1))
        first, second = self.lb.client(port=1), self.lb.client(port=2)
        first.send(GET)
        self.assertEqual(self.lb.pendingConnections(), [B])
        b = self.lb.acceptConnection()
        second.send(GET)
        self.assertTrue(second.received().startswith(b"HTTP/1.1 503"))
        b.send(OK)
        second.send(GET)
        self.assertEqual(self.lb.pendingConnections(), [])
        b.send(OK)
        self.assertTrue(second.received().startswith(b"HTTP/1.1 200"))


class RetryTests(SynchronousTestCase):
    def test_closedBeforeResponseRetried(self):
        """
        A GET whose server closes without answering goes to the next server.
        """
        lb = balancer()
        client = lb.client()
        client.send(GET)
        lb.acceptConnection().close()
        lb.acceptConnection().send(OK)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 200 OK"))

    def test_postNotRetriedOnceSent(self):
        """
        A POST that reached a server is not sent again; one that never
        reached a server is.
        """
        lb = balancer()
        client = lb.client()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        lb.refuseConnection()
        b = lb.acceptConnection()
        self.assertTrue(b.received().endswith(b"hi"))
        b.close()
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502 Bad Gateway"))
        self.assertEqual(lb.pendingConnections(), [])
        self.flushLoggedErrors()

    def test_putBodySentAgain(self):
        """
        An idempotent request's body, already sent to a server that failed,
        goes whole to the next one.
        """
        lb = balancer()
        client = lb.client()
        client.send(b"PUT /f HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\nabcd")
        a = lb.acceptConnection()
        self.assertTrue(a.received().endswith(b"abcd"))
        client.send(b"efgh")
        self.assertEqual(a.received(), b"efgh")
        a.close()
        b = lb.acceptConnection()
        self.assertTrue(b.received().endswith(b"\r\n\r\nabcdefgh"))
        b.send(OK)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 200 OK"))

    def test_bodyTooLargeToKeepNotRetried(self):
        lb = balancer(retry_body_limit=4)
        client = lb.client()
        client.send(b"PUT /f HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\nabcdefgh")
        a = lb.acceptConnection()
        a.close()
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502"))
        self.flushLoggedErrors()

    def test_noRetryOnceResponseStarted(self):
        lb = balancer()
        client = lb.client()
        client.send(GET)
        a = lb.acceptConnection()
        a.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhal")
        a.reset()
        self.assertEqual(lb.pendingConnections(), [])
        self.assertFalse(client.connected)
        self.flushLoggedErrors()

    def test_passiveFailOn(self):
        """
        A status named in passive_fail_on counts against the server and the
        request goes to the next one; from the last one it is passed on.
        """
        lb = balancer(passive_fail_on=frozenset([503]))
        client = lb.client()
        client.send(GET)
        lb.acceptConnection().send(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy")
        b = lb.acceptConnection()
        b.send(b"HTTP/1.1 503 Busy too\r\nContent-Length: 4\r\n\r\nBUSY")
        response = client.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 503 Busy too"), response)
        self.assertTrue(response.endswith(b"BUSY"))
        self.flushLoggedErrors()

    def test_triesBound(self):
        lb = balancer(tries=1)
        client = lb.client()
        client.send(GET)
        lb.refuseConnection()
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502"))
        self.assertEqual(lb.pendingConnections(), [])
        self.flushLoggedErrors()

    def test_retryTimeoutBound(self):
        lb = balancer(retry_timeout=3.0)
        client = lb.client()
        client.send(GET)
        lb.reactor.advance(5)  # the connect to A times out after 5s
        self.assertTrue(client.received().startswith(b"HTTP/1.1 504"))
        self.assertEqual(lb.pendingConnections(), [])
        self.flushLoggedErrors()

    def test_hangingServerCostsOneTimeout(self):
        """
        A server that accepts and never answers costs one read timeout: the
        request goes on to the next server, and later requests skip it.
        """
        lb = balancer(read_timeout=2.0)
        client = lb.client()
        client.send(GET)
        lb.acceptConnection()
        lb.reactor.advance(2)
        lb.acceptConnection().send(OK)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 200 OK"))
        for _ in range(3):
            client.send(GET)
            self.assertEqual(lb.pendingConnections(), [])
        self.flushLoggedErrors()


class ActiveHealthTests(SynchronousTestCase):
    def setUp(self):
        check = HealthCheckConfig(
            path="/healthz", interval=2.0, timeout=1.0, rise=2, fall=2, body="ok"
        )
        self.check = check
        self.lb = balancer(server(A, slow_start=10.0), health_check=check)
        self.pool = self.lb.balancer.pools["backends"]
        self.a = self.pool.servers[0]

    def probeAnswers(self, response=None):
        """
        Let every pending probe connect and answer C{response} (or refuse
        the connection when None).
        """
        while self.lb.pendingConnections():
            if response is None:
                self.lb.refuseConnection()
            else:
                probe = self.lb.acceptConnection()
                self.assertTrue(probe.received().startswith(b"GET /healthz HTTP/1.1\r\n"))
                probe.send(response)

    def test_fallRiseAndSlowStart(self):
        """
        Two failed probes take the server down, two passed ones bring it
        back, and its weight then ramps up over slow_start.
        """
        healthy = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        self.lb.reactor.advance(2.2)  # first probe: within the first interval
        self.probeAnswers(None)
        self.assertEqual(self.a.health.state, UP)
        self.lb.reactor.advance(2.2)
        self.probeAnswers(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsick")
        self.assertEqual(self.a.health.state, DOWN)
        self.assertFalse(self.a.available())
        self.lb.reactor.advance(2.2)
        self.probeAnswers(healthy)
        self.assertEqual(self.a.health.state, DOWN)
        self.lb.reactor.advance(2.2)
        self.probeAnswers(healthy)
        self.assertEqual(self.a.health.state, UP)
        self.assertAlmostEqual(self.a.weight, 0.01)
        self.lb.reactor.advance(5)
        self.assertAlmostEqual(self.a.weight, 0.5, places=1)
        self.lb.reactor.advance(5)
        self.assertEqual(self.a.weight, 1.0)
        reasons = [event.reason for event in self.pool.monitor.history]
        self.assertIn("body does not match", reasons[0])
        self.assertEqual(reasons[1], "2 probe(s) passed")

    def test_probeTimeoutAndOneInFlight(self):
        """
        A probe that gets no answer fails after its timeout; a server never
        has two probes in flight.
        """
        self.lb.reactor.advance(2.2)
        probes = [self.lb.acceptConnection() for _ in self.lb.pendingConnections()]
        self.assertEqual(len(probes), 1)
        self.lb.reactor.advance(0.5)
        self.assertEqual(self.lb.pendingConnections(), [])
        self.lb.reactor.advance(0.5)
        self.assertFalse(probes[0].connected)
        self.assertEqual(self.a.health._probeFails, 1)

    def test_passiveFailureNeedsProbesToReturn(self):
        """
        With probes, a server marked down by failures on real traffic comes
        back after rise passed probes.
        """
        # Passive marks never take the only server of a pool down.
        self.lb = balancer(
            server(A, slow_start=10.0), server(B), health_check=self.check
        )
        self.pool = self.lb.balancer.pools["backends"]
        self.a = self.pool.servers[0]
        self.a.health.requestFailed("connection refused")
        self.assertEqual(self.a.health.state, DOWN)
        healthy = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        self.lb.reactor.advance(2.2)
        self.probeAnswers(healthy)
        self.assertEqual(self.a.health.state, DOWN)
        self.lb.reactor.advance(2.2)
        self.probeAnswers(healthy)
        self.assertEqual(self.a.health.state, UP)

    def test_stopCancelsProbes(self):
        self.lb.reactor.advance(2.2)
        self.lb.balancer.close()
        self.assertEqual(self.lb.reactor.getDelayedCalls(), [])
