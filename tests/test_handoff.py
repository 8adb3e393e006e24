"""
The backend side: the HTTP/1.1 response reader and the connection pool, on
in-memory transports.
"""

from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from manualb.config import ServerAddress, UpstreamConfig
from manualb.handoff import (
    ConnectionPool,
    IResponseReceiver,
    UpstreamBadResponse,
    UpstreamClosed,
    UpstreamTimeout,
)


@implementer(IResponseReceiver)
class Receiver:
    def __init__(self):
        self.head = None
        self.body = b""
        self.done = False
        self.failure = None

    def responseStarted(self, code, reason, headers):
        self.head = (code, reason, headers)

    def responseData(self, data):
        self.body += data

    def responseDone(self):
        self.done = True

    def responseFailed(self, reason):
        self.failure = reason


class ConnectionTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.config = UpstreamConfig(
            "pool", (ServerAddress("10.0.0.1", 80),), send_timeout=10.0, read_timeout=30.0
        )
        self.pool = ConnectionPool(self.reactor, self.config.servers[0].address, self.config)

    def connect(self):
        connecting = self.pool.connect()
        host, port, factory, timeout, bind = self.reactor.tcpClients.pop()
        protocol = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return self.successResultOf(connecting), transport

    def exchange(self, response, method=b"GET", pieces=None):
        connection, transport = self.connect()
        receiver = Receiver()
        connection.sendRequest(b"%s / HTTP/1.1\r\nHost: a\r\n\r\n" % (method,), method, receiver, chunked=False)
        connection.finishBody()
        if pieces is None:
            connection.dataReceived(response)
        else:
            for i in range(0, len(response), pieces):
                connection.dataReceived(response[i : i + pieces])
        return receiver, connection, transport

    def test_receiverInterface(self):
        verifyObject(IResponseReceiver, Receiver())

    def test_chunkedByteByByte(self):
        """
        Chunked framing split at every possible point is decoded, with chunk
        extensions and trailers, and the connection goes back to the pool.
        """
        response = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n1A\r\n" + b"x" * 26 + b"\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        receiver, connection, transport = self.exchange(response, pieces=1)
        self.assertEqual(receiver.body, b"hello" + b"x" * 26)
        self.assertTrue(receiver.done)
        self.assertEqual(self.pool.idleCount, 1)

    def test_repeatedHeadersInOrder(self):
        receiver, connection, transport = self.exchange(
            b"HTTP/1.1 201 Created\r\nA: 1\r\nB: 2\r\nA: 3\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(
            receiver.head,
            (201, b"Created", [(b"A", b"1"), (b"B", b"2"), (b"A", b"3"), (b"Content-Length", b"0")]),
        )

    def test_transferEncodingOverridesLength(self):
        """
        With both Transfer-Encoding and Content-Length, the chunked framing
        counts, Content-Length is not passed on, and the connection is not
        reused.
        """
        receiver, connection, transport = self.exchange(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\n\r\n"
        )
        self.assertEqual(receiver.body, b"ok")
        self.assertNotIn(b"Content-Length", [name for name, value in receiver.head[2]])
        self.assertEqual(self.pool.idleCount, 0)
        self.assertFalse(transport.connected)

    def test_repeatedEqualLengthsAccepted(self):
        receiver, connection, transport = self.exchange(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"
        )
        self.assertEqual(receiver.body, b"ok")
        self.assertTrue(receiver.done)

    def test_badResponses(self):
        """
        Framing that cannot be trusted fails the exchange and drops the
        connection.
        """
        for response in [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n",
            b"HTTP/1.1 200 OK\r\nFolded: a\r\n  b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: a\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * 70000,
        ]:
            receiver, connection, transport = self.exchange(response)
            self.assertIsInstance(receiver.failure, UpstreamBadResponse, repr(response[:60]))
            self.assertFalse(transport.connected)

    def test_extraBytesAfterResponse(self):
        """
        A backend that sends more than its response: the connection is not
        reused.
        """
        receiver, connection, transport = self.exchange(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE"
        )
        self.assertTrue(receiver.done)
        self.assertEqual(receiver.body, b"ok")
        self.assertFalse(transport.connected)

    def test_http10NotReused(self):
        receiver, connection, transport = self.exchange(
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
        self.assertTrue(receiver.done)
        self.assertFalse(transport.connected)

    def test_unsolicitedDataWhileIdle(self):
        """
        An idle connection on which the backend speaks is dropped.
        """
        receiver, connection, transport = self.exchange(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(self.pool.idleCount, 1)
        connection.dataReceived(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        self.assertFalse(transport.connected)
        self.assertEqual(self.pool.idleCount, 0)

    def test_closedBeforeResponse(self):
        connection, transport = self.connect()
        receiver = Receiver()
        connection.sendRequest(b"GET / HTTP/1.1\r\n\r\n", b"GET", receiver, chunked=False)
        transport.loseConnection()
        self.assertIsInstance(receiver.failure, UpstreamClosed)
        self.assertTrue(receiver.failure.beforeResponse)

    def test_sendTimeout(self):
        """
        A backend that takes none of the request body for send_timeout fails
        the exchange.
        """
        connection, transport = self.connect()
        receiver = Receiver()
        connection.sendRequest(b"POST / HTTP/1.1\r\n\r\n", b"POST", receiver, chunked=True)

        class Source:
            paused = False

            def pauseProducing(self):
                self.paused = True

            def resumeProducing(self):
                self.paused = False

            def stopProducing(self):
                pass

        source = Source()
        connection.attachBody(source)
        transport.producer.pauseProducing()
        self.assertTrue(source.paused)
        self.reactor.advance(9)
        transport.producer.resumeProducing()
        transport.producer.pauseProducing()
        self.reactor.advance(9)
        self.assertIsNone(receiver.failure)
        self.reactor.advance(1)
        self.assertIsInstance(receiver.failure, UpstreamTimeout)
        self.assertFalse(transport.connected)

    def test_chunkedRequestBody(self):
        connection, transport = self.connect()
        connection.sendRequest(b"POST / HTTP/1.1\r\n\r\n", b"POST", Receiver(), chunked=True)
        transport.clear()
        connection.writeBody(b"abc")
        connection.writeBody(b"")
        connection.finishBody()
        self.assertEqual(transport.value(), b"3\r\nabc\r\n0\r\n\r\n")

    def test_closeAll(self):
        first, firstTransport = self.connect()
        self.pool.release(first)
        second, secondTransport = self.connect()
        self.pool.closeAll()
        self.assertFalse(firstTransport.connected)
        self.assertFalse(secondTransport.connected)
        self.assertEqual(self.pool.idleCount, 0)


class UpgradeTests(SynchronousTestCase):
    """
    A request sent with C{upgrade=True}, answered with a 101 or not.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.config = UpstreamConfig("pool", (ServerAddress("10.0.0.1", 80),), read_timeout=30.0)
        self.pool = ConnectionPool(self.reactor, self.config.servers[0].address, self.config)

    def upgrade(self, response):
        connecting = self.pool.connect()
        host, port, factory, timeout, bind = self.reactor.tcpClients.pop()
        protocol = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        connection = self.successResultOf(connecting)
        receiver = Receiver()
        connection.sendRequest(
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET",
            receiver,
            chunked=False,
            upgrade=True,
        )
        connection.finishBody()
        connection.dataReceived(response)
        return receiver, connection, transport

    def test_switchToTunnel(self):
        """
        After a 101, everything the backend sends is raw data, HTTP-looking
        or not, and the read timeout no longer applies.
        """
        receiver, connection, transport = self.upgrade(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\nraw"
        )
        self.assertEqual(
            receiver.head,
            (101, b"Switching Protocols", [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")]),
        )
        self.assertTrue(connection.tunnelling)
        connection.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(receiver.body, b"rawHTTP/1.1 200 OK\r\n\r\n")
        self.reactor.advance(3600)
        self.assertTrue(transport.connected)
        self.assertIsNone(receiver.failure)

    def test_tunnelClosedCleanly(self):
        receiver, connection, transport = self.upgrade(b"HTTP/1.1 101 Switching\r\n\r\n")
        transport.loseConnection()
        self.assertTrue(receiver.done)
        self.assertEqual(self.pool.idleCount, 0)

    def test_tunnelAbortedTellsReceiver(self):
        """
        Closing the pool's connections (shutdown) ends a tunnel, and its
        receiver hears of it.
        """
        receiver, connection, transport = self.upgrade(b"HTTP/1.1 101 Switching\r\n\r\n")
        self.pool.closeAll()
        self.assertFalse(transport.connected)
        # (An in-memory abort looks like a clean close.)
        self.assertTrue(receiver.done or isinstance(receiver.failure, UpstreamClosed))

    def test_otherAnswerNotReused(self):
        """
        Any other answer to an upgrade request is an ordinary response, but
        the connection is closed after it: the backend may have meant to
        switch.
        """
        receiver, connection, transport = self.upgrade(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
        self.assertTrue(receiver.done)
        self.assertEqual(receiver.body, b"ok")
        self.assertFalse(connection.tunnelling)
        self.assertEqual(self.pool.idleCount, 0)
        self.assertFalse(transport.connected)

    def test_readTimeoutBeforeSwitch(self):
        """
        Waiting for the answer to an upgrade request is bounded by the read
        timeout, as for any request.
        """
        receiver, connection, transport = self.upgrade(b"")
        self.reactor.advance(30)
        self.assertIsInstance(receiver.failure, UpstreamTimeout)

    def test_unaskedSwitch(self):
        """
        A 101 to a request that asked for no upgrade is a bad response.
        """
        connecting = self.pool.connect()
        host, port, factory, timeout, bind = self.reactor.tcpClients.pop()
        protocol = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        connection = self.successResultOf(connecting)
        receiver = Receiver()
        connection.sendRequest(b"GET / HTTP/1.1\r\n\r\n", b"GET", receiver, chunked=False)
        connection.finishBody()
        connection.dataReceived(b"HTTP/1.1 101 Switching\r\n\r\n")
        self.assertIsInstance(receiver.failure, UpstreamBadResponse)
        self.assertFalse(transport.connected)
