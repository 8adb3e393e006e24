"""
A connection that closes is freed by reference counting, with all it held:
none of it waits for the cycle collector, whose full collections a busy
process makes seldom (memory would rise until one comes).  Real sockets on
127.0.0.1; the clients are blocking sockets in threads, so that the only
Twisted client connections are the balancer's own.
"""

from __future__ import annotations

import gc
import socket
import threading

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from manualb.front import serving
from manualb.handoff import OneConnection
from manualb.responseparser import ResponseParser
from manualb.service import LoadBalancer
from manualb.testing import balancerConfig, serverAddress
from manualb.transports import Deadline, releaseConnector
from tests.test_endtoend import HangingBackend
from tests.test_http2 import _plainResponse

TIMEOUT = 10

#: What a connection of the balancer holds, and must not leave as garbage.
WATCHED = {
    "UpstreamConnection",
    "ResponseParser",
    "OneConnection",
    "Client",
    "Connector",
    "_WrappingFactory",
    "HTTP1Connection",
    "HttpRequestParser",
    "LeanRequest",
    "Exchange",
    "Passage",
    "Deadline",
}


class _ClosingBackend(Protocol):
    """
    Answers one request with C{Connection: close}, then waits for the
    balancer to close; C{lost} fires once it has.
    """

    def __init__(self, lost: list[Deferred]) -> None:
        self._lost = lost
        self._received = b""

    def dataReceived(self, data: bytes) -> None:
        self._received += data
        if b"\r\n\r\n" in self._received:
            self._received = b""
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            )

    def connectionLost(self, reason=None) -> None:
        self._lost.pop(0).callback(None)


def _request(port: int, head: bytes, leave: threading.Event | None = None) -> bytes:
    """
    Send C{head} to 127.0.0.1:C{port} and read until the balancer closes
    (or, given C{leave}, close once it is set).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
        client.sendall(head)
        if leave is not None:
            leave.wait(TIMEOUT)
            return b""
        return _plainResponse(client)


class ClosedConnectionsTests(TestCase):
    """
    The balancer's connections, to clients and to backends, leave no cyclic
    garbage when they close.
    """

    timeout = 20

    def setUp(self) -> None:
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)

    def garbage(self) -> set[str]:
        """
        The kinds of L{WATCHED} objects that only the cycle collector would
        free now.
        """
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            kinds = {type(thing).__name__ for thing in gc.garbage}
        finally:
            gc.set_debug(0)
            del gc.garbage[:]
        return kinds & WATCHED

    @inlineCallbacks
    def listen(self, factory) -> Deferred:
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return port

    @inlineCallbacks
    def startBalancer(self, backendPort) -> Deferred:
        balancer = LoadBalancer(balancerConfig([serverAddress(backendPort)]), reactor)
        self.addCleanup(balancer.close)
        port = yield self.listen(serving(balancer.site, "lean"))
        return port.getHost().port

    @inlineCallbacks
    def test_closedByBackend(self):
        """
        Backend connections that end with their response (C{Connection:
        close}), and the clients' connections that end with theirs, are
        freed as they close.
        """
        lost: list[Deferred] = [Deferred() for _ in range(3)]
        waits = list(lost)
        backendPort = yield self.listen(Factory.forProtocol(lambda: _ClosingBackend(lost)))
        port = yield self.startBalancer(backendPort)
        for index in range(3):
            response = yield deferToThread(
                _request, port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
            self.assertTrue(response.endswith(b"\r\n\r\nok"), response)
            yield waits[index]
        # The closes unwind first.
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(self.garbage(), set())

    @inlineCallbacks
    def test_clientGoesMidRequest(self):
        """
        A client that goes while its request waits for the backend: its
        connection, request and exchange, and the backend connection given
        up for it, are freed.
        """
        backend = HangingBackend()
        backendPort = yield self.listen(Site(backend))
        port = yield self.startBalancer(backendPort)
        leave = threading.Event()
        client = deferToThread(_request, port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", leave)
        yield backend.received
        leave.set()
        yield client
        yield backend.gone
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(self.garbage(), set())


class _Connector:
    """
    A connector, as Twisted's refers to its transport and factory.
    """

    def __init__(self, factory) -> None:
        self.factory = factory
        self.transport = None


class _EndpointFactory:
    """
    The factory an endpoint wraps around the caller's, which keeps its
    connector.
    """

    _connector = None


class ReleaseConnectorTests(SynchronousTestCase):
    """
    L{releaseConnector} cuts the links from a connector back to its client
    connection and from the endpoint's factory back to the connector.
    """

    def test_tcp(self):
        factory = _EndpointFactory()
        connector = _Connector(factory)
        transport = StringTransport()
        transport.connector = connector
        connector.transport = transport
        factory._connector = connector
        releaseConnector(transport)
        self.assertIsNone(connector.transport)
        self.assertIsNone(factory._connector)
        self.assertIs(connector.factory, factory)
        self.assertIs(transport.connector, connector)

    def test_underTLS(self):
        """
        The client connection is found under the layers over it.
        """
        connector = _Connector(_EndpointFactory())
        tcp = StringTransport()
        tcp.connector = connector
        connector.transport = tcp
        tls = StringTransport()
        tls.transport = tcp
        releaseConnector(tls)
        self.assertIsNone(connector.transport)

    def test_notAClient(self):
        """
        A transport no connector made (an accepted connection) is left as
        it is.
        """
        transport = StringTransport()
        releaseConnector(transport)
        releaseConnector(None)


class LettingGoTests(SynchronousTestCase):
    """
    What a closed connection stops using lets go of what it would have
    called.
    """

    def test_deadlineStopped(self):
        calls = []
        deadline = Deadline(reactor, lambda: calls.append(1))
        deadline.stop()
        self.assertNotIn("<lambda>", repr(deadline._expired))
        deadline._expired()
        self.assertEqual(calls, [])

    def test_oneConnection(self):
        """
        L{OneConnection} hands its protocol over once, and keeps it no
        longer.
        """
        protocol = Protocol()
        factory = OneConnection(protocol)
        self.assertIs(factory.buildProtocol(None), protocol)
        self.assertIsNone(factory.protocol)

    def test_parserDetached(self):
        """
        A detached L{ResponseParser} passes nothing on.
        """
        events = []

        class Events:
            def headReceived(self, *args):
                events.append("head")

            def bodyReceived(self, *args):
                events.append("body")

            def messageEnded(self, *args):
                events.append("end")

        parser = ResponseParser(Events())
        parser.detach()
        parser.expect(b"GET")
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(events, [])
