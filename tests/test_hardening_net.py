"""
Robustness of selection, health, listeners and TLS: the proxy's own
shortages are not held against servers, a lone server is never marked
unavailable by failures, listeners queue as many connections as nginx's, and
TLS clients that offer only C{http/1.0} (or an unknown protocol) by ALPN are
served.
"""

import errno
import os
import resource
import socket
import struct
import sys

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import (
    ConnectBindError,
    ConnectError,
    ConnectionRefusedError,
    getConnectError,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from manualb.config import HealthCheckConfig, ServerAddress, ServerConfig, parseConfig
from manualb.handoff import UpstreamLocalError, localConnectProblem
from manualb.health import DOWN, UP
from manualb.service import LoadBalancer
from manualb.testing import MemoryBalancer, balancerConfig
from tests.test_streams import MemoryStream

GET = b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
A = ("10.0.0.1", 8001)
B = ("10.0.0.2", 8002)

EMFILE = ConnectBindError(errno.EMFILE, os.strerror(errno.EMFILE))


def balancer(*servers: ServerConfig, **upstream) -> MemoryBalancer:
    """
    A memory balancer over C{servers}, with C{upstream} fields set on the
    pool.
    """
    config = balancerConfig(["10.9.9.9:1"])
    pool = attrs.evolve(config.upstreams["backends"], servers=servers, **upstream)
    return MemoryBalancer(attrs.evolve(config, upstreams={"backends": pool}))


def server(address, **options) -> ServerConfig:
    return ServerConfig(ServerAddress(*address), **options)


def failConnection(lb: MemoryBalancer, reason: Exception, index: int = 0) -> None:
    """
    Let a pending backend connection of C{lb} fail with C{reason}, as
    Twisted's connector reports it.
    """
    host, port, factory, timeout, bindAddress = lb._takeAttempt(index)
    factory.clientConnectionFailed(None, Failure(reason))


class LocalConnectProblemTests(SynchronousTestCase):
    """
    The connect failures that are the proxy's own shortage are told apart
    from the server's, in each form Twisted gives them.
    """

    def test_socketCreation(self):
        """
        C{socket()} failing with EMFILE or ENFILE: Twisted's
        L{ConnectBindError}, with the errno in C{osError}.
        """
        self.assertIn("out of file descriptors", localConnectProblem(Failure(EMFILE)))
        self.assertIn("EMFILE", localConnectProblem(Failure(EMFILE)))
        nfile = ConnectBindError(errno.ENFILE, os.strerror(errno.ENFILE))
        self.assertIn("ENFILE", localConnectProblem(Failure(nfile)))

    def test_connect(self):
        """
        C{connect()} failing with ENOBUFS or EADDRNOTAVAIL (no free local
        port): L{getConnectError} of the errno.
        """
        for number in (errno.ENOBUFS, errno.EADDRNOTAVAIL):
            reason = getConnectError((number, os.strerror(number)))
            self.assertIsInstance(reason, ConnectError)
            self.assertIn(errno.errorcode[number], localConnectProblem(Failure(reason)))

    def test_rawOSError(self):
        """
        An endpoint that lets the C{OSError} itself through.
        """
        reason = OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        self.assertIn("EMFILE", localConnectProblem(Failure(reason)))

    def test_serversFault(self):
        """
        A refused connection, a timeout or an unreachable host is the
        server's failure.
        """
        self.assertIsNone(localConnectProblem(Failure(ConnectionRefusedError())))
        for number in (errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ECONNRESET):
            reason = getConnectError((number, os.strerror(number)))
            self.assertIsNone(localConnectProblem(Failure(reason)))
        self.assertIsNone(localConnectProblem(Failure(ConnectError(string="x"))))


class LocalShortageTests(SynchronousTestCase):
    """
    A connect that fails for want of the proxy's own resources is answered
    503 at once, is not sent to another server, and counts nothing against
    the server.
    """

    def test_emfileAnswered503(self):
        lb = balancer(server(A), server(B))
        a, b = lb.balancer.pools["backends"].servers
        client = lb.client()
        client.send(GET)
        self.assertEqual(lb.pendingConnections(), [A])
        failConnection(lb, EMFILE)
        response = client.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 503 Service Unavailable"), response)
        self.assertIn(b"out of file descriptors", response)
        self.assertEqual(lb.pendingConnections(), [], "not tried on the next server")
        self.assertEqual((a.health.state, a.health._fails), (UP, 0))
        self.assertTrue(a.available())
        self.assertEqual(a.active, 0)
        self.assertRegex(lb.accessLog.getvalue(), rb'" 503 ')
        # The server takes the next request as if nothing had happened.
        client.send(GET)
        self.assertEqual(len(lb.pendingConnections()), 1)
        lb.acceptConnection().send(OK)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 200 OK"))

    def test_emfileOnTestRequest(self):
        """
        A server on trial whose test request cannot be sent for the proxy's
        own shortage stays on trial: the next request tests it.
        """
        lb = balancer(server(A), server(B, backup=True))
        a = lb.balancer.pools["backends"].servers[0]
        a.health.requestFailed("connection refused")
        lb.reactor.advance(10)
        client = lb.client()
        client.send(GET)
        self.assertEqual(lb.pendingConnections(), [A])
        failConnection(lb, EMFILE)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 503"))
        self.assertTrue(a.available())
        client.send(GET)
        self.assertEqual(lb.pendingConnections(), [A])

    def test_streamClosedNotMarked(self):
        """
        A stream's connection is closed: no other server is tried, and the
        server is not marked.
        """
        lb = MemoryStream()
        first = lb.pool.servers[0]
        client = lb.client()
        self.assertEqual(len(lb.pending()), 1)
        connector, (host, port, factory, timeout, bind) = lb._take(0)
        factory.clientConnectionFailed(connector, Failure(EMFILE))
        self.assertEqual(lb.pending(), [])
        self.assertFalse(client.transport.connected)
        self.assertEqual(lb.factory.connections, 0)
        for each in lb.pool.servers:
            self.assertEqual((each.health.state, each.health._fails, each.active), (UP, 0, 0))
        self.assertTrue(first.available())

    def probing(self, type):
        check = HealthCheckConfig(type=type, interval=2.0, timeout=1.0, fall=1)
        lb = balancer(server(A), server(B), health_check=check)
        return lb, lb.balancer.pools["backends"]

    def test_probeNotCounted(self):
        """
        A probe that cannot connect for the proxy's own shortage neither
        passes nor fails: with C{fall=1}, the server stays up.
        """
        for type in ("http", "tcp"):
            lb, pool = self.probing(type)
            lb.reactor.advance(2.2)
            while lb.pendingConnections():
                failConnection(lb, EMFILE)
            for each in pool.servers:
                self.assertEqual(each.health.state, UP, type)
                self.assertEqual(each.health._probeFails, 0, type)
            self.assertEqual(list(pool.monitor.history), [])
            # Probing goes on.
            lb.reactor.advance(2.2)
            self.assertEqual(len(lb.pendingConnections()), 2)
            lb.balancer.close()


class SingleServerTests(SynchronousTestCase):
    """
    As in nginx, the only server of a pool is never made unavailable by
    failures; a lone primary with backups is.
    """

    def test_singleServerNeverMarked(self):
        lb = balancer(server(A, max_fails=1, fail_timeout=10.0))
        a = lb.balancer.pools["backends"].servers[0]
        client = lb.client()
        client.send(GET)
        lb.refuseConnection()
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502 Bad Gateway"))
        self.assertEqual(a.health.state, UP)
        self.assertTrue(a.available())
        # The server is back at once: the next request reaches it, with no
        # 503 for fail_timeout.
        client.send(GET)
        self.assertEqual(lb.pendingConnections(), [A])
        lb.acceptConnection().send(OK)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 200 OK"))
        self.assertEqual(list(lb.balancer.pools["backends"].monitor.history), [])
        self.flushLoggedErrors()

    def test_manyFailures(self):
        lb = balancer(server(A, max_fails=3))
        a = lb.balancer.pools["backends"].servers[0]
        for _ in range(10):
            a.health.requestFailed("status 502")
        self.assertTrue(a.available())
        self.assertEqual(a.health.state, UP)

    def test_primaryWithBackupMarked(self):
        """
        With a backup, the lone primary is marked as any server, and the
        backup serves meanwhile, as in nginx.
        """
        lb = balancer(server(A), server(B, backup=True))
        a = lb.balancer.pools["backends"].servers[0]
        self.assertFalse(lb.balancer.pools["backends"].single)
        client = lb.client()
        client.send(GET)
        lb.refuseConnection()
        self.assertEqual(lb.pendingConnections(), [B])
        lb.acceptConnection().send(OK)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 200 OK"))
        self.assertEqual(a.health.state, DOWN)
        self.flushLoggedErrors()

    def test_probesStillTakeItDown(self):
        """
        Active probes take even a lone server down (as HAProxy's checks do);
        failures on real traffic do not.
        """
        check = HealthCheckConfig(path="/", interval=2.0, timeout=1.0, rise=1, fall=2)
        lb = balancer(server(A), health_check=check)
        a = lb.balancer.pools["backends"].servers[0]
        a.health.requestFailed("connection refused")
        self.assertEqual(a.health.state, UP)
        for _ in range(2):
            lb.reactor.advance(2.2)
            lb.refuseConnection()
        self.assertEqual(a.health.state, DOWN)
        client = lb.client()
        client.send(GET)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 503"))
        lb.reactor.advance(2.2)
        lb.acceptConnection().send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(a.health.state, UP)
        lb.balancer.close()


class _Response(Protocol):
    """
    Collects what the proxy sends until it closes.
    """

    def __init__(self):
        self.data = b""
        self.closed = Deferred()
        self.first = Deferred()

    def dataReceived(self, data):
        self.data += data
        if not self.first.called:
            self.first.callback(None)

    def connectionLost(self, reason=None):
        self.closed.callback(self.data)


class RealEMFILETests(TestCase):
    """
    With the process really out of file descriptors, the connect to the
    backend fails as Twisted reports it, and the client gets a 503 without
    the server being marked.
    """

    @inlineCallbacks
    def test_outOfDescriptors(self):
        if not sys.platform.startswith("linux"):
            raise SkipTest("needs Linux's RLIMIT_NOFILE semantics")
        config = parseConfig(
            "[manualb]\nlisten = tcp:0:interface=127.0.0.1\naccess_log = off\n"
            "[upstream u]\nservers =\n    127.0.0.1:1\n    127.0.0.1:2\n"
            "[route r]\npath = /\nupstream = u\n"
        )
        lb = LoadBalancer(config, reactor)
        self.addCleanup(lb.close)
        port = yield lb.endpoint("tcp:0:interface=127.0.0.1").listen(lb.site)
        self.addCleanup(port.stopListening)
        client = _Response()
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client
        )
        # Once manualb has accepted the connection (it answers the TRACE
        # itself), take every descriptor away: the lowest free one is the
        # limit.
        client.transport.write(b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n")
        yield client.first
        free = os.dup(0)
        os.close(free)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (free, hard))
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        client.data = b""
        client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        try:
            response = yield client.closed
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        self.assertTrue(response.startswith(b"HTTP/1.1 503 Service Unavailable"), response)
        self.assertIn(b"EMFILE", response)
        for each in lb.pools["u"].servers:
            self.assertEqual((each.health.state, each.health._fails), (UP, 0))
