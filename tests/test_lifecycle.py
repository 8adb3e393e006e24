"""
The balancer's life: building it reads no file, starting does, and closing
fires once every connection is closed.
"""

from __future__ import annotations

import os
from io import BytesIO

import attrs
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.resource import Resource
from twisted.web.server import Site

from manualb.accesslog import AccessLog
from manualb.config import ConfigError, HealthCheckConfig, ServerAddress, UpstreamConfig
from manualb.configfile import parseConfig
from manualb.handoff import ConnectionPool
from manualb.health import HTTPProbe, TCPProbe
from manualb.service import LoadBalancer, makeService
from manualb.testing import NamedBackend, listenBackend, serverAddress
from manualb.tlstesting import makeCA, writeTLSFiles
from tests.test_streams import MemoryStream


def _config(text: str):
    return parseConfig(text, "lb.ini")


class BuildingReadsNothingTests(SynchronousTestCase):
    """
    Building a balancer touches no file; starting it reads the certificates
    and opens the access log, and a missing one is a L{ConfigError} then.
    """

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.log = os.path.join(self.directory, "access.log")
        self.certificate, key = writeTLSFiles(
            self.directory, makeCA("test CA"), ["www.example.com"]
        )
        self.config = _config(
            "[manualb]\nlisten = sni:0:interface=127.0.0.1\n"
            f"access_log = {self.log}\n"
            f"[tls]\ncertificates = www.example.com {self.certificate} {key}\n"
            "[upstream u]\nservers = 127.0.0.1:9\n[route r]\npath = /\nupstream = u\n"
        )
        # Gone between reading the configuration and starting.
        os.remove(self.certificate)

    def test_buildingReadsNothing(self):
        """
        A balancer whose certificate is missing builds, and its access log
        is not created.
        """
        from twisted.internet.testing import MemoryReactorClock

        balancer = LoadBalancer(self.config, MemoryReactorClock())
        self.assertIsNone(balancer.tls)
        self.assertFalse(os.path.exists(self.log))
        service = makeService(self.config, MemoryReactorClock())
        self.assertFalse(os.path.exists(self.log))
        self.assertIsNone(service.balancer.tls)

    def test_startReadsTheFiles(self):
        """
        Starting reads the certificates: a missing one stops it with the
        error naming the file.
        """
        from twisted.internet.testing import MemoryReactorClock

        balancer = LoadBalancer(self.config, MemoryReactorClock())
        error = self.assertRaises(ConfigError, balancer.start)
        self.assertIn(self.certificate, str(error))
        service = makeService(self.config, MemoryReactorClock())
        error = self.assertRaises(ConfigError, service.privilegedStartService)
        self.assertIn(self.certificate, str(error))

    def test_startOpensTheLog(self):
        """
        The access log is opened (created) by start, closed by close.
        """
        from twisted.internet.testing import MemoryReactorClock

        config = _config(
            f"[manualb]\nlisten = tcp:0\naccess_log = {self.log}\n"
            "[upstream u]\nservers = 127.0.0.1:9\n[route r]\npath = /\nupstream = u\n"
        )
        balancer = LoadBalancer(config, MemoryReactorClock())
        self.assertFalse(os.path.exists(self.log))
        balancer.start()
        self.assertTrue(os.path.exists(self.log))
        self.successResultOf(balancer.close())

    def test_logCannotBeOpened(self):
        """
        An access log that cannot be opened stops the start with one
        message naming the key and the file.
        """
        from twisted.internet.testing import MemoryReactorClock

        target = os.path.join(self.directory, "no", "such", "dir", "access.log")
        config = _config(
            f"[manualb]\nlisten = tcp:0\naccess_log = {target}\n"
            "[upstream u]\nservers = 127.0.0.1:9\n[route r]\npath = /\nupstream = u\n"
        )
        balancer = LoadBalancer(config, MemoryReactorClock())
        error = self.assertRaises(ConfigError, balancer.start)
        self.assertEqual(
            str(error),
            f"lb.ini: [manualb] access_log: cannot open {target}: "
            "No such file or directory",
        )

    def test_defaultReactor(self):
        """
        makeService serves with the global reactor unless given one.
        """
        config = _config(
            "[manualb]\nlisten = tcp:0\naccess_log = off\n"
            "[upstream u]\nservers = 127.0.0.1:9\n[route r]\npath = /\nupstream = u\n"
        )
        self.assertIs(makeService(config).balancer.reactor, reactor)


class _Held(Protocol):
    """
    A client that keeps its connection open; C{lost} fires when it closes,
    C{received} with the first bytes that come.
    """

    def __init__(self, request: bytes = b""):
        self.request = request
        self.data = b""
        self.received: Deferred[bytes] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self):
        if self.request:
            self.transport.write(self.request)

    def dataReceived(self, data):
        self.data += data
        if not self.received.called:
            self.received.callback(data)

    def connectionLost(self, reason=None):
        self.lost.callback(None)


class _Echo(Protocol):
    def connectionMade(self):
        self.factory.connected.append(self)

    def dataReceived(self, data):
        self.transport.write(data)

    def connectionLost(self, reason=None):
        self.factory.connected.remove(self)
        if not self.factory.connected:
            self.factory.allLost.callback(None)


class CloseTests(TestCase):
    """
    L{LoadBalancer.close} fires once every connection is closed, with real
    sockets: an idle keep-alive client, an open TCP stream tunnel, a pooled
    backend connection.
    """

    @inlineCallbacks
    def test_closeWaitsForEveryConnection(self):
        backend = NamedBackend("one")
        backendPort = yield listenBackend(reactor, backend)
        self.addCleanup(backendPort.stopListening)
        echo = Factory.forProtocol(_Echo)
        echo.connected = []
        echo.allLost = Deferred()
        echoPort = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(echo)
        self.addCleanup(echoPort.stopListening)
        config = _config(
            "[manualb]\nlisten = tcp:0:interface=127.0.0.1\naccess_log = off\n"
            "[stream echo]\nlisten = tcp:interface=127.0.0.1:port=0\nupstream = echo\n"
            f"[upstream echo]\nservers = {serverAddress(echoPort)}\n"
            f"[upstream web]\nservers = {serverAddress(backendPort)}\n"
            "[route r]\npath = /\nupstream = web\n"
        )
        service = makeService(config, reactor)
        balancer = service.balancer
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        http, stream = [child for child in service if child.name]
        ports = []
        for listening in (http, stream):
            listening._waitingForPort.addCallback(lambda port: ports.append(port) or port)
        httpPort, streamPort = ports

        # A keep-alive client, idle after its response; its backend
        # connection waits in the pool.
        client = _Held(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", httpPort.getHost().port), client
        )
        yield client.received
        [pool] = [server.connections for server in balancer.pools["web"].servers]
        self.assertEqual(pool.idleCount, 1)
        # A TCP stream with its tunnel open.
        tunnel = _Held(b"ping")
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", streamPort.getHost().port), tunnel
        )
        self.assertEqual((yield tunnel.received), b"ping")

        closed = service.stopService()
        self.assertNoResult(closed)
        # The graceful stop would wait for the stream's tunnel; closing
        # cuts it at once.
        balancer.close()
        yield closed
        # Everything the balancer held is gone by then.
        self.assertEqual(balancer.connections.open, 0)
        self.assertEqual(balancer.streams["echo"].connections, 0)
        self.assertEqual(pool.idleCount, 0)
        self.assertEqual(pool._open, set())
        # And the peers see their connections closed.
        yield client.lost
        yield tunnel.lost
        yield echo.allLost

    @inlineCallbacks
    def test_closeWithNothingOpen(self):
        """
        A balancer with no connection open closes at once.
        """
        config = _config(
            "[manualb]\nlisten = tcp:0\naccess_log = off\n"
            "[upstream u]\nservers = 127.0.0.1:9\n[route r]\npath = /\nupstream = u\n"
        )
        balancer = LoadBalancer(config, reactor)
        balancer.start()
        self.assertIsNone((yield balancer.close()))


class EmbeddedLogTests(TestCase):
    """
    The balancer's resource mounted in a plain L{Site} is logged once, by
    that site; its own sites log through the access log.
    """

    @inlineCallbacks
    def test_oneLinePerRequest(self):
        backendPort = yield listenBackend(reactor, NamedBackend("one"))
        self.addCleanup(backendPort.stopListening)
        config = _config(
            "[manualb]\nlisten = tcp:0\n"
            f"[upstream u]\nservers = {serverAddress(backendPort)}\n"
            "[route r]\npath = /\nupstream = u\n"
        )
        output = BytesIO()
        balancer = LoadBalancer(config, reactor, AccessLog(output))
        balancer.start()
        self.addCleanup(balancer.close)
        root = Resource()
        root.putChild(b"api", balancer.resource)
        siteLog = os.path.abspath(self.mktemp())
        site = Site(root, logPath=siteLog)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        response = yield Agent(reactor).request(
            b"GET", b"http://127.0.0.1:%d/api/x" % (port.getHost().port,)
        )
        self.assertEqual((yield readBody(response)), b"one\n")
        with open(siteLog, "rb") as f:
            self.assertEqual(len(f.read().splitlines()), 1)
        self.assertEqual(output.getvalue(), b"")

        # Served by the balancer's own site, the line is the proxy's.
        own = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            balancer.site
        )
        self.addCleanup(own.stopListening)
        response = yield Agent(reactor).request(
            b"GET", b"http://127.0.0.1:%d/x" % (own.getHost().port,)
        )
        yield readBody(response)
        [line] = output.getvalue().splitlines()
        self.assertIn(b'"GET /x HTTP/1.1" 200 4 ', line)
        self.assertIn(b" %s " % (serverAddress(backendPort).encode("ascii"),), line)


def _connect(reactor, transport=None):
    """
    Complete the latest connect of C{reactor} (a L{MemoryReactorClock}) on
    C{transport} (by default a L{StringTransport}, on which closing is only
    asked for until the test calls C{connectionLost}), and return its
    protocol.
    """
    host, port, factory, timeout, bind = reactor.tcpClients[-1]
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport() if transport is None else transport)
    return protocol


@attrs.define
class _ProbeTarget:
    name: str
    address: ServerAddress
    connections: ConnectionPool


class PoolCloseTests(SynchronousTestCase):
    """
    L{ConnectionPool.closeAll} cancels the connects in flight and waits for
    them, and closes a connection made while it waits.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.config = UpstreamConfig("u", (ServerAddress("10.0.0.1", 80),))
        self.pool = ConnectionPool(self.reactor, self.config.servers[0].address, self.config)

    def test_connectInFlightCancelled(self):
        """
        A connect in flight is cancelled, its socket closed, before the
        pool says it has closed.
        """
        connecting = self.pool.connect()
        closed = self.pool.closeAll()
        self.failureResultOf(connecting, CancelledError)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertIsNone(self.successResultOf(closed))

    def test_connectedWhileClosing(self):
        """
        A connect begun while the pool closes, made before it has closed,
        is closed at once and fails; the pool has closed once it and the
        others are.
        """
        opened = self.pool.connect()
        first = _connect(self.reactor)
        self.successResultOf(opened)
        closed = self.pool.closeAll()
        self.assertTrue(first.transport.disconnecting)
        late = self.pool.connect()
        second = _connect(self.reactor)
        self.failureResultOf(late, CancelledError)
        self.assertTrue(second.transport.disconnecting)
        first.connectionLost(Failure(ConnectionDone()))
        self.assertNoResult(closed)
        second.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(closed)

    def test_whenClosed(self):
        """
        L{ConnectionPool.whenClosed} fires once the connection has closed,
        at once for one that is not open.
        """
        connecting = self.pool.connect()
        protocol = _connect(self.reactor)
        connection = self.successResultOf(connecting)
        closed = self.pool.whenClosed(connection)
        self.assertNoResult(closed)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(closed)
        self.successResultOf(self.pool.whenClosed(connection))


class ProbeEndTests(SynchronousTestCase):
    """
    A probe's result fires once its connection has closed, passed, failed
    or cancelled: the probe has ended then.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.config = UpstreamConfig("u", (ServerAddress("10.0.0.1", 80),))
        address = self.config.servers[0].address
        self.server = _ProbeTarget(
            "10.0.0.1:80", address, ConnectionPool(self.reactor, address, self.config)
        )

    def test_tcpProbe(self):
        probe = TCPProbe(self.reactor)
        result = probe.check(self.server)
        protocol = _connect(self.reactor)
        self.assertTrue(protocol.transport.disconnecting)
        self.assertNoResult(result)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(result))

    def test_tcpProbeCancelled(self):
        probe = TCPProbe(self.reactor)
        result = probe.check(self.server)
        protocol = _connect(self.reactor)
        result.cancel()
        self.assertNoResult(result)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(result, CancelledError)

    def test_tcpProbeCancelledConnecting(self):
        """
        Cancelled while connecting, the connect is stopped and the probe
        ends at once.
        """
        result = TCPProbe(self.reactor).check(self.server)
        result.cancel()
        self.failureResultOf(result, CancelledError)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)

    def httpProbe(self):
        result = HTTPProbe(HealthCheckConfig()).check(self.server)
        protocol = _connect(self.reactor)
        return result, protocol

    def test_httpProbe(self):
        result, protocol = self.httpProbe()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(protocol.transport.disconnecting)
        self.assertNoResult(result)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(result))

    def test_httpProbeFailed(self):
        result, protocol = self.httpProbe()
        protocol.dataReceived(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
        self.assertNoResult(result)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIn("status 500", str(self.failureResultOf(result).value))

    def test_httpProbeCancelled(self):
        result, protocol = self.httpProbe()
        result.cancel()
        self.assertNoResult(result)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(result, CancelledError)


_PROBED = (
    "[manualb]\nlisten = tcp:0\naccess_log = off\n"
    "[upstream u]\nservers = 10.0.0.1:80\nhealth_check = type=tcp interval=1s\n"
    "[route r]\npath = /\nupstream = u\n"
)


class ProbesCloseTests(SynchronousTestCase):
    """
    Closing the balancer (or stopping its service) waits for the probes in
    flight to end, their connections closed; closing twice waits for the
    same end.
    """

    def probing(self, balancer, reactor):
        monitor = balancer.pools["u"].monitor
        reactor.advance(1)
        return monitor, _connect(reactor)

    def test_monitorStopWaits(self):
        reactor = MemoryReactorClock()
        balancer = LoadBalancer(_config(_PROBED), reactor)
        balancer.start()
        monitor, protocol = self.probing(balancer, reactor)
        stopped = monitor.stop()
        self.assertNoResult(stopped)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)
        self.successResultOf(monitor.stop())

    def test_closeWaitsForProbes(self):
        reactor = MemoryReactorClock()
        balancer = LoadBalancer(_config(_PROBED), reactor)
        balancer.start()
        monitor, protocol = self.probing(balancer, reactor)
        closed = balancer.close()
        again = balancer.close()
        self.assertNoResult(closed)
        self.assertNoResult(again)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(closed))
        self.assertIsNone(self.successResultOf(again))
        self.assertIsNone(self.successResultOf(balancer.close()))

    def test_stopServiceWaitsForProbes(self):
        reactor = MemoryReactorClock()
        service = makeService(_config(_PROBED), reactor)
        service.privilegedStartService()
        service.startService()
        monitor, protocol = self.probing(service.balancer, reactor)
        stopped = service.stopService()
        self.assertNoResult(stopped)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)


class StreamCloseTests(SynchronousTestCase):
    """
    A stream connection closed for want of a server counts until it has
    closed.
    """

    def test_noServer(self):
        stream = MemoryStream()
        for server in stream.pool.servers:
            server.health.requestFailed("refused")
        protocol = stream.factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.assertTrue(protocol.transport.disconnecting)
        self.assertEqual(stream.factory.connections, 1)
        closed = stream.factory.closeAll()
        self.assertNoResult(closed)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(stream.factory.connections, 0)
        self.successResultOf(closed)
