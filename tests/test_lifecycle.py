"""
The balancer's life: building it reads no file, starting does, and closing
fires once every connection is closed.
"""

from __future__ import annotations

import os
from io import BytesIO

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.resource import Resource
from twisted.web.server import Site

from manualb.accesslog import AccessLog
from manualb.config import ConfigError
from manualb.configfile import parseConfig
from manualb.service import LoadBalancer, makeService
from manualb.testing import NamedBackend, listenBackend, serverAddress
from manualb.tlstesting import makeCA, writeTLSFiles


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
